"""Traces read in bounded memory (s2trace.trace.stream, analyze(stream=True)) give the results
of the whole-trace path: same transitions (event_index, basis, t_earliest), intervals,
violations, problems (in order) and meta, with parse chunks down to a line or two."""

from __future__ import annotations

import importlib
from pathlib import Path

import pandas as pd
import pytest

from s2trace.errors import StrictError
from s2trace.jobs import analyze
from s2trace.synth import generate
from s2trace.trace import spill, stream
from s2trace.trace.recipes import load_recipes
from s2trace.trace.replay import chunks
from s2trace.trace.stream import kept_events, stream_trace

analyze_mod = importlib.import_module("s2trace.jobs.analyze")  # the package exports the function
SAMPLES = Path(__file__).resolve().parents[1] / "sample-traces"


def _same(whole, streamed) -> None:
    assert streamed.meta["transitions"] == len(whole.transitions)  # counted without loading
    assert streamed.meta["intervals"] == len(whole.intervals)
    pd.testing.assert_frame_equal(whole.transitions, streamed.transitions)
    pd.testing.assert_frame_equal(whole.timeline.transitions, streamed.timeline.transitions)
    pd.testing.assert_frame_equal(whole.intervals, streamed.intervals)
    pd.testing.assert_frame_equal(whole.violations, streamed.violations)
    assert [(p.kind, p.where, p.detail) for p in whole.problems] == [
        (p.kind, p.where, p.detail) for p in streamed.problems
    ]
    assert whole.meta == streamed.meta
    assert whole.kernel == streamed.kernel


def _both(path, monkeypatch, chunk: int, replay_chunk: int = 3, spilled: bool | None = None,
          **kw):  # fmt: skip
    """The whole analysis and the streamed one, parsed ``chunk`` bytes and replayed
    ``replay_chunk`` transitions at a time; ``spilled``: whether the streamed transitions
    must (True) or must not (False) have gone to disk."""
    whole = analyze(path, use_cache=False, stream=False, **kw)
    monkeypatch.setattr(stream, "STREAM_CHUNK", chunk)
    monkeypatch.setattr(chunks, "REPLAY_CHUNK", replay_chunk)
    monkeypatch.setattr(spill, "BATCH", 2)  # read back two rows at a time
    stores = []
    real = analyze_mod.transition_store

    def spy(*a, **kw):
        stores.append(real(*a, **kw))
        return stores[-1]

    monkeypatch.setattr(analyze_mod, "transition_store", spy)
    streamed = analyze(path, use_cache=False, stream=True, **kw)
    n = len(whole.transitions)
    assert streamed.timeline.meta["replay_chunks"] == -(-n // replay_chunk)  # chunks were used
    if spilled is not None:
        assert bool(stores) == spilled
    return whole, streamed


@pytest.mark.parametrize(
    "sample",
    ["qemu-pkvm-6.12", "qemu-pkvm-7.3", "qemu-pkvm-7.3-lifecycle", "synthetic/buggy"],
)
@pytest.mark.parametrize("chunk", [150, 4096])
def test_bundled_captures_stream_alike(sample, chunk, monkeypatch):
    # the lifecycle capture's memcaches read every recipe's reclaims: read again, not spilled
    spilled = sample != "qemu-pkvm-7.3-lifecycle"
    whole, streamed = _both(SAMPLES / sample, monkeypatch, chunk, spilled=spilled)
    assert len(whole.transitions)
    _same(whole, streamed)
    pd.testing.assert_frame_equal(whole.events, streamed.events)  # parsed again, whole


def test_bigguest_capture_streams_alike(monkeypatch):
    """65,536 memcache top-ups, compressed: the memcache stacks and donation runs span many
    chunks."""
    whole, streamed = _both(
        SAMPLES / "qemu-pkvm-7.3-bigguest-nofreepages", monkeypatch, 1 << 16, replay_chunk=997,
        spilled=False,
    )  # fmt: skip
    assert len(whole.transitions) > 1000
    _same(whole, streamed)


@pytest.mark.parametrize("scenario", ["vm-lifecycle", "ffa"])
def test_synthetic_scenarios_stream_alike(scenario, tmp_path, monkeypatch):
    folder = generate(scenario, tmp_path, size=150, seed=3)
    whole, streamed = _both(folder, monkeypatch, 300, spilled=True)
    assert len(whole.transitions) > 100
    _same(whole, streamed)


HEAD = "# tracer: nop\n#\n"


def _line(ts: float, event: str, fields: str, cpu: int = 1) -> str:
    return f"         kvmpoke-189     [{cpu:03d}] d.... {ts:12.6f}: {event}: {fields}\n"


def _mem(ts: float, op: str, addr: str, cpu: int = 1) -> str:
    ini, com = ("hyp", "host") if op == "reclaim" else ("host", "hyp")
    return _line(
        ts,
        "pkvm_mem_transition",
        f"op={op} initiator={ini} completer={com} addr={addr} nr_pages=1 vm=0 gfn=0x0",
        cpu,
    )


def _damaged_trace(path: Path) -> Path:
    """Chunk-sensitive damage: a wrong label before a damaged address (one pass records the
    damaged range first), a lost marker whose CPU's previous event is an unrelated (dropped)
    event far back, a malformed line, time going back."""
    lines = [
        HEAD,
        _mem(10.0, "share", "0x40000000"),
        _mem(10.1, "frobnicate", "0x40001000"),  # op not in the vocabulary
        _line(10.2, "kvm_timer_update_irq", "VCPU: 0, IRQ 27, level 0", cpu=2),
        _mem(10.3, "unshare", "0x40000000"),
        "this is not a trace line\n",
        _mem(10.4, "donate", "0x40002000"),
        _mem(10.5, "share", "zzz"),  # damaged address
        _mem(10.45, "reclaim", "0x40002000"),  # time goes back
        *[_mem(10.6 + i / 100, "share", f"{0x40010000 + i * 0x1000:#x}") for i in range(6)],
        "CPU:2 [LOST 5 EVENTS]\n",
        _mem(11.0, "share", "0x40000000"),
        _mem(11.1, "share", "0x40000000"),  # a violation: already shared
    ]
    path.write_text("".join(lines))
    return path


@pytest.mark.parametrize("chunk", [40, 130, 1 << 20])
def test_damage_lost_markers_and_order_stream_alike(chunk, tmp_path, monkeypatch):
    path = _damaged_trace(tmp_path / "t.txt")
    whole, streamed = _both(path, monkeypatch, chunk, kernel="6.12", spilled=True)
    _same(whole, streamed)
    kinds = [(p.kind, p.detail.split(":")[-1].strip()[:14]) for p in whole.problems]
    assert kinds[0][0] == "malformed_line"
    bad = [p for p in whole.problems if p.kind == "bad_field"]
    assert [p.where for p in bad] == [9, 4]  # the damaged range first, then the label
    lost = whole.transitions[whole.transitions["op"] == "lost"]
    assert lost["ts"].tolist() == [pytest.approx(10.2)]  # CPU 2's previous event
    assert lost["event_index"].tolist() == [13]
    assert len(whole.violations) == 1
    assert "go back in time" in whole.meta["trace_notes"]


def test_strict_stops_at_the_same_problem(tmp_path, monkeypatch):
    path = _damaged_trace(tmp_path / "t.txt")
    monkeypatch.setattr(stream, "STREAM_CHUNK", 40)
    msgs = []
    for flag in (False, True):
        with pytest.raises(StrictError) as exc:
            analyze(path, use_cache=False, stream=flag, strict=True, kernel="6.12")
        msgs.append(str(exc.value))
    assert msgs[0] == msgs[1]


def test_compact_rows_drop_unrelated_events_and_row_local_text(tmp_path, monkeypatch):
    monkeypatch.setattr(stream, "STREAM_CHUNK", 200)
    path = _damaged_trace(tmp_path / "t.txt")
    every = load_recipes()
    keep, texts = kept_events(every, None)
    assert "pkvm_mem_transition" in keep and "pkvm_mem_transition" not in texts
    assert "s2_alloc_pages_exact" in texts  # paired with its return: read whole later
    got = stream_trace(path, every)
    assert got.n_events == 16 and got.lines == 19
    assert "kvm_timer_update_irq" not in set(got.events["event"].astype(str))
    assert got.events["task"].isna().all()
    # only the first pkvm_mem_transition keeps its text (the kernel choice reads one)
    assert got.events["fields"].notna().sum() == 1
    # spilled: their rows go to disk, their events are not kept (but the first, counted)
    spilt = stream_trace(path, every, spill=True)
    names = spilt.events["event"].astype(str).tolist()
    assert names.count("pkvm_mem_transition") == 1
    assert names == ["pkvm_mem_transition", "lost_events"]
    assert spilt.counts["pkvm_mem_transition"] == 14
    assert spilt.spilled is not None and len(spilt.spilled) == 12  # less two damaged
    assert spilt.spilled_sorted  # time goes back at a damaged row only


def test_big_text_traces_stream_by_default(tmp_path, monkeypatch):
    path = _damaged_trace(tmp_path / "t.txt")
    called = []
    real = analyze_mod.stream_trace

    def spy(*a, **kw):
        called.append(a[0])
        return real(*a, **kw)

    monkeypatch.setattr(analyze_mod, "stream_trace", spy)
    analyze(path, use_cache=False, kernel="6.12")
    assert not called  # a small trace is read whole (and cached)
    monkeypatch.setattr(analyze_mod, "STREAM_BYTES", 0)
    analyze(path, use_cache=False, kernel="6.12")
    assert called
