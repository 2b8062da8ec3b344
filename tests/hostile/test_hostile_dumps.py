"""Hostile dumps: damaged cores, odd raw images, compressed dumps cut short, huge sparse cores.

What already held up (ELF header fuzzing, cores truncated anywhere, corrupt table pages) stays
in the battery as generated cases.  The resource cases: ``scan``, ``regs`` and a walk without
registers on a sparse 64 GiB core look only where a stage-2 root or
``kvm_nvhe_init_params`` can live, so they finish in bounded time and memory.
"""

from __future__ import annotations

import gzip
import lzma
import struct
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostile.hostile_support import check, mutate, run, run_many, verdict

SETTINGS = settings(
    max_examples=10,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
REGS = ["--vttbr", "0x7f700000", "--vtcr", "0x800d3590"]
BUGGY_PA, BUGGY_SEGMENT_OFFSET, BUGGY_SIZE = 0x7F700000, 4096, 0x9000


def sparse_core(path: Path, table_bytes: bytes, ram_size: int, ram_base: int = 0x40000000) -> Path:
    """An AArch64 ELF core with one PT_LOAD of ``ram_size`` bytes at ``ram_base``, all holes
    except the buggy capture's table pages at their physical address."""
    ehdr = struct.Struct("<16sHHIQQQIHHHHHH")
    phdr = struct.Struct("<IIQQQQQQ")
    data_off = 4096
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    with open(path, "wb") as f:
        f.write(ehdr.pack(ident, 4, 183, 1, 0, ehdr.size, 0, 0, ehdr.size, phdr.size, 1, 0, 0, 0))
        f.write(phdr.pack(1, 7, data_off, ram_base, ram_base, ram_size, ram_size, 4096))
        f.seek(data_off + BUGGY_PA - ram_base)
        f.write(table_bytes)
        f.truncate(data_off + ram_size)
    return path


@pytest.fixture
def buggy_tables(buggy: Path) -> bytes:
    data = (buggy / "host-s2.elf").read_bytes()
    return data[BUGGY_SEGMENT_OFFSET : BUGGY_SEGMENT_OFFSET + BUGGY_SIZE]


@pytest.mark.parametrize(
    "argv",
    [
        ["scan", "{core}"],
        ["regs", "{core}"],
        ["decode", "{core}", "--summary"],
        ["decode", "{core}", *REGS, "--summary"],
        ["check", "{core}", *REGS],
    ],
    ids=["scan", "regs", "walk-no-regs", "walk", "check"],
)
def test_sparse_64g_core(argv, env, buggy_tables, tmp_path):
    core = sparse_core(tmp_path / "big.elf", buggy_tables, 64 << 30)
    r = run([a.format(core=core) for a in argv], env, cwd=tmp_path, timeout=90)
    check(r, "clean")


@SETTINGS
@given(
    ops=st.lists(
        st.lists(
            st.tuples(
                st.sampled_from(["truncate", "flip", "insert", "delete"]),
                st.integers(0, 1 << 16),
                st.binary(min_size=1, max_size=8),
            ),
            min_size=1,
            max_size=3,
        ),
        min_size=2,
        max_size=2,
    )
)
def test_generated_core_damage(ops, env, buggy, tmp_path):
    base = (buggy / "host-s2.elf").read_bytes()
    cases = []
    for i, mutation in enumerate(ops):
        core = tmp_path / f"c{i}.elf"
        core.write_bytes(mutate(base, mutation))
        cases += [["decode", core, *REGS, "--summary"], ["scan", core]]
    runs = run_many(cases, env, cwd=tmp_path)
    failures = [f"{'; '.join(bad)}\n{r.describe()}" for r in runs if (bad := verdict(r, "clean"))]
    assert not failures, "\n".join(failures)


COMPRESS = {
    ".zst": lambda b: zstandard.ZstdCompressor().compress(b),
    ".gz": gzip.compress,
    ".xz": lzma.compress,
}


@pytest.mark.parametrize("suffix", list(COMPRESS))
@pytest.mark.parametrize("keep", [0.5, 0.95])
def test_truncated_compressed_dump(suffix, keep, env, buggy, tmp_path):
    packed = COMPRESS[suffix]((buggy / "host-s2.elf").read_bytes())
    core = tmp_path / f"core.elf{suffix}"
    core.write_bytes(packed[: int(len(packed) * keep)])
    check(run(["decode", core, *REGS, "--summary"], env, cwd=tmp_path), "error", [str(core)])


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("dump_info.txt", "1 0x40000000 0xffffffffffffffffff DDR big.bin\n"),
        ("dump_info.txt", "1 0x40000000 0x1000 DDR ../../../../etc/passwd\n"),
        ("dump_info.txt", "1 0x١ 0x1000 DDR a.bin\n"),
        ("dump_info.txt", "1 -0x40 0x1000 DDR a.bin\n"),
        ("dump_info.txt", "1 0x40000000 0x1000 DDR a.bin\n" * 3),
        ("load.cmm", "d.load.binary a.bin 0x40000000++0xffffffffffffffff\n"),
        ("load.cmm", "d.load.binary a.bin 0x40000000 /SKIP 0x99999999999999999999\n"),
        ("load.cmm", "d.load.binary " + "a" * 5000 + ".bin 0x40000000\n"),
    ],
    ids=["huge-size", "escape", "unicode", "negative", "overlap", "cmm-huge", "cmm-skip", "long"],
)
def test_hostile_region_lists(name, content, env, tmp_path):
    (tmp_path / "a.bin").write_bytes(bytes(8192))
    lst = tmp_path / name
    lst.write_text(content)
    r = run(["decode", lst, *REGS, "--summary"], env, cwd=tmp_path)
    check(r, "error")
    assert "root:" not in r.err


@pytest.mark.parametrize("length", [1, 7, 4097])
def test_raw_image_odd_length(length, env, tmp_path):
    raw = tmp_path / "ram.bin"
    raw.write_bytes(bytes(length))
    r = run(["decode", f"{raw}@0x40000000", *REGS, "--summary"], env, cwd=tmp_path)
    check(r, "error", mentions=[str(raw)])


def test_empty_dump(env, tmp_path):
    empty = tmp_path / "empty.elf"
    empty.write_bytes(b"")
    for args in (["decode", empty, *REGS], ["regs", empty], ["scan", empty]):
        check(run(args, env, cwd=tmp_path), "error", mentions=[str(empty)])


def test_wrong_vttbr_on_capture_with_hyp_registers(env, real612, tmp_path):
    """The issue's example: a wrong --vttbr crashed hyp/host_state.apply_states."""
    for vttbr in ("0x1000", "0x7f700000", "0xfffffffff000", "0x0"):
        r = run(
            ["decode", real612, "--vttbr", vttbr, "--vtcr", "0x802d3590", "--summary"],
            env,
            cwd=tmp_path,
        )
        check(r, "clean")
