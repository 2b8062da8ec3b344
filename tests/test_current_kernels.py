"""Current kernels (6.14-7.3): profile auto-detection and decode with vmemmap page states.

Expectations on the bundled 7.3 sample come from its evidence files, not from s2trace:

* ftrace ``s2_kvm_share_hyp from=0xffff000005134000 to=0xffff000005135028`` (struct kvm)
  and ``from=0xffff0000061a2340 to=0xffff0000061a4680`` (the vCPU); the linear map puts
  0xffff000000000000 at PA 0x40000000, so pages 0x45134000-0x45135000 and
  0x461a2000-0x461a4000 are shared host -> hyp: host shared_owned, hyp shared_borrowed
  (mem_protect.c ``__pkvm_host_share_hyp``, docs/kernel-facts.md §KF-3.2);
* ``s2_pkvm_pgtable_stage2_map ... addr=0x0 ... phys=0x42c99000``: the guest page, shared
  host -> np-guest: host shared_owned with host_share_guest_count 1 (docs/kernel-facts.md §KF-2.8);
* ``alloc_pages_exact ... ret=0xffff000004eac000`` in ``pkvm_create_hyp_vm``: the hyp-VM
  pgd, donated: host entry 0x2000000000000002 (owner hyp), hyp owned.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from s2trace.arch.registers import config_from_registers
from s2trace.cli.main import main
from s2trace.io import open_memory
from s2trace.walk.build import Stage2Builder
from s2trace.walk.walker import detect_profile, walk

REPO = Path(__file__).resolve().parents[1]
S73 = REPO / "sample-traces" / "qemu-pkvm-7.3"
S612 = REPO / "sample-traces" / "qemu-pkvm-6.12"
LINEAR = (0xFFFF000000000000, 0x40000000)


def _pa(va: int) -> int:
    return va - LINEAR[0] + LINEAR[1]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _at(frame: pd.DataFrame, pa: int) -> pd.Series:
    """The map row covering ``pa``."""
    start = frame["ipa_start"].to_numpy(np.uint64)
    end = start + frame["size"].to_numpy(np.uint64)
    hit = np.flatnonzero((start <= pa) & (pa < end))
    assert hit.size == 1, f"{pa:#x} covered by {hit.size} rows"
    return frame.iloc[int(hit[0])]


# -- profile auto-detection -----------------------------------------------------------------
def _builder(profile: str) -> Stage2Builder:
    b = Stage2Builder(profile=profile)
    b.map(0x40000000, 0x200000)
    b.map(0x40200000, 0x1000, state="shared_owned" if profile == "linux-5.15" else None)
    return b


def test_auto_detects_71_from_a_donation_entry(tmp_path: Path) -> None:
    b = _builder("linux-7.1")
    b.annotate(0x40400000, 0x2000, "hyp")
    b.annotate(0x40600000, 0x1000, "guest", vm_handle=0x1000, gfn=0x42)
    path = b.write_elf(tmp_path / "d.elf")
    with open_memory([str(path)]) as m:
        r = walk(m, b.config, "auto")
    assert r.meta["profile"] == "linux-7.1"
    assert "7.1+" in r.meta["profile_reason"]
    hyp = _at(r.map, 0x40401000)
    assert (hyp["owner"], hyp["inv_type"]) == ("hyp", "donation")
    guest = _at(r.map, 0x40600000)
    assert (guest["owner"], int(guest["vm_handle"]), int(guest["gfn"])) == ("guest", 0x1000, 0x42)


def test_auto_keeps_6x_meaning_for_6x_dump(tmp_path: Path) -> None:
    b = _builder("linux-5.15")
    b.annotate(0x40400000, 0x1000, "hyp")
    path = b.write_elf(tmp_path / "d.elf")
    with open_memory([str(path)]) as m:
        r = walk(m, b.config, "auto")
    assert r.meta["profile"] == "linux-5.15"
    assert _at(r.map, 0x40400000)["owner"] == "hyp"
    assert _at(r.map, 0x40200000)["page_state"] == "shared_owned"


def test_detect_profile_hand_vectors() -> None:
    def frame(raws: list[int], kinds: list[str]) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "ipa_start": np.arange(len(raws), dtype=np.uint64) * np.uint64(4096),
                "raw": np.array(raws, dtype=np.uint64),
                "kind": pd.Categorical(kinds),
            }
        )

    # 0x4: 6.x hyp owner; 0x0100...: 5.13 hyp owner (top nibble 0); 0x400: 6.2 lock bit
    assert detect_profile(frame([0x4, 0x0100000000000000, 0x400], ["invalid"] * 3))[0] == (
        "linux-5.15"
    )
    # kernel-facts.md §KF-2.8: 0x2000000000000002 (hyp), 0x2000000000010004 (guest handle 0x1000)
    for raw in (0x2000000000000002, 0x2000000000010004, 0x1000000000000000):
        assert detect_profile(frame([0x4, raw], ["invalid", "invalid"]))[0] == "linux-7.1"
    # a valid leaf with high bits set is not an invalid entry: no 7.1 evidence
    assert detect_profile(frame([0x20000000400007FF], ["page"]))[0] == "linux-5.15"


def test_cli_without_profile_detects_71(capsys: pytest.CaptureFixture[str]) -> None:
    dump = str(S73 / "host-s2.elf.zst")
    rc, out, _ = _run(["decode", dump, "--vttbr", "0x7f609001", "--vtcr", "0x802d3590"], capsys)
    assert rc == 0
    head = out.splitlines()[0:3]
    assert any("profile: linux-7.1" in h for h in head)
    assert any("profile_reason: auto: 7.1+" in line for line in out.splitlines()[:15])


def test_cli_warns_on_6x_profile_for_71_dump(capsys: pytest.CaptureFixture[str]) -> None:
    dump = str(S73 / "host-s2.elf.zst")
    args = ["decode", dump, "--vttbr", "0x7f609001", "--vtcr", "0x802d3590"]
    rc, _, err = _run([*args, "--profile", "linux-5.15", "--summary"], capsys)
    assert rc == 0 and "7.1+ entries" in err and "--profile linux-7.1" in err
    rc, _, err = _run([*args, "--profile", "linux-7.1", "--summary"], capsys)
    assert rc == 0 and "warning" not in err


def test_cli_6_12_sample_unchanged(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run(["decode", str(S612), "--summary"], capsys)
    assert rc == 0
    assert "profile=linux-5.15" in out
    assert "shared_owned" in out


# -- the guest profile --------------------------------------------------------------------------
def test_guest_profile_hand_vectors() -> None:
    from s2trace.arch.geometry import Geometry
    from s2trace.decode import decode_array

    # kernel-facts.md §KF-2.8: the 7.3 guest leaf 0x0100000042c997db: page at level 3, SW1
    # (bit 56) set = shared_borrowed, oa 0x42c99000; type 3 = poisoned (kernel-facts.md §KF-2.2)
    d = decode_array(
        np.array([0x0100000042C997DB, 0x3000000000000000], np.uint64),
        Geometry(),
        3,
        "linux-7.1-guest",
    )
    assert list(d["kind"].astype(str)) == ["page", "invalid"]
    assert d["owner"].iloc[0] == "guest"
    assert d["page_state"].iloc[0] == "shared_borrowed"
    assert int(d["oa"].iloc[0]) == 0x42C99000
    assert d["inv_type"].iloc[1] == "poisoned"


def test_guest_profile_builder_round_trip(tmp_path: Path) -> None:
    b = Stage2Builder(profile="linux-7.1-guest", table_base=0x50000000)
    b.map(0x0, 0x1000, oa=0x42C99000, state="shared_borrowed")
    b.map(0x1000, 0x1000, oa=0x43000000, state="shared_owned")
    b.map(0x2000, 0x1000, oa=0x43001000)
    path = b.write_elf(tmp_path / "g.elf")
    with open_memory([str(path)]) as m:
        r = walk(m, b.config, "linux-7.1-guest", identity=False)
    got = dict(zip(r.map["ipa_start"].tolist(), r.map["page_state"].astype(str), strict=True))
    assert got == {0x0: "shared_borrowed", 0x1000: "shared_owned", 0x2000: "owned"}
    assert r.problems.counts() == {}


# -- decode with vmemmap states -----------------------------------------------------------------
def _states_map() -> pd.DataFrame:
    from s2trace.hyp.enrich import enrich_with_vmemmap

    with open_memory([str(S73 / "host-s2.elf.zst")]) as m:
        r = walk(m, config_from_registers(0x7F609001, 0x802D3590), "linux-7.1", fwb=True)
        return enrich_with_vmemmap(
            r,
            m,
            0x7F201001,
            0x5500075B5903510,
            kallsyms=S73 / "kallsyms-subset.txt",
            iomem=S73 / "iomem.txt",
            kernel="7.3",
            hcr=0x430480080001,
        )


def _check_evidence(frame: pd.DataFrame) -> None:
    shared_hyp = [*range(_pa(0xFFFF000005134000), _pa(0xFFFF000005135028), 4096)]
    shared_hyp += [*range(_pa(0xFFFF0000061A2000), _pa(0xFFFF0000061A4680), 4096)]
    assert len(shared_hyp) == 5
    for pa in shared_hyp:
        row = _at(frame, pa)
        assert (row["owner"], row["page_state"], row["hyp_state"]) == (
            "host",
            "shared_owned",
            "shared_borrowed",
        ), hex(pa)
    guest = _at(frame, 0x42C99000)
    assert (guest["page_state"], int(guest["host_share_guest_count"])) == ("shared_owned", 1)
    assert int(guest["size"]) == 0x1000  # split out of its 2 MiB block
    pgd = _at(frame, _pa(0xFFFF000004EAC000))
    assert (int(pgd["raw"]), pgd["owner"], pgd["hyp_state"]) == (0x2000000000000002, "hyp", "owned")


def test_enriched_sample_matches_trace_evidence() -> None:
    _check_evidence(_states_map())


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_cli_decode_capture_with_vmemmap(
    fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / f"m.{fmt}"
    rc, _, _ = _run(["decode", str(S73), "--format", fmt, "-o", str(out)], capsys)
    assert rc == 0
    if fmt == "csv":
        frame = pd.read_csv(out, comment="#")
    else:
        frame = pd.DataFrame([json.loads(line) for line in out.read_text().splitlines()])
    for col in ("ipa_start", "size", "raw"):  # hex text in CSV and JSON alike
        assert frame[col].map(lambda v: str(v).startswith("0x")).all()
        frame[col] = frame[col].map(lambda v: int(str(v), 0))
    assert {"hyp_state", "host_share_guest_count"} <= set(frame.columns)
    _check_evidence(frame)


def test_cli_decode_explicit_options_and_summary(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["decode", str(S73 / "host-s2.elf.zst"), "--vttbr", "0x7f609001"]
    args += ["--vtcr", "0x802d3590", "--ttbr0-el2", "0x7f201001"]
    args += ["--tcr-el2", "0x5500075b5903510", "--kallsyms", str(S73 / "kallsyms-subset.txt")]
    args += ["--iomem", str(S73 / "iomem.txt"), "--summary"]
    rc, out, _ = _run(args, capsys)
    assert rc == 0
    assert "page_states=hyp_vmemmap" in out
    assert "shared_owned" in out
    assert "read 'unknown'. Give --ttbr0-el2" not in out  # the "no vmemmap" note is gone


def test_cli_decode_ptdump_with_vmemmap(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run(["decode", str(S73), "--format", "ptdump"], capsys)
    assert rc == 0 and "0x0000000042c99000" in out.lower()


def test_cli_decode_without_vmemmap_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    dump = str(S73 / "host-s2.elf.zst")
    rc, out, _ = _run(
        ["decode", dump, "--vttbr", "0x7f609001", "--vtcr", "0x802d3590", "--summary"], capsys
    )
    assert rc == 0 and "unknown" in out and "--ttbr0-el2" in out


def test_cli_half_hyp_registers_is_an_input_error(capsys: pytest.CaptureFixture[str]) -> None:
    dump = str(S73 / "host-s2.elf.zst")
    rc, _, err = _run(
        ["decode", dump, "--vttbr", "0x7f609001", "--vtcr", "0x802d3590", "--ttbr0-el2", "0x1"],
        capsys,
    )
    assert rc == 2 and "--tcr-el2" in err


@pytest.mark.slow
def test_real_73_core_walk_with_vmemmap() -> None:
    from conftest import real_core, real_dir

    from s2trace.hyp.enrich import enrich_with_vmemmap

    core, d = real_core("7.3"), real_dir("7.3")
    with open_memory([str(core)]) as m:
        r = walk(m, config_from_registers(0x7F609001, 0x802D3590), "auto", fwb=True)
        assert r.meta["profile"] == "linux-7.1"
        frame = enrich_with_vmemmap(
            r,
            m,
            0x7F201001,
            0x5500075B5903510,
            kallsyms=d / "kallsyms-subset.txt",
            iomem=d / "iomem.txt",
            hcr=0x430480080001,
        )
    _check_evidence(frame)
