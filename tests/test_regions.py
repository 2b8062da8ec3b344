"""Region lists (TRACE32 load.cmm, dump_info.txt, FILE@PA) and opening them (s2trace.io)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import zstandard

from s2trace.errors import InputError
from s2trace.io import (
    RegionEntry,
    open_memory,
    parse_dump_info,
    parse_file_at_pa,
    parse_load_cmm,
)
from s2trace.io.regions import parse_number


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("S2TRACE_CACHE", str(tmp_path_factory.mktemp("cache")))


def words_at(pa: int, nbytes: int) -> bytes:
    return np.arange(pa, pa + nbytes, 8, dtype=np.uint64).astype("<u8").tobytes()


def q(value: int) -> bytes:
    return struct.pack("<Q", value)


# -- numbers and FILE@PA ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [("0x80000000", 0x8000_0000), ("0X1f", 31), ("4096", 4096), ("0x1_0000_0000", 1 << 32)],
)
def test_parse_number(text, value):
    assert parse_number(text) == value


@pytest.mark.parametrize("text", ["", "80000000h", "0x", "-1", "1e3", "0xg", "12k"])
def test_parse_number_rejects(text):
    with pytest.raises(ValueError):
        parse_number(text)


def test_parse_file_at_pa():
    assert parse_file_at_pa("dump.bin@0x40000000") == ("dump.bin", 0x4000_0000)
    assert parse_file_at_pa("a@b.bin@1024") == ("a@b.bin", 1024)
    with pytest.raises(InputError, match=r"x\.bin@0xq: bad physical address"):
        parse_file_at_pa("x.bin@0xq")


# -- load.cmm -----------------------------------------------------------------------------

CMM = """\
; TRACE32 script written by the dump tool
// another comment

sys.cpu CORTEXA53
d.load.binary DDRCS0_0.BIN 0x80000000 /noclear
D.LOAD.BINARY "DDR CS1.BIN" A:0x100000000 /NOCLEAR
data.load.binary sub\\OCIMEM.BIN 0x14680000--0x1469ffff /noclear
d.load.b ~~~~/skip.bin 0x1000++0xfff /skip 0x10 /nosymbol
d.load.binary &dumpdir\\x.bin 0x0
d.load.binary y.bin 1000
d.load.binary z.bin 0x2000 /wordswap
d.load.binary
Data.Load.Binary dec.bin 4096. /NoClear
r.s pc 0x0
"""


def test_parse_load_cmm(tmp_path):
    script = tmp_path / "load.cmm"
    script.write_text(CMM)
    entries, problems = parse_load_cmm(script)
    assert entries == [
        RegionEntry(tmp_path / "DDRCS0_0.BIN", 0x8000_0000, None, f"{script}:5", 5),
        RegionEntry(tmp_path / "DDR CS1.BIN", 0x1_0000_0000, None, f"{script}:6", 6),
        RegionEntry(tmp_path / "sub" / "OCIMEM.BIN", 0x1468_0000, 0x2_0000, f"{script}:7", 7),
        RegionEntry(tmp_path / "skip.bin", 0x1000, 0x1000, f"{script}:8", 8, 0x10),
        RegionEntry(tmp_path / "dec.bin", 4096, None, f"{script}:13", 13),
    ]
    assert [(p.kind, p.where) for p in problems] == [
        ("unknown_line", 4),  # sys.cpu
        ("unknown_line", 9),  # PRACTICE macro
        ("unknown_line", 10),  # 1000: radix not explicit
        ("unknown_line", 11),  # /wordswap changes bytes
        ("unknown_line", 12),  # no arguments
        ("unknown_line", 14),  # r.s
    ]
    assert all(p.source == str(script) for p in problems)
    assert "macro" in problems[1].detail and "radix" in problems[2].detail
    assert "/wordswap" in problems[3].detail and "sys.cpu" in problems[0].detail


def test_open_load_cmm(tmp_path):
    (tmp_path / "DDRCS0.BIN").write_bytes(words_at(0x8000_0000, 0x4000))
    (tmp_path / "DDRCS1.BIN").write_bytes(words_at(0x8000_4000, 0x2000))
    (tmp_path / "imem.bin").write_bytes(words_at(0x1468_0000, 0x3000))
    script = tmp_path / "load.cmm"
    script.write_text(
        "d.load.binary DDRCS1.BIN 0x80004000 /noclear\n"
        "d.load.binary DDRCS0.BIN 0x80000000 /noclear\n"
        "d.load.binary imem.bin 0x14680000++0xfff\n"  # declares 4 KiB of a 12 KiB file
        'print "done"\n'
    )
    with open_memory([script]) as mem:
        assert [(r.pa, r.size, r.path.name) for r in mem.regions] == [
            (0x1468_0000, 0x1000, "imem.bin"),
            (0x8000_0000, 0x4000, "DDRCS0.BIN"),
            (0x8000_4000, 0x2000, "DDRCS1.BIN"),
        ]
        assert mem.read(0x8000_3FF8, 16) == q(0x8000_3FF8) + q(0x8000_4000)
        assert not mem.holds(0x1468_1000)
        ((kind, where, source),) = [(p.kind, p.where, p.source) for p in mem.problems]
        assert (kind, where, source) == ("unknown_line", 4, str(script))
        assert "load.cmm:2" in mem.regions[1].name and "DDRCS0.BIN" in mem.regions[1].name


def test_load_cmm_skip_sets_file_offset(tmp_path):
    (tmp_path / "s.bin").write_bytes(b"\xee" * 16 + words_at(0x1000, 0x1000))
    script = tmp_path / "load.cmm"
    script.write_text("d.load.binary s.bin 0x1000 /SKIP 16.\n")
    with open_memory([script]) as mem:
        (r,) = mem.regions
        assert (r.pa, r.size, r.file_offset) == (0x1000, 0x1000, 16)
        assert mem.read(0x1000, 8) == q(0x1000)


# -- dump_info.txt ------------------------------------------------------------------------

DUMP_INFO = """\
# dump_info.txt
Id  Base                Size        Description              Filename
1   0x0000000080000000  0x0000000040000000  DDRCS0  DDRCS0.BIN
2   0x00000000c0000000  1073741824  DDR CS1 part0 Memory     DDRCS1.BIN
0x14680000 0x2c000 OCIMEM.BIN
OCIMEM2.BIN 0x146c0000 4096
CODERAM 0x0b000000 0x1000 "code ram.bin"
3 0x1000
garbage here
4 0x1000 0x1000 0x2000
; trailing comment
"""


def test_parse_dump_info(tmp_path):
    table = tmp_path / "dump_info.txt"
    table.write_text(DUMP_INFO)
    entries, problems = parse_dump_info(table)
    t = str(table)
    assert entries == [
        RegionEntry(tmp_path / "DDRCS0.BIN", 0x8000_0000, 0x4000_0000, f"{t}:3 DDRCS0", 3),
        RegionEntry(
            tmp_path / "DDRCS1.BIN", 0xC000_0000, 1 << 30, f"{t}:4 DDR CS1 part0 Memory", 4
        ),
        RegionEntry(tmp_path / "OCIMEM.BIN", 0x1468_0000, 0x2_C000, f"{t}:5", 5),
        RegionEntry(tmp_path / "OCIMEM2.BIN", 0x146C_0000, 4096, f"{t}:6", 6),
        RegionEntry(tmp_path / "code ram.bin", 0x0B00_0000, 0x1000, f"{t}:7 CODERAM", 7),
    ]
    assert [(p.kind, p.where, p.source) for p in problems] == [
        ("unknown_line", 2, t),  # header row
        ("unknown_line", 8, t),  # too few columns
        ("unknown_line", 9, t),
        ("unknown_line", 10, t),  # numeric file name
    ]
    assert "garbage here" in problems[2].detail


def test_open_dump_info(tmp_path):
    (tmp_path / "DDRCS0.BIN").write_bytes(words_at(0x8000_0000, 0x2000))
    (tmp_path / "IMEM.BIN").write_bytes(words_at(0x1468_0000, 0x1000))
    table = tmp_path / "dump_info.txt"
    table.write_text(
        "Id Base Size Description Filename\n"
        "1 0x80000000 0x2000 DDR CS0 DDRCS0.BIN\n"
        "2 0x14680000 4096 IMEM IMEM.BIN\n"
    )
    with open_memory([table]) as mem:
        assert [(r.pa, r.size) for r in mem.regions] == [
            (0x1468_0000, 0x1000),
            (0x8000_0000, 0x2000),
        ]
        words, ok = mem.gather(np.array([0x8000_1000, 0x1468_0000, 0x8000_2000], np.uint64), 4096)
        assert ok.tolist() == [True, True, False]
        assert int(words[0, 0]) == 0x8000_1000 and int(words[1, -1]) == 0x1468_0FF8
        assert [(p.kind, p.where) for p in mem.problems] == [("unknown_line", 1)]


def test_dump_info_truncated_region(tmp_path):
    (tmp_path / "DDRCS0.BIN").write_bytes(bytes(0x1000))
    table = tmp_path / "dump_info.txt"
    table.write_text("1 0x80000000 0x2000 DDR DDRCS0.BIN\n")
    with pytest.raises(InputError, match=r"dump_info\.txt:1.*truncated region.*DDRCS0\.BIN"):
        open_memory([table])


def test_list_naming_a_missing_file(tmp_path):
    table = tmp_path / "dump_info.txt"
    table.write_text("1 0x80000000 0x2000 DDR DDRCS9.BIN\n")
    with pytest.raises(InputError, match=r"DDRCS9\.BIN: no such file.*dump_info\.txt:1"):
        open_memory([table])


def test_list_without_entries_or_with_at_pa(tmp_path):
    table = tmp_path / "dump_info.txt"
    table.write_text("# nothing\nhello world\n")
    with pytest.raises(InputError, match="names no memory file"):
        open_memory([table])
    with pytest.raises(InputError, match="@PA"):
        open_memory([f"{table}@0x1000"])


def test_declared_size_zero_is_recorded_and_skipped(tmp_path):
    (tmp_path / "a.bin").write_bytes(bytes(0x1000))
    (tmp_path / "b.bin").write_bytes(bytes(0x1000))
    table = tmp_path / "dump_info.txt"
    table.write_text("1 0x1000 0 EMPTY a.bin\n2 0x4000 0x1000 B b.bin\n")
    with open_memory([table]) as mem:
        assert [r.pa for r in mem.regions] == [0x4000]
        assert [(p.kind, p.where) for p in mem.problems] == [("empty_region", 1)]


def test_list_regions_overlapping_name_both(tmp_path):
    (tmp_path / "a.bin").write_bytes(bytes(0x2000))
    (tmp_path / "b.bin").write_bytes(bytes(0x2000))
    table = tmp_path / "dump_info.txt"
    table.write_text("1 0x1000 0x2000 A a.bin\n2 0x2000 0x2000 B b.bin\n")
    with pytest.raises(InputError, match=r"a\.bin.*b\.bin.*both cover 0x2000\.\.0x3000"):
        open_memory([table])


# -- compressed files in lists ------------------------------------------------------------


def test_compressed_file_named_in_list_and_sibling(tmp_path):
    (tmp_path / "A.BIN.zst").write_bytes(
        zstandard.ZstdCompressor().compress(words_at(0x8000_0000, 0x2000))
    )
    (tmp_path / "B.BIN.gz").write_bytes(gzip.compress(words_at(0x9000_0000, 0x1000)))
    table = tmp_path / "dump_info.txt"
    # A is named with its suffix; B is named plainly and found as B.BIN.gz.
    table.write_text("1 0x80000000 0x2000 A A.BIN.zst\n2 0x90000000 0x1000 B B.BIN\n")
    with open_memory([table]) as mem:
        assert mem.read(0x8000_1FF8, 8) == q(0x8000_1FF8)
        assert mem.read(0x9000_0000, 8) == q(0x9000_0000)
        assert "B.BIN.gz" in mem.regions[1].name


def test_compressed_list_resolves_names_next_to_it(tmp_path):
    (tmp_path / "A.BIN").write_bytes(words_at(0x8000_0000, 0x1000))
    packed = tmp_path / "load.cmm.gz"
    packed.write_bytes(gzip.compress(b"d.load.binary A.BIN 0x80000000 /noclear\nfoo\n"))
    with open_memory([packed]) as mem:
        assert mem.read(0x8000_0000, 8) == q(0x8000_0000)
        ((kind, where, source),) = [(p.kind, p.where, p.source) for p in mem.problems]
        assert (kind, where, source) == ("unknown_line", 2, str(packed))


def test_list_combined_with_raw_and_elf(tmp_path):
    from s2trace.io import write_elf_core

    core = write_elf_core(tmp_path / "c.elf", [(0x4000_0000, words_at(0x4000_0000, 0x1000))])
    (tmp_path / "A.BIN").write_bytes(words_at(0x8000_0000, 0x1000))
    script = tmp_path / "load.cmm"
    script.write_text("d.load.binary A.BIN 0x80000000\n")
    r = tmp_path / "r.bin"
    r.write_bytes(words_at(0x1000, 0x1000))
    with open_memory([script, core, f"{r}@0x1000"]) as mem:
        assert [x.pa for x in mem.regions] == [0x1000, 0x4000_0000, 0x8000_0000]
        assert isinstance(mem.regions[0].path, Path)
