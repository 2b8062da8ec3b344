"""The map written while walking: the same rows, in the same order, as the whole map."""

from __future__ import annotations

import io
import os
import stat

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2trace.arch.geometry import Geometry, Granule
from s2trace.cli.main import main
from s2trace.columns import MAP
from s2trace.export.table_stream import StreamWriter
from s2trace.io import open_memory
from s2trace.render import HEX_COLUMNS, write_frame
from s2trace.walk.build import Stage2Builder
from s2trace.walk.pieces import IpaOrder, concat_pieces
from s2trace.walk.walker import AUTO, _probe_profile, walk


def _mixed(profile: str = "linux-7.1") -> Stage2Builder:
    """Blocks at levels 1 and 2 between pages, annotations, a guest donation, a hole."""
    b = Stage2Builder(Geometry(Granule.K4), ia_bits=40, profile=profile)
    b.map(0x4000_0000, 0x4000_0000, level=1)
    b.map(0x8000_0000, 0x3000)
    b.map(0x8020_0000, 0x20_0000, level=2)
    b.map(0x8040_0000, 0x1000, s2ap="ro")
    b.annotate(0x8040_1000, 0x2000, owner="hyp")
    if profile == "linux-7.1":
        b.annotate(0x8050_0000, 0x3000, owner="guest", vm_handle=0x1000, gfn=0x10)
    b.map(0x9000_0000, 0x20_0000, level=2)
    b.map(0x9020_0000, 0x5000)
    return b


def _streamed(memory, config, profile, batch_rows=None, **kw):
    pieces = []
    result = walk(memory, config, profile, sink=pieces.append, **kw)
    assert result.map.empty and result.meta["streamed"]
    if not pieces:
        return MAP.empty(), result
    whole = concat_pieces(pieces, MAP.names)
    return pd.DataFrame(whole)[MAP.names], result


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert len(a) == len(b)
    for col in MAP.names:
        x = a[col].astype(object).where(a[col].notna(), None).tolist()
        y = b[col].astype(object).where(b[col].notna(), None).tolist()
        assert x == y, col


@pytest.mark.parametrize("profile", ["linux-7.1", "linux-5.15", AUTO])
def test_sink_gets_the_whole_map_in_order(tmp_path, profile):
    b = _mixed("linux-7.1" if profile == AUTO else profile)
    path = b.write_elf(tmp_path / "dump.elf")
    with open_memory([str(path)]) as memory:
        whole = walk(memory, b.config, profile, include_zero=True)
        got, result = _streamed(memory, b.config, profile, include_zero=True)
    _same(got, whole.map)
    assert result.entry_counts == whole.entry_counts
    assert result.meta.get("profile") == whole.meta.get("profile")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.lists(st.integers(0, 200), max_size=8))))
def test_ipa_order_equals_a_stable_sort(parts):
    """Upper levels held and merged into the last level's stream = the sorted concatenation,
    for any pieces in walk order (levels ascending; a level's rows in increasing IPA)."""
    parts = sorted(parts, key=lambda p: p[0])
    pieces = []
    offset = 0
    for level, ipas in parts:
        ipa = np.array(sorted(set(ipas)), dtype=np.uint64)
        if level == 3:  # the last level's pieces follow each other
            ipa += np.uint64(offset)
            offset += 201
        tag = np.full(len(ipa), level, dtype=np.int64)
        pieces.append((level, {"ipa_start": ipa, "tag": tag, "k": np.arange(len(ipa))}))
    out = []
    order = IpaOrder(out.append, 3, ["ipa_start", "tag", "k"])
    for level, piece in pieces:
        order.add(level, piece)
    order.finish()
    names = ["ipa_start", "tag", "k"]
    flat = [p for _, p in pieces if len(p["ipa_start"])]
    if not flat:
        assert not out
        return
    full = concat_pieces(flat, names)
    want = np.argsort(full["ipa_start"], kind="stable")
    got = concat_pieces(out, names)
    for n in names:
        assert got[n].tolist() == full[n][want].tolist()


def _probe_and_walk(tmp_path, b):
    """The streamed walk's profile probe, and the whole walk's choice (detect_profile)."""
    path = b.write_elf(tmp_path / "dump.elf")
    with open_memory([str(path)]) as memory:
        return _probe_profile(memory, b.config), walk(memory, b.config, AUTO).meta["profile"]


def test_profile_probe_decodes_last_level_kinds_where_bits_63_60_are_set(tmp_path):
    """The probe skips the last level's kinds except for entries with bits 63:60 set: a typed
    invalid entry there still means 7.1, a valid page with those bits set does not."""
    b = Stage2Builder(Geometry(Granule.K4), ia_bits=40, profile="linux-7.1")
    b.map(0x8000_0000, 0x3000)
    b.annotate(0x8050_0000, 0x1000, owner="guest", vm_handle=0x1000, gfn=0x10)
    (name, reason), whole = _probe_and_walk(tmp_path, b)
    assert name == whole == "linux-7.1" and reason.endswith("at ipa 0x80500000)")
    b = Stage2Builder(Geometry(Granule.K4), ia_bits=40)
    b.map(0x8000_0000, 0x3000)
    b.set_raw(0x8000_1000, 3, (1 << 63) | 0x8000_17FF)  # a page, bit 63 set
    b.annotate(0x8050_0000, 0x1000, owner="hyp")  # a 6.x annotation: bits 63:60 clear
    (name, _), whole = _probe_and_walk(tmp_path, b)
    assert name == whole == "linux-5.15"


def test_ipa_order_refuses_rows_out_of_order():
    order = IpaOrder(lambda p: None, 3, ["ipa_start"])
    order.add(3, {"ipa_start": np.array([5, 6], np.uint64)})
    with pytest.raises(RuntimeError, match="out of IPA order"):
        order.add(3, {"ipa_start": np.array([1], np.uint64)})


def _cli_map(tmp_path, b, fmt):
    path = b.write_elf(tmp_path / "dump.elf")
    out = tmp_path / f"map.{fmt}"
    regs = ["--vttbr", hex(b.vttbr), "--vtcr", hex(b.vtcr), "--profile", "linux-7.1"]
    assert main(["decode", str(path), *regs, "--format", fmt, "-o", str(out)]) == 0
    with open_memory([str(path)]) as memory:
        whole = walk(memory, b.config, b.profile)
    return out, whole


def test_cli_csv_is_byte_identical_to_the_whole_frame(tmp_path):
    out, whole = _cli_map(tmp_path, _mixed(), "csv")
    text = io.StringIO()
    write_frame(whole.map, "csv", out=text)
    assert out.read_text() == text.getvalue()
    assert not list(tmp_path.glob(".map.csv.*"))  # the temporary file was renamed


def test_cli_parquet_holds_the_same_data(tmp_path):
    out, whole = _cli_map(tmp_path, _mixed(), "parquet")
    back = pd.read_parquet(out)
    assert list(back.columns) == MAP.names
    assert isinstance(back["kind"].dtype, pd.CategoricalDtype)  # dictionary-encoded
    assert str(back["oa"].dtype) == "UInt64"
    _same(back, whole.map)
    meta = pq.ParquetFile(out).metadata.metadata
    assert b'"profile": "linux-7.1"' in meta[b"s2trace"]
    # integers of few values are stored with a dictionary page, yet read back as integers
    table = pq.read_table(out)
    assert [str(table.schema.field(n).type) for n in ("level", "xn", "vm_handle")] == [
        "int8",
        "uint8",
        "uint16",
    ]
    chunks = pq.ParquetFile(out).metadata.row_group(0)
    encodings = {chunks.column(i).path_in_schema: chunks.column(i).encodings for i in range(19)}
    assert "RLE_DICTIONARY" in encodings["level"] and "DELTA_BINARY_PACKED" in encodings["raw"]
    assert back["vm_handle"].notna().any()  # the dictionary-encoded column holds values


def test_empty_and_aborted_outputs(tmp_path):
    w = StreamWriter(tmp_path / "e.parquet", "parquet", MAP, HEX_COLUMNS)
    w.close()
    assert pd.read_parquet(tmp_path / "e.parquet").empty
    w = StreamWriter(tmp_path / "x.csv", "csv", MAP, HEX_COLUMNS)
    w.abort()
    assert list(tmp_path.iterdir()) == [tmp_path / "e.parquet"]


def _device(tmp_path, name, minor):
    """A character device like /dev/null (minor 3) or /dev/full (minor 7) in ``tmp_path``:
    the streamed writers must write it in place, never rename a file over it."""
    path = tmp_path / name
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, minor))
        with open(path, "wb"):
            pass
    except OSError:
        pytest.skip("cannot make a device node here")
    return path


def _dump_args(tmp_path):
    b = _mixed()
    path = b.write_elf(tmp_path / "dump.elf")
    return ["decode", str(path), "--vttbr", hex(b.vttbr), "--vtcr", hex(b.vtcr)]


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_streamed_output_to_a_device_is_written_in_place(tmp_path, fmt):
    null = _device(tmp_path, "null", 3)
    assert main([*_dump_args(tmp_path), "--format", fmt, "-o", str(null)]) == 0
    assert stat.S_ISCHR(os.stat(null).st_mode)  # still the device, not a renamed file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dump.elf", "null"]


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_streamed_output_to_a_full_disk_is_one_line(tmp_path, capsys, fmt):
    full = _device(tmp_path, "full", 7)
    assert main([*_dump_args(tmp_path), "--format", fmt, "-o", str(full)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "s2trace: error:" in err and str(full) in err, err
    assert "Traceback" not in err and "standard output" not in err
    assert stat.S_ISCHR(os.stat(full).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dump.elf", "full"]


def test_streamed_write_error_midway_leaves_the_old_output(tmp_path, monkeypatch):
    """An I/O error while row groups are written: one InputError, the previous output
    untouched, no temporary file left."""
    import pyarrow.parquet as pq_mod

    from s2trace.errors import InputError

    out = tmp_path / "map.parquet"
    out.write_bytes(b"previous")
    calls = {"n": 0}

    def failing(self, table, *a, **kw):
        calls["n"] += 1
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq_mod.ParquetWriter, "write_table", failing)
    b = _mixed()
    with open_memory([str(b.write_elf(tmp_path / "dump.elf"))]) as memory:
        pieces = []
        walk(memory, b.config, b.profile, sink=pieces.append)
    piece = concat_pieces(pieces, MAP.names)
    w = StreamWriter(out, "parquet", MAP, HEX_COLUMNS)
    with pytest.raises(InputError, match="No space left"):
        for _ in range(50):
            w.write(piece)
        w.close()
    w.abort()
    assert calls["n"] == 1
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dump.elf", "map.parquet"]


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.integers(0, (1 << 64) - 1), max_size=40),
    st.sampled_from([np.uint8, np.uint16, np.uint32, np.uint64, np.int64]),
    st.data(),
)
def test_csv_digits_are_pythons_formatting(values, dtype, data):
    """The numpy digit layouts of the streamed CSV (hex with 0x, decimal; missing values
    empty) give exactly Python's "0x%x" and str(), for any widths mixed in one column."""
    from s2trace.export.table_stream import _field_bytes

    top = np.iinfo(dtype).max
    arr = np.array([v & top for v in values], dtype=dtype)
    mask = np.array(
        data.draw(st.lists(st.booleans(), min_size=len(arr), max_size=len(arr))), dtype=bool
    )
    column = pd.array(arr, dtype=str(arr.dtype).replace("u", "U").replace("int", "Int"))
    column[mask] = pd.NA
    for hex_column in (True, False):
        for values_in in (arr, column):
            rows = _field_bytes(values_in, hex_column)
            got = [bytes(r[r != 0]).decode() for r in rows]
            want = [("0x%x" if hex_column else "%d") % int(v) for v in arr]
            if values_in is column:
                want = ["" if m else w for w, m in zip(want, mask, strict=True)]
            assert got == want
