"""Transitions and intervals on disk (s2trace.trace.spill): the k-way merge gives the order a
whole sort gives, ties included, and a long trace of many pages, multi-page rows and lost
markers analysed with its transitions and intervals spilled (chunks of a few lines, a few
transitions, record batches of two rows) equals the whole analysis."""

from __future__ import annotations

import importlib

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from s2trace.jobs import analyze
from s2trace.trace import spill, stream
from s2trace.trace.replay import chunks
from s2trace.trace.spill import merge_runs, replay_key

analyze_mod = importlib.import_module("s2trace.jobs.analyze")


def _runs(rng: np.random.Generator, k: int, n: int) -> list[dict[str, np.ndarray]]:
    """``k`` runs, each sorted by (ts with NaN last, event_index, recipe); few distinct values,
    so keys tie within and across runs (recipe differs by run, as a run is its recipes')."""
    out = []
    for r in range(k):
        ts = rng.integers(0, 6, n).astype(np.float64)
        ts[rng.random(n) < 0.1] = np.nan
        c = {
            "ts": ts,
            "event_index": rng.integers(0, 5, n),
            "recipe": np.full(n, r, np.int16),
            "pos": np.arange(n) + 1000 * r,  # where each row came from
        }
        order = np.lexsort(replay_key(c)[::-1])
        out.append({name: a[order] for name, a in c.items()})
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("width", [1, 3, 50])
def test_merge_equals_a_stable_sort_of_all_runs(seed, width):
    rng = np.random.default_rng(seed)
    runs = _runs(rng, int(rng.integers(1, 5)), int(rng.integers(0, 40)))

    def batches(c):
        n = len(c["ts"])
        for lo in range(0, n, width):
            yield pa.RecordBatch.from_pydict({k: a[lo : lo + width] for k, a in c.items()})

    schema = pa.RecordBatch.from_pydict(runs[0]).schema
    merged = merge_runs([batches(c) for c in runs], replay_key)
    got = pa.concat_tables([pa.Table.from_batches([], schema=schema), *merged])
    whole = {k: np.concatenate([c[k] for c in runs]) for k in runs[0]}
    want = whole["pos"][np.lexsort(replay_key(whole)[::-1])]  # stable: run order, then row
    assert got.column("pos").to_numpy().tolist() == want.tolist()


HEAD = "# tracer: nop\n#\n"


def _line(ts: float, event: str, fields: str, cpu: int = 1) -> str:
    return f"         kvmpoke-189     [{cpu:03d}] d.... {ts:12.6f}: {event}: {fields}\n"


def _long_trace(path, n: int = 400, pages: int = 9, back: bool = False) -> None:
    """Share / unshare / donate / reclaim cycles over ``pages`` pages (every 7th row over 3
    pages), unrelated events between them, two lost markers, equal timestamps; ``back``: time
    goes back at two rows (their transitions then replay earlier)."""
    steps = (("share", "host", "hyp"), ("unshare", "host", "hyp"), ("donate", "host", "hyp"),
             ("reclaim", "hyp", "host"))  # fmt: skip
    out = [HEAD]
    for i in range(n):
        op, ini, com = steps[(i // pages) % 4]
        npg = 3 if (i // pages) % 7 == 3 and i % pages == 0 else 1
        addr = 0x40000000 + (i % pages) * 0x1000
        ts = 10.0 + (i // 2) * 1e-3  # pairs of rows share a timestamp
        if back and i in (123, 250):
            ts -= 0.0405
        fields = (
            f"op={op} initiator={ini} completer={com} addr={addr:#x} nr_pages={npg} vm=0 gfn=0x0"
        )
        out.append(_line(ts, "pkvm_mem_transition", fields))
        if i % 13 == 5:
            out.append(_line(ts, "kvm_timer_update_irq", "VCPU: 0, IRQ 27, level 0", cpu=2))
        if i in (150, 290):
            out.append("CPU:2 [LOST 5 EVENTS]\n")
    path.write_text("".join(out))


def _analyses(path, monkeypatch, replay_chunk: int):
    whole = analyze(path, use_cache=False, stream=False, kernel="6.12")
    monkeypatch.setattr(stream, "STREAM_CHUNK", 333)
    monkeypatch.setattr(chunks, "REPLAY_CHUNK", replay_chunk)
    monkeypatch.setattr(spill, "BATCH", 2)
    stores = []
    real = analyze_mod.transition_store
    monkeypatch.setattr(
        analyze_mod, "transition_store", lambda *a, **k: stores.append(1) or real(*a, **k)
    )
    streamed = analyze(path, use_cache=False, stream=True, kernel="6.12")
    assert stores  # the transitions went to disk
    return whole, streamed


@pytest.mark.parametrize("back", [False, True])
@pytest.mark.parametrize("replay_chunk", [1, 4, 37])
def test_long_trace_spilled_equals_whole(replay_chunk, back, tmp_path, monkeypatch):
    path = tmp_path / "t.txt"
    _long_trace(path, back=back)
    whole, streamed = _analyses(path, monkeypatch, replay_chunk)
    store = streamed._transitions
    assert store.runs[1] in store._sorted if not back else store._spills  # sorted whole
    assert streamed.meta["transitions"] == len(whole.transitions) > 400
    assert streamed.meta["intervals"] == len(whole.intervals) > 400
    pd.testing.assert_frame_equal(whole.transitions, streamed.transitions)
    pd.testing.assert_frame_equal(whole.timeline.transitions, streamed.timeline.transitions)
    pd.testing.assert_frame_equal(whole.intervals, streamed.intervals)
    pd.testing.assert_frame_equal(whole.violations, streamed.violations)
    assert whole.meta == streamed.meta
    assert whole.timeline.meta["lost"] == streamed.timeline.meta["lost"]


def test_a_spill_that_cannot_write_is_one_error_line(tmp_path, monkeypatch):
    """A full disk under the spill (``/dev/full``: every write fails with ENOSPC) or a
    TMPDIR that is not a directory is an InputError naming the temporary directory and
    TMPDIR (the CLI's one error line), not an OSError blamed on standard output."""
    from s2trace.errors import InputError

    frame = pd.DataFrame({"a": np.arange(1000, dtype=np.int64)})
    sp = spill.Spill("full", batch=10)
    sp.path = "/dev/full"
    with pytest.raises(InputError, match=r"temporary spill file in .*: cannot write.*TMPDIR"):
        sp.append(frame)
        sp.frame()  # the footer is written when the file is first read
    sp.close()
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    monkeypatch.setattr("tempfile.tempdir", str(not_a_dir))
    with pytest.raises(InputError, match=r"temporary spill file in .*file: cannot write"):
        spill.Spill("nodir")


def test_timeline_written_piece_by_piece_is_the_whole_tables_text(tmp_path, monkeypatch):
    """``s2trace timeline`` of a trace whose intervals stay on disk writes CSV and JSON lines
    a merge window at a time (several here): byte for byte what the whole-trace path writes."""
    from s2trace.cli.main import main

    path = tmp_path / "t.txt"
    _long_trace(path, n=3000, pages=50)
    argv = ["timeline", str(path), "--kernel", "6.12", "--no-cache"]
    written = {}
    for how in ("whole", "streamed"):
        if how == "streamed":
            monkeypatch.setattr(analyze_mod, "STREAM_BYTES", 0)  # every text trace streamed
            monkeypatch.setattr(chunks, "REPLAY_CHUNK", 1000)  # interval runs of ~1000 rows
            monkeypatch.setattr(spill, "BATCH", 64)
        for fmt in ("csv", "json"):
            out = tmp_path / f"{how}.{fmt}"
            assert main([*argv, "--format", fmt, "-o", str(out)]) == 0
            written[how, fmt] = out.read_bytes()
    assert written["whole", "csv"].count(b"\n") > 3000
    assert written["whole", "csv"] == written["streamed", "csv"]
    assert written["whole", "json"] == written["streamed", "json"]
    a = analyze(path, use_cache=False, stream=True, kernel="6.12")
    pieces = list(a.timeline.interval_pieces())
    assert len(pieces) > 1 and sum(map(len, pieces)) == a.meta["intervals"]


def test_write_frames_joins_pieces_as_write_frame_writes_the_whole(tmp_path):
    """Empty pieces, NA, hex columns and categories that differ per piece: the same text."""
    from s2trace.render import write_frame, write_frames

    whole = pd.DataFrame(
        {
            "start": np.array([0x1000, 0x2000, 0x3000, 0x4000, 0x5000], np.uint64),
            "t": [0.5, np.inf, np.nan, 1e-7, 12.25],
            "owner": pd.Categorical(["host", "hyp", None, "guest", "host"]),
            "vm": pd.array([None, 3, 4, None, 5], dtype="Int64"),
        }
    )
    pieces = [whole.iloc[:0], whole.iloc[:2], whole.iloc[2:2], whole.iloc[2:]]
    pieces = [p.assign(owner=p["owner"].cat.remove_unused_categories()) for p in pieces]
    for fmt in ("csv", "json"):
        a, b = tmp_path / f"a.{fmt}", tmp_path / f"b.{fmt}"
        frame = whole if fmt == "csv" else whole.replace([np.inf], np.nan)  # JSON: no Infinity
        write_frame(frame, fmt, path=a)
        parts = pieces if fmt == "csv" else [p.replace([np.inf], np.nan) for p in pieces]
        write_frames(iter(parts), fmt, path=b)
        assert a.read_bytes() == b.read_bytes()
    empty = tmp_path / "e.csv"
    write_frames(iter([whole.iloc[:0]]), "csv", path=empty)
    assert empty.read_text() == "start,t,owner,vm\n"
