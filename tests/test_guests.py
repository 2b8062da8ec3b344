"""``find_guests`` / ``s2trace guests``: the hypervisor's VMs and the reverse map of their pages.

Expectations on the bundled 7.3 sample come from its ftrace (linear map 0xffff000000000000 =
PA 0x40000000): ``pkvm_create_hyp_vm`` allocates the 1-page pgd (``ret=0xffff000004eac000``,
PA 0x44eac000) and the 2-page hyp VM (``ret=0xffff0000061c2000``, PA 0x461c2000) for the
struct kvm ``0xffff000005134000``; the first guest fault maps ``addr=0x0 ... phys=0x42c99000``
(a share with the np-guest: the guest leaf reads shared_borrowed, §KF-2.8); the guest's
tables are hyp-owned pages (the pgd and the memcache pages, §KF-3.5).  The first VM's
handle is 0x1000 (HANDLE_OFFSET).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from s2trace.arch.registers import config_from_registers
from s2trace.cli.main import main
from s2trace.hyp.guests import (
    GUEST_PAGES,
    HYP_VM_LAYOUTS,
    VMS,
    _host_rows,
    find_guests,
    guest_profile,
    locate_layout,
)
from s2trace.io import open_memory
from s2trace.walk.build import Stage2Builder
from s2trace.walk.walker import walk

REPO = Path(__file__).resolve().parents[1]
S73 = REPO / "sample-traces" / "qemu-pkvm-7.3"
TTBR0, TCR, HCR = 0x7F201001, 0x5500075B5903510, 0x430480080001


def _lm(va: int) -> int:
    return va - 0xFFFF000000000000 + 0x40000000


@pytest.fixture(scope="module")
def sample() -> object:
    with open_memory([str(S73 / "host-s2.elf.zst")]) as m:
        host = walk(m, config_from_registers(0x7F609001, 0x802D3590), "linux-7.1")
        return find_guests(
            m,
            TTBR0,
            TCR,
            kallsyms=S73 / "kallsyms-subset.txt",
            iomem=S73 / "iomem.txt",
            host_map=host.map,
            kernel=(7, 3),
            hcr=HCR,
        )


def test_sample_has_one_vm_as_the_trace_says(sample: object) -> None:
    vms = sample.vms  # type: ignore[attr-defined]
    VMS.check(vms)
    assert len(vms) == 1
    vm = vms.iloc[0]
    assert int(vm["handle"]) == 0x1000
    assert int(vm["hyp_pa"]) == _lm(0xFFFF0000061C2000)
    assert int(vm["pgd_pa"]) == _lm(0xFFFF000004EAC000)
    # host_kvm is kept as a hyp VA (kern_hyp_va): it must translate to the struct kvm's page
    pa, ok = sample.hyp.translate(int(vm["host_kvm"]))  # type: ignore[attr-defined]
    assert ok[0] and int(pa[0]) == _lm(0xFFFF000005134000)
    assert vm["status"] == "ok" and vm["layout"] == "7.3"
    assert int(vm["ia_bits"]) == 48 and int(vm["start_level"]) == 0
    # every table page of the guest stage 2 is hyp-owned in the host stage 2
    assert int(vm["table_pages"]) >= 1
    assert int(vm["tables_hyp_owned"]) == int(vm["table_pages"])
    assert (int(vm["pages_mapped"]), int(vm["pages_shared"]), int(vm["pages_donated"])) == (
        1,
        1,
        0,
    )


def test_sample_tables_include_the_pgd(sample: object) -> None:
    tables = sample.walks[0x1000].tables  # type: ignore[attr-defined]
    assert _lm(0xFFFF000004EAC000) in set(tables["pa"].tolist())


def test_sample_reverse_map(sample: object) -> None:
    pages = sample.pages  # type: ignore[attr-defined]
    GUEST_PAGES.check(pages)
    assert len(pages) == 1
    p = pages.iloc[0]
    assert (int(p["handle"]), int(p["gfn"]), int(p["pa"]), int(p["size"])) == (
        0x1000,
        0,
        0x42C99000,
        0x1000,
    )
    assert (p["state"], p["source"]) == ("shared_borrowed", "guest-s2")


def test_cli_guests_on_capture(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["guests", str(S73)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "0x1000" in out and "0x42c99000" in out and "shared_borrowed" in out


def test_cli_guests_pages_csv(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["guests", str(S73), "--show", "pages", "--format", "csv"])
    lines = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert lines[0].split(",")[:4] == ["handle", "gfn", "ipa", "pa"]
    assert "0x42c99000" in lines[1]


def test_cli_guests_without_symbols_is_an_input_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rc = main(
        ["guests", str(S73 / "host-s2.elf.zst"), "--ttbr0-el2", hex(TTBR0), "--tcr-el2", hex(TCR)]
    )
    assert rc == 2
    assert "--kallsyms" in capsys.readouterr().err


def test_cli_guests_with_vm_table_va(capsys: pytest.CaptureFixture[str]) -> None:
    # the value of vm_table in this boot (read from hyp bss; the table sits at the start of
    # the carve-out, PA 0x7f000000 + 2 MiB)
    rc = main(
        [
            "guests",
            str(S73 / "host-s2.elf.zst"),
            "--ttbr0-el2",
            hex(TTBR0),
            "--tcr-el2",
            hex(TCR),
            "--vm-table",
            "0x9b263f200000",
        ]
    )
    assert rc == 0 and "0x42c99000" in capsys.readouterr().out


# -- layout location, synthetic ---------------------------------------------------------------
@dataclass
class _Linear:
    """A stand-in hyp stage 1: VA = PA + offset over one window."""

    offset: int
    lo: int
    hi: int

    def translate(self, va: object) -> tuple[np.ndarray, np.ndarray]:
        v = np.atleast_1d(np.asarray(va, dtype=np.uint64))
        ok = (v >= np.uint64(self.lo)) & (v < np.uint64(self.hi))
        return np.where(ok, v - np.uint64(self.offset), 0).astype(np.uint64), ok


def _fake_vm(pgt: int, mmu: int, vm_va: int, pgd_va: int, hyp: _Linear) -> np.ndarray:
    w = np.zeros(0x2000 // 8, np.uint64)
    w[pgt // 8] = np.uint64(48 | (0 << 32))  # ia_bits 48, start_level 0
    w[pgt // 8 + 1] = np.uint64(pgd_va)
    w[mmu // 8] = 1
    w[mmu // 8 + 1] = hyp.translate(pgd_va)[0][0]
    w[mmu // 8 + 2] = np.uint64(vm_va + pgt)
    w[mmu // 8 + 3] = np.uint64(0x802D3590)
    return w


def test_locate_known_layout() -> None:
    hyp = _Linear(0x9B25C6000000, 0x9B2600000000, 0x9B2700000000)
    lay = HYP_VM_LAYOUTS[(7, 3)]
    vm_va, pgd_va = 0x9B26061C2000, 0x9B2604EAC000
    w = _fake_vm(lay.pgt, lay.mmu, vm_va, pgd_va, hyp)  # type: ignore[arg-type]
    assert locate_layout(w, vm_va, hyp, (7, 3)) == lay  # type: ignore[arg-type]


def test_locate_scans_an_unknown_layout() -> None:
    hyp = _Linear(0x9B25C6000000, 0x9B2600000000, 0x9B2700000000)
    vm_va, pgd_va = 0x9B26061C2000, 0x9B2604EAC000
    w = _fake_vm(0x1100, 0xA40, vm_va, pgd_va, hyp)  # type: ignore[arg-type]
    lay = locate_layout(w, vm_va, hyp, (7, 9))  # type: ignore[arg-type]
    assert lay is not None and (lay.pgt, lay.mmu, lay.label) == (0x1100, 0xA40, "scanned")
    assert lay.host_kvm == 0x10F8


def test_locate_refuses_inconsistent_structs() -> None:
    hyp = _Linear(0x9B25C6000000, 0x9B2600000000, 0x9B2700000000)
    vm_va, pgd_va = 0x9B26061C2000, 0x9B2604EAC000
    w = _fake_vm(0x1100, 0xA40, vm_va, pgd_va, hyp)  # type: ignore[arg-type]
    w[0xA40 // 8 + 1] += np.uint64(0x1000)  # pgd_phys no longer what the pgd VA maps to
    assert locate_layout(w, vm_va, hyp) is None  # type: ignore[arg-type]
    w = _fake_vm(0x1100, 0xA40, vm_va, pgd_va, hyp)  # type: ignore[arg-type]
    w[0x1100 // 8] = np.uint64(99)  # ia_bits out of range
    assert locate_layout(w, vm_va, hyp) is None  # type: ignore[arg-type]


# -- host annotations (7.1 donations) ------------------------------------------------------------
def test_host_annotation_rows(tmp_path: Path) -> None:
    b = Stage2Builder(profile="linux-7.1")
    b.map(0x40000000, 0x200000)
    b.annotate(0x40400000, 0x2000, "guest", vm_handle=0x1001, gfn=0x10)
    b.annotate(0x40600000, 0x1000, "hyp")
    path = b.write_elf(tmp_path / "h.elf")
    with open_memory([str(path)]) as m:
        host = walk(m, b.config, "linux-7.1")
    rows = _host_rows(host.map, 4096)
    assert rows["handle"].tolist() == [0x1001, 0x1001]
    assert rows["gfn"].tolist() == [0x10, 0x11]
    assert rows["pa"].tolist() == [0x40400000, 0x40401000]
    assert set(rows["state"]) == {"owned"} and set(rows["source"]) == {"host-annotation"}


def test_guest_profile_by_version() -> None:
    assert guest_profile((7, 3)).name == "linux-7.1-guest"
    old = guest_profile((6, 12))
    assert old.mapped_owner == "guest" and old.state_bits == (56, 55)
    assert old.owner_bits == (9, 2)
