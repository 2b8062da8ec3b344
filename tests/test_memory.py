"""PhysicalMemory, ELF cores, raw images and compressed inputs (s2trace.io).

Memory contents are "self-describing": the 64-bit word at physical address ``x`` holds ``x``
(plus a per-file tag in the top byte), so every read can be checked by arithmetic.
"""

from __future__ import annotations

import gzip
import lzma
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import zstandard
from elftools.elf.elffile import ELFFile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import s2trace.io.compressed as compressed
from s2trace.errors import InputError
from s2trace.intervals import distinct
from s2trace.io import (
    MemoryFault,
    PhysicalMemory,
    Region,
    elf_core_regions,
    elf_note,
    open_memory,
    write_elf_core,
)

PAGE = 4096
REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / ".." / "shared" / "samples"
_ORIGINAL_CACHE = os.environ.get("S2TRACE_CACHE")  # read before the autouse fixture below


def words_at(pa: int, nbytes: int, tag: int = 0) -> bytes:
    """Bytes whose word at physical address x is x | tag << 56."""
    assert pa % 8 == 0 and nbytes % 8 == 0
    w = np.arange(pa, pa + nbytes, 8, dtype=np.uint64) | np.uint64(tag << 56)
    return w.astype("<u8").tobytes()


def raw(path: Path, pa: int, nbytes: int, tag: int = 0) -> Path:
    path.write_bytes(words_at(pa, nbytes, tag))
    return path


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Every test decompresses into its own cache (slow tests override this)."""
    monkeypatch.setenv("S2TRACE_CACHE", str(tmp_path_factory.mktemp("cache")))


# -- ELF writer ---------------------------------------------------------------------------


def test_write_elf_core_reads_back_with_pyelftools(tmp_path):
    note = elf_note(b"CORE", 1, b"\x01\x02\x03")
    segs = [(0x4000_0000, words_at(0x4000_0000, 2 * PAGE)), (0x9000_0000, b"\xaa" * 24, 4096)]
    core = write_elf_core(tmp_path / "c.elf", segs, notes=note)
    with open(core, "rb") as f:
        elf = ELFFile(f)
        assert elf["e_type"] == "ET_CORE"
        assert elf["e_machine"] == "EM_AARCH64"
        assert elf.elfclass == 64 and elf.little_endian
        hdrs = [s.header for s in elf.iter_segments()]
        notes = list(elf.get_segment(0).iter_notes())
    assert [h["p_type"] for h in hdrs] == ["PT_NOTE", "PT_LOAD", "PT_LOAD"]
    assert notes[0]["n_name"] == "CORE" and notes[0]["n_type"] == "NT_PRSTATUS"
    load = hdrs[1:]
    assert [h["p_paddr"] for h in load] == [0x4000_0000, 0x9000_0000]
    assert [h["p_filesz"] for h in load] == [2 * PAGE, 24]
    assert [h["p_memsz"] for h in load] == [2 * PAGE, 4096]
    assert all(h["p_offset"] % PAGE == 0 for h in load)
    data = core.read_bytes()
    off = load[0]["p_offset"]
    assert data[off : off + 2 * PAGE] == words_at(0x4000_0000, 2 * PAGE)


@pytest.mark.skipif(shutil.which("readelf") is None, reason="readelf not installed")
def test_write_elf_core_reads_back_with_readelf(tmp_path):
    core = write_elf_core(
        tmp_path / "c.elf", [(0x8000_0000, bytes(PAGE)), (0x1_0000_0000, b"x" * 8)]
    )
    out = subprocess.run(
        ["readelf", "-h", "-l", "-W", str(core)], capture_output=True, text=True, check=True
    )
    assert "CORE (Core file)" in out.stdout
    assert "AArch64" in out.stdout
    loads = [line.split() for line in out.stdout.splitlines() if line.strip().startswith("LOAD")]
    # Type Offset VirtAddr PhysAddr FileSiz MemSiz Flg Align
    assert [int(r[3], 16) for r in loads] == [0x8000_0000, 0x1_0000_0000]
    assert [int(r[4], 16) for r in loads] == [PAGE, 8]
    assert out.stderr == ""


# -- ELF cores ----------------------------------------------------------------------------


def test_elf_several_segments_with_gaps(tmp_path):
    segs = [
        (0x4000_0000, words_at(0x4000_0000, 4 * PAGE)),
        (0x4001_0000, words_at(0x4001_0000, 2 * PAGE)),
        (0x8000_0000, words_at(0x8000_0000, PAGE)),
    ]
    core = write_elf_core(tmp_path / "c.elf", segs)
    with open_memory([core]) as mem:
        assert [(r.pa, r.size) for r in mem.regions] == [
            (0x4000_0000, 4 * PAGE),
            (0x4001_0000, 2 * PAGE),
            (0x8000_0000, PAGE),
        ]
        assert all(r.path == core for r in mem.regions)
        assert mem.regions[0].name.endswith("c.elf segment 0")  # program header index
        assert mem.read(0x4000_0008, 8) == struct.pack("<Q", 0x4000_0008)
        assert int(mem.u64(0x4001_1FF8, 1)[0]) == 0x4001_1FF8
        assert int(mem.u64(0x8000_0FF8, 1)[0]) == 0x8000_0FF8
        assert mem.holds(0x4000_0000, 4 * PAGE)
        assert not mem.holds(0x4000_0000, 4 * PAGE + 1)
        assert 0x4000_4000 not in mem and 0x4000_3FFF in mem
        with pytest.raises(MemoryFault) as fault:
            mem.read(0x4000_3FF8, 16)
        assert fault.value.pa == 0x4000_3FF8 and fault.value.nbytes == 16
        assert fault.value.missing == 0x4000_4000
        assert mem.problems == ()


def test_elf_filesz_below_memsz_only_file_part_readable(tmp_path):
    core = write_elf_core(
        tmp_path / "c.elf", [(0x4000_0000, words_at(0x4000_0000, PAGE), 4 * PAGE)]
    )
    with open_memory([core]) as mem:
        assert [(r.pa, r.size) for r in mem.regions] == [(0x4000_0000, PAGE)]
        assert mem.holds(0x4000_0000, PAGE) and not mem.holds(0x4000_1000, 8)
        with pytest.raises(MemoryFault):
            mem.read(0x4000_1000, 8)
        (p,) = mem.problems
        assert p.kind == "segment_short" and p.where == 0x4000_1000
        assert "0x4000" in p.detail


def test_elf_overlapping_segments_in_one_core_are_trimmed(tmp_path):
    # kdump's kernel-image PT_LOAD lies inside a RAM segment: same bytes, recorded, not fatal.
    ram = words_at(0x4000_0000, 8 * PAGE)
    kernel = ram[2 * PAGE : 4 * PAGE]
    tail = words_at(0x4000_6000, 4 * PAGE)  # starts inside ram, runs past its end
    core = write_elf_core(
        tmp_path / "c.elf",
        [(0x4000_2000, kernel), (0x4000_0000, ram), (0x4000_6000, tail)],
    )
    with open_memory([core]) as mem:
        assert [(r.pa, r.size) for r in mem.regions] == [
            (0x4000_0000, 8 * PAGE),
            (0x4000_8000, 2 * PAGE),
        ]
        assert mem.read(0x4000_0000, 10 * PAGE) == words_at(0x4000_0000, 10 * PAGE)
        assert [p.kind for p in mem.problems] == ["overlapping_segment"] * 2


def test_truncated_elf_names_file_and_segment(tmp_path):
    core = write_elf_core(
        tmp_path / "c.elf", [(0x4000_0000, bytes(PAGE)), (0x5000_0000, bytes(2 * PAGE))]
    )
    with open(core, "r+b") as f:
        f.truncate(core.stat().st_size - 100)
    with pytest.raises(InputError, match=r"c\.elf.*truncated ELF.*segment 1.*0x50000000"):
        open_memory([core])


def test_elf_header_cut_short_is_input_error(tmp_path):
    core = write_elf_core(tmp_path / "c.elf", [(0, bytes(PAGE))])
    core.write_bytes(core.read_bytes()[:70])
    with pytest.raises(InputError, match=r"c\.elf"):
        open_memory([core])


def test_elf_that_is_not_a_core_is_refused(tmp_path):
    core = write_elf_core(tmp_path / "vmlinux", [(0, bytes(PAGE))])
    data = bytearray(core.read_bytes())
    data[16:18] = struct.pack("<H", 2)  # ET_EXEC
    core.write_bytes(bytes(data))
    with pytest.raises(InputError, match="ET_CORE"):
        open_memory([core])


def test_elf_program_headers_match_pyelftools(tmp_path):
    """The program-header table is unpacked in one read: same segments as pyelftools gives,
    for a core of many segments (with gaps, short file parts and a non-PT_LOAD note)."""
    rng = np.random.default_rng(3)
    segs = []
    pa = 0x4000_0000
    for k in range(300):
        pa += int(rng.integers(0, 3)) * PAGE
        size = int(rng.integers(1, 3)) * PAGE
        segs.append((pa, bytes(size), size + PAGE) if k % 7 == 0 else (pa, bytes(size)))
        pa += size + PAGE
    core = write_elf_core(tmp_path / "c.elf", segs, notes=elf_note(b"CORE", 1, b"x" * 12))
    with open(core, "rb") as f:
        want = [
            (h["p_paddr"], h["p_filesz"], h["p_offset"])
            for h in (seg.header for seg in ELFFile(f).iter_segments())
            if h["p_type"] == "PT_LOAD"
        ]
    regions, problems = elf_core_regions(core, "c.elf")
    assert [(r.pa, r.size, r.file_offset) for r in regions] == sorted(want)
    assert [p.kind for p in problems] == ["segment_short"] * len(range(0, 300, 7))


def test_elf_program_headers_past_the_end_is_input_error(tmp_path):
    core = write_elf_core(tmp_path / "c.elf", [(0, bytes(PAGE))])
    data = bytearray(core.read_bytes())
    data[56:58] = struct.pack("<H", 5000)  # e_phnum: a table far longer than the file
    core.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"c\.elf: unreadable ELF headers"):
        open_memory([core])


def test_elf_with_at_pa_is_refused(tmp_path):
    core = write_elf_core(tmp_path / "c.elf", [(0, bytes(PAGE))])
    with pytest.raises(InputError, match="@PA"):
        open_memory([f"{core}@0x1000"])


# -- raw images ---------------------------------------------------------------------------


def test_raw_at_base(tmp_path):
    f = raw(tmp_path / "ram.bin", 0x8000_0000, 4 * PAGE)
    with open_memory([f], base=0x8000_0000) as mem:
        (r,) = mem.regions
        assert (r.pa, r.size, r.file_offset, r.path) == (0x8000_0000, 4 * PAGE, 0, f)
        assert int(mem.u64(0x8000_3FF8, 1)[0]) == 0x8000_3FF8
    with open_memory([f]) as mem:
        assert mem.regions[0].pa == 0


def test_raw_file_at_pa_several_sorted(tmp_path):
    a = raw(tmp_path / "a.bin", 0x9000_0000, PAGE, tag=1)
    b = raw(tmp_path / "b.bin", 0x4000_0000, 2 * PAGE, tag=2)
    c = raw(tmp_path / "c.bin", 4096, PAGE, tag=3)
    with open_memory([f"{a}@0x90000000", f"{b}@{0x4000_0000}", f"{c}@4096"]) as mem:
        assert [(r.pa, r.path) for r in mem.regions] == [
            (4096, c),
            (0x4000_0000, b),
            (0x9000_0000, a),
        ]
        assert int(mem.u64(0x9000_0000, 1)[0]) == 0x9000_0000 | 1 << 56
        assert int(mem.u64(0x4000_1000, 1)[0]) == 0x4000_1000 | 2 << 56


def test_raw_combined_with_elf(tmp_path):
    core = write_elf_core(tmp_path / "c.elf", [(0x4000_0000, words_at(0x4000_0000, PAGE))])
    extra = raw(tmp_path / "imem.bin", 0x1468_0000, PAGE)
    with open_memory([core, f"{extra}@0x14680000"]) as mem:
        assert [r.pa for r in mem.regions] == [0x1468_0000, 0x4000_0000]


def test_overlap_names_both_files(tmp_path):
    a = raw(tmp_path / "first.bin", 0, 4 * PAGE)
    b = raw(tmp_path / "second.bin", 0, 4 * PAGE)
    with pytest.raises(InputError, match=r"first\.bin.*second\.bin.*both cover 0x3000\.\.0x4000"):
        open_memory([f"{b}@0x3000", f"{a}@0"])


def test_overlap_between_elf_and_raw(tmp_path):
    core = write_elf_core(tmp_path / "c.elf", [(0x4000_0000, bytes(PAGE))])
    extra = raw(tmp_path / "x.bin", 0, PAGE)
    with pytest.raises(InputError, match=r"c\.elf.*x\.bin"):
        open_memory([core, f"{extra}@0x40000800"])


def test_two_raw_images_at_the_same_base_overlap(tmp_path):
    a, b = raw(tmp_path / "a.bin", 0, PAGE), raw(tmp_path / "b.bin", 0, PAGE)
    with pytest.raises(InputError, match="overlapping"):
        open_memory([a, b])


@pytest.mark.parametrize(
    ("content", "pattern"),
    [(b"\0" * 12, r"12 bytes.*multiple of 8"), (b"", "empty file")],
)
def test_raw_bad_length(tmp_path, content, pattern):
    f = tmp_path / "odd.bin"
    f.write_bytes(content)
    with pytest.raises(InputError, match=pattern) as e:
        open_memory([f])
    assert "odd.bin" in str(e.value) and "\n" not in str(e.value)


def test_missing_and_directory(tmp_path):
    with pytest.raises(InputError, match=r"nope\.bin: no such file"):
        open_memory([tmp_path / "nope.bin"])
    with pytest.raises(InputError, match="is a directory"):
        open_memory([tmp_path])
    with pytest.raises(InputError, match="no memory dump"):
        open_memory([])


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path):
    f = raw(tmp_path / "secret.bin", 0, PAGE)
    f.chmod(0)
    with pytest.raises(InputError, match=r"secret\.bin: cannot read"):
        open_memory([f])


@pytest.mark.parametrize("suffix", ["@", "@0xZZ", "@12k", "@-4", "@0x1000@"])
def test_bad_at_pa(tmp_path, suffix):
    f = raw(tmp_path / "x.bin", 0, PAGE)
    with pytest.raises(InputError, match="PA") as e:
        open_memory([f"{f}{suffix}"])
    assert "x.bin" in str(e.value)
    with pytest.raises(InputError, match="file name before '@'"):
        open_memory(["@0x1000"])


def test_file_name_with_at_sign(tmp_path):
    f = raw(tmp_path / "dump@night.bin", 0, PAGE)
    with open_memory([str(f)]) as mem:
        assert mem.regions[0].pa == 0
    with open_memory([f"{f}@0x2000"]) as mem:
        assert mem.regions[0].pa == 0x2000


def test_region_past_file_end_is_truncated(tmp_path):
    f = raw(tmp_path / "short.bin", 0, PAGE)
    with pytest.raises(InputError, match=r"truncated region.*short\.bin"):
        PhysicalMemory([Region(0, 2 * PAGE, f, 0, "short")])


# -- reads, u64, gather -------------------------------------------------------------------


@pytest.fixture
def layout(tmp_path):
    """Regions: [0x10000, +4 pages) gap [0x20000, +2 pages)[0x22000, +2 pages) (abutting)."""
    a = raw(tmp_path / "a.bin", 0x1_0000, 4 * PAGE)
    b = raw(tmp_path / "b.bin", 0x2_0000, 2 * PAGE)
    c = raw(tmp_path / "c.bin", 0x2_2000, 2 * PAGE)
    mem = open_memory([f"{a}@0x10000", f"{b}@0x20000", f"{c}@0x22000"])
    yield mem
    mem.close()


def test_read_spans_abutting_regions(layout):
    assert layout.read(0x2_1FF8, 16) == words_at(0x2_1FF8, 16)
    assert layout.holds(0x2_0000, 4 * PAGE)
    assert layout.read(0x2_0000, 0) == b""
    with pytest.raises(MemoryFault):
        layout.read(0x1_4000, 8)
    with pytest.raises(MemoryFault):
        layout.read(0, 8)
    with pytest.raises(MemoryFault):
        layout.read(0x2_3FF8, 16)


def test_u64_zero_copy_and_copy(layout):
    v = layout.u64(0x1_0000, 512)
    assert v.dtype == np.dtype("<u8") and not v.flags.writeable and not v.flags.owndata
    assert int(v[511]) == 0x1_0FF8
    across = layout.u64(0x2_1FF0, 4)  # crosses b.bin -> c.bin: a copy
    assert across.tolist() == [0x2_1FF0, 0x2_1FF8, 0x2_2000, 0x2_2008]
    assert layout.u64(0x1_0000, 0).shape == (0,)
    with pytest.raises(MemoryFault):
        layout.u64(0x1_3FF8, 2)
    # gather() drops the process's page mappings afterwards; views refault and stay right.
    layout.gather(np.array([0x1_0000, 0x2_0000], np.uint64), PAGE)
    assert int(v[511]) == 0x1_0FF8 and int(v[0]) == 0x1_0000


def test_gather_across_regions_and_edges(layout):
    pas = np.array(
        [
            0x2_2000,  # c.bin start
            0x1_0000,  # a.bin start
            0x1_3000,  # last page of a.bin
            0x1_4000,  # gap right after a.bin
            0x2_1000,  # last page of b.bin, b abuts c -> whole page present
            0x0,  # below everything
            0x2_3000,  # last page of c.bin
            0x2_4000,  # after everything
            0x1_0000,  # duplicate
        ],
        dtype=np.uint64,
    )
    words, ok = layout.gather(pas, PAGE)
    assert words.shape == (9, 512) and words.dtype == np.dtype("<u8")
    assert ok.tolist() == [True, True, True, False, True, False, True, False, True]
    for k, pa in enumerate(pas.tolist()):
        if ok[k]:
            assert words[k].tobytes() == words_at(pa, PAGE)
        else:
            assert not words[k].any()


def test_gather_straddling_region_end_is_not_ok(layout):
    # 16 KiB windows: 0x11000 ends exactly at a.bin's end; 0x12000 runs into the gap.
    pas = np.array([0x1_0000, 0x1_1000, 0x1_2000, 0x2_0000, 0x2_1000, 0x2_3000], dtype=np.uint64)
    words, ok = layout.gather(pas, 4 * PAGE)
    assert ok.tolist() == [True, False, False, True, False, False]
    # 16 KiB at 0x11000 would need 0x15000: outside a.bin (which ends at 0x14000).
    words, ok = layout.gather(np.array([0x1_0000, 0x2_0000, 0x2_1000], np.uint64), 2 * PAGE)
    assert ok.tolist() == [True, True, True]
    assert words[2].tobytes() == words_at(0x2_1000, 2 * PAGE)  # straddles b.bin | c.bin


def test_gather_unaligned_region_start(tmp_path):
    # A raw image placed at a PA that is not a multiple of 8 forces the byte path.
    data = bytes(range(256)) * 64  # 16 KiB
    f = tmp_path / "u.bin"
    f.write_bytes(data)
    with open_memory([f"{f}@0x1004"]) as mem:
        words, ok = mem.gather(np.array([0x1000, 0x2000, 0x4000, 0x5000], np.uint64), PAGE)
        assert ok.tolist() == [False, True, True, False]
        assert words[1].tobytes() == data[0x2000 - 0x1004 : 0x3000 - 0x1004]
        assert words[2].tobytes() == mem.read(0x4000, PAGE)
        assert mem.u64(0x2000, 2).tobytes() == data[0xFFC : 0xFFC + 16]


def test_gather_argument_checks(layout):
    with pytest.raises(ValueError, match="multiple of 8"):
        layout.gather(np.array([0x1_0000], np.uint64), 12)
    with pytest.raises(ValueError, match="1-D"):
        layout.gather(np.zeros((2, 2), np.uint64), 8)
    with pytest.raises(TypeError):
        layout.gather(np.array([1.5]), 8)
    with pytest.raises(ValueError, match="negative"):
        layout.gather(np.array([-8], np.int64), 8)
    words, ok = layout.gather(np.array([], np.uint64), PAGE)
    assert words.shape == (0, 512) and ok.shape == (0,)
    # Addresses near 2**64 must not wrap around into a region.
    words, ok = layout.gather(np.array([2**64 - 8], np.uint64), PAGE)
    assert not ok.any()


def test_gather_many_pages_matches_arithmetic(tmp_path):
    big = raw(tmp_path / "big.bin", 0x4000_0000, 512 * PAGE)
    rng = np.random.default_rng(7)
    pas = 0x4000_0000 + rng.integers(0, 520, 8_000).astype(np.uint64) * PAGE
    with open_memory([f"{big}@0x40000000"]) as mem:
        words, ok = mem.gather(pas, PAGE)
    inside = pas < 0x4000_0000 + 512 * PAGE
    assert np.array_equal(ok, inside)
    expect = pas[:, None] + np.arange(0, PAGE, 8, dtype=np.uint64)[None, :]
    assert np.array_equal(words[inside], expect[inside])
    assert not words[~inside].any()


def test_close_and_context_manager(tmp_path):
    f = raw(tmp_path / "a.bin", 0, PAGE)
    mem = open_memory([f])
    kept = mem.u64(0, 4)  # a live view keeps its map alive; close must not fail
    mem.close()
    assert kept.tolist() == [0, 8, 16, 24]
    with pytest.raises(ValueError, match="closed"):
        mem.read(0, 8)
    with open_memory([f]) as m2:
        assert m2.read(8, 8) == struct.pack("<Q", 8)
    with pytest.raises(ValueError, match="closed"):
        m2.gather(np.array([0], np.uint64), 8)


_regions = st.lists(
    st.tuples(
        st.integers(0, 6),  # gap before, in 1 KiB units (0 = abutting)
        st.integers(1, 12),  # size in 1 KiB units
        st.sampled_from([0, 0, 0, 4]),  # misalignment of the start
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    layout_spec=_regions,
    seed=st.integers(0, 2**32 - 1),
    nbytes=st.sampled_from([8, 64, 1024, 4096]),
)
def test_gather_equals_read_property(layout_spec, seed, nbytes):
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as d:
        specs, cursor = [], 0x1000
        for k, (gap, size, skew) in enumerate(layout_spec):
            start = cursor + gap * 1024 + (skew if gap else 0)
            length = size * 1024
            path = Path(d) / f"r{k}.bin"
            path.write_bytes(rng.integers(0, 256, length, dtype=np.uint8).tobytes())
            specs.append(f"{path}@{start:#x}")
            cursor = start + length
        pas = rng.integers(0, (cursor + 8192) // 8, 200).astype(np.uint64) * np.uint64(8)
        with open_memory(specs) as mem:
            words, ok = mem.gather(pas, nbytes)
            for k, pa in enumerate(pas.tolist()):
                assert ok[k] == mem.holds(pa, nbytes)
                if ok[k]:
                    assert words[k].tobytes() == mem.read(pa, nbytes)
                else:
                    assert not words[k].any()
                    with pytest.raises(MemoryFault):
                        mem.read(pa, nbytes)


# -- compressed inputs --------------------------------------------------------------------


def _compress(path: Path, fmt: str) -> Path:
    data = path.read_bytes()
    if fmt == "zst":
        blob = zstandard.ZstdCompressor(write_checksum=True).compress(data)
    elif fmt == "gz":
        blob = gzip.compress(data)
    else:
        blob = lzma.compress(data)
    out = path.with_name(path.name + "." + fmt)
    out.write_bytes(blob)
    return out


@pytest.mark.parametrize("fmt", ["zst", "gz", "xz"])
def test_compressed_elf_decompressed_once(tmp_path, fmt, monkeypatch):
    core = write_elf_core(tmp_path / "c.elf", [(0x4000_0000, words_at(0x4000_0000, 4 * PAGE))])
    packed = _compress(core, fmt)
    core.unlink()
    calls = []
    real = compressed._decompress_stream
    monkeypatch.setattr(compressed, "_decompress_stream", lambda *a: (calls.append(a), real(*a))[1])
    with open_memory([packed]) as mem:
        (r,) = mem.regions
        assert r.path.parent == compressed.cache_dir()
        assert "c.elf" in r.name and fmt in r.name
        assert mem.read(0x4000_3FF8, 8) == struct.pack("<Q", 0x4000_3FF8)
    first = r.path.stat()
    with open_memory([packed]) as mem:
        assert mem.regions[0].path == r.path
    again = r.path.stat()
    assert len(calls) == 1
    assert (first.st_ino, first.st_mtime_ns) == (again.st_ino, again.st_mtime_ns)
    assert not list(r.path.parent.glob(".*.part"))  # no temporary left behind


def test_compressed_raw_keeps_its_inner_name_rules(tmp_path):
    odd = tmp_path / "ram.bin"
    odd.write_bytes(b"\1" * 12)
    with pytest.raises(InputError, match="multiple of 8"):
        open_memory([_compress(odd, "gz")])
    good = raw(tmp_path / "ok.bin", 0x8000_0000, PAGE)
    with open_memory([f"{_compress(good, 'xz')}@0x80000000"]) as mem:
        assert mem.read(0x8000_0000, 8) == struct.pack("<Q", 0x8000_0000)


def test_multi_frame_and_skippable_zstd(tmp_path):
    data = words_at(0, 8 * PAGE)
    cctx = zstandard.ZstdCompressor()
    skippable = struct.pack("<II", 0x184D2A5A, 5) + b"hello"
    blob = cctx.compress(data[: 3 * PAGE]) + skippable + cctx.compress(data[3 * PAGE :])
    f = tmp_path / "m.bin.zst"
    f.write_bytes(blob)
    with open_memory([f]) as mem:
        assert mem.read(0, 8 * PAGE) == data


@pytest.mark.parametrize("cut", [1, 3, 200])
def test_truncated_zstd_is_input_error(tmp_path, cut):
    f = tmp_path / "t.bin.zst"
    f.write_bytes(_compress(raw(tmp_path / "t.bin", 0, 16 * PAGE), "zst").read_bytes()[:-cut])
    with pytest.raises(InputError, match=r"t\.bin\.zst: truncated zstd"):
        open_memory([f])
    assert not any(compressed.cache_dir().iterdir())


@pytest.mark.parametrize("fmt", ["gz", "xz"])
def test_truncated_gz_xz_is_input_error(tmp_path, fmt):
    packed = _compress(raw(tmp_path / "t.bin", 0, 16 * PAGE), fmt)
    packed.write_bytes(packed.read_bytes()[:-20])
    with pytest.raises(InputError, match=rf"t\.bin\.{fmt}: corrupt or truncated"):
        open_memory([packed])


def test_wrong_magic_is_input_error(tmp_path):
    f = tmp_path / "x.bin.zst"
    f.write_bytes(words_at(0, 64))
    with pytest.raises(InputError, match=r"x\.bin\.zst: not a zstd stream"):
        open_memory([f])


# -- the real 6.12 capture ----------------------------------------------------------------


def _rss_kib() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0])
    return out


@pytest.mark.slow
def test_real_612_core(monkeypatch):
    sample = SAMPLES / "qemu-pkvm-6.12" / "host-s2.elf.zst"
    if not sample.is_file():
        pytest.skip(f"{sample} is absent")
    # The user's cache (not the per-test one): decompress once for all runs.
    if _ORIGINAL_CACHE:
        monkeypatch.setenv("S2TRACE_CACHE", _ORIGINAL_CACHE)
    else:
        monkeypatch.delenv("S2TRACE_CACHE")
    plain = compressed.decompressed(sample)  # outside the RSS measurement
    # README: sha256 of the decompressed core.
    assert compressed.sha256_of(plain) == (
        "538eb93379c8a347e53e0a9219b46758a7f57edfdd513980f45978dc2eb61f3e"
    )
    before = _rss_kib()
    with open_memory([sample]) as mem:
        (r,) = mem.regions
        assert (r.pa, r.size) == (0x4000_0000, 1 << 30)
        assert mem.problems == ()
        # VTTBR_EL2 = 0x7f709001 (README): BADDR 0x7f709000 is the level-0 PGD.
        (desc,) = mem.u64(0x7F70_9000, 1).tolist()
        assert desc != 0 and desc & 3 == 3  # a table descriptor
        rng = np.random.default_rng(0)
        pas = np.uint64(0x4000_0000) + rng.integers(0, 1 << 18, 1000).astype(np.uint64) * PAGE
        words, ok = mem.gather(pas, PAGE)
        assert ok.all()
        for k in (0, 499, 999):
            assert words[k].tobytes() == mem.read(int(pas[k]), PAGE)
        after = _rss_kib()
    grown = {k: (after[k] - before[k]) // 1024 for k in before}
    print(f"RSS growth (MiB) opening + gathering 1000 pages of the 1 GiB core: {grown}")
    assert grown["RssAnon"] < 64  # copies only: 4 MiB of rows plus bookkeeping
    assert grown["VmRSS"] < 64  # gather() unmapped the page-cache folios it touched


def test_unwritable_cache_is_input_error(tmp_path, monkeypatch):
    packed = _compress(raw(tmp_path / "r.bin", 0, PAGE), "gz")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    monkeypatch.setenv("S2TRACE_CACHE", str(blocker / "cache"))
    with pytest.raises(InputError, match="cannot create cache directory"):
        open_memory([packed])


def test_unreadable_file_simulated(tmp_path, monkeypatch):
    import s2trace.io.opener as opener

    f = raw(tmp_path / "locked.bin", 0, PAGE)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(opener, "open", refuse, raising=False)
    with pytest.raises(InputError, match=r"locked\.bin: cannot read \(Permission denied\)"):
        open_memory([f])


# -- holes of sparse dump files (issue 16: scans cost what the data costs) ---------------------
def _sparse(tmp_path: Path, size: int, data: dict[int, bytes]) -> Path:
    path = tmp_path / "sparse.bin"
    with open(path, "wb") as f:
        f.truncate(size)
        for off, blob in data.items():
            f.seek(off)
            f.write(blob)
    return path


def _holes_known(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_DATA) > 0
    except OSError:
        return False
    finally:
        os.close(fd)


def test_data_from_skips_holes_and_scans_skip_hole_chunks(tmp_path):
    from s2trace.arch.geometry import Geometry, Granule
    from s2trace.hyp import init_params
    from s2trace.walk import scan as scan_mod

    mib = 1 << 20
    base = 0x40000000
    page = np.zeros(512, dtype="<u8")
    page[3] = np.uint64(base + 0x1000 | 3)  # a table descriptor pointing inside the dump
    at = 200 * mib
    path = _sparse(tmp_path, 256 * mib, {at: page.tobytes()})
    if not _holes_known(path):
        pytest.skip("this file system gives no hole information (SEEK_DATA)")
    with open_memory([f"{path}@{base:#x}"]) as memory:
        assert memory.data_from(base) == base + at
        assert memory.data_from(base + at + 0x10) == base + at + 0x10
        assert memory.data_from(base + at + 2 * mib) == base + 256 * mib  # only a hole left
        assert memory.data_from(0x1000) == 0x1000  # in no region: as given
        chunks = list(init_params._word_chunks(memory, 8))
        assert len(chunks) == 1  # 32 MiB steps: only the one holding the data is read
        pa0, words, new = chunks[0]
        assert pa0 <= base + at < pa0 + 8 * len(words) and new == 8
        roots = scan_mod._root_candidates(memory, Geometry(Granule.K4))
        assert roots.tolist() == [base + at]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), max_size=60), st.sampled_from(["u8", "i8", "u2", "?"]))
def test_distinct_equals_np_unique(values, dtype):
    """``distinct`` (sort-based, used instead of numpy 2.4's slow hash ``np.unique`` on
    integer arrays) gives exactly ``np.unique``: values, order and dtype."""
    a = np.array(values, dtype=np.uint64).astype(dtype)
    got, want = distinct(a), np.unique(a)
    assert got.dtype == want.dtype
    assert np.array_equal(got, want)
