"""Dumps as real devices produce them (issue 9): several raw DDR region files, a TRACE32
``load.cmm`` or a ``dump_info.txt`` table of base addresses, no EL2 registers.

The slow tests cut the real 6.12 and 7.3 cores into four raw region files with a hole (written
to a temporary folder at test time, never committed), describe them each way, and check that
the walk, with registers recovered from memory, gives exactly the ELF core's map.  The hostile
region lists are small files and run fast.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zstandard
from conftest import REAL, real_core, real_dir

from s2trace.arch.registers import Stage2Config, config_from_registers
from s2trace.cli.main import main
from s2trace.hyp.init_params import recover_registers, registers_from_memory
from s2trace.io import open_memory
from s2trace.walk.walker import walk

#: The 1 GiB of RAM at 0x40000000 as four DDR files, leaving out 0x60000000..0x68000000
#: (no table page lies there: every table of both samples is in the hyp carve-out near
#: 0x7f000000, checked in ``device`` below).
LAYOUT = (
    ("DDRCS0_0.BIN", 0x40000000, 0x10000000),
    ("DDRCS0_1.BIN", 0x50000000, 0x10000000),
    ("DDRCS1_0.BIN", 0x68000000, 0x14000000),
    ("DDRCS1_1.BIN", 0x7C000000, 0x04000000),
)
HOLE = (0x60000000, 0x68000000)
VERSIONS = ["6.12", "7.3"]


def copy_range(src: Path, offset: int, size: int, dst: Path) -> None:
    """``size`` bytes of ``src`` from ``offset`` into a new file ``dst`` (in-kernel copy)."""
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        done = 0
        while done < size:
            n = os.copy_file_range(fi.fileno(), fo.fileno(), size - done, offset + done)
            if n <= 0:
                raise OSError(f"copy_file_range stopped at {done} of {size} bytes")
            done += n


def write_lists(folder: Path) -> tuple[Path, Path]:
    """A load.cmm and a dump_info.txt describing LAYOUT, in two spellings each."""
    cmm = ["; RAM dump of a pKVM board (written by the test)"]
    for i, (name, pa, size) in enumerate(LAYOUT):
        if i % 2:
            cmm.append(f'data.load.binary "{name}" A:{pa:#x}++{size - 1:#x} /NOCLEAR')
        else:
            cmm.append(f"d.load.binary {name} {pa:#x} /noclear")
    info = ["# Index  Base         Size        Description   File"]
    for i, (name, pa, size) in enumerate(LAYOUT, start=1):
        info.append(f"{i:>2}  {pa:#012x} {size:#012x} DDR CS{i // 3} part {i}  {name}")
    (folder / "load.cmm").write_text("\n".join(cmm) + "\n")
    (folder / "dump_info.txt").write_text("\n".join(info) + "\n")
    return folder / "load.cmm", folder / "dump_info.txt"


class Device:
    """One sample cut into region files, with its ELF reference walk."""

    def __init__(self, version: str, folder: Path) -> None:
        self.version = version
        self.folder = folder
        self.core = real_core(version)
        self.dir = real_dir(version)
        with open_memory([self.core]) as mem:
            (seg,) = mem.regions  # one PT_LOAD for all of RAM (sample README)
            assert (seg.pa, seg.size) == (0x40000000, 0x40000000)
            self.reference = walk(mem, self.config)
        for name, pa, size in LAYOUT:
            copy_range(seg.path, seg.file_offset + pa - seg.pa, size, folder / name)
        self.cmm, self.dump_info = write_lists(folder)
        self.at_pa = [f"{folder / name}@{pa:#x}" for name, pa, _ in LAYOUT]
        tables = self.reference.tables["pa"].to_numpy(dtype=np.uint64)
        assert not np.any((tables >= HOLE[0]) & (tables < HOLE[1]))

    @property
    def config(self) -> Stage2Config:
        return config_from_registers(REAL[self.version]["vttbr"], REAL[self.version]["vtcr"])


@pytest.fixture(scope="module", params=VERSIONS)
def device(request, tmp_path_factory) -> Device:
    return Device(request.param, tmp_path_factory.mktemp(f"device-{request.param}"))


def walk_like_the_elf(device: Device, specs: list[str]) -> None:
    """Registers recovered from the split dump, then its walk equals the ELF's, row for row."""
    with open_memory(specs) as mem:
        assert mem.problems == ()
        assert [(r.pa, r.size) for r in mem.regions] == [(pa, s) for _, pa, s in LAYOUT]
        regs, _ = registers_from_memory(mem)
        assert (regs.vttbr_el2, regs.vtcr_el2) == (
            REAL[device.version]["vttbr"],
            REAL[device.version]["vtcr"],
        )
        result = walk(mem, regs.config())
    ref = device.reference
    assert result.config == ref.config and len(result.problems) == len(ref.problems) == 0
    pd.testing.assert_frame_equal(result.map, ref.map)
    pd.testing.assert_frame_equal(result.tables, ref.tables)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["load.cmm", "dump_info.txt", "FILE@PA"])
def test_split_dump_walks_like_the_elf(device, kind):
    specs = {
        "load.cmm": [str(device.cmm)],
        "dump_info.txt": [str(device.dump_info)],
        "FILE@PA": device.at_pa,
    }[kind]
    walk_like_the_elf(device, specs)


@pytest.mark.slow
def test_compressed_split_dump_walks_like_the_elf(device, tmp_path, monkeypatch):
    """Region files stored as .zst next to lists that name the plain files."""
    monkeypatch.setenv("S2TRACE_CACHE", str(tmp_path / "cache"))
    packed = tmp_path / "packed"
    packed.mkdir()
    cctx = zstandard.ZstdCompressor(level=1, threads=-1)
    for name, _, _ in LAYOUT:
        with open(device.folder / name, "rb") as fi, open(packed / f"{name}.zst", "wb") as fo:
            cctx.copy_stream(fi, fo)
    shutil.copy(device.cmm, packed / "load.cmm")
    shutil.copy(device.dump_info, packed / "dump_info.txt")
    assert not any(packed.glob("*.BIN"))
    walk_like_the_elf(device, [str(packed / "load.cmm")])
    walk_like_the_elf(device, [str(packed / "dump_info.txt")])


@pytest.mark.slow
def test_split_dump_registers_through_kallsyms(device):
    ks, io = device.dir / "kallsyms-subset.txt", device.dir / "iomem.txt"
    with open_memory([device.core]) as mem:
        whole = recover_registers(mem, ks, io)
    with open_memory([str(device.cmm)]) as mem:
        for iomem in (io, None):
            split = recover_registers(mem, ks, iomem)
            assert [(r.cpu, r.params_pa, r.values()) for r in split] == [
                (r.cpu, r.params_pa, r.values()) for r in whole
            ]


@pytest.mark.slow
def test_cli_on_split_dump(device, capsys):
    ks, io = device.dir / "kallsyms-subset.txt", device.dir / "iomem.txt"
    assert main(["regs", str(device.dump_info), "--kallsyms", str(ks), "--iomem", str(io)]) == 0
    out, err = capsys.readouterr()
    assert err == "" and out.count("struct kvm_nvhe_init_params at PA") == 2
    vttbr, vtcr = REAL[device.version]["vttbr"], REAL[device.version]["vtcr"]
    assert f"--vttbr {vttbr:#x} --vtcr {vtcr:#x}" in out

    assert main(["decode", *device.at_pa, "--summary"]) == 0
    recovered, err = capsys.readouterr()
    assert err.startswith(
        "s2trace: note: no VTTBR_EL2/VTCR_EL2 given; registers recovered from memory"
    )
    assert len(err.strip().splitlines()) == 1
    fwb = ["--fwb"] if "HCR_EL2.FWB=1" in err else []
    assert bool(fwb) == (device.version == "7.3")  # 7.3 sets HCR_EL2.FWB (§KF-1.5)
    given = [str(device.core), "--vttbr", hex(vttbr), "--vtcr", hex(vtcr), "--summary", *fwb]
    assert main(["decode", *given]) == 0
    assert capsys.readouterr().out == recovered


# -- hostile region lists: one clear line, exit 2 ---------------------------------------------


def region_file(path: Path, nbytes: int = 0x4000) -> Path:
    path.write_bytes(np.arange(nbytes // 8, dtype="<u8").tobytes())
    return path


def hostile(tmp: Path, case: str) -> tuple[list[str], str]:
    """Dump arguments for one hostile case, and a piece of the expected message."""
    region_file(tmp / "A.BIN")
    region_file(tmp / "B.BIN")
    if case == "overlap":
        (tmp / "dump_info.txt").write_text(
            "1 0x80000000 0x4000 DDR CS0 A.BIN\n2 0x80002000 0x4000 DDR CS1 B.BIN\n"
        )
        return [str(tmp / "dump_info.txt")], "overlapping regions"
    if case == "missing file":
        (tmp / "load.cmm").write_text(
            "d.load.binary A.BIN 0x80000000\nd.load.binary C.BIN 0x80004000\n"
        )
        return [str(tmp / "load.cmm")], "C.BIN: no such file"
    if case == "bad address":
        return [f"{tmp / 'A.BIN'}@0x8000zz00"], "bad physical address '0x8000zz00'"
    if case == "address without radix":
        (tmp / "load.cmm").write_text("d.load.binary A.BIN 80000000\n")  # T32: ambiguous
        return [str(tmp / "load.cmm")], "region list names no memory file"
    if case == "beyond 64 bits":
        return [f"{tmp / 'A.BIN'}@0xffffffffffffe000"], "outside 64-bit space"
    if case == "truncated region":
        (tmp / "dump_info.txt").write_text("0x80000000 0x8000 A.BIN\n")
        return [str(tmp / "dump_info.txt")], "truncated region"
    if case == "truncated range in load.cmm":
        (tmp / "load.cmm").write_text("d.load.binary B.BIN 0x80000000--0x80007fff\n")
        return [str(tmp / "load.cmm")], "truncated region"
    raise AssertionError(case)


HOSTILE = [
    "overlap",
    "missing file",
    "bad address",
    "address without radix",
    "beyond 64 bits",
    "truncated region",
    "truncated range in load.cmm",
]


@pytest.mark.parametrize("command", ["regs", "decode"])
@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_region_lists(tmp_path, capsys, case, command):
    specs, needle = hostile(tmp_path, case)
    argv = [command, *specs]
    if command == "decode":
        argv += ["--vttbr", "0x80000001", "--vtcr", "0x802d3590", "--summary"]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1, err
    assert lines[0].startswith("s2trace: error: ") and needle in lines[0]
