"""Replay keeps ranges as ranges (issue 16): segments replay exactly like their pages.

The replay cuts page space at every row's first and stop page and at every boundary of the
initial-state ranges; one entry stands for a whole segment.  The reference model here is the
per-page expansion the replay used before (one entry per page and row, ``np.repeat``), fed
into the same pipeline: every page its own segment.  hypothesis checks that both give the same
INTERVALS, VIOLATIONS and meta on random small inputs with long ranges, initial maps, a map
after the trace, boot ranges, preconditions and counted shares that stop inside a segment
(the one place a segment's pages stop replaying alike: it is split).
"""

from __future__ import annotations

import importlib

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s2trace.trace.queries import owner_at
from s2trace.trace.replay import replay
from s2trace.trace.synth_helpers import make_transitions

replay_mod = importlib.import_module("s2trace.trace.replay")
rows_mod = importlib.import_module("s2trace.trace.replay.rows")
segments_mod = importlib.import_module("s2trace.trace.replay.segments")
coupled_mod = importlib.import_module("s2trace.trace.replay.coupled")

P = 4096
A = 0x4000_0000
W = 40  # pages of the window the random rows fall in


def pg(i: int) -> int:
    return A + i * P


def explode_per_page(rows, cuts=None):
    """The reference: one entry per (page, row), every touched page its own segment."""
    npages = rows.npages
    total = int(npages.sum())
    seq = np.repeat(np.arange(len(npages), dtype=np.int64), npages)
    starts = np.cumsum(npages) - npages
    k = np.arange(total, dtype=np.int64) - np.repeat(starts, npages)
    page = rows.first[seq] + k
    order = np.argsort(page, kind="stable")
    page, seq, k = page[order], seq[order], k[order]
    new = np.r_[True, page[1:] != page[:-1]] if total else np.zeros(0, dtype=bool)
    first_idx = np.flatnonzero(new)
    return segments_mod._Entries(
        seq, k, np.cumsum(new) - 1, page[first_idx], np.r_[first_idx, total],
        np.ones(len(first_idx), dtype=np.int64),
    )  # fmt: skip


def per_page(monkeypatch: pytest.MonkeyPatch, frame: pd.DataFrame, **kw):
    with monkeypatch.context() as m:
        m.setattr(replay_mod, "_explode", explode_per_page)
        return replay(frame, **kw)


def assert_same(a, b) -> None:
    pd.testing.assert_frame_equal(a.intervals, b.intervals)
    pd.testing.assert_frame_equal(a.violations, b.violations)
    ma, mb = ({**t.meta, "problems": [repr(p) for p in t.meta["problems"]]} for t in (a, b))
    assert ma == mb


KINDS = [
    ("share", "host", "hyp"), ("unshare", "host", "hyp"), ("donate", "host", "hyp"),
    ("reclaim", "hyp", "host"), ("share", "host", "ffa"), ("unshare", "host", "ffa"),
    ("access_fault", "host", None), ("share", "host", "guest"), ("unshare", "host", "guest"),
    ("donate", "host", "guest"), ("share", "guest", "host"), ("unshare", "guest", "host"),
    ("reclaim", "guest", "host"), ("lost", None, None),
]  # fmt: skip
MAP_STATES = [("host", "owned"), ("hyp", "nopage"), ("host", "shared_owned"),
              ("guest", "nopage"), ("host", "shared_borrowed"), ("ffa", "nopage"),
              ("host", "unknown")]  # fmt: skip


@st.composite
def maps(draw) -> pd.DataFrame:
    """A MAP of a few disjoint ranges over (and a little past) the window."""
    out = []
    p = draw(st.integers(0, 4))
    for _ in range(draw(st.integers(0, 6))):
        n = draw(st.integers(1, 10))
        if p + n > W + 5:
            break
        out.append((pg(p), n * P, *draw(st.sampled_from(MAP_STATES))))
        p += n + draw(st.integers(0, 3))
    return pd.DataFrame(
        {
            "ipa_start": np.array([r[0] for r in out], dtype=np.uint64),
            "size": np.array([r[1] for r in out], dtype=np.uint64),
            "owner": [r[2] for r in out],
            "page_state": [r[3] for r in out],
        }
    )


@st.composite
def scenarios(draw):
    kernel = draw(st.sampled_from(["5.15", "6.12", "6.14", "7.1"]))
    rows = []
    for i in range(draw(st.integers(0, 25))):
        op, ini, com = draw(st.sampled_from(KINDS))
        first = draw(st.integers(0, W - 1))
        long = draw(st.integers(0, 3)) == 0
        n = draw(st.integers(1, W - first if long else min(4, W - first)))
        ts = float(draw(st.integers(0, 12)))  # ties: event_index decides
        where = dict(addr=pg(first), size=n * P)
        if op == "lost":
            rows.append(dict(op="lost", ts=ts, event_index=i, line=100 + i,
                             **(where if draw(st.booleans()) else {})))  # fmt: skip
            continue
        counted = (ini, com) == ("host", "hyp") and op in ("share", "unshare")
        rows.append(
            dict(op=op, initiator=ini, completer=com, ts=ts, event_index=i, line=100 + i,
                 counted=counted and draw(st.booleans()), **where)
        )  # fmt: skip
    kw = {name: draw(maps()) for name in ("initial", "at_end", "boot") if draw(st.booleans())}
    return kernel, rows, {**kw, "precondition": draw(st.booleans())}


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(scenarios())
def test_segments_replay_like_their_pages(monkeypatch, scenario):
    kernel, rows, kw = scenario
    frame = make_transitions(rows)
    assert_same(replay(frame, kernel=kernel, **kw), per_page(monkeypatch, frame, kernel=kernel,
                                                             **kw))  # fmt: skip


def test_a_counted_share_stopping_inside_a_segment_splits_it(monkeypatch):
    # pages 2..5 are the hypervisor's: kvm_share_hyp over 0..7 shares 0 and 1, fails on page 2
    # (whose count is 1 all the same) and never reaches 3..7.  The counted unshare then takes
    # 0 and 1 back, sends page 2's unshare to EL2 (refused: not shared) and WARNs for 3..7
    # (count 0), so pages 2..5 -- one segment until the share -- answer three ways.
    frame = make_transitions(
        [
            dict(op="share", addr=pg(0), size=8 * P, counted=True, ts=1),
            dict(op="unshare", addr=pg(0), size=8 * P, counted=True, ts=2),
        ]
    )
    initial = [(pg(2), 4 * P, "hyp", "nopage")]
    calls = []
    grown = coupled_mod._grown
    monkeypatch.setattr(coupled_mod, "_grown", lambda s, *a: calls.append(s.made) or grown(s, *a))
    tl = replay(frame, kernel="6.12", initial=initial)
    assert calls == [[(3, 1, 1, 0)]]  # segment 1 (pages 2..5) split at row 0: page 2 | 3..5
    v = tl.violations
    assert list(zip(v["event_index"], (v["addr"] - A) // P, v["size"] // P, v["check"].astype(str),
                    strict=True)) == [
        (0, 2, 1, "host_not_owned"),
        (1, 2, 1, "not_shared"),
        (1, 3, 3, "unshare_not_shared"),
        (1, 6, 2, "unshare_not_shared"),
    ]  # fmt: skip
    assert [owner_at(tl, pg(i)).owner for i in range(8)] == ["host"] * 2 + ["hyp"] * 4 + [
        "host"
    ] * 2
    assert_same(tl, per_page(monkeypatch, frame, kernel="6.12", initial=initial))


def test_one_row_over_many_pages_is_one_entry():
    n = 1 << 26
    frame = make_transitions(
        [dict(op="donate", addr=pg(0), size=n * P, ts=1), dict(op="share", addr=pg(1), ts=2)]
    )
    tl = replay(frame, kernel="6.12")
    assert tl.meta["pages"] == n
    assert list(tl.violations["check"].astype(str)) == ["host_not_owned"]
    iv = tl.intervals
    # the refused share cuts the range in three segments; their pieces merge back into one
    # range per interval, as the per-page replay merges its pages
    assert list(zip((iv["addr_start"] - A) // P, iv["size"] // P, iv["owner"].astype(str),
                    strict=True)) == [(0, n, "host"), (0, n, "hyp")]  # fmt: skip
    rows = rows_mod._rows(
        replay_mod._sorted(frame), replay_mod.rule_table((6, 12), ()), P,
        replay_mod.ProblemLog(),
    )  # fmt: skip
    ent = segments_mod._explode(rows)
    assert len(ent.seq) == 4 and list(ent.seg_len) == [1, 1, n - 2]
