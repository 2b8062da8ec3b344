"""EL2 registers recovered from memory (s2trace.hyp.init_params, kallsyms, ``s2trace regs``).

Fast tests build a small machine: a host stage 2 (Stage2Builder), a fake kernel image holding
``kimage_voffset``, ``memstart_addr`` and ``kvm_arm_hyp_percpu_base[]``, and per-CPU areas
holding ``struct kvm_nvhe_init_params`` at the offsets the 6.12 sample uses, with the
sample's register values.  Every expected number below is written from that construction
(or from the samples' gdb-regs.txt), never from the recovery's output.
"""

from __future__ import annotations

import json
import re
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from conftest import REAL, real_core, real_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s2trace.arch.geometry import Geometry, Granule
from s2trace.cli.main import main
from s2trace.errors import InputError
from s2trace.hyp.init_params import (
    INIT_PARAMS_FIELDS,
    RecoveredRegisters,
    consistent_registers,
    kernel_resources,
    recover_registers,
    registers_from_memory,
    scan_init_params,
)
from s2trace.io import open_memory, write_elf_core
from s2trace.pkvm.kallsyms import parse_kallsyms, read_kallsyms
from s2trace.walk.build import Stage2Builder

M64 = (1 << 64) - 1
TEXT_VA = 0xFFFFB0998EE00000  # the 6.12 sample's _text
TEXT_PA = 0x40200000  # its iomem 'Kernel code'
VOFF = TEXT_VA - TEXT_PA
# Debian kernels: 52-bit VA build on 48-bit hardware (the samples' memstart_addr).
PAGE_OFFSET = 0xFFF0000000000000
MEMSTART = 0xFFF1000040000000
LIN = (PAGE_OFFSET - MEMSTART) & M64  # linear VA - PA: PA 0x40000000 <-> 0xffff000000000000
# Offsets inside the fake image (from _text).
SDATA, KIMAGE_VOFFSET, MEMSTART_ADDR, PERCPU_BASE, PERCPU_START = (
    0x1000,
    0x1000,
    0x1008,
    0x2000,
    0x3000,
)
IMAGE_BYTES = 0x5000
IN_SECTION = 0x1A80  # __kvm_nvhe_kvm_init_params - __kvm_nvhe___per_cpu_start (6.12)
AREA_PA = 0x43878000  # cpu0's per-CPU area (6.12 sample); cpu n at + n * 0x4000
PGD_PA = 0x7F301000
SAMPLE = dict(
    mair_el2=0x40044FFFF,
    tcr_el2=0x15001F5B5D53510,
    hcr_el2=0x100030480080001,
)


def q(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}Q", *[v & M64 for v in values])


@dataclass
class Machine:
    """A dump with its kallsyms and iomem, and what a correct recovery must find."""

    dump: Path
    kallsyms: Path
    iomem: Path
    vttbr: int
    vtcr: int
    params_pa: list[int]
    tpidr: list[int]
    values: list[dict[str, int]] = field(default_factory=list)


def make_machine(
    tmp: Path,
    ncpu: int = 2,
    *,
    cnp: bool = True,
    change: dict[int, dict[str, int]] | None = None,
    with_kimage_voffset: bool = True,
    granule: Granule = Granule.K4,
) -> Machine:
    """Write the machine of the module docstring; ``change[cpu]`` overrides struct fields."""
    b = Stage2Builder(Geometry(granule))
    b.map(0x40000000, 0x200000)
    b.annotate(0x7F200000, 0x10000, owner="hyp")
    vttbr = b.vttbr | int(cnp)
    image = bytearray(IMAGE_BYTES)
    image[KIMAGE_VOFFSET : KIMAGE_VOFFSET + 16] = q(VOFF if with_kimage_voffset else 0, MEMSTART)
    image[PERCPU_START : PERCPU_START + 0x2000] = b"\xcc" * 0x2000  # poisoned template
    extra: dict[int, bytes] = {TEXT_PA: b"", PGD_PA: bytes(4096)}
    params_pa, tpidrs, values = [], [], []
    bases = []
    for cpu in range(ncpu):
        area = AREA_PA + cpu * 0x4000
        bases.append((area + LIN) & M64)
        tpidr = area - (TEXT_PA + PERCPU_START)  # base - lm_alias(__per_cpu_start)
        fields = dict(
            SAMPLE,
            tpidr_el2=tpidr,
            stack_hyp_va=0x400000002000 + cpu * 0x2000,
            stack_pa=0x43801000 + cpu * 0x1000,
            pgd_pa=PGD_PA,
            vttbr=vttbr,
            vtcr=b.vtcr,
        )
        fields.update((change or {}).get(cpu, {}))
        blob = bytearray(0x2000)
        blob[IN_SECTION : IN_SECTION + 72] = q(*(fields[n] for n in INIT_PARAMS_FIELDS))
        extra[area] = bytes(blob)
        params_pa.append(area + IN_SECTION)
        tpidrs.append(tpidr)
        values.append(fields)
    image[PERCPU_BASE : PERCPU_BASE + 8 * (ncpu + 1)] = q(*bases, 0)
    extra[TEXT_PA] = bytes(image)
    dump = b.write_elf(tmp / "machine.elf", extra=extra)
    syms = {
        "_text": TEXT_VA,
        "_sdata": TEXT_VA + SDATA,
        "kimage_voffset": TEXT_VA + KIMAGE_VOFFSET,
        "memstart_addr": TEXT_VA + MEMSTART_ADDR,
        "__kvm_nvhe_kvm_arm_hyp_percpu_base": TEXT_VA + PERCPU_BASE,
        "__kvm_nvhe___per_cpu_start": TEXT_VA + PERCPU_START,
        "__kvm_nvhe_kvm_init_params": TEXT_VA + PERCPU_START + IN_SECTION,
    }
    if not with_kimage_voffset:
        del syms["kimage_voffset"]
    lines = [f"{va:016x} {'T' if n == '_text' else 'D'} {n}" for n, va in syms.items()]
    lines.insert(1, "ffff800079a01000 t kvm_vcpu_ioctl\t[kvm]")
    (tmp / "kallsyms.txt").write_text("\n".join(lines) + "\n")
    (tmp / "iomem.txt").write_text(
        "40000000-7fffffff : System RAM\n"
        f"  {TEXT_PA:08x}-{TEXT_PA + SDATA - 1:08x} : Kernel code\n"
        f"  {TEXT_PA + SDATA:08x}-{TEXT_PA + IMAGE_BYTES - 1:08x} : Kernel data\n"
    )
    return Machine(
        dump, tmp / "kallsyms.txt", tmp / "iomem.txt", vttbr, b.vtcr, params_pa, tpidrs, values
    )


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    return make_machine(tmp_path)


def check_cpu(r: RecoveredRegisters, m: Machine, i: int) -> None:
    """Register values of CPU ``i`` as the construction put them."""
    f = m.values[i]
    assert r.problem is None
    assert r.params_pa == m.params_pa[i]
    assert r.values() == {
        "VTTBR_EL2": f["vttbr"],
        "VTCR_EL2": f["vtcr"],
        "TTBR0_EL2": PGD_PA | (f["vttbr"] & 1),
        "TCR_EL2": f["tcr_el2"],
        "MAIR_EL2": f["mair_el2"],
        "HCR_EL2": f["hcr_el2"],
        "TPIDR_EL2": m.tpidr[i],
    }
    assert r.pgd_pa == PGD_PA and r.stack_pa == f["stack_pa"]


# -- kallsyms reader ----------------------------------------------------------------------


def test_kallsyms_parse_vectors():
    text = (
        "Symbols of this boot:\n"
        "ffffb0998ee00000 T _text\n"
        "ffffb0998ee10000 T _stext\n"
        "ffff800079a01000 t kvm_vcpu_ioctl\t[kvm]\n"
        "ffffb09990d6ca80 d __kvm_nvhe_kvm_init_params\n"
        "ffffb0998ee20000 t dup\n"
        "ffffb0998ee30000 t dup\n"
    )
    k = parse_kallsyms(text, "k.txt")
    assert len(k) == 6 and k.skipped == 1
    assert k.address("_text") == 0xFFFFB0998EE00000
    assert k.address("kvm_vcpu_ioctl") == 0xFFFF800079A01000
    assert k.modules[2] == "kvm" and k.types[2] == "t"
    assert k.address("dup") == 0xFFFFB0998EE20000  # first occurrence
    assert k.address("nope") is None and "nope" not in k and "_stext" in k
    assert k.addresses.dtype == np.uint64 and not k.hidden
    assert k.require(["_text", "_stext"], "x") == {
        "_text": 0xFFFFB0998EE00000,
        "_stext": 0xFFFFB0998EE10000,
    }
    with pytest.raises(InputError, match=r"k.txt: no symbol a, b; x needs"):
        k.require(["a", "_text", "b"], "x")


def test_kallsyms_hidden_and_errors(tmp_path):
    assert parse_kallsyms("0000000000000000 T _text\n0000000000000000 D x\n").hidden
    with pytest.raises(InputError, match="no 'ADDRESS TYPE NAME' line"):
        parse_kallsyms("08000000-0800ffff : GICD\n", "iomem.txt")
    with pytest.raises(InputError, match="no such file"):
        read_kallsyms(tmp_path / "missing")
    with pytest.raises(InputError, match="is a directory"):
        read_kallsyms(tmp_path)


def test_iomem_kernel_resources():
    text = (
        "40000000-7fffffff : System RAM\n  40200000-41efffff : Kernel code\n"
        "  42870000-42d2ffff : Kernel data\n"
    )
    assert kernel_resources(text) == {"Kernel code": 0x40200000, "Kernel data": 0x42870000}
    with pytest.raises(InputError, match="read /proc/iomem as root"):
        kernel_resources("00000000-00000000 : Kernel code\n00000000-00000000 : Kernel data\n")
    with pytest.raises(InputError, match="no 'Kernel code' line"):
        kernel_resources("09000000-09000fff : pl011@9000000\n")


# -- recovery on the fake machine -----------------------------------------------------------


@pytest.mark.parametrize("iomem", [True, False])
def test_recover_through_kallsyms(machine, iomem):
    with open_memory([machine.dump]) as mem:
        found = recover_registers(mem, machine.kallsyms, machine.iomem if iomem else None)
    assert [r.cpu for r in found] == [0, 1]
    for i, r in enumerate(found):
        check_cpu(r, machine, i)
        assert r.method == "kallsyms"
        assert r.sources["VTTBR_EL2"] == f"kvm_nvhe_init_params.vttbr at PA {r.params_pa + 56:#x}"
        located = r.sources["located"]
        assert f"PAGE_OFFSET {PAGE_OFFSET:#x} - memstart_addr {MEMSTART:#x}" in located
        assert f"image VA-PA {VOFF:#x}" in located
        assert ("Kernel code' = _text" in located) == iomem
        assert any("CnP" in n for n in r.notes) and any("FEAT_MTE2" in n for n in r.notes)


def test_recover_without_kimage_voffset_needs_iomem(tmp_path):
    m = make_machine(tmp_path, with_kimage_voffset=False)
    with open_memory([m.dump]) as mem:
        found = recover_registers(mem, m.kallsyms, m.iomem)
        check_cpu(found[0], m, 0)
        with pytest.raises(InputError, match="no kimage_voffset symbol and no --iomem"):
            recover_registers(mem, m.kallsyms)


def test_recover_by_scan(machine):
    with open_memory([machine.dump]) as mem:
        found = recover_registers(mem)
        assert found == scan_init_params(mem)
    assert [r.cpu for r in found] == [None, None]
    assert [r.params_pa for r in found] == machine.params_pa  # ordered by PA
    for i, r in enumerate(found):
        check_cpu(r, machine, i)
        assert r.method == "scan" and r.label == f"copy@{machine.params_pa[i]:#x}"


def test_consistent_and_summary(machine):
    with open_memory([machine.dump]) as mem:
        chosen, line = registers_from_memory(mem, machine.kallsyms, machine.iomem)
    assert chosen.cpu == 0 and chosen.config().root == machine.vttbr & ~1
    assert line == (
        "registers recovered from memory through kallsyms: struct kvm_nvhe_init_params of "
        f"2 CPU(s) agree (cpu0 at PA {machine.params_pa[0]:#x}): "
        f"VTTBR_EL2={machine.vttbr:#x} VTCR_EL2={machine.vtcr:#x}"
    )


def test_disagreeing_cpus_are_refused(tmp_path):
    m = make_machine(tmp_path, change={1: {"tcr_el2": 0x80853510}})
    with open_memory([m.dump]) as mem:
        found = recover_registers(mem, m.kallsyms, m.iomem)
        assert all(r.problem is None for r in found)
        with pytest.raises(InputError) as e:
            consistent_registers(found, "dump.elf")
        scanned = recover_registers(mem)
    assert str(e.value) == (
        "dump.elf: saved EL2 registers disagree between cpu0 and cpu1: TCR_EL2 "
        "0x15001f5b5d53510 vs 0x80853510; give --vttbr X --vtcr Y (see `s2trace regs`)"
    )
    with pytest.raises(InputError, match="disagree between copy@"):
        consistent_registers(scanned)


def test_unusable_cpu_is_reported_and_skipped(tmp_path):
    m = make_machine(tmp_path, ncpu=3, change={1: {"vttbr": 0}})
    with open_memory([m.dump]) as mem:
        found = recover_registers(mem, m.kallsyms, m.iomem)
        assert [r.cpu for r in found] == [0, 1, 2]
        assert found[1].problem.startswith("vttbr is 0")
        assert consistent_registers(found).cpu == 0
        assert [r.cpu for r in found if r.problem is None] == [0, 2]
        assert len(recover_registers(mem)) == 2  # the scan never returns unusable copies


def test_none_usable_is_refused(tmp_path):
    m = make_machine(tmp_path, ncpu=1, change={0: {"vtcr": 0x8000C000}})  # TG0=3: reserved
    with open_memory([m.dump]) as mem:
        found = recover_registers(mem, m.kallsyms, m.iomem)
        assert "TG0=3 is a reserved granule" in found[0].problem
        with pytest.raises(InputError, match=r"^x: no usable .*\(cpu0: VTCR_EL2 .*TG0=3"):
            consistent_registers(found, "x")
        assert recover_registers(mem) == []
        with pytest.raises(InputError, match=r"^the dump: no usable .* give --vttbr X"):
            consistent_registers([])


@pytest.mark.parametrize(
    "change, why",
    [
        ({"vttbr": 0x7E000001}, "root 0x7e000000 .* is not in the dump"),
        ({"hcr_el2": 0x100030480080000}, "has VM=0"),
        ({"pgd_pa": 0x10000000}, "pgd_pa 0x10000000 .* is not in the dump"),
    ],
)
def test_validation_reasons(tmp_path, change, why):
    m = make_machine(tmp_path, ncpu=1, change={0: change})
    with open_memory([m.dump]) as mem:
        (r,) = recover_registers(mem, m.kallsyms, m.iomem)
        assert re.search(why, r.problem)
        assert scan_init_params(mem) == []


def test_root_pointing_outside_the_dump_is_rejected(tmp_path):
    m = make_machine(tmp_path, ncpu=1)
    root = m.vttbr & ~1
    with open_memory([m.dump]) as mem:
        parts = [(r.pa, bytearray(mem.read(r.pa, r.size))) for r in mem.regions]
    for pa, data in parts:
        if pa <= root < pa + len(data):  # entry 1: a table descriptor to 0x10000000 (MMIO)
            data[root - pa + 8 : root - pa + 16] = q(0x10000003)
    patched = write_elf_core(tmp_path / "patched.elf", [(pa, bytes(d)) for pa, d in parts])
    with open_memory([patched]) as mem:
        (r,) = recover_registers(mem, m.kallsyms, m.iomem)
        assert r.problem == f"root table at {root:#x} points to 0x10000000, outside the dump"
        assert scan_init_params(mem) == []


def test_nvhe_tcr_gets_ps_from_vtcr(tmp_path):
    # kernel-facts.md §KF-2.9, Debian 6.1 (nVHE): stored tcr_el2 0x80803510, live TCR_EL2
    # 0x80853510.
    m = make_machine(
        tmp_path, ncpu=1, change={0: {"tcr_el2": 0x80803510, "hcr_el2": 0x100030080080001}}
    )
    with open_memory([m.dump]) as mem:
        (r,) = recover_registers(mem, m.kallsyms, m.iomem)
    assert r.tcr_el2 == 0x80853510
    assert r.sources["TCR_EL2"].endswith("with PS=5 from VTCR_EL2.PS")
    assert any("TCR_EL2.PS was 0" in n for n in r.notes)


def test_hvhe_tcr_is_kept_and_no_cnp(tmp_path):
    m = make_machine(tmp_path, ncpu=1, cnp=False)
    with open_memory([m.dump]) as mem:
        (r,) = recover_registers(mem, m.kallsyms, m.iomem)
    assert r.tcr_el2 == SAMPLE["tcr_el2"]  # E2H set: EL1 layout, left alone
    assert r.ttbr0_el2 == PGD_PA and not any("CnP" in n for n in r.notes)


def test_bad_kallsyms_are_refused(tmp_path, machine):
    with open_memory([machine.dump]) as mem:
        hidden = tmp_path / "hidden.txt"
        hidden.write_text("0000000000000000 T _text\n0000000000000000 D memstart_addr\n")
        with pytest.raises(InputError, match="hidden by kptr_restrict"):
            recover_registers(mem, hidden)
        partial = tmp_path / "partial.txt"
        partial.write_text(f"{TEXT_VA:016x} T _text\n")
        with pytest.raises(InputError, match="no symbol __kvm_nvhe_kvm_init_params"):
            recover_registers(mem, partial)
        wrong = tmp_path / "wrong.txt"  # another boot: KASLR moved everything
        wrong.write_text(machine.kallsyms.read_text().replace("ffffb0998", "ffffb0aa8"))
        with pytest.raises(InputError, match="no word of the dump holds kimage_voffset"):
            recover_registers(mem, wrong)
        # With iomem the image is placed anyway (a uniform KASLR shift keeps every relative
        # offset, and tpidr_el2 still checks out), but the result says it is unconfirmed.
        found = recover_registers(mem, wrong, machine.iomem)
        check_cpu(found[0], machine, 0)
        assert "(kimage_voffset does not confirm it)" in found[0].sources["located"]
        shifted = tmp_path / "shifted.txt"  # the per-CPU section moved: tpidr cannot match
        shifted.write_text(
            machine.kallsyms.read_text().replace(
                f"{TEXT_VA + PERCPU_START:016x}", f"{TEXT_VA + PERCPU_START + 0x1000:016x}"
            )
        )
        with pytest.raises(InputError, match="kvm_nvhe_init_params not found: no linear-map"):
            recover_registers(mem, shifted, machine.iomem)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    granule=st.sampled_from([Granule.K4, Granule.K16, Granule.K64]),
    slots=st.lists(st.integers(0, 511), min_size=1, max_size=4, unique=True),
    seed=st.integers(0, 2**32 - 1),
)
def test_scan_round_trip(granule, slots, seed):
    """Copies placed at random words of random RAM are found exactly, with their values."""
    rng = np.random.default_rng(seed)
    b = Stage2Builder(Geometry(granule))
    b.map(0x40000000, b.geometry.span(2 if granule is Granule.K4 else 3))
    noise_pa = 0x50000000
    noise = rng.integers(0, 2**64, size=0x40000 // 8, dtype=np.uint64)
    expected = {}
    for k, slot in enumerate(sorted(slots)):
        word = slot * 64 + int(rng.integers(0, 55))
        fields = dict(
            SAMPLE,
            tpidr_el2=int(rng.integers(0, 2**40)),
            stack_hyp_va=int(rng.integers(0, 2**48)),
            stack_pa=0x43801000 + 0x1000 * k,
            pgd_pa=b.root,
            vttbr=b.vttbr | 1,
            vtcr=b.vtcr,
        )
        noise[word : word + 9] = [fields[n] for n in INIT_PARAMS_FIELDS]
        expected[noise_pa + 8 * word] = fields
    with tempfile.TemporaryDirectory() as d:
        dump = b.write_elf(Path(d) / "d.elf", extra={noise_pa: noise.astype("<u8").tobytes()})
        with open_memory([dump]) as mem:
            found = scan_init_params(mem)
    assert [r.params_pa for r in found] == sorted(expected)
    for r in found:
        f = expected[r.params_pa]
        assert (r.vttbr_el2, r.vtcr_el2, r.tpidr_el2, r.stack_hyp_va) == (
            f["vttbr"],
            f["vtcr"],
            f["tpidr_el2"],
            f["stack_hyp_va"],
        )
        assert r.config().geometry.granule is granule


# -- CLI ---------------------------------------------------------------------------------


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_regs_text_and_json(machine, capsys):
    code, out, err = run(
        capsys, "regs", machine.dump, "--kallsyms", machine.kallsyms, "--iomem", machine.iomem
    )
    assert code == 0 and err == ""
    assert out.count("struct kvm_nvhe_init_params at PA") == 2
    assert f"  VTTBR_EL2  {machine.vttbr:#018x}  kvm_nvhe_init_params.vttbr at PA" in out
    assert f"  TTBR0_EL2  {PGD_PA | 1:#018x}" in out
    assert out.rstrip().endswith(
        f"walk with: s2trace decode {machine.dump} --vttbr {machine.vttbr:#x} "
        f"--vtcr {machine.vtcr:#x} --summary"
    )
    code, out, _ = run(capsys, "regs", machine.dump, "--format", "json")
    rows = json.loads(out)
    assert code == 0 and [r["params_pa"] for r in rows] == [hex(p) for p in machine.params_pa]
    assert rows[1]["registers"]["TPIDR_EL2"] == hex(machine.tpidr[1])


def test_cli_regs_refuses_with_one_line(tmp_path, capsys):
    b = Stage2Builder()
    b.map(0x40000000, 0x200000)
    bare = b.write_elf(tmp_path / "tables-only.elf")
    code, out, err = run(capsys, "regs", bare)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "no usable struct kvm_nvhe_init_params" in err
    m = make_machine(tmp_path, change={1: {"mair_el2": 0xFF}})
    code, out, err = run(capsys, "regs", m.dump)
    assert code == 2 and out.count("struct kvm_nvhe_init_params at PA") == 2
    assert err.strip().splitlines() == [
        f"s2trace: error: {m.dump}: saved EL2 registers disagree between "
        f"copy@{m.params_pa[0]:#x} and copy@{m.params_pa[1]:#x}: MAIR_EL2 0x40044ffff vs "
        "0xff; give --vttbr X --vtcr Y (see `s2trace regs`)"
    ]


def test_cli_walk_falls_back_to_memory(machine, capsys):
    code, recovered, err = run(capsys, "decode", machine.dump, "--summary")
    assert code == 0
    assert err.splitlines() == [
        "s2trace: note: no VTTBR_EL2/VTCR_EL2 given; registers recovered from memory by a "
        "scan of RAM: "
        f"struct kvm_nvhe_init_params of 2 CPU(s) agree (copy@{machine.params_pa[0]:#x} at PA "
        f"{machine.params_pa[0]:#x}): VTTBR_EL2={machine.vttbr:#x} VTCR_EL2={machine.vtcr:#x}"
    ]
    code, given_, _ = run(
        capsys,
        "decode",
        machine.dump,
        "--vttbr",
        hex(machine.vttbr),
        "--vtcr",
        hex(machine.vtcr),
        "--summary",
    )
    assert code == 0 and recovered == given_
    code, _, err = run(
        capsys, "decode", machine.dump, "--kallsyms", machine.kallsyms, "--summary", "--base", "0"
    )
    assert code == 0 and "through kallsyms" in err and "(cpu0 at PA" in err


def test_cli_walk_takes_fwb_from_hcr(tmp_path, capsys):
    m = make_machine(tmp_path, change={c: {"hcr_el2": 0x400430480080001} for c in (0, 1)})
    code, out, err = run(capsys, "decode", m.dump, "--summary")
    assert code == 0 and err.rstrip().endswith("HCR_EL2.FWB=1") and "fwb=True" in out


def test_cli_walk_refuses_without_registers(tmp_path, capsys):
    b = Stage2Builder()
    b.map(0x40000000, 0x200000)
    bare = b.write_elf(tmp_path / "tables-only.elf")
    code, out, err = run(capsys, "decode", bare, "--summary")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "give --vttbr X --vtcr Y, or --kallsyms FILE" in err


# -- the real samples ----------------------------------------------------------------------

HCR_MTE2_ONLY = 0b111 << 56  # ATA, DCT, TID5: RES0 without FEAT_MTE2 (QEMU virt, no mte=on)


def gdb_registers(version: str) -> list[dict[str, int]]:
    """Per-thread register values of the sample's gdb-regs.txt (thread 1 = CPU0)."""
    threads: list[dict[str, int]] = []
    for line in (real_dir(version) / "gdb-regs.txt").read_text().splitlines():
        if line.startswith("[Switching to thread"):
            threads.append({})
        m = re.match(r"^(\w+_EL[12])\s+(0x[0-9a-f]+)", line)
        if m and threads:
            threads[-1][m.group(1)] = int(m.group(2), 16)
    return threads


def assert_matches_gdb(r: RecoveredRegisters, live: dict[str, int]) -> None:
    for name, value in r.values().items():
        if name == "HCR_EL2":
            assert value & ~HCR_MTE2_ONLY == live[name]
            assert value & HCR_MTE2_ONLY  # the one difference, and it is explained
        else:
            assert value == live[name], name


@pytest.mark.slow
@pytest.mark.parametrize("version", ["6.12", "7.3"])
@pytest.mark.parametrize("how", ["scan", "kallsyms", "kallsyms+iomem"])
def test_real_samples_equal_gdb(version, how):
    core, d = real_core(version), real_dir(version)
    live = gdb_registers(version)
    kallsyms = d / "kallsyms-subset.txt" if how != "scan" else None
    iomem = d / "iomem.txt" if how == "kallsyms+iomem" else None
    with open_memory([core]) as mem:
        found = recover_registers(mem, kallsyms, iomem)
    assert len(found) == len(live) == 2
    by_tpidr = {t["TPIDR_EL2"]: t for t in live}
    for i, r in enumerate(found):
        assert r.problem is None
        assert r.cpu == (None if how == "scan" else i)
        expect = live[i] if r.cpu is not None else by_tpidr[r.tpidr_el2]
        assert_matches_gdb(r, expect)
        assert r.vttbr_el2 == REAL[version]["vttbr"] and r.vtcr_el2 == REAL[version]["vtcr"]
    # kernel-facts.md §KF-2.9: cpu0's params at 0x43879a80 (6.12); the 7.3 row's 0x451a2828 is the
    # address of the vttbr field (offset 0x38) of the struct at 0x451a27f0.
    first = {"6.12": 0x43879A80, "7.3": 0x451A27F0}[version]
    assert found[0].params_pa == first
    assert found[0].sources["VTTBR_EL2"].endswith(f"at PA {first + 0x38:#x}")
