"""The replay in chunks (s2trace.trace.replay.chunks) gives the whole replay's results exactly:
intervals, violations, problems (in order), strict stops and the end check, with chunks down to
one transition; what it carries from chunk to chunk (both counters, the open interval, lost
markers) is exercised across chunk boundaries, and hypothesis draws random histories."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s2trace.errors import StrictError
from s2trace.trace.queries import owner_at
from s2trace.trace.replay import replay
from s2trace.trace.synth_helpers import make_transitions

P = 4096
A = 0x4000_0000

#: Timeline meta that says how the replay went, not what it found (module docstring of
#: s2trace.trace.replay.chunks): left out of the comparison.
DIAGNOSTIC = ("sequential_rows", "loop_engine_pages", "replay_chunks")


def pg(i: int) -> int:
    return A + i * P


def same(whole, chunked) -> None:
    pd.testing.assert_frame_equal(whole.intervals, chunked.intervals)
    pd.testing.assert_frame_equal(whole.violations, chunked.violations)
    pd.testing.assert_frame_equal(whole.transitions, chunked.transitions)
    w = {k: v for k, v in whole.meta.items() if k not in DIAGNOSTIC}
    c = {k: v for k, v in chunked.meta.items() if k not in DIAGNOSTIC}
    assert w == c


def both(frame: pd.DataFrame, chunk: int, **kw):
    whole = replay(frame, **kw)
    chunked = replay(frame, chunk=chunk, **kw)
    assert chunked.meta["replay_chunks"] == -(-len(frame) // chunk)
    same(whole, chunked)
    return whole, chunked


def state(tl, page: int) -> tuple:
    a = owner_at(tl, pg(page))
    return (a.owner, a.host_state, a.peer)


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_guest_share_count_is_carried(chunk):
    """host_share_guest_count 2 at a boundary: the first unshare leaves the page shared."""
    rows = [
        dict(op="share", initiator="host", completer="guest", addr=pg(0)),
        dict(op="share", initiator="host", completer="guest", addr=pg(0)),
        dict(op="unshare", initiator="host", completer="guest", addr=pg(0)),
        dict(op="donate", addr=pg(0)),  # refused: still shared with a guest
        dict(op="unshare", initiator="host", completer="guest", addr=pg(0)),
        dict(op="donate", addr=pg(0)),  # accepted now
    ]
    _, tl = both(make_transitions(rows), chunk, kernel="6.14")
    assert [int(e) for e in tl.violations["event_index"]] == [3]
    assert state(tl, 0) == ("hyp", "nopage", "hyp")


@pytest.mark.parametrize("chunk", [1, 3])
def test_guest_count_unchanged_by_an_atomic_refusal(chunk):
    """A guest share over two pages refused because of the other page leaves the count of a
    page already shared with a guest at 1 (its own check passed; the row was refused)."""
    rows = [
        dict(op="share", initiator="host", completer="guest", addr=pg(0)),
        dict(op="donate", addr=pg(1)),
        dict(op="share", initiator="host", completer="guest", addr=pg(0), size=2 * P),
        dict(op="unshare", initiator="host", completer="guest", addr=pg(0)),
        dict(op="donate", addr=pg(0)),  # accepted: the count was 1
    ]
    _, tl = both(make_transitions(rows), chunk, kernel="6.14")
    assert [int(e) for e in tl.violations["event_index"]] == [2]
    assert state(tl, 0) == ("hyp", "nopage", "hyp")


@pytest.mark.parametrize("chunk", [1, 2, 4])
def test_share_hyp_count_is_carried(chunk):
    """kvm_share_hyp count 2 across a boundary: the first counted unshare issues no
    hypercall, the second does; a third is the WARN_ON."""
    rows = [
        dict(op="share", addr=pg(0), counted=True),
        dict(op="share", addr=pg(0), counted=True),
        dict(op="unshare", addr=pg(0), counted=True),
        dict(op="unshare", addr=pg(0), counted=True),
        dict(op="unshare", addr=pg(0), counted=True),
    ]
    _whole, tl = both(make_transitions(rows), chunk, kernel="6.12")
    assert [str(c) for c in tl.violations["check"]] == ["unshare_not_shared"]
    assert state(tl, 0) == ("host", "owned", None)


@pytest.mark.parametrize("chunk", [1, 2, 3, 5])
def test_coupled_rows_and_split_segments_in_chunks(chunk):
    """An atomic range refused as a whole, a counted share stopping at a failing page inside
    a segment (the segment splits), overlapping ranges cut at carried boundaries."""
    rows = [
        dict(op="donate", addr=pg(1), ts=0),
        dict(op="share", addr=pg(0), size=4 * P, ts=1),  # atomic: page 1 fails, none change
        dict(op="share", addr=pg(2), size=3 * P, counted=True, ts=2),
        dict(op="share", addr=pg(0), size=3 * P, counted=True, ts=3),  # stops at page 1
        dict(op="unshare", addr=pg(0), size=5 * P, counted=True, ts=4),
        dict(op="reclaim", addr=pg(1), ts=5),
        dict(op="share", addr=pg(0), size=6 * P, ts=6),
        dict(op="unshare", addr=pg(3), size=2 * P, ts=7),
    ]
    both(make_transitions(rows), chunk, kernel="6.12")


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_time_going_back_and_ties(chunk):
    """Rows out of time order (and equal times) are replayed in the whole replay's order."""
    rows = [
        dict(op="share", addr=pg(0), ts=5.0, event_index=4),
        dict(op="unshare", addr=pg(0), ts=1.0, event_index=0),  # goes back: a violation first
        dict(op="share", addr=pg(0), ts=1.0, event_index=1),
        dict(op="donate", addr=pg(1), ts=3.0, event_index=2),
        dict(op="reclaim", addr=pg(1), ts=2.0, event_index=3),
    ]
    whole, _ = both(make_transitions(rows), chunk, kernel="6.12")
    assert len(whole.violations) == 3


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_lost_markers_mark_carried_intervals(chunk):
    """A global marker in a chunk that does not touch a page still marks its open interval;
    a ranged marker only its pages; pages first touched after a marker start incomplete."""
    rows = [
        dict(op="share", addr=pg(0)),
        dict(op="share", addr=pg(1)),
        dict(op="lost"),
        dict(op="lost", addr=pg(5), size=2 * P),
        dict(op="share", addr=pg(2)),
        dict(op="unshare", addr=pg(0)),
        dict(op="share", addr=pg(6)),
    ]
    whole, _ = both(make_transitions(rows), chunk, kernel="6.12")
    assert whole.intervals["incomplete"].any() and not whole.intervals["incomplete"].all()


def _map(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ipa_start": np.array([r[0] for r in rows], dtype=np.uint64),
            "size": np.array([r[1] for r in rows], dtype=np.uint64),
            "kind": pd.Categorical(["page"] * len(rows)),
            "owner": pd.Categorical([r[2] for r in rows]),
            "page_state": pd.Categorical([r[3] for r in rows]),
        }
    )


@pytest.mark.parametrize("chunk", [1, 2, 4])
def test_initial_map_end_check_and_preconditions(chunk):
    """Initial ranges cut by rows of later chunks, a page whose first state-changing row
    lies in a later chunk than its first row (its precondition is painted beforehand), and
    the end check against a map taken after the trace."""
    rows = [
        dict(op="access_fault", addr=pg(3)),  # touches page 3, changes nothing
        dict(op="share", addr=pg(0), size=2 * P),
        dict(op="lost", addr=pg(8), size=P),
        dict(op="reclaim", addr=pg(3)),  # page 3's first change: it starts as the hyp's
        dict(op="unshare", addr=pg(1)),
        dict(op="donate", addr=pg(9), size=3 * P),
    ]
    initial = _map([(pg(8), 8 * P, "host", "owned")])
    end = _map([(pg(0), 2 * P, "host", "shared_owned"), (pg(9), P, "hyp", "owned")])
    frame = make_transitions(rows)
    for kw in (
        dict(precondition=True),
        dict(precondition=True, initial=initial),
        dict(precondition=True, at_end=end),
        dict(precondition=False, at_end=end, boot=[(pg(20), 4 * P, "hyp", "owned")]),
    ):
        whole, _ = both(frame, chunk, kernel="6.12", **kw)
    assert whole.meta["end_check"]["pages_disagreeing"] > 0


def test_problems_keep_the_whole_replays_order_and_strict_stops_alike():
    """Problems are logged kind by kind over the whole trace (as the whole replay logs them),
    so --strict names the same row; a violation stops --strict alike too."""
    rows = [
        dict(op="frobnicate", addr=pg(0)),  # unknown op, first chunk
        dict(op="share", addr=pg(1), size=0),  # empty
        dict(op="share", addr=pg(2) + 7),  # unaligned
        dict(op="share", addr=pg(3), ts=float("nan")),  # no timestamp (sorted last)
    ]
    frame = make_transitions(rows)
    _whole, tl = both(frame, 1, kernel="6.12")
    assert [p.kind for p in tl.meta["problems"]] == [
        "no_timestamp", "unknown_op", "empty_transition", "unaligned_transition",
    ]  # fmt: skip
    msgs = []
    for chunk in (None, 1):
        with pytest.raises(StrictError) as exc:
            replay(frame, kernel="6.12", strict=True, chunk=chunk)
        msgs.append(str(exc.value))
    assert msgs[0] == msgs[1] and "line 4" in msgs[0]
    twice = make_transitions([dict(op="share", addr=pg(0))] * 3)
    msgs = []
    for chunk in (None, 1):
        with pytest.raises(StrictError) as exc:
            replay(twice, kernel="6.12", strict=True, chunk=chunk)
        msgs.append(str(exc.value))
    assert msgs[0] == msgs[1] and "violation at line 2" in msgs[0]


def test_empty_and_one_chunk():
    both(make_transitions([]), 5, kernel="6.12")
    both(make_transitions([dict(op="share", addr=pg(0), size=3 * P)]), 10, kernel="6.12")


# -------------------------------------------------------------------------------------------
# random histories: chunked == whole for every chunk size
# -------------------------------------------------------------------------------------------
KINDS = {
    "6.12": [
        ("share", "host", "hyp"), ("unshare", "host", "hyp"), ("donate", "host", "hyp"),
        ("reclaim", "hyp", "host"), ("share", "host", "ffa"), ("unshare", "host", "ffa"),
        ("access_fault", "host", None),
    ],
    "6.14": [
        ("share", "host", "hyp"), ("unshare", "host", "hyp"), ("donate", "host", "hyp"),
        ("share", "host", "guest"), ("unshare", "host", "guest"), ("access_fault", "host", None),
    ],
    "7.1": [
        ("share", "host", "hyp"), ("unshare", "host", "hyp"), ("donate", "host", "guest"),
        ("share", "guest", "host"), ("unshare", "guest", "host"), ("reclaim", "guest", "host"),
        ("share", "host", "guest"), ("unshare", "host", "guest"), ("donate", "hyp", "host"),
    ],
}  # fmt: skip
NPAGES = 8


@st.composite
def histories(draw):
    kernel = draw(st.sampled_from(sorted(KINDS)))
    rows = []
    for i in range(draw(st.integers(0, 40))):
        ts = float(draw(st.integers(0, 25)))  # ties and time going back
        if draw(st.integers(0, 14)) == 0:
            first = draw(st.integers(0, NPAGES - 1))
            size = draw(st.sampled_from([0, P, 2 * P]))
            rows.append(dict(op="lost", addr=pg(first) if size else 0, size=size, ts=ts,
                             event_index=i, line=100 + i))  # fmt: skip
            continue
        op, ini, com = draw(st.sampled_from(KINDS[kernel]))
        first = draw(st.integers(0, NPAGES - 1))
        n = draw(st.integers(1, min(4, NPAGES - first)))
        counted = (
            (ini, com) == ("host", "hyp") and op in ("share", "unshare") and draw(st.booleans())
        )
        rows.append(dict(op=op, initiator=ini, completer=com, addr=pg(first), size=n * P, ts=ts,
                         event_index=i, line=100 + i, counted=counted))  # fmt: skip
    return kernel, rows


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    histories(),
    st.integers(1, 6),
    st.booleans(),
    st.lists(
        st.sampled_from(["owned", "shared_owned", "hyp", "absent"]),
        min_size=NPAGES,
        max_size=NPAGES,
    ),
)
def test_random_histories_replay_alike_in_chunks(history, chunk, precondition, initial):
    kernel, rows = history
    ranges = [
        (pg(p), P, "hyp", "owned") if s == "hyp" else (pg(p), P, "host", s)
        for p, s in enumerate(initial)
        if s != "absent"
    ]
    end = _map([(pg(p), P, "host", "shared_owned") for p in range(0, NPAGES, 3)])
    frame = make_transitions(rows)
    both(frame, chunk, kernel=kernel, precondition=precondition, initial=ranges, at_end=end)
    both(frame, chunk, kernel=kernel, precondition=True)
