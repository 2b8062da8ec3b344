"""Replay of the pKVM ownership state machine: hand-written sequences and a reference model.

The reference model at the bottom applies transitions one at a time with plain Python, written
from docs/kernel-facts.md §KF-3.1, §KF-3.2 and §KF-3.4 directly (not from s2trace.pkvm.rules);
hypothesis checks that the vectorised replay agrees with it on violations, on the state after
every transition and on the final snapshot.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s2trace.columns import INTERVALS, TRANSITIONS, VIOLATIONS
from s2trace.errors import InputError, StrictError
from s2trace.trace.queries import owner_at, snapshot
from s2trace.trace.replay import replay
from s2trace.trace.synth_helpers import make_transitions, transitions_frame

# The package re-exports the function ``replay``, so reach the module itself by name.
replay_mod = importlib.import_module("s2trace.trace.replay")

P = 4096
A = 0x4000_0000  # a page address; pages below are A + i * P


def pg(i: int) -> int:
    return A + i * P


def run(rows: list[dict], kernel: str = "6.12", **kw):
    return replay(make_transitions(rows), kernel=kernel, **kw)


def states(tl, page: int, t: float | None = None) -> tuple:
    a = owner_at(tl, pg(page), t)
    return (a.owner, a.host_state, a.peer, a.peer_state)


def objs(series: pd.Series) -> list:
    return [None if pd.isna(x) else x for x in series.astype(object)]


def checks(tl) -> list[tuple[int, int, int, str]]:
    """(event_index, first page, pages, check) of every violation row."""
    v = tl.violations
    return [
        (int(e), (int(a) - A) // P, int(s) // P, str(c))
        for e, a, s, c in zip(v["event_index"], v["addr"], v["size"], v["check"], strict=True)
    ]


HOST = ("host", "owned", None, None)
SHARED_HYP = ("host", "shared_owned", "hyp", "shared_borrowed")
SHARED_FFA = ("host", "shared_owned", "ffa", "shared_borrowed")
SHARED_GUEST = ("host", "shared_owned", "guest", "shared_borrowed")
HYP = ("hyp", "nopage", "hyp", "owned")
GUEST = ("guest", "nopage", "guest", "owned")
GUEST_SHARES = ("guest", "shared_borrowed", "guest", "shared_owned")


# ---------------------------------------------------------------------------------------------
# output contract
# ---------------------------------------------------------------------------------------------
def test_outputs_have_declared_columns_and_dtypes():
    tl = run([dict(op="share", addr=pg(0)), dict(op="share", addr=pg(0))])
    INTERVALS.check(tl.intervals)
    VIOLATIONS.check(tl.violations)
    for schema, frame in ((INTERVALS, tl.intervals), (VIOLATIONS, tl.violations)):
        assert {c: str(t) for c, t in frame.dtypes.items()} == schema.dtypes()
    empty = run([])
    INTERVALS.check(empty.intervals)
    assert len(empty.intervals) == 0 and len(empty.violations) == 0


def test_make_transitions_fills_the_schema():
    tr = make_transitions([dict(op="reclaim", addr=pg(1)), dict(op="lost")])
    TRANSITIONS.check(tr)
    assert {c: str(t) for c, t in tr.dtypes.items()} == TRANSITIONS.dtypes()
    assert objs(tr["initiator"]) == ["hyp", None]
    assert list(tr["size"]) == [P, 0]
    with pytest.raises(ValueError, match="unknown keys"):
        make_transitions([dict(op="share", adr=1)])
    arr = transitions_frame(op=["share", "reclaim"], addr=np.array([0, P]))
    TRANSITIONS.check(arr)
    assert objs(arr["completer"]) == ["hyp", "host"]


# ---------------------------------------------------------------------------------------------
# every transition, hand-checked
# ---------------------------------------------------------------------------------------------
def test_share_unshare_host_hyp_intervals_exact():
    tl = run([dict(op="share", addr=pg(0), ts=1.0), dict(op="unshare", addr=pg(0), ts=2.5)])
    iv = tl.intervals
    assert list(iv["addr_start"]) == [pg(0)] * 3
    assert list(iv["size"]) == [P] * 3
    assert list(iv["t_start"]) == [-math.inf, 1.0, 2.5]
    assert list(iv["t_end"]) == [1.0, 2.5, math.inf]
    assert objs(iv["host_state"]) == ["owned", "shared_owned", "owned"]
    assert objs(iv["peer"]) == [None, "hyp", None]
    assert objs(iv["peer_state"]) == [None, "shared_borrowed", None]
    assert iv["event_index"].tolist() == [pd.NA, 0, 1]
    assert not iv["incomplete"].any()
    assert len(tl.violations) == 0


@pytest.mark.parametrize("kernel", ["6.12", "6.14", "7.1"])
def test_donate_and_reclaim_host_hyp(kernel):
    tl = run(
        [
            dict(op="donate", addr=pg(0), size=2 * P, ts=1),
            dict(op="reclaim", addr=pg(0), size=2 * P, ts=2),
        ],
        kernel,
    )
    assert states(tl, 1, 1.5) == HYP
    assert states(tl, 1) == HOST
    assert len(tl.intervals) == 3  # the two pages merge into one range per interval
    assert set(tl.intervals["size"]) == {2 * P}
    assert len(tl.violations) == 0


def test_donate_hyp_to_host_is_a_reclaim():
    tl = run(
        [
            dict(op="donate", addr=pg(0)),
            dict(op="donate", addr=pg(0), initiator="hyp", completer="host"),
        ]
    )
    assert states(tl, 0) == HOST and len(tl.violations) == 0


def test_share_unshare_host_ffa():
    tl = run(
        [
            dict(op="share", addr=pg(0), completer="ffa", ts=1),
            dict(op="unshare", addr=pg(0), completer="ffa", ts=2),
        ]
    )
    assert states(tl, 0, 1) == SHARED_FFA and states(tl, 0) == HOST
    assert len(tl.violations) == 0


def test_ffa_does_not_exist_before_6_5():
    tl = run([dict(op="share", addr=pg(0), completer="ffa")], "6.1")
    assert checks(tl) == [(0, 0, 1, "unsupported_transition")]
    assert "6.5" in tl.violations["detail"].iloc[0]
    assert states(tl, 0) == HOST


def test_host_guest_share_keeps_a_count():
    g = dict(completer="guest")
    tl = run(
        [
            dict(op="share", addr=pg(0), ts=1, **g),
            dict(op="share", addr=pg(0), ts=2, **g),
            dict(op="unshare", addr=pg(0), ts=3, **g),
            dict(op="unshare", addr=pg(0), ts=4, **g),
            dict(op="unshare", addr=pg(0), ts=5, **g),
        ],
        "6.14",
    )
    assert states(tl, 0, 1) == SHARED_GUEST
    assert states(tl, 0, 3.5) == SHARED_GUEST  # count 2 -> 1: still shared
    assert states(tl, 0, 4.5) == HOST
    assert checks(tl) == [(4, 0, 1, "double_unshare")]
    # one interval while shared (the count is not part of the visible state)
    assert list(tl.intervals["t_start"]) == [-math.inf, 1.0, 4.0]


def test_guest_share_does_not_exist_on_6_12():
    tl = run([dict(op="share", addr=pg(0), completer="guest")], "6.12")
    assert checks(tl) == [(0, 0, 1, "unsupported_transition")]


def test_protected_guest_donate_share_unshare_reclaim():
    tl = run(
        [
            dict(op="donate", addr=pg(0), completer="guest", ts=1),
            dict(op="share", addr=pg(0), initiator="guest", completer="host", ts=2),
            dict(op="unshare", addr=pg(0), initiator="guest", completer="host", ts=3),
            dict(op="reclaim", addr=pg(0), initiator="guest", completer="host", ts=4),
        ],
        "7.1",
    )
    assert [states(tl, 0, t) for t in (1, 2, 3, 4)] == [GUEST, GUEST_SHARES, GUEST, HOST]
    assert len(tl.violations) == 0


def test_reclaim_of_a_page_the_guest_shares_with_the_host():
    tl = run(
        [
            dict(op="donate", addr=pg(0), completer="guest"),
            dict(op="share", addr=pg(0), initiator="guest", completer="host"),
            dict(op="reclaim", addr=pg(0), initiator="guest", completer="host"),
        ],
        "7.3.4+deb13",
    )
    assert states(tl, 0) == HOST and len(tl.violations) == 0
    assert tl.meta["version"] == "7.3"


# ---------------------------------------------------------------------------------------------
# counted shares (kvm_share_hyp / kvm_unshare_hyp, arch/arm64/kvm/mmu.c; §KF-3.4)
# ---------------------------------------------------------------------------------------------
def test_two_objects_on_one_page_then_one_unshare():
    c = dict(counted=True)
    tl = run(
        [
            dict(op="share", addr=pg(0), ts=1, **c),  # vCPU 0 struct
            dict(op="share", addr=pg(0), ts=2, **c),  # vCPU 1 struct, same page: no hypercall
            dict(op="unshare", addr=pg(0), ts=3, **c),  # one goes: the page stays shared
            dict(op="unshare", addr=pg(0), ts=4, **c),  # the last goes: 1 -> 0 unshares
        ]
    )
    assert len(tl.violations) == 0
    assert states(tl, 0, 3.5) == SHARED_HYP
    assert states(tl, 0) == HOST
    assert list(tl.intervals["t_start"]) == [-math.inf, 1.0, 4.0]


def test_counted_unshare_at_zero_is_the_warn():
    tl = run(
        [
            dict(op="share", addr=pg(0), counted=True),
            dict(op="unshare", addr=pg(0), counted=True),
            dict(op="unshare", addr=pg(0), counted=True),
        ]
    )
    assert checks(tl) == [(2, 0, 1, "unshare_not_shared")]
    assert "WARN_ON" in tl.violations["detail"].iloc[0]


def test_uncounted_double_unshare():
    tl = run(
        [
            dict(op="share", addr=pg(0)),
            dict(op="unshare", addr=pg(0)),
            dict(op="unshare", addr=pg(0)),
        ]
    )
    assert checks(tl) == [(2, 0, 1, "double_unshare")]
    assert "expected host shared_owned, found host owned" in tl.violations["detail"].iloc[0]


def test_counted_share_stops_at_the_first_failing_page():
    # page 1 is the hypervisor's: kvm_share_hyp shares page 0, fails on page 1 (whose count
    # is nevertheless 1: share_pfn_hyp records it before the hypercall) and never reaches 2
    tl = run(
        [
            dict(op="donate", addr=pg(1), ts=0),
            dict(op="share", addr=pg(0), size=3 * P, counted=True, ts=1),
            dict(op="unshare", addr=pg(2), counted=True, ts=2),  # page 2 was never counted: WARN
            dict(op="share", addr=pg(1), counted=True, ts=3),  # count 1 -> 2: no hypercall
        ]
    )
    assert states(tl, 0) == SHARED_HYP
    assert states(tl, 1) == HYP
    assert states(tl, 2) == HOST
    assert checks(tl) == [(1, 1, 1, "host_not_owned"), (2, 2, 1, "unshare_not_shared")]
    assert tl.meta["sequential_rows"] > 0


def test_counted_flag_is_ignored_before_5_17():
    tl = run(
        [dict(op="share", addr=pg(0), counted=True), dict(op="share", addr=pg(0), counted=True)],
        "5.15",
    )
    assert checks(tl) == [(1, 0, 1, "host_not_owned")]


# ---------------------------------------------------------------------------------------------
# violations
# ---------------------------------------------------------------------------------------------
def test_donate_a_shared_page():
    tl = run([dict(op="share", addr=pg(0)), dict(op="donate", addr=pg(0))])
    assert checks(tl) == [(1, 0, 1, "shared_page_donated")]
    assert states(tl, 0) == SHARED_HYP  # refused: unchanged
    v = tl.violations.iloc[0]
    assert (v["ts"], v["line"], v["op"], v["initiator"], v["completer"]) == (
        1.0,
        2,
        "donate",
        "host",
        "hyp",
    )


def test_share_a_page_the_host_does_not_own():
    tl = run([dict(op="donate", addr=pg(0)), dict(op="share", addr=pg(0))])
    assert checks(tl) == [(1, 0, 1, "host_not_owned")]
    assert (
        "found host nopage (owner hyp: host nopage, hyp owned)" in tl.violations["detail"].iloc[0]
    )


def test_host_access_to_a_donated_page():
    tl = run(
        [
            dict(op="access_fault", addr=pg(0) + 0x123, size=0),
            dict(op="donate", addr=pg(0)),
            dict(op="access_fault", addr=pg(0) + 0x123, size=0),
            dict(op="share", addr=pg(1)),
            dict(op="access_fault", addr=pg(1)),
        ]
    )
    assert checks(tl) == [(2, 0, 1, "host_access_not_owned")]
    assert states(tl, 0) == HYP
    assert tl.meta["problems"] == []


def test_unshare_with_the_wrong_completer():
    tl = run([dict(op="share", addr=pg(0)), dict(op="unshare", addr=pg(0), completer="ffa")])
    assert checks(tl) == [(1, 0, 1, "completer_not_borrowed")]
    assert "checks only the host side" in tl.violations["detail"].iloc[0]
    tl = run(
        [dict(op="share", addr=pg(0), completer="ffa"), dict(op="unshare", addr=pg(0))], "6.12"
    )
    assert "CONFIG_NVHE_EL2_DEBUG" in tl.violations["detail"].iloc[0]


def test_reclaim_of_a_page_the_hypervisor_does_not_own():
    tl = run([dict(op="reclaim", addr=pg(0))])
    assert checks(tl) == [(0, 0, 1, "hyp_not_owned")]


def test_atomic_multi_page_refusal_changes_no_page():
    tl = run(
        [
            dict(op="share", addr=pg(1), ts=1),
            dict(op="donate", addr=pg(0), size=3 * P, ts=2),  # page 1 is shared: all refused
            dict(op="donate", addr=pg(3), size=2 * P, ts=3),
        ]
    )
    assert checks(tl) == [(1, 1, 1, "shared_page_donated")]
    assert [states(tl, i) for i in range(5)] == [HOST, SHARED_HYP, HOST, HYP, HYP]


def test_refusal_cascades_through_overlapping_ranges():
    # donate [1,3) is refused (page 2 shared), so page 1 stays the host's, so sharing it works;
    # replaying pages on their own would have donated page 1 and refused the share
    tl = run(
        [
            dict(op="share", addr=pg(2), ts=1),
            dict(op="donate", addr=pg(1), size=2 * P, ts=2),
            dict(op="share", addr=pg(0), size=2 * P, ts=3),
            dict(op="reclaim", addr=pg(1), ts=4),
        ]
    )
    assert checks(tl) == [(1, 2, 1, "shared_page_donated"), (3, 1, 1, "hyp_not_owned")]
    assert [states(tl, i) for i in range(3)] == [SHARED_HYP, SHARED_HYP, SHARED_HYP]


def test_violation_ranges_merge_contiguous_pages():
    tl = run([dict(op="donate", addr=pg(0), size=4 * P), dict(op="share", addr=pg(0), size=4 * P)])
    assert checks(tl) == [(1, 0, 4, "host_not_owned")]


# ---------------------------------------------------------------------------------------------
# lost events, ordering, problems, strict
# ---------------------------------------------------------------------------------------------
def test_lost_events_mark_alive_intervals_incomplete():
    tl = run(
        [
            dict(op="share", addr=pg(0), ts=1),
            dict(op="lost", ts=2),
            dict(op="unshare", addr=pg(0), ts=3),
            dict(op="share", addr=pg(5), ts=4),
        ]
    )
    iv = tl.intervals.set_index(["addr_start", "t_start"])["incomplete"]
    assert not iv[(pg(0), -math.inf)]
    assert iv[(pg(0), 1.0)]  # alive at the gap
    assert not iv[(pg(0), 3.0)]
    assert iv[(pg(5), -math.inf)] and not iv[(pg(5), 4.0)]
    assert tl.meta["lost"] == [{"ts": 2.0, "event_index": 1, "line": 2, "addr": 0, "size": 0}]


def test_ranged_lost_marker_only_marks_its_pages():
    tl = run(
        [
            dict(op="share", addr=pg(0), size=2 * P, ts=1),
            dict(op="lost", addr=pg(1), size=P, ts=2),
        ]
    )
    cur = tl.intervals[np.isinf(tl.intervals["t_end"])]
    assert list(zip(cur["addr_start"], cur["incomplete"], strict=True)) == [
        (pg(0), False),
        (pg(1), True),
    ]


def test_replay_order_is_time_then_event_index():
    rows = [
        dict(op="unshare", addr=pg(0), ts=2.0, event_index=7),
        dict(op="share", addr=pg(0), ts=2.0, event_index=3),
        dict(op="donate", addr=pg(0), ts=1.0, event_index=9),
        dict(op="reclaim", addr=pg(0), ts=1.5, event_index=1),
    ]
    tl = run(rows)
    assert len(tl.violations) == 0
    assert list(tl.intervals["event_index"].astype("Int64")[1:]) == [9, 1, 3, 7]
    assert list(tl.transitions["event_index"]) == [9, 1, 3, 7]


def test_malformed_rows_are_problems_and_strict_raises():
    rows = [
        dict(op="share", addr=pg(0) + 8, size=P - 8, ts=1, line=10),
        dict(op="pin", addr=pg(1), ts=2, line=11),
        dict(op="share", addr=pg(2), size=0, ts=3, line=12),
    ]
    tl = run(rows)
    assert [(p.kind, p.where) for p in tl.meta["problems"]] == [
        ("unknown_op", 11),
        ("empty_transition", 12),
        ("unaligned_transition", 10),
    ]
    assert states(tl, 0) == SHARED_HYP  # widened to the whole page
    assert states(tl, 1) == HOST and states(tl, 2) == HOST
    with pytest.raises(StrictError, match="line 11"):
        run(rows[1:2], strict=True)
    with pytest.raises(StrictError, match="violation at line 2: host_not_owned"):
        run([dict(op="donate", addr=pg(0)), dict(op="share", addr=pg(0))], strict=True)


def test_input_errors():
    with pytest.raises(InputError, match="transitions frame"):
        replay(pd.DataFrame({"ts": [1.0]}))
    with pytest.raises(InputError, match="kernel"):
        run([], kernel="banana")
    with pytest.raises(InputError, match=r"5\.13"):
        run([], kernel="5.10")
    with pytest.raises(InputError, match="power of two"):
        run([], page_size=3000)


# ---------------------------------------------------------------------------------------------
# initial state
# ---------------------------------------------------------------------------------------------
def _map(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ipa_start": np.array([r[0] for r in rows], dtype=np.uint64),
            "size": np.array([r[1] for r in rows], dtype=np.uint64),
            "kind": pd.Categorical([r[2] for r in rows]),
            "owner": pd.Categorical([r[3] for r in rows]),
            "page_state": pd.Categorical([r[4] for r in rows]),
        }
    )


def test_initial_map_states_and_untouched_ranges():
    initial = _map(
        [
            (pg(0), 4 * P, "block", "host", "owned"),
            (pg(4), 2 * P, "invalid", "hyp", "nopage"),
            (pg(6), P, "page", "host", "shared_owned"),
            (pg(7), P, "page", "host", "shared_borrowed"),
            (pg(8), 2 * P, "page", "host", "unknown"),
            (pg(10), P, "invalid", None, None),  # nothing known: skipped
            (pg(11), P, "invalid", "id:7", "nopage"),
        ]
    )
    tl = replay(
        make_transitions(
            [
                dict(op="share", addr=pg(1), ts=1),
                dict(op="reclaim", addr=pg(5), ts=2),
                dict(op="unshare", addr=pg(6), counted=True, ts=3),  # initially shared: count 1
                dict(op="share", addr=pg(11), ts=4),
            ]
        ),
        initial=initial,
    )
    assert states(tl, 1) == SHARED_HYP
    assert states(tl, 4) == HYP and states(tl, 5) == HOST
    assert states(tl, 6, 2) == SHARED_HYP and states(tl, 6) == HOST
    assert states(tl, 7) == ("hyp", "shared_borrowed", "hyp", "shared_owned")
    assert states(tl, 8) == HOST
    assert states(tl, 11) == ("id:7", "nopage", "id:7", "owned")
    assert checks(tl) == [(3, 11, 1, "host_not_owned")]
    assert tl.meta["initial"] == "map"
    assert tl.meta["initial_unknown_state"] == [(pg(8), 2 * P)]
    assert tl.meta["initial_rows_skipped"] == 1
    iv = tl.intervals
    # untouched pieces of the initial block keep one interval each from -inf to +inf
    host0 = iv[(iv["addr_start"] == pg(0))]
    assert list(zip(host0["size"], host0["t_start"], host0["t_end"], strict=True)) == [
        (P, -math.inf, math.inf)
    ]
    assert list(iv.loc[iv["addr_start"] == pg(2), "size"]) == [2 * P]
    assert iv["cause"].isna().sum() == len(iv[iv["t_start"] == -math.inf])


def test_initial_explicit_ranges():
    tl = run(
        [dict(op="unshare", addr=pg(0), completer="guest", ts=1)],
        "6.14",
        initial=[(pg(0), P, "host", "shared_owned", "guest"), (pg(1), P, "guest", "nopage")],
    )
    assert states(tl, 0, 0) == SHARED_GUEST and states(tl, 0) == HOST
    assert states(tl, 1) == GUEST
    assert tl.meta["initial"] == "ranges"


def test_initial_errors():
    with pytest.raises(InputError, match="not aligned"):
        run([], initial=[(pg(0) + 1, P, "hyp", "nopage")])
    with pytest.raises(InputError, match="overlap"):
        run([], initial=[(pg(0), 2 * P, "hyp", "nopage"), (pg(1), P, "hyp", "nopage")])
    with pytest.raises(InputError, match="expected"):
        run([], initial=[(pg(0), P)])
    with pytest.raises(InputError, match="missing columns"):
        run([], initial=pd.DataFrame({"ipa_start": [0]}))


def test_16k_pages():
    q = 16384
    tl = replay(make_transitions([dict(op="donate", addr=q, size=2 * q)], page_size=q), page_size=q)
    assert list(tl.intervals["size"]) == [2 * q, 2 * q]
    assert owner_at(tl, q + q + 100).owner == "hyp"


# ---------------------------------------------------------------------------------------------
# the exact loop engine and large guest counts
# ---------------------------------------------------------------------------------------------
def test_large_guest_counts_take_the_exact_engine():
    n = 300
    rows = [dict(op="share", addr=pg(0), completer="guest", ts=i) for i in range(n)]
    rows += [dict(op="unshare", addr=pg(0), completer="guest", ts=n + i) for i in range(n)]
    rows += [dict(op="share", addr=pg(1), completer="guest", ts=2 * n)]
    tl = run(rows, "6.14")
    assert tl.meta["loop_engine_pages"] == 1  # page 1's count stays small
    assert len(tl.violations) == 0
    assert states(tl, 0, 2 * n - 1.5) == SHARED_GUEST
    assert states(tl, 0, 2 * n - 1) == HOST
    assert states(tl, 1) == SHARED_GUEST


# ---------------------------------------------------------------------------------------------
# reference model (plain Python, one transition at a time)
# ---------------------------------------------------------------------------------------------
def version(kernel: str) -> tuple[int, int]:
    major, minor = kernel.split(".")[:2]
    return int(major), int(minor)


AVAILABLE = {  # (op, initiator, completer) -> first version (§KF-2.1, §KF-3.1, §KF-3.2)
    ("share", "host", "hyp"): (5, 15),
    ("unshare", "host", "hyp"): (5, 17),
    ("donate", "host", "hyp"): (6, 2),
    ("reclaim", "hyp", "host"): (6, 2),
    ("share", "host", "ffa"): (6, 5),
    ("unshare", "host", "ffa"): (6, 5),
    ("share", "host", "guest"): (6, 14),
    ("unshare", "host", "guest"): (6, 14),
    ("donate", "host", "guest"): (7, 1),
    ("share", "guest", "host"): (7, 1),
    ("unshare", "guest", "host"): (7, 1),
    ("reclaim", "guest", "host"): (7, 1),
}


def comp(st: tuple, who: str) -> str:
    if who == "host":
        return st[1]
    return st[3] if st[2] == who else "nopage"


class Reference:
    """pKVM page ownership, one page and one transition at a time."""

    def __init__(self, kernel: str):
        self.v = version(kernel)
        self.page: dict[int, tuple] = {}
        self.guests: dict[int, int] = {}  # host_share_guest_count
        self.shares: dict[int, int] = {}  # host kvm_share_hyp count
        self.violations: set[tuple[int, int, str]] = set()

    def get(self, p: int) -> tuple:
        return self.page.get(p, HOST)

    def refusal(self, op: str, ini: str, com: str, p: int) -> str | None:
        st = self.get(p)
        h = st[1]
        if (op, ini, com) not in AVAILABLE or self.v < AVAILABLE[(op, ini, com)]:
            return "unsupported_transition"
        if op == "share" and ini == "host" and com in ("hyp", "ffa"):
            if h != "owned":
                return "host_not_owned"
            if comp(st, com) != "nopage":
                return "completer_not_nopage"
        elif op == "unshare" and ini == "host" and com in ("hyp", "ffa"):
            if h != "shared_owned":
                return "double_unshare" if h == "owned" else "not_shared"
            if comp(st, com) != "shared_borrowed":
                return "completer_not_borrowed"
        elif op == "donate" and ini == "host":
            if h != "owned":
                return "shared_page_donated" if h == "shared_owned" else "host_not_owned"
            if com == "hyp" and comp(st, "hyp") != "nopage":
                return "completer_not_nopage"
        elif op == "reclaim" and ini == "hyp":
            if comp(st, "hyp") != "owned":
                return "hyp_not_owned"
            if h != "nopage":
                return "completer_not_nopage"
        elif op == "share" and com == "guest":
            if not (h == "owned" or (h == "shared_owned" and st[2] == "guest")):
                return "host_not_owned"
        elif op == "unshare" and com == "guest":
            if not (h == "shared_owned" and st[2] == "guest"):
                return "double_unshare" if h == "owned" else "not_shared"
        elif op == "share" and ini == "guest":
            if comp(st, "guest") != "owned":
                return "guest_not_owned"
            if h != "nopage":
                return "completer_not_nopage"
        elif op == "unshare" and ini == "guest":
            g = comp(st, "guest")
            if g != "shared_owned":
                return "double_unshare" if g == "owned" else "not_shared"
            if h != "shared_borrowed":
                return "completer_not_borrowed"
        elif op == "reclaim" and ini == "guest":
            if comp(st, "guest") not in ("owned", "shared_owned"):
                return "guest_not_owned"
            if h not in ("nopage", "shared_borrowed"):
                return "completer_not_nopage"
        return None

    def apply(self, op: str, ini: str, com: str, p: int) -> None:
        if op == "share" and ini == "host":
            self.page[p] = {"hyp": SHARED_HYP, "ffa": SHARED_FFA, "guest": SHARED_GUEST}[com]
            if com == "guest":
                self.guests[p] = self.guests.get(p, 0) + 1
        elif op == "unshare" and com == "guest":
            self.guests[p] -= 1
            if self.guests[p] == 0:
                self.page[p] = HOST
        elif op == "unshare" and ini == "host":
            self.page[p] = HOST
        elif op == "donate":
            self.page[p] = HYP if com == "hyp" else GUEST
        elif op == "reclaim":
            self.page[p] = HOST
        elif op == "share" and ini == "guest":
            self.page[p] = GUEST_SHARES
        elif op == "unshare" and ini == "guest":
            self.page[p] = GUEST

    def step(
        self, ev: int, op: str, ini: str | None, com: str | None, pages: list[int], counted: bool
    ):
        if op == "lost":
            return
        if op == "access_fault":
            for p in pages:
                if self.get(p)[1] == "nopage":
                    self.violations.add((ev, p, "host_access_not_owned"))
            return
        if op == "donate" and com == "host":
            op = "reclaim"
        if counted and self.v >= (5, 17) and (ini, com) == ("host", "hyp") and op == "share":
            for p in pages:  # kvm_share_hyp
                self.shares[p] = self.shares.get(p, 0) + 1
                if self.shares[p] > 1:
                    continue
                why = self.refusal(op, ini, com, p)
                if why:
                    self.violations.add((ev, p, why))
                    return
                self.apply(op, ini, com, p)
            return
        if counted and self.v >= (5, 17) and (ini, com) == ("host", "hyp") and op == "unshare":
            for p in pages:  # kvm_unshare_hyp
                if self.shares.get(p, 0) == 0:
                    self.violations.add((ev, p, "unshare_not_shared"))
                    continue
                self.shares[p] -= 1
                if self.shares[p] == 0:
                    why = self.refusal(op, ini, com, p)
                    if why:
                        self.violations.add((ev, p, why))
                    else:
                        self.apply(op, ini, com, p)
            return
        refused = {p: self.refusal(op, ini, com, p) for p in pages}
        for p, why in refused.items():
            if why:
                self.violations.add((ev, p, why))
        if not any(refused.values()):
            for p in pages:
                self.apply(op, ini, com, p)


KINDS = {
    "6.12": [
        ("share", "host", "hyp"),
        ("unshare", "host", "hyp"),
        ("donate", "host", "hyp"),
        ("reclaim", "hyp", "host"),
        ("share", "host", "ffa"),
        ("unshare", "host", "ffa"),
        ("access_fault", "host", None),
        ("share", "host", "guest"),
    ],
    "6.14": [
        ("share", "host", "hyp"),
        ("unshare", "host", "hyp"),
        ("donate", "host", "hyp"),
        ("reclaim", "hyp", "host"),
        ("share", "host", "guest"),
        ("unshare", "host", "guest"),
        ("unshare", "host", "ffa"),
        ("access_fault", "host", None),
    ],
    "7.1": [
        ("share", "host", "hyp"),
        ("unshare", "host", "hyp"),
        ("donate", "host", "guest"),
        ("share", "guest", "host"),
        ("unshare", "guest", "host"),
        ("reclaim", "guest", "host"),
        ("donate", "host", "hyp"),
        ("donate", "hyp", "host"),
        ("share", "host", "guest"),
        ("unshare", "host", "guest"),
        ("access_fault", "host", None),
    ],
}
NPAGES = 6


@st.composite
def scenarios(draw, legal: bool):
    kernel = draw(st.sampled_from(sorted(KINDS)))
    ref = Reference(kernel)
    rows = []
    for i in range(draw(st.integers(0, 30))):
        if draw(st.integers(0, 15)) == 0:
            rows.append(dict(op="lost", ts=float(i), event_index=i, line=100 + i))
            continue
        op, ini, com = draw(st.sampled_from(KINDS[kernel]))
        first = draw(st.integers(0, NPAGES - 1))
        n = draw(st.integers(1, min(3, NPAGES - first)))
        counted = (
            (ini, com) == ("host", "hyp") and op in ("share", "unshare") and draw(st.booleans())
        )
        row = dict(
            op=op,
            initiator=ini,
            completer=com,
            addr=pg(first),
            size=n * P,
            ts=float(i),
            event_index=i,
            line=100 + i,
            counted=counted,
        )
        if legal:
            trial = Reference(kernel)
            trial.page, trial.guests, trial.shares = (
                dict(ref.page),
                dict(ref.guests),
                dict(ref.shares),
            )
            trial.step(i, op, ini, com, list(range(first, first + n)), counted)
            if trial.violations:
                continue
        ref.step(i, op, ini, com, list(range(first, first + n)), counted)
        rows.append(row)
    shuffle = draw(st.permutations(range(len(rows))))
    return kernel, [rows[j] for j in shuffle]


def replay_reference(kernel: str, rows: list[dict]) -> tuple[Reference, list[tuple[float, dict]]]:
    ref = Reference(kernel)
    after = []
    for r in sorted(rows, key=lambda r: (r["ts"], r["event_index"])):
        first = (r.get("addr", A) - A) // P
        pages = list(range(first, first + r.get("size", 0) // P))
        ref.step(
            r["event_index"],
            r["op"],
            r.get("initiator"),
            r.get("completer"),
            pages,
            r.get("counted", False),
        )
        after.append((r["ts"], {p: ref.get(p) for p in range(NPAGES)}))
    return ref, after


def exploded_violations(tl) -> set[tuple[int, int, str]]:
    out = set()
    for e, a, s, c in zip(
        tl.violations["event_index"],
        tl.violations["addr"],
        tl.violations["size"],
        tl.violations["check"],
        strict=True,
    ):
        for p in range((int(a) - A) // P, (int(a) + int(s) - A) // P):
            out.add((int(e), p, str(c)))
    return out


def expected_map(ref: Reference, touched: set[int]) -> list[tuple[int, str, str, str]]:
    """Per page, what a snapshot must say: (page, kind, owner, page_state)."""
    out = []
    for p in sorted(touched):
        owner, host, _, _ = ref.get(p)
        lost = host == "nopage"
        out.append((p, "invalid" if lost else "page", owner if lost else "host", host))
    return out


def snapshot_pages(tl) -> list[tuple[int, str, str, str]]:
    snap = snapshot(tl)
    out = []
    for a, s, k, o, ps in zip(
        snap["ipa_start"],
        snap["size"],
        snap["kind"],
        snap["owner"],
        snap["page_state"],
        strict=True,
    ):
        for p in range((int(a) - A) // P, (int(a) + int(s) - A) // P):
            out.append((p, str(k), str(o), str(ps)))
    return out


def interval_lookup(tl):
    """state(page, t) from the INTERVALS table (plain Python over a small table)."""
    table = [
        (
            (int(a) - A) // P,
            (int(a) + int(s) - A) // P,
            t0,
            t1,
            (o, h, None if pd.isna(p) else p, None if pd.isna(q) else q),
        )
        for a, s, o, h, p, q, t0, t1 in zip(
            *(
                tl.intervals[c]
                for c in (
                    "addr_start",
                    "size",
                    "owner",
                    "host_state",
                    "peer",
                    "peer_state",
                    "t_start",
                    "t_end",
                )
            ),
            strict=True,
        )
    ]

    def state(page: int, t: float) -> tuple:
        hits = [st for p0, p1, t0, t1, st in table if p0 <= page < p1 and t0 <= t < t1]
        assert len(hits) <= 1, (page, t, hits)  # intervals of one page never overlap
        return hits[0] if hits else HOST

    return state


def assert_tiles_time(tl) -> None:
    """Every page with intervals has them end to end from -inf to +inf."""
    iv = tl.intervals
    for page in {(int(a) - A) // P + i for a, s in zip(iv["addr_start"], iv["size"], strict=True)
                 for i in range(int(s) // P)}:  # fmt: skip
        a = np.uint64(pg(page))
        mine = iv[(iv["addr_start"] <= a) & (a < iv["addr_start"] + iv["size"])]
        mine = mine.sort_values("t_start", kind="stable")
        t0, t1 = mine["t_start"].to_numpy(), mine["t_end"].to_numpy()
        assert t0[0] == -math.inf and t1[-1] == math.inf, page
        assert (t0[1:] == t1[:-1]).all(), page


def check_against_reference(kernel: str, rows: list[dict]) -> None:
    tl = replay(make_transitions(rows), kernel=kernel)
    ref, after = replay_reference(kernel, rows)
    assert exploded_violations(tl) == ref.violations
    state = interval_lookup(tl)
    assert_tiles_time(tl)
    for ts, pages in after:
        for p, expected in pages.items():
            assert state(p, ts) == expected, (ts, p)
    touched = {
        p
        for r in rows
        if r["op"] != "lost"
        for p in range((r["addr"] - A) // P, (r["addr"] + r["size"] - A) // P)
    }
    assert snapshot_pages(tl) == expected_map(ref, touched)


FAST = settings(max_examples=70, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(scenarios(legal=True))
def test_legal_sequences_replay_cleanly_and_match_the_reference(scenario):
    kernel, rows = scenario
    tl = replay(make_transitions(rows), kernel=kernel)
    assert len(tl.violations) == 0
    check_against_reference(kernel, rows)


@FAST
@given(scenarios(legal=False))
def test_random_sequences_match_the_reference(scenario):
    check_against_reference(*scenario)


@settings(max_examples=30, deadline=None)
@given(scenarios(legal=False))
def test_loop_engine_matches_scan_engine(scenario):
    kernel, rows = scenario
    frame = make_transitions(rows)
    fast = replay(frame, kernel=kernel)
    old = replay_mod._SCAN_COUNT_CAP
    try:
        replay_mod._SCAN_COUNT_CAP = -1  # every page through the exact loop engine
        slow = replay(frame, kernel=kernel)
    finally:
        replay_mod._SCAN_COUNT_CAP = old
    pd.testing.assert_frame_equal(fast.intervals, slow.intervals)
    pd.testing.assert_frame_equal(fast.violations, slow.violations)
    assert slow.meta["loop_engine_pages"] == slow.meta["pages"]


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.sampled_from([HOST, SHARED_HYP, HYP, SHARED_FFA]), min_size=NPAGES, max_size=NPAGES
    ),
    scenarios(legal=False),
)
def test_initial_states_match_the_reference(init_states, scenario):
    kernel, rows = scenario
    ranges = [
        (pg(p), P, s[0], s[1], s[2]) if s[2] and s[0] == "host" else (pg(p), P, s[0], s[1])
        for p, s in enumerate(init_states)
    ]
    tl = replay(make_transitions(rows), kernel=kernel, initial=ranges)
    ref = Reference(kernel)
    for p, s in enumerate(init_states):
        ref.page[p] = s
        if s == SHARED_HYP:
            ref.shares[p] = 1
    for r in sorted(rows, key=lambda r: (r["ts"], r["event_index"])):
        first = (r.get("addr", A) - A) // P
        ref.step(
            r["event_index"],
            r["op"],
            r.get("initiator"),
            r.get("completer"),
            list(range(first, first + r.get("size", 0) // P)),
            r.get("counted", False),
        )
    assert exploded_violations(tl) == ref.violations
    assert [states(tl, p) for p in range(NPAGES)] == [ref.get(p) for p in range(NPAGES)]


# ---------------------------------------------------------------------------------------------
# the 6.12 capture, transitions derived by hand from its ftrace.txt
# ---------------------------------------------------------------------------------------------
def test_qemu_pkvm_6_12_capture_by_hand():
    """../shared/samples/qemu-pkvm-6.12/ftrace.txt, read by hand (linear map: virtual
    0xffff000000000000 is physical 0x40000000, README).  Line 14: kvm_share_hyp of the struct
    kvm [..393d000, ..393df70) -> one page; line 21: the vCPU [..4c38000, ..4c39b90) -> two
    pages; lines 28/30/32: pkvm_create_hyp_vm's alloc_pages_exact returns 1, 2 and 2 pages,
    donated to the hypervisor when pkvm_create_hyp_vm completes (line 33, §KF-3.5)."""

    def pa(va: int) -> int:
        return va - 0xFFFF000000000000 + 0x40000000

    shared = dict(op="share", counted=True, recipe="kvm_share_hyp")
    donated = dict(op="donate", ts=18.549893, line=33)
    rows = [
        dict(addr=pa(0xFFFF00000393D000), size=P, ts=18.537715, line=14, **shared),
        dict(addr=pa(0xFFFF000004C38000), size=2 * P, ts=18.544642, line=21, **shared),
        dict(addr=pa(0xFFFF000008115000), size=P, event_index=28, **donated),
        dict(addr=pa(0xFFFF0000038F6000), size=2 * P, event_index=30, **donated),
        dict(addr=pa(0xFFFF0000038F8000), size=2 * P, event_index=32, **donated),
    ]
    tl = replay(make_transitions(rows), kernel="6.12")
    assert len(tl.violations) == 0
    snap = snapshot(tl)
    assert list(
        zip(
            snap["ipa_start"],
            snap["size"],
            snap["kind"].astype(str),
            snap["owner"].astype(str),
            snap["page_state"].astype(str),
            strict=True,
        )
    ) == [
        (0x438F6000, 4 * P, "invalid", "hyp", "nopage"),  # two adjacent donations: one range
        (0x4393D000, P, "page", "host", "shared_owned"),
        (0x44C38000, 2 * P, "page", "host", "shared_owned"),
        (0x48115000, P, "invalid", "hyp", "nopage"),
    ]
    # the two donations stay separate intervals (different causes)
    cur = tl.intervals[np.isinf(tl.intervals["t_end"]) & (tl.intervals["owner"] == "hyp")]
    assert list(zip(cur["addr_start"], cur["size"], cur["event_index"], strict=True)) == [
        (0x438F6000, 2 * P, 30),
        (0x438F8000, 2 * P, 32),
        (0x48115000, P, 28),
    ]
