"""Perfetto export: the Chrome JSON trace-event format's rules, hand-checked values from the
6.12 sample's ftrace.txt, markers, and a property: every page range has exactly one owner's
slice at every moment of the window."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2trace.cli.main import main
from s2trace.export import PERFETTO_PID_BASE, perfetto_trace, write_perfetto
from s2trace.jobs import analyze
from s2trace.trace import make_transitions, replay

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample-traces" / "qemu-pkvm-6.12"
P = 4096

_PHASES = {"X", "C", "i", "M"}
_META = {"process_name", "thread_name", "process_sort_index", "thread_sort_index"}


def validate(doc: dict) -> None:
    """The rules of the Trace Event Format (JSON object form) that Perfetto's importer and
    chrome://tracing rely on, for the phases s2trace writes."""
    assert isinstance(doc, dict) and isinstance(doc["traceEvents"], list)
    assert doc.get("displayTimeUnit", "ms") in ("ms", "ns")
    assert isinstance(doc.get("otherData", {}), dict)
    json.dumps(doc, allow_nan=False)  # strict JSON: no NaN/Infinity
    named_threads = set()
    slices: dict[tuple[int, int], list[tuple[float, float]]] = {}
    for e in doc["traceEvents"]:
        assert e["ph"] in _PHASES, e
        assert isinstance(e["name"], str) and e["name"], e
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int), e
        assert isinstance(e.get("args", {}), dict), e
        if e["ph"] == "M":
            assert e["name"] in _META, e
            if e["name"].endswith("_name"):
                assert isinstance(e["args"]["name"], str)
                if e["name"] == "thread_name":
                    named_threads.add((e["pid"], e["tid"]))
            else:
                assert isinstance(e["args"]["sort_index"], int)
            continue
        assert isinstance(e["ts"], int | float) and math.isfinite(e["ts"]) and e["ts"] >= 0, e
        if e["ph"] == "X":
            assert isinstance(e["dur"], int | float) and 0 <= e["dur"] < math.inf, e
            slices.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"]))
        elif e["ph"] == "C":
            assert e["args"] and all(
                isinstance(v, int | float) and math.isfinite(v) for v in e["args"].values()
            ), e
        elif e["ph"] == "i":
            assert e["s"] in ("g", "p", "t"), e
    for track, spans in slices.items():
        assert track in named_threads, f"slice track {track} has no thread_name"
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end - 1e-6, f"overlapping slices on {track}"


def events(doc: dict, ph: str) -> list[dict]:
    return [e for e in doc["traceEvents"] if e["ph"] == ph]


def names(doc: dict) -> dict[tuple[int, int], str]:
    return {
        (e["pid"], e["tid"]): e["args"]["name"]
        for e in events(doc, "M")
        if e["name"] in ("thread_name", "process_name")
    }


@pytest.fixture(scope="module")
def sample():
    return analyze(SAMPLE, use_cache=False, grounds=False)


@pytest.fixture(scope="module")
def small():
    tr = make_transitions(
        [
            dict(op="donate", addr=0x1000, size=3 * P, ts=10.0),
            dict(op="donate", addr=0x2000, ts=11.0),  # refused: host_not_owned
            dict(op="access_fault", addr=0x2000, ts=12.0),  # refused
            dict(op="share", addr=0x9000, completer="guest", ts=13.0),
            dict(op="reclaim", addr=0x1000, initiator="hyp", completer="host", ts=14.0),
            dict(op="lost", ts=15.0),
        ]
    )
    return replay(tr, kernel="7.3")


# ---------------------------------------------------------------------------------------------
def test_sample_hand_checked(sample):
    lo, hi = float(sample.events["ts"].min()), float(sample.events["ts"].max())
    doc = perfetto_trace(
        sample.intervals, sample.violations, sample.transitions, t_from=lo, t_to=hi
    )
    validate(doc)
    n = names(doc)
    assert n[(PERFETTO_PID_BASE + 1, 0)] == "s2trace owner host"
    assert n[(PERFETTO_PID_BASE + 2, 0)] == "s2trace owner hyp"
    # ftrace.txt: kvm_share_hyp 0x4393d000 (1 page) at 18.538323, 0x44c38000 (2 pages) at
    # 18.544941; donations 0x48115000 (1), 0x438f6000 (2) and 0x438f8000 (2), allocated at
    # 18.548758, 18.548803 and 18.549619: the first two certain at the vCPU allocation's entry
    # (18.549583), the vCPU at pkvm_create_hyp_vm's return (18.549893).
    # Tracks: the 5 ranges, per owner that held them.
    host_tracks = sorted(v for (p, t), v in n.items() if p == PERFETTO_PID_BASE + 1 and t)
    assert host_tracks == [
        "0x438f6000 +8 KiB",
        "0x438f8000 +8 KiB",
        "0x4393d000 +4 KiB",
        "0x44c38000 +8 KiB",
        "0x48115000 +4 KiB",
    ]
    counters = [(e["ts"], e["name"], e["args"]["bytes"]) for e in events(doc, "C")]
    assert counters == [
        (18537023.0, "host", 32768),  # 8 + 8 + 4 + 8 + 4 KiB touched
        (18537023.0, "hyp", 0),
        (18549583.0, "host", 20480),  # pgd + hyp VM: __pkvm_init_vm (§KF-3.7)
        (18549583.0, "hyp", 12288),
        (18549893.0, "host", 12288),  # the hyp vCPU: __pkvm_init_vcpu
        (18549893.0, "hyp", 20480),
    ]
    xs = events(doc, "X")
    assert len(xs) == len(sample.intervals) == 10
    shared = [e for e in xs if e["name"] == "host, shared with hyp"]
    assert sorted((e["ts"], e["args"]["range"]) for e in shared) == [
        (18538323.0, "0x4393d000+4 KiB"),
        (18544941.0, "0x44c38000+8 KiB"),
    ]
    # current states run to the end of the window (the last event, 18.557394)
    assert {e["ts"] + e["dur"] for e in xs if e["args"]["cause_event"] is not None} == {18557394.0}
    assert events(doc, "i") == []


def test_markers_and_split_ranges(small):
    doc = perfetto_trace(small.intervals, small.violations, small.transitions, t_from=9.0)
    validate(doc)
    inst = sorted((e["ts"], e["tid"], e["name"]) for e in events(doc, "i"))
    assert inst == [
        (11e6, 1, "violation: host_not_owned"),
        (12e6, 1, "violation: host_access_not_owned"),
        (12e6, 2, "access fault"),
        (15e6, 3, "lost events"),
    ]
    v = next(e for e in events(doc, "i") if e["name"] == "violation: host_not_owned")
    assert v["args"]["addr"] == "0x2000" and v["args"]["line"] == 2 and v["s"] == "t"
    assert "expected" in v["args"]["detail"]
    # the reclaim splits 0x1000+12 KiB: tracks are the elementary segments
    n = names(doc)
    host = PERFETTO_PID_BASE + 1
    assert sorted(v for (p, t), v in n.items() if p == host and t) == [
        "0x1000 +4 KiB",
        "0x2000 +8 KiB",
        "0x9000 +4 KiB",
    ]
    # the initial 12 KiB host interval becomes one slice on each of its two segments
    first = [e for e in events(doc, "X") if e["pid"] == host and e["ts"] == 9e6]
    ranges = sorted((n[(host, e["tid"])], e["args"]["range"], e["dur"]) for e in first)
    assert ranges == [
        ("0x1000 +4 KiB", "0x1000+12 KiB", 1e6),
        ("0x2000 +8 KiB", "0x1000+12 KiB", 1e6),
        ("0x9000 +4 KiB", "0x9000+4 KiB", 4e6),
    ]
    # thread ids are unique across processes (Perfetto keys threads by tid)
    tids = [e["tid"] for e in events(doc, "M") if e["name"] == "thread_name"]
    assert len(tids) == len(set(tids))
    assert doc["otherData"]["generator"] == "s2trace"


def test_window_clips(small):
    doc = perfetto_trace(small.intervals, small.violations, small.transitions, t_from=12.5)
    validate(doc)
    assert min(e["ts"] for e in doc["traceEvents"] if e["ph"] != "M") == 12.5e6
    assert [e["name"] for e in events(doc, "i")] == ["lost events"]
    with pytest.raises(ValueError, match="window"):
        perfetto_trace(small.intervals, t_from=5.0, t_to=1.0)


def test_empty_timeline():
    tl = replay(make_transitions([]))
    doc = perfetto_trace(tl.intervals, tl.violations, tl.transitions)
    validate(doc)
    assert events(doc, "X") == [] and events(doc, "C") == []


_OPS = st.sampled_from(
    [
        ("donate", "host", "hyp"),
        ("reclaim", "hyp", "host"),
        ("share", "host", "hyp"),
        ("unshare", "host", "hyp"),
        ("share", "host", "guest"),
    ]
)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(_OPS, st.integers(0, 7), st.integers(1, 3)), min_size=1, max_size=25))
def test_every_range_has_one_state_at_all_times(rows):
    tr = make_transitions(
        [
            dict(op=op, initiator=i, completer=c, addr=page * P, size=n * P, ts=k + 1.0)
            for k, ((op, i, c), page, n) in enumerate(rows)
        ]
    )
    tl = replay(tr, kernel="7.3")
    doc = perfetto_trace(tl.intervals, tl.violations, tl.transitions, t_from=0.0)
    validate(doc)
    lo, hi = (x * 1e6 for x in doc["otherData"]["window_s"])
    track = names(doc)
    covered: dict[str, float] = {}  # per page range, over all owners' processes
    for e in events(doc, "X"):
        rng = track[(e["pid"], e["tid"])]
        covered[rng] = covered.get(rng, 0.0) + e["dur"]
    assert covered and all(v == pytest.approx(hi - lo, abs=1e-3) for v in covered.values())
    # the last counter value of each owner = bytes of its intervals alive at the end
    last = {}
    for e in events(doc, "C"):
        last[e["name"]] = e["args"]["bytes"]
    alive = tl.intervals[np.isinf(tl.intervals["t_end"].to_numpy())]
    want = alive.groupby(alive["owner"].astype(str))["size"].sum().astype(int).to_dict()
    assert {k: v for k, v in last.items() if v} == {k: v for k, v in want.items() if v}


# ---------------------------------------------------------------------------------------------
def test_write_and_cli(tmp_path, capsys, small):
    out = write_perfetto(tmp_path / "a.json", perfetto_trace(small.intervals, small.violations))
    validate(json.loads(out.read_text()))
    path = tmp_path / "out.json"
    code = main(["export", str(SAMPLE), "--perfetto", str(path), "--no-cache"])
    assert code == 0 and "wrote" in capsys.readouterr().err
    doc = json.loads(path.read_text())
    validate(doc)
    assert doc["otherData"]["kernel"] == "6.12.117"
    assert doc["otherData"]["window_s"] == [18.537023, 18.557394]
    code = main(["export", str(SAMPLE), "--perfetto", str(path), "--from", "19", "--to", "18"])
    assert code == 2 and "after" in capsys.readouterr().err
