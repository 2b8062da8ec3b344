"""Queries over an ownership timeline, on crafted timelines with hand-checked answers."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2trace.columns import INTERVALS, MAP, SNAPSHOT
from s2trace.errors import InputError
from s2trace.trace.queries import (
    MAP_DIFF,
    OwnerAnswer,
    basis_words,
    diff_maps,
    explain,
    history,
    owner_at,
    snapshot,
)
from s2trace.trace.replay import ASSUMED, PRECONDITION, replay
from s2trace.trace.synth_helpers import make_transitions

P = 4096
A = 0x8000_0000


def pg(i: int) -> int:
    return A + i * P


@pytest.fixture(scope="module")
def tl():
    """Pages 0-3: donated together at 10 (line 110), page 1 reclaimed at 20 (line 120);
    page 5 shared at 5 (line 105, counted) twice, unshared once at 30; a lost-events gap at
    25; a refused share of page 2 at 15 (line 115)."""
    rows = [
        dict(op="share", addr=pg(5), ts=5.0, line=105, event_index=50, counted=True),
        dict(op="share", addr=pg(5), ts=6.0, line=106, event_index=60, counted=True),
        dict(op="donate", addr=pg(0), size=4 * P, ts=10.0, line=110, event_index=100),
        dict(op="share", addr=pg(2), ts=15.0, line=115, event_index=150),
        dict(op="reclaim", addr=pg(1), ts=20.0, line=120, event_index=200),
        dict(op="lost", ts=25.0, line=125, event_index=250),
        dict(op="unshare", addr=pg(5), ts=30.0, line=130, event_index=300, counted=True),
    ]
    return replay(make_transitions(rows), kernel="6.12")


def test_owner_at_exact_answers(tl):
    assert owner_at(tl, pg(2) + 0x10, 12.0) == OwnerAnswer(
        addr=pg(2) + 0x10,
        t=12.0,
        owner="hyp",
        host_state="nopage",
        peer="hyp",
        peer_state="owned",
        since=10.0,
        t_earliest=10.0,
        cause=110,
        event_index=100,
        basis="trace line 110",
        incomplete=False,
    )
    before = owner_at(tl, pg(2), 9.999)
    assert (before.owner, before.host_state, before.since, before.cause, before.event_index) == (
        "host",
        "owned",
        -math.inf,
        None,
        None,
    )
    assert before.basis == ASSUMED  # replay() without precondition: nothing speaks for it
    at = owner_at(tl, pg(1), 20.0)  # [t_start, t_end): the new state at its own time
    assert (at.owner, at.host_state, at.event_index, at.cause) == ("host", "owned", 200, 120)
    end = owner_at(tl, pg(3))
    assert (end.owner, end.since, end.event_index, end.incomplete) == ("hyp", 10.0, 100, True)


def test_owner_at_incomplete_only_after_the_gap(tl):
    assert not owner_at(tl, pg(3), 24.0).incomplete
    assert owner_at(tl, pg(3), 26.0).incomplete
    shared = owner_at(tl, pg(5), 26.0)
    assert (shared.host_state, shared.peer, shared.incomplete) == ("shared_owned", "hyp", True)


def test_owner_at_untouched_page(tl):
    a = owner_at(tl, pg(100), 1.0)
    assert (a.owner, a.host_state, a.peer, a.since, a.cause, a.incomplete) == (
        "host",
        "owned",
        None,
        -math.inf,
        None,
        False,
    )
    assert owner_at(tl, pg(100)).incomplete  # the gap at 25 concerns every page


def test_history_of_a_page(tl):
    h = history(tl, pg(1) + 5)
    INTERVALS.check(h)
    assert list(h["t_start"]) == [-math.inf, 10.0, 20.0]
    assert list(h["t_end"]) == [10.0, 20.0, math.inf]
    assert [str(x) for x in h["owner"]] == ["host", "hyp", "host"]
    assert list(h["addr_start"]) == [pg(0), pg(1), pg(1)]  # the initial range is pages 0-3
    assert list(h["size"]) == [4 * P, P, P]
    assert list(h["event_index"].astype("Int64")[1:]) == [100, 200]
    assert list(h["cause"].astype("Int64")[1:]) == [110, 120]
    untouched = history(tl, pg(100) + 1)
    assert list(untouched["addr_start"]) == [pg(100)]
    assert (untouched["t_start"].iloc[0], untouched["t_end"].iloc[0]) == (-math.inf, math.inf)
    assert bool(untouched["incomplete"].iloc[0])
    assert {c: str(t) for c, t in untouched.dtypes.items()} == INTERVALS.dtypes()


def test_snapshot_is_a_coalesced_map(tl):
    snap = snapshot(tl, 12.0)
    SNAPSHOT.check(snap)
    assert SNAPSHOT.names[: len(MAP.names)] == MAP.names  # a map, plus its basis
    rows = list(
        zip(
            snap["ipa_start"],
            snap["size"],
            snap["kind"].astype(str),
            snap["owner"].astype(str),
            snap["page_state"].astype(str),
            strict=True,
        )
    )
    assert rows == [
        (pg(0), 4 * P, "invalid", "hyp", "nopage"),
        (pg(5), P, "page", "host", "shared_owned"),
    ]
    assert snap["oa"].isna().tolist() == [True, False] and snap["oa"].iloc[1] == pg(5)
    end = snapshot(tl)
    assert list(zip(end["ipa_start"], end["size"], end["kind"].astype(str), strict=True)) == [
        (pg(0), P, "invalid"),
        (pg(1), P, "page"),
        (pg(2), 2 * P, "invalid"),
        (pg(5), P, "page"),
    ]
    assert list(end["page_state"].astype(str)) == ["nopage", "owned", "nopage", "shared_owned"]
    assert list(end["basis"].astype(str)) == [
        "trace line 110",
        "trace line 120",
        "trace line 110",
        "trace line 105",  # the counted share at 106 and unshare at 130 changed nothing
    ]
    assert {c: str(t) for c, t in snapshot(tl, -1.0).dtypes.items()} == SNAPSHOT.dtypes()
    first = snapshot(tl, -1.0)  # before anything: every touched page is host owned
    assert list(zip(first["ipa_start"], first["size"], strict=True)) == [(pg(0), 4 * P), (pg(5), P)]
    assert set(first["basis"].astype(str)) == {ASSUMED}  # replay() without precondition


def test_snapshot_basis_splits_rows_and_names_preconditions():
    """Equal states resting on different lines stay apart; a precondition names the line of
    the transition that requires it, as owner_at does."""
    rows = [
        dict(op="donate", addr=pg(0), ts=10.0, line=110, event_index=100),
        dict(op="donate", addr=pg(1), ts=11.0, line=111, event_index=110),
        dict(op="reclaim", addr=pg(2), ts=12.0, line=112, event_index=120),
    ]
    tl2 = replay(make_transitions(rows), kernel="6.12", precondition=True)
    end = snapshot(tl2)
    assert list(zip(end["ipa_start"], end["size"], end["basis"].astype(str), strict=True)) == [
        (pg(0), P, "trace line 110"),
        (pg(1), P, "trace line 111"),
        (pg(2), P, "trace line 112"),
    ]
    before = snapshot(tl2, 11.5)
    pre = before[before["ipa_start"] == pg(2)]["basis"].astype(str).iloc[0]
    assert pre == f"{PRECONDITION} (trace line 112)"
    assert pre == owner_at(tl2, pg(2), 11.5).basis
    assert str(before["owner"].iloc[-1]) == "hyp"  # a reclaim requires the hyp to own it


def test_snapshot_round_trips_through_replay(tl):
    snap = snapshot(tl)
    again = replay(make_transitions([]), initial=snap)
    assert diff_maps(snap, snapshot(again)).empty
    assert owner_at(again, pg(2)).owner == "hyp"
    assert owner_at(again, pg(5)).peer == "hyp"


def test_explain_narrative(tl):
    text = explain(tl, pg(1), 26.0)
    assert text.splitlines() == [
        f"page {pg(1):#x} at t=26.000000: owner host, host owned (since 20.000000, line 120)",
        "basis: trace line 120",
        "state changes:",
        f"           start  initial: owner host, host owned [{ASSUMED}]",
        "       10.000000  line 110 donate host → hyp -> owner hyp, host nopage, hyp owned",
        "       20.000000  line 120 reclaim hyp → host -> owner host, host owned",
        "(may be incomplete: lost events at 25.000000)",
    ]
    refused = explain(tl, pg(2))
    assert "violations:" in refused
    assert "line 115: host_not_owned: share host→hyp" in refused
    counted = explain(tl, pg(5), 7.0)
    assert "line 106 share host → hyp (counted)" in counted  # changed nothing: count 1 -> 2
    assert "lost events" not in counted


def _map(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ipa_start": np.array([r[0] for r in rows], dtype=np.uint64),
            "size": np.array([r[1] for r in rows], dtype=np.uint64),
            "owner": pd.Categorical([r[2] for r in rows]),
            "page_state": pd.Categorical([r[3] for r in rows]),
        }
    )


def test_diff_maps_sweep():
    expected = _map(
        [
            (0x0000, 0x4000, "host", "owned"),  # block, compared page-wise against actual's rows
            (0x4000, 0x1000, "hyp", "nopage"),
            (0x8000, 0x2000, "host", "unknown"),  # unknown agrees with any host state
            (0xA000, 0x1000, "host", "shared_owned"),  # actual has nothing: host, no state: agrees
            (0xB000, 0x1000, "guest", "nopage"),  # actual has nothing: host != guest
        ]
    )
    actual = _map(
        [
            (0x0000, 0x1000, "host", "owned"),
            (0x1000, 0x2000, "host", "shared_owned"),
            (0x3000, 0x2000, "hyp", "nopage"),  # covers 0x3000 (host in expected) and 0x4000
            (0x8000, 0x1000, "host", "shared_borrowed"),
            (0x9000, 0x1000, "hyp", "nopage"),
        ]
    )
    d = diff_maps(expected, actual)
    MAP_DIFF.check(d)
    got = [
        (int(a), int(s), *(None if pd.isna(x) else str(x) for x in r))
        for a, s, *r in zip(
            d["ipa_start"],
            d["size"],
            d["expected_owner"],
            d["expected_state"],
            d["actual_owner"],
            d["actual_state"],
            strict=True,
        )
    ]
    assert got == [
        (0x1000, 0x2000, "host", "owned", "host", "shared_owned"),
        (0x3000, 0x1000, "host", "owned", "hyp", "nopage"),
        (0x9000, 0x1000, "host", "unknown", "hyp", "nopage"),
        (0xB000, 0x1000, "guest", "nopage", None, None),
    ]


def test_diff_maps_edge_cases():
    m = _map([(0x1000, 0x1000, "host", "owned")])
    assert diff_maps(m, m).empty and list(diff_maps(m, m).columns) == MAP_DIFF.names
    assert diff_maps(_map([]), _map([])).empty
    with pytest.raises(InputError, match="overlapping rows at 0x1000"):
        diff_maps(_map([(0, 0x2000, "host", "owned"), (0x1000, 0x1000, "hyp", "nopage")]), m)
    with pytest.raises(InputError, match="lacks columns"):
        diff_maps(pd.DataFrame({"ipa_start": [0]}), m)
    na_state = _map([(0x1000, 0x1000, "host", None)])
    assert diff_maps(na_state, _map([(0x1000, 0x1000, "host", "shared_owned")])).empty
    na_owner = _map([(0x1000, 0x1000, None, None)])
    assert diff_maps(na_owner, _map([(0x1000, 0x1000, "hyp", "nopage")])).empty
    assert len(diff_maps(m, _map([(0x1000, 0x1000, "ffa", "nopage")]))) == 1


# ---------------------------------------------------------------------------------------------
# the real captures: a replay of their trace evidence agrees with their dumps
# ---------------------------------------------------------------------------------------------
LINEAR_VA, LINEAR_PA = 0xFFFF000000000000, 0x40000000  # both sample READMEs


def evidence_transitions(trace: str) -> pd.DataFrame:
    """Transitions read from a sample's ftrace.txt with two regexes (not the recipes):
    kvm_share_hyp ranges (counted shares, §KF-3.4) and the alloc_pages_exact results of
    pkvm_create_hyp_vm / pkvm_create_hyp_vcpu (donated to the hypervisor, §KF-3.5)."""
    rows = []
    for m in re.finditer(r"(\d+\.\d+): s2_kvm_share_hyp: .* from=(0x[0-9a-f]+) to=(0x[0-9a-f]+)",
                         trace):  # fmt: skip
        lo = int(m.group(2), 16) - LINEAR_VA + LINEAR_PA
        hi = int(m.group(3), 16) - LINEAR_VA + LINEAR_PA
        lo -= lo % P
        rows.append(dict(op="share", addr=lo, size=-(-hi // P) * P - lo, ts=float(m.group(1)),
                         counted=True))  # fmt: skip
    sizes = re.findall(r"s2_alloc_pages_exact: .* size=(0x[0-9a-f]+)", trace)
    rets = re.findall(r"(\d+\.\d+): s2_alloc_pages_exact_ret: \((\w+)\+.* ret=(0x[0-9a-f]+)", trace)
    for size, (ts, caller, ret) in zip(sizes, rets, strict=True):
        if caller in ("pkvm_create_hyp_vm", "pkvm_create_hyp_vcpu"):
            pa = int(ret, 16) - LINEAR_VA + LINEAR_PA
            rows.append(dict(op="donate", addr=pa, size=int(size, 16), ts=float(ts)))
    return make_transitions(rows)


@pytest.mark.slow
@pytest.mark.parametrize(("version", "profile"), [("6.12", "linux-5.15"), ("7.3", "linux-7.1")])
def test_replayed_evidence_agrees_with_the_dump(version, profile):
    from conftest import REAL, real_core, real_dir

    from s2trace.arch.registers import config_from_registers
    from s2trace.io import open_memory
    from s2trace.walk.walker import walk

    trace = (real_dir(version) / "ftrace.txt").read_text()
    tl = replay(evidence_transitions(trace), kernel=version)
    assert len(tl.violations) == 0
    snap = snapshot(tl)
    assert (snap["kind"] == "invalid").any() and (snap["page_state"] == "shared_owned").any()
    info = REAL[version]
    with open_memory([str(real_core(version))]) as memory:
        dump = walk(
            memory, config_from_registers(info["vttbr"], info["vtcr"]), profile,
            fwb=version == "7.3",
        ).map  # fmt: skip
    d = diff_maps(snap, dump)
    start = d["ipa_start"].to_numpy()
    touched = np.zeros(len(d), dtype=bool)
    for a, s in zip(snap["ipa_start"], snap["size"], strict=True):
        touched |= (start >= a) & (start < a + s)
    assert d[touched].empty, d[touched]


def _slow_basis(iv: pd.DataFrame, i: int, addr: int) -> str:
    """The basis words of interval ``i`` for the page holding ``addr``, one row at a time:
    the rules of :func:`basis_words`, written from its contract."""
    row = iv.iloc[i]
    basis, cause = str(row["basis"]), row["cause"]
    if basis == "trace" and not pd.isna(cause):
        return f"trace line {int(cause)}"
    if basis.startswith("rule:") and not pd.isna(cause):
        return f"{basis} (trace line {int(cause)})"
    if basis == PRECONDITION:
        for j in range(len(iv)):
            nxt = iv.iloc[j]
            start = int(nxt["addr_start"])
            inside = start <= addr < start + int(nxt["size"])
            if nxt["t_start"] == row["t_end"] and inside and not pd.isna(nxt["cause"]):
                return f"{basis} (trace line {int(nxt['cause'])})"
    return basis


@settings(max_examples=25, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["share", "unshare", "donate", "reclaim"]),
            st.integers(0, 7),
            st.integers(1, 3),
        ),
        min_size=1,
        max_size=14,
    )
)
def test_basis_words_match_a_row_by_row_reading(ops):
    rows = [
        dict(op=op, addr=pg(first), size=n * P, ts=float(k + 1), line=100 + k, event_index=k)
        for k, (op, first, n) in enumerate(ops)
    ]
    tl2 = replay(make_transitions(rows), kernel="6.12", precondition=True)
    iv = tl2.intervals
    for addr in (pg(p) + 8 for p in range(10)):
        hit = np.flatnonzero(
            (iv["addr_start"].to_numpy() <= addr)
            & (addr < (iv["addr_start"] + iv["size"]).to_numpy())
        )
        got = basis_words(iv, hit, np.full(len(hit), addr, dtype=np.uint64))
        assert list(got) == [_slow_basis(iv, int(i), addr) for i in hit]
        for t in (0.5, *(float(k) + 1 for k in range(len(ops))), None):
            assert owner_at(tl2, addr, t).basis in {*got, tl2.meta["default_basis"]}
    snap = snapshot(tl2)
    assert not snap["basis"].isna().any()
