"""Questions about an ownership timeline: who owned a page when, how it got there, and map diffs.

Every query is a mask or a ``searchsorted`` over the INTERVALS table of a
:class:`~s2trace.trace.replay.Timeline`.  Pages the timeline has no row for were never touched
and are host owned for the whole replay (the replay's default); a lost-events marker of size 0
still makes their answer ``incomplete`` from its time on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from s2trace.columns import INTERVALS, MAP_DIFF, SNAPSHOT
from s2trace.errors import InputError
from s2trace.intervals import covering, distinct
from s2trace.trace.replay import ASSUMED, PRECONDITION, Timeline
from s2trace.trace.replay.rows import TRACE_BASIS

__all__ = [
    "MAP_DIFF",
    "SNAPSHOT",
    "OwnerAnswer",
    "basis_words",
    "diff_maps",
    "explain",
    "history",
    "owner_at",
    "snapshot",
]


@dataclass(frozen=True, slots=True)
class OwnerAnswer:
    """The state of the page holding ``addr`` at time ``t`` (``None``: after the last event).

    ``since`` is when that state certainly held (the first event by which the transition had
    happened; -inf: before the trace), ``t_earliest`` the earliest time the transition can
    have happened (< ``since`` when the trace only brackets it), ``cause`` the source line of
    the event that started it and ``event_index`` that event's row.  ``basis`` says what the
    state rests on: ``trace`` (the line in ``cause``), a kernel rule in words, the dump
    (named), an evidence file and line, or an assumption.  ``incomplete``: a lost-events
    marker concerning this page lies between ``since`` and ``t``, so a transition may be
    missing.
    """

    addr: int
    t: float | None
    owner: str
    host_state: str
    peer: str | None
    peer_state: str | None
    since: float
    t_earliest: float
    cause: int | None
    event_index: int | None
    basis: str
    incomplete: bool


# ---------------------------------------------------------------------------------------------
def _alive(iv: pd.DataFrame, t: float | None) -> np.ndarray:
    t_start = iv["t_start"].to_numpy()
    t_end = iv["t_end"].to_numpy()
    if t is None:
        return np.isinf(t_end) & (t_end > 0)
    return (t_start <= t) & (t < t_end)


def _covers(iv: pd.DataFrame, addr: int) -> np.ndarray:
    start = iv["addr_start"].to_numpy()
    end = start + iv["size"].to_numpy()
    a = np.uint64(addr)
    return (start <= a) & (a < end)


def _lost_before(timeline: Timeline, addr: int, t: float | None) -> list[float]:
    """Times of lost-events markers that concern ``addr`` at or before ``t``."""
    out = []
    for m in timeline.meta.get("lost", []):
        inside = m["size"] == 0 or m["addr"] <= addr < m["addr"] + m["size"]
        if inside and (t is None or m["ts"] <= t):
            out.append(m["ts"])
    return out


def _na(value: Any) -> object:
    return None if pd.isna(value) else value


def owner_at(timeline: Timeline, addr: int, t: float | None = None) -> OwnerAnswer:
    """Who owned the page holding ``addr`` at time ``t`` (``None``: at the end), and on what
    basis."""
    iv = timeline.intervals
    hit = np.flatnonzero(_covers(iv, addr) & _alive(iv, t))
    if len(hit) == 0:
        return OwnerAnswer(  # nothing speaks for this page: the timeline's default
            addr=addr,
            t=t,
            owner="host",
            host_state="owned",
            peer=None,
            peer_state=None,
            since=-np.inf,
            t_earliest=-np.inf,
            cause=None,
            event_index=None,
            basis=str(timeline.meta.get("default_basis", ASSUMED)),
            incomplete=bool(_lost_before(timeline, addr, t)),
        )
    row = iv.iloc[hit[0]]
    cause, event_index = (_na(row[c]) for c in ("cause", "event_index"))
    return OwnerAnswer(
        addr=addr,
        t=t,
        owner=str(row["owner"]),
        host_state=str(row["host_state"]),
        peer=_na(row["peer"]),  # type: ignore[arg-type]
        peer_state=_na(row["peer_state"]),  # type: ignore[arg-type]
        since=float(row["t_start"]),
        t_earliest=float(row["t_earliest"]),
        cause=None if cause is None else int(cause),  # type: ignore[call-overload]
        event_index=None if event_index is None else int(event_index),  # type: ignore[call-overload]
        basis=str(basis_words(iv, hit[:1], np.array([addr], dtype=np.uint64))[0]),
        incomplete=bool(row["incomplete"])
        and any(x >= float(row["t_start"]) for x in _lost_before(timeline, addr, t)),
    )


def basis_words(iv: pd.DataFrame, idx: np.ndarray, at: np.ndarray) -> np.ndarray:
    """What the states of intervals ``iv.iloc[idx]`` rest on, in words (object array).

    ``trace line N`` for a state an event set; a kernel rule with the line it applies to;
    the precondition of a page's first transition with that transition's line (found in the
    interval that follows on the page holding ``at``, which starts where this one ends); the
    dump, an evidence file and line, or an assumption as the replay wrote them.  Vectorised:
    one as-of join for the preconditions.
    """
    idx = np.asarray(idx, dtype=np.int64)
    basis = iv["basis"].astype("object").to_numpy()[idx]
    cause = iv["cause"].to_numpy(dtype=np.float64, na_value=np.nan)[idx]
    out = basis.copy()
    line = pd.Series(cause).astype("Int64").astype("string").to_numpy(dtype=object)
    known = ~np.isnan(cause)
    trace = known & (basis == TRACE_BASIS)
    out[trace] = "trace line " + line[trace]
    rule = known & np.array(
        [str(b).startswith(("rule:", "trace:", "uncertain:")) for b in basis], dtype=bool
    )
    out[rule] = basis[rule] + " (trace line " + line[rule] + ")"
    pre = np.flatnonzero(basis == PRECONDITION)
    if len(pre):
        follows = _following_lines(iv, iv["t_end"].to_numpy()[idx[pre]], np.asarray(at)[pre])
        found = ~np.isnan(follows)
        text = pd.Series(follows[found]).astype("Int64").astype("string").to_numpy(dtype=object)
        out[pre[found]] = basis[pre[found]] + " (trace line " + text + ")"
    return out


def _following_lines(iv: pd.DataFrame, t_end: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Source line of the interval that starts at ``t_end`` on the page holding ``at`` (NaN:
    none) -- a backward as-of join on the address, keyed by the start time."""
    starts = iv[iv["cause"].notna().to_numpy(dtype=bool)]
    addr = starts["addr_start"].to_numpy(dtype=np.uint64)
    stop = addr + starts["size"].to_numpy(dtype=np.uint64)
    line = starts["cause"].to_numpy(dtype=np.float64, na_value=np.nan)
    right = pd.DataFrame(
        {"key": starts["t_start"].to_numpy(), "addr": addr, "j": np.arange(len(addr))}
    ).sort_values("addr", kind="stable")
    left = pd.DataFrame(
        {"key": t_end, "addr": at.astype(np.uint64), "row": np.arange(len(at))}
    ).sort_values("addr", kind="stable")
    m = pd.merge_asof(left, right, on="addr", by="key", direction="backward")
    j = m["j"].to_numpy(dtype=np.float64, na_value=np.nan)
    hit = ~np.isnan(j)
    rows, j = m["row"].to_numpy()[hit], j[hit].astype(np.int64)
    inside = m["addr"].to_numpy(dtype=np.uint64)[hit] < stop[j]
    out = np.full(len(at), np.nan)
    out[rows[inside]] = line[j[inside]]
    return out


def history(timeline: Timeline, addr: int) -> pd.DataFrame:
    """The intervals (INTERVALS rows) of the page holding ``addr``, in time order.

    A page nothing speaks for gets one synthetic row: host owned from -inf to +inf, with the
    timeline's default basis (an assumption, or "no entry in the dump").
    """
    iv = timeline.intervals
    rows = iv[_covers(iv, addr)].sort_values("t_start", kind="stable")
    if len(rows):
        return rows.reset_index(drop=True)
    page = addr - addr % timeline.page_size
    return pd.DataFrame(
        {
            "addr_start": np.array([page], dtype=np.uint64),
            "size": np.array([timeline.page_size], dtype=np.uint64),
            "owner": pd.Categorical(["host"]),
            "host_state": pd.Categorical(["owned"]),
            "peer": pd.Categorical([None]),
            "peer_state": pd.Categorical([None]),
            "t_start": [-np.inf],
            "t_end": [np.inf],
            "t_earliest": [-np.inf],
            "cause": pd.array([None], dtype="Int64"),
            "event_index": pd.array([None], dtype="Int64"),
            "basis": pd.Categorical([str(timeline.meta.get("default_basis", ASSUMED))]),
            "incomplete": pd.array([bool(_lost_before(timeline, addr, None))], dtype="boolean"),
        }
    ).astype(INTERVALS.dtypes())


# ---------------------------------------------------------------------------------------------
def _coalesce(start: np.ndarray, size: np.ndarray, *keys: np.ndarray) -> tuple[np.ndarray, ...]:
    """Merge address-sorted adjacent ranges whose keys are equal."""
    if len(start) == 0:
        return (start, size, *keys)
    same = start[1:] == start[:-1] + size[:-1]
    for k in keys:
        same &= pd.Series(k[1:]).eq(pd.Series(k[:-1])).to_numpy() | (
            pd.isna(k[1:]) & pd.isna(k[:-1])
        )
    heads = np.flatnonzero(np.r_[True, ~same])
    return (start[heads], np.add.reduceat(size, heads), *(k[heads] for k in keys))


def snapshot(timeline: Timeline, t: float | None = None) -> pd.DataFrame:
    """The ownership map at ``t`` (``None``: the end), with the SNAPSHOT columns (MAP + basis).

    As a host stage-2 dump shows it: pages the host can reach are ``kind`` page, owner host
    (``oa`` = address: identity map), ``page_state`` = the host's state; pages the host lost
    are ``kind`` invalid with their owner and ``nopage``.  ``basis`` says what each row's
    state rests on, in the words of :func:`basis_words` (``trace line N``, a rule with its
    line, the dump, an evidence file and line, or an assumption).  Adjacent ranges with equal
    values and basis are merged.  Pages the timeline has no interval for (nothing speaks for
    them) are left out, like the zero entries of a dump.  Walk-only columns (level,
    table_pa, index, raw) are 0, the others <NA>.
    """
    iv = timeline.intervals
    idx = np.flatnonzero(_alive(iv, t))
    idx = idx[np.argsort(iv["addr_start"].to_numpy()[idx], kind="stable")]
    alive = iv.iloc[idx]
    start0 = alive["addr_start"].to_numpy()
    host_state = alive["host_state"].astype("object").to_numpy()
    lost = host_state == "nopage"
    owner = np.where(lost, alive["owner"].astype("object").to_numpy(), "host")
    kind = np.where(lost, "invalid", "page")
    basis = basis_words(iv, idx, start0)
    start, size, kind, owner, host_state, basis = _coalesce(
        start0, alive["size"].to_numpy(), kind, owner, host_state, basis
    )
    n = len(start)
    oa = pd.array(start, dtype="UInt64")
    oa[kind == "invalid"] = pd.NA
    frame = pd.DataFrame(
        {
            "ipa_start": start.astype(np.uint64),
            "size": size.astype(np.uint64),
            "oa": oa,
            "level": np.zeros(n, dtype=np.int8),
            "kind": pd.Categorical(kind, categories=["block", "page", "invalid", "reserved"]),
            "owner": pd.Categorical(owner),
            "owner_id": pd.array([None] * n, dtype="UInt32"),
            "page_state": pd.Categorical(host_state),
            "s2ap": pd.Categorical([None] * n),
            "memattr_name": pd.Categorical([None] * n),
            "xn": pd.array([None] * n, dtype="UInt8"),
            "contiguous": pd.array([None] * n, dtype="boolean"),
            "table_pa": np.zeros(n, dtype=np.uint64),
            "index": np.zeros(n, dtype=np.uint16),
            "raw": np.zeros(n, dtype=np.uint64),
            "locked": pd.array([None] * n, dtype="boolean"),
            "inv_type": pd.Categorical([None] * n),
            "vm_handle": pd.array([None] * n, dtype="UInt16"),
            "gfn": pd.array([None] * n, dtype="UInt64"),
            "basis": pd.Categorical(basis),
        }
    )
    return frame[SNAPSHOT.names]


# ---------------------------------------------------------------------------------------------
def _map_arrays(frame: pd.DataFrame, name: str) -> tuple[np.ndarray, ...]:
    missing = [c for c in ("ipa_start", "size", "owner", "page_state") if c not in frame]
    if missing:
        raise InputError(f"diff_maps: {name} map lacks columns {', '.join(missing)}")
    f = frame[frame["size"].to_numpy() > 0].sort_values("ipa_start", kind="stable")
    start = f["ipa_start"].to_numpy(dtype=np.uint64)
    end = start + f["size"].to_numpy(dtype=np.uint64)
    overlap = np.flatnonzero(start[1:] < end[:-1])
    if len(overlap):
        raise InputError(
            f"diff_maps: {name} map has overlapping rows at {int(start[overlap[0] + 1]):#x}"
        )
    owner = f["owner"].astype("object").to_numpy()
    state = f["page_state"].astype("object").to_numpy()
    return start, end, owner, state


def _side(
    bounds: np.ndarray, start: np.ndarray, end: np.ndarray, owner: np.ndarray, state: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(covered, owner, state) of each elementary segment starting at ``bounds``."""
    i = covering(start, end, bounds)
    j = np.maximum(i, 0)
    covered = i >= 0
    none = np.array(None, dtype=object)
    o = np.where(covered, owner[j] if len(start) else none, none)
    s = np.where(covered, state[j] if len(start) else none, none)
    return covered, o, s


def diff_maps(expected: pd.DataFrame, actual: pd.DataFrame) -> pd.DataFrame:
    """Ranges where two ownership maps (MAP columns) disagree on owner or page state.

    An interval sweep: the union of both maps' boundaries cuts the address space into
    elementary segments, each looked up in both maps with ``searchsorted``.  Rules:

    * page_state ``unknown`` or <NA> on one side agrees with any state on the other (6.14+
      dumps do not hold the host state in the PTE, mem_protect.c v5.13-7.1; §KF-2.6);
    * where one map has no row, that side reads owner ``host`` with no state (the host stage 2
      is filled lazily: a missing entry is host-owned, §KF-2.2), so only a non-host owner on
      the other side is a disagreement;
    * an owner <NA> (a row the profile could not attribute, e.g. a reserved entry) agrees with
      any owner;
    * ``kind``, attributes and levels are not compared.

    Returns MAP_DIFF rows, adjacent disagreeing segments with equal values merged.
    """
    e = _map_arrays(expected, "expected")
    a = _map_arrays(actual, "actual")
    bounds = distinct(np.concatenate([e[0], e[1], a[0], a[1]]))
    if len(bounds) < 2:
        return MAP_DIFF.empty()
    seg_start, seg_end = bounds[:-1], bounds[1:]
    ec, eo, es = _side(seg_start, *e)
    ac, ao, as_ = _side(seg_start, *a)
    used = ec | ac
    e_owner = np.where(ec, eo, "host")
    a_owner = np.where(ac, ao, "host")
    vague = pd.isna(es) | pd.isna(as_) | (es == "unknown") | (as_ == "unknown")
    state_differs = ~vague & (es != as_)
    owner_differs = ~(pd.isna(e_owner) | pd.isna(a_owner)) & (e_owner != a_owner)
    differs = used & (owner_differs | state_differs)
    keep = np.flatnonzero(differs)
    start, size, eo, es, ao, as_ = _coalesce(
        seg_start[keep], (seg_end - seg_start)[keep], eo[keep], es[keep], ao[keep], as_[keep]
    )
    frame = pd.DataFrame(
        {
            "ipa_start": start.astype(np.uint64),
            "size": size.astype(np.uint64),
            "expected_owner": pd.Categorical(eo),
            "expected_state": pd.Categorical(es),
            "actual_owner": pd.Categorical(ao),
            "actual_state": pd.Categorical(as_),
        }
    )
    return frame[MAP_DIFF.names]


# ---------------------------------------------------------------------------------------------
def _fmt_t(t: float) -> str:
    return "start" if np.isneginf(t) else f"{t:.6f}"


def _state_words(row: pd.Series) -> str:
    text = f"owner {row['owner']}, host {row['host_state']}"
    if not pd.isna(row["peer"]):
        text += f", {row['peer']} {row['peer_state']}"
    return text


def explain(timeline: Timeline, addr: int, t: float | None = None) -> str:
    """A short narrative of how the page holding ``addr`` reached its state at ``t``.

    Lists the state changes up to ``t`` (time, source line, transition, resulting state), the
    other transitions on the page that changed nothing, the violations on the page before
    ``t``, and where lost events may hide transitions.
    """
    ans = owner_at(timeline, addr, t)
    when = "at the end" if t is None else f"at t={t:.6f}"
    lines = [
        f"page {addr - addr % timeline.page_size:#x} {when}: owner {ans.owner}, "
        f"host {ans.host_state}"
        + (f", {ans.peer} {ans.peer_state}" if ans.peer else "")
        + f" (since {_fmt_t(ans.since)}"
        + (f", line {ans.cause}" if ans.cause is not None else "")
        + ")",
        f"basis: {ans.basis}",
    ]
    if ans.t_earliest < ans.since:
        lines.append(
            f"the trace brackets that change: it happened between {_fmt_t(ans.t_earliest)} "
            f"and {_fmt_t(ans.since)}"
        )
    hist = history(timeline, addr)
    words = basis_words(hist, np.arange(len(hist)), np.full(len(hist), addr, dtype=np.uint64))
    limit = np.inf if t is None else t
    words = words[(hist["t_start"] <= limit).to_numpy()]
    hist = hist[hist["t_start"] <= limit]
    causes = {}
    lines.append("state changes:")
    for k, (_, row) in enumerate(hist.iterrows()):
        event = _na(row["event_index"])
        if event is None:
            lines.append(
                f"  {_fmt_t(row['t_start']):>14}  initial: {_state_words(row)} [{words[k]}]"
            )
            continue
        causes[int(event)] = row  # type: ignore[call-overload]
        basis = str(row["basis"])
        bracket = (
            f", between {_fmt_t(row['t_earliest'])} and {_fmt_t(row['t_start'])}"
            if row["t_earliest"] < row["t_start"]
            else ""
        )
        extra = f" [{basis}{bracket}]" if basis != TRACE_BASIS or bracket else ""
        lines.append(
            f"  {_fmt_t(row['t_start']):>14}  {_describe_event(timeline, int(event))}"  # type: ignore[call-overload]
            f" -> {_state_words(row)}{extra}"
        )
    tr = timeline.transitions
    vio = timeline.violations
    vmask = _covers_rows(vio, "addr", addr) & (vio["ts"].to_numpy() <= limit)
    refused = set(vio.loc[vmask, "event_index"].astype(int))
    if tr is not None:
        tmask = _covers_rows(tr, "addr", addr) & (tr["ts"].to_numpy() <= limit)
        tmask &= tr["op"].astype("object").to_numpy() != "lost"
        quiet = [
            r
            for r in tr[tmask].to_dict("records")
            if int(r["event_index"]) not in causes and int(r["event_index"]) not in refused
        ]
        if quiet:
            lines.append("transitions that changed nothing (markers, counted shares):")
            for r in quiet:
                event = _describe_event(timeline, int(r["event_index"]))
                lines.append(f"  {_fmt_t(r['ts']):>14}  {event}")
    if vmask.any():
        lines.append("violations:")
        for r in vio[vmask].to_dict("records"):
            lines.append(f"  {_fmt_t(r['ts']):>14}  line {r['line']}: {r['check']}: {r['detail']}")
    lost = _lost_before(timeline, addr, t)
    if lost:
        lines.append(
            "(may be incomplete: lost events at " + ", ".join(f"{x:.6f}" for x in lost) + ")"
        )
    return "\n".join(lines)


def _covers_rows(frame: pd.DataFrame, col: str, addr: int) -> np.ndarray:
    start = frame[col].to_numpy(dtype=np.uint64)
    size = frame["size"].to_numpy(dtype=np.uint64)
    a = np.uint64(addr)
    return (start <= a) & (a < start + np.maximum(size, np.uint64(1)))


def _describe_event(timeline: Timeline, event_index: int) -> str:
    tr = timeline.transitions
    if tr is None:
        return f"event {event_index}"
    hit = tr[tr["event_index"].to_numpy() == event_index]
    if not len(hit):
        return f"event {event_index}"
    r = hit.iloc[0]
    parties = ""
    if not pd.isna(r["initiator"]):
        parties = (
            f" {r['initiator']} → {r['completer']}"
            if not pd.isna(r["completer"])
            else (f" {r['initiator']}")
        )
    counted = " (counted)" if bool(_na(r["counted"]) or False) else ""
    return f"line {int(r['line'])} {r['op']}{parties}{counted}"
