"""Replay pKVM ownership transitions into an ownership timeline (INTERVALS + VIOLATIONS).

The state of a page is a :class:`~s2trace.trace.rules.PageState` (owner, host state, peer and
its state) plus two counters: the host's ``kvm_share_hyp`` count (``counted`` transitions,
facts §3.2a) and the hypervisor's ``host_share_guest_count`` (np-guest shares, facts §3.2).
Transitions are applied in time order (``ts``, then ``event_index``, then input order) with the
rules of :mod:`s2trace.trace.rules`; a transition the kernel refuses becomes a VIOLATIONS row
and leaves the page as it was.

How it stays vectorised (no Python loop per page or per transition):

1. transitions are exploded into one entry per page (``np.repeat``) and stably sorted by page;
2. the ``kvm_share_hyp`` count does not depend on the page state: ``share_pfn_hyp`` records
   the PFN (count 1) before it issues ``__pkvm_host_share_hyp`` and ``unshare_pfn_hyp`` erases
   it before it issues the unshare, whatever the hypercall returns (checked in the Dec 2021
   kvmarm patches that added the count and the unshare, v5.17; a later tree seen only in a
   third-party copy -- ``kvm_call_pkvm`` -- inserts after success and restores the count on a
   failed unshare: not modelled).  So the count is a per-page walk clamped at 0 (an unshare at
   0 is the WARN_ON), computed with segmented prefix sums and minima; it decides which counted
   entries reach the hypervisor;
3. the page state machine is finite once ``host_share_guest_count`` is capped: every rule is a
   map state -> state (a row of a lookup table), and the state after every entry is a segmented
   parallel prefix composition of those maps (Hillis-Steele, log2(longest page history) numpy
   steps).  The cap is an upper bound of the count computed beforehand (a clamped walk over the
   guest shares), so it cannot overflow; an overflow state is still kept and checked, and pages
   whose bound exceeds ``_SCAN_COUNT_CAP`` take an exact engine that loops over the k-th entry of
   every page (pathological: a page shared with hundreds of guest IPAs at once);
4. multi-page transitions couple pages: a hypercall over a range is refused as a whole when one
   page fails (``atomic``), and ``kvm_share_hyp`` stops at the first page that fails
   (``prefix``); ``kvm_unshare_hyp`` goes on (``each``).  Pages are first replayed
   independently, which is exact as long as every multi-page transition is accepted or refused
   on all its pages.  When one is not, a forward sweep over the multi-page transitions finds
   from which transition each page's history may differ, and only those entries are replayed
   again, row by row in time order (a Python loop, reached only around such refusals:
   ``meta["sequential_rows"]`` counts the rows).

Lost-events markers (``op == "lost"``) with size 0 concern every page; with a size, only that
range.  An interval alive at a marker is flagged ``incomplete``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from s2trace.columns import INTERVALS, TRANSITIONS, VIOLATIONS
from s2trace.errors import InputError, Problem, ProblemLog, StrictError
from s2trace.trace.rules import (
    BASE_STATES,
    COUNTED_SINCE,
    HOST_STATES,
    OPS,
    PageState,
    RuleTable,
    kernel_family,
    owned_by,
    parse_kernel,
    rule_table,
)

__all__ = ["InitialRange", "Timeline", "replay"]

InitialRange = tuple[int, int, str, str] | tuple[int, int, str, str, str]
"""An explicit initial range: (addr, size, owner, host_state[, peer])."""

_END = np.iinfo(np.int64).max  # "no later transition" sequence number
_SCAN_COUNT_CAP = 255  # guest-share count bound above which a page takes the exact loop engine
_MAX_ENTRIES = 1 << 30  # more exploded pages than this is certainly a wrong size
_ATOMIC, _PREFIX, _EACH = 0, 1, 2
_STATE_INDEX = {s.name: i for i, s in enumerate(BASE_STATES)}
_HOST_OWNED = _STATE_INDEX["host_owned"]
_SHARED_HYP = _STATE_INDEX["shared_hyp"]
_SHARED_GUEST = _STATE_INDEX["shared_guest"]


@dataclass(frozen=True, eq=False)
class Timeline:
    """Result of :func:`replay`: the ownership timeline of every page a transition touched.

    ``intervals`` (INTERVALS) and ``violations`` (VIOLATIONS) are the tables; ``transitions``
    is the replayed TRANSITIONS frame in replay order (for source lines and explanations).
    Pages never mentioned are host owned throughout and have no rows.  ``meta`` holds the
    kernel, the initial-state source, counts, the lost-events markers (``lost``: list of dicts
    with ts, event_index, line, addr, size), initial ranges whose state was ``unknown``
    (``initial_unknown_state``: (addr, size) pairs, replayed as owned) and recorded problems.
    """

    intervals: pd.DataFrame
    violations: pd.DataFrame
    page_size: int
    meta: dict[str, Any] = field(default_factory=dict)
    transitions: pd.DataFrame | None = None


# ---------------------------------------------------------------------------------------------
# initial state
# ---------------------------------------------------------------------------------------------
@dataclass
class _Initial:
    start: np.ndarray  # first page of each range (int64, sorted)
    stop: np.ndarray  # page after the range
    state: np.ndarray  # state id (BASE_STATES + extras)
    extras: tuple[PageState, ...]
    source: str
    unknown: list[tuple[int, int]]
    skipped: int


_SHARED_WITH = {"hyp": "shared_hyp", "ffa": "shared_ffa", "guest": "shared_guest"}
_BORROWED_FROM = {"hyp": "hyp_shared_host", "guest": "guest_shared_host"}


def _initial_state_name(owner: Any, state: Any, kind: Any, peer: Any) -> tuple[str | None, bool]:
    """(state name or None to skip, whether the page state was not known) for one map row kind.

    MAP semantics (facts §2.4, §2.6): a valid leaf is host-reachable (the profile names its
    owner ``host``); SW-bit states give shared_owned (host lends it; the peer is the hypervisor
    unless said otherwise) or shared_borrowed (the hypervisor owns it and lends it to the host,
    the boot fix-up case of §3.2); an annotated invalid entry belongs to its owner.  ``unknown``
    (6.14+, state in the vmemmap) and other states are replayed as owned and flagged.
    """
    owner = None if pd.isna(owner) else str(owner)
    state = None if pd.isna(state) else str(state)
    peer = None if pd.isna(peer) else str(peer)
    if owner is None:
        if str(kind) not in ("block", "page"):
            return None, False
        owner = "host"
    if owner == "host":
        if state in (None, "owned"):
            return "host_owned", False
        if state == "shared_owned":
            return _SHARED_WITH.get(peer or "hyp", "shared_hyp"), False
        if state == "shared_borrowed":
            return _BORROWED_FROM.get(peer or "hyp", "hyp_shared_host"), False
        return "host_owned", True
    if owner in ("hyp", "guest") and state == "shared_borrowed":
        return _BORROWED_FROM[owner], False
    return f"{owner}_owned", False


def _initial(initial: pd.DataFrame | Sequence[InitialRange] | None, page_size: int) -> _Initial:
    empty = np.zeros(0, dtype=np.int64)
    if initial is None:
        return _Initial(empty, empty, empty, (), "default", [], 0)
    if isinstance(initial, pd.DataFrame):
        frame, source = initial, "map"
        missing = [c for c in ("ipa_start", "size", "owner", "page_state") if c not in frame]
        if missing:
            raise InputError(f"initial map: missing columns {', '.join(missing)} (MAP schema)")
    else:
        rows = [tuple(r) for r in initial]
        bad = [r for r in rows if len(r) not in (4, 5)]
        if bad:
            raise InputError(
                f"initial range {bad[0]!r}: expected (addr, size, owner, host_state[, peer])"
            )
        frame = pd.DataFrame(
            {
                "ipa_start": np.array([r[0] for r in rows], dtype=np.uint64),
                "size": np.array([r[1] for r in rows], dtype=np.uint64),
                "owner": [r[2] for r in rows],
                "page_state": [r[3] for r in rows],
                "peer": [r[4] if len(r) == 5 else None for r in rows],
            }
        )
        source = "ranges"
    n = len(frame)
    start = frame["ipa_start"].to_numpy(dtype=np.uint64)
    size = frame["size"].to_numpy(dtype=np.uint64)
    misaligned = np.flatnonzero((start % page_size != 0) | (size % page_size != 0))
    if len(misaligned):
        i = int(misaligned[0])
        raise InputError(
            f"initial {source} row {i} (address {int(start[i]):#x}, size {int(size[i]):#x}): "
            f"not aligned to the {page_size}-byte page size"
        )
    cols = [frame[c] if c in frame else pd.Series([pd.NA] * n) for c in ("owner", "page_state")]
    kind = frame["kind"] if "kind" in frame else pd.Series(["page"] * n)
    peer = frame["peer"] if "peer" in frame else pd.Series([pd.NA] * n)
    keys = pd.DataFrame(
        {
            "o": cols[0].astype("object").to_numpy(),
            "s": cols[1].astype("object").to_numpy(),
            "k": kind.astype("object").to_numpy(),
            "p": peer.astype("object").to_numpy(),
        }
    )
    codes, uniques = pd.MultiIndex.from_frame(keys.fillna("\0")).factorize()
    names: list[str | None] = []
    unknown_u: list[bool] = []
    for o, s, k, p in uniques:
        name, unk = _initial_state_name(*(None if v == "\0" else v for v in (o, s, k, p)))
        names.append(name)
        unknown_u.append(unk)
    extras: list[PageState] = []
    index = dict(_STATE_INDEX)
    for name in names:
        if name is not None and name not in index:
            extras.append(owned_by(name.removesuffix("_owned")))
            index[name] = len(index)
    state_u = np.array([-1 if nm is None else index[nm] for nm in names], dtype=np.int64)
    state = state_u[codes] if n else np.zeros(0, dtype=np.int64)
    keep = (state >= 0) & (size > 0)
    unknown_rows = np.array(unknown_u, dtype=bool)[codes] & keep if n else np.zeros(0, bool)
    pstart = (start // np.uint64(page_size)).astype(np.int64)
    pstop = pstart + (size // np.uint64(page_size)).astype(np.int64)
    order = np.argsort(pstart[keep], kind="stable")
    s0, s1, st = pstart[keep][order], pstop[keep][order], state[keep][order]
    overlap = np.flatnonzero(s0[1:] < s1[:-1])
    if len(overlap):
        raise InputError(
            f"initial {source}: ranges overlap at address {int(s0[overlap[0] + 1]) * page_size:#x}"
        )
    unknown = [
        (int(a), int(b)) for a, b in zip(start[unknown_rows], size[unknown_rows], strict=True)
    ]
    return _Initial(s0, s1, st, tuple(extras), source, unknown, int((~keep).sum()))


# ---------------------------------------------------------------------------------------------
# transitions -> per-row arrays
# ---------------------------------------------------------------------------------------------
@dataclass
class _Rows:
    ts: np.ndarray
    event_index: np.ndarray
    line: np.ndarray
    rid: np.ndarray  # rule id (int16)
    ckind: np.ndarray  # 0 plain, 1 counted share, 2 counted unshare
    mode: np.ndarray  # _ATOMIC / _PREFIX / _EACH
    first: np.ndarray  # first page
    npages: np.ndarray  # pages to explode (0 for skipped rows and global lost markers)
    global_lost: np.ndarray  # seq numbers of size-0 lost markers


def _sorted(transitions: pd.DataFrame) -> pd.DataFrame:
    try:
        TRANSITIONS.check(transitions)
    except ValueError as exc:
        raise InputError(f"replay: transitions frame: {exc}") from None
    ts = transitions["ts"].to_numpy(dtype=np.float64, na_value=np.nan)
    ev = transitions["event_index"].to_numpy(dtype=np.int64)
    if len(ts) < 2 or bool(
        np.all((ts[1:] > ts[:-1]) | ((ts[1:] == ts[:-1]) & (ev[1:] >= ev[:-1])))
    ):
        return transitions.reset_index(drop=True)  # already in replay order (trace file order)
    order = np.lexsort((ev, ts))  # stable: ties keep input order; NaN sorts last
    return transitions.iloc[order].reset_index(drop=True)


def _str_array(col: pd.Series) -> np.ndarray:
    return col.astype("object").where(col.notna(), None).to_numpy()


def _codes(col: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Categorical codes (-1 = <NA>) and categories of a column, without per-row objects."""
    cat = col.astype("category") if not isinstance(col.dtype, pd.CategoricalDtype) else col
    return cat.cat.codes.to_numpy(dtype=np.int64), [str(c) for c in cat.cat.categories]


def _rule_ids(tr: pd.DataFrame, table: RuleTable) -> np.ndarray:
    """Rule id of each row (-1: unknown op), one lookup per (op, initiator, completer) combo."""
    (oc, ocat), (ic, icat), (cc, ccat) = (_codes(tr[c]) for c in ("op", "initiator", "completer"))
    no, ni, nc = len(ocat) + 1, len(icat) + 1, len(ccat) + 1
    lookup = np.full(no * ni * nc, -1, dtype=np.int16)
    for o in range(no):
        for i in range(ni):
            for c in range(nc):
                op = ocat[o - 1] if o else None
                if op in OPS:
                    ini = icat[i - 1] if i else None
                    com = ccat[c - 1] if c else None
                    lookup[(o * ni + i) * nc + c] = table.rule_id(op, ini, com)
    return lookup[((oc + 1) * ni + (ic + 1)) * nc + (cc + 1)]


def _rows(tr: pd.DataFrame, table: RuleTable, page_size: int, log: ProblemLog) -> _Rows:
    n = len(tr)
    ts = tr["ts"].to_numpy(dtype=np.float64, na_value=np.nan)
    line = tr["line"].to_numpy(dtype=np.int64)
    addr = tr["addr"].to_numpy(dtype=np.uint64)
    size = tr["size"].to_numpy(dtype=np.uint64)
    counted = tr["counted"].fillna(False).to_numpy(dtype=bool)
    rid = _rule_ids(tr, table)
    is_lost = rid == table.lost
    is_fault = rid == table.rule_id("access_fault", None, None)
    ps = np.uint64(page_size)
    bad = np.zeros(n, dtype=bool)
    _problem(log, np.isnan(ts), line, "no_timestamp", "transition without a timestamp: skipped")
    bad |= np.isnan(ts)
    _problem(log, rid < 0, line, "unknown_op", "unknown transition op: skipped")
    bad |= rid < 0
    size = np.where(is_fault & (size == 0), ps, size)  # a fault names one address
    empty = (size == 0) & ~is_lost & ~bad
    _problem(log, empty, line, "empty_transition", "transition of size 0: skipped")
    bad |= empty
    unaligned = ((addr % ps != 0) | (size % ps != 0)) & ~bad & ~is_fault  # faults: any byte
    _problem(
        log,
        unaligned,
        line,
        "unaligned_transition",
        f"address or size not aligned to {page_size} bytes: widened to whole pages",
    )
    first = (addr // ps).astype(np.int64)
    stop = ((addr + size + ps - np.uint64(1)) // ps).astype(np.int64)
    npages = np.where(bad, 0, stop - first)
    global_lost = is_lost & (size == 0) & ~bad
    npages[global_lost] = 0
    share_id, unshare_id = table.counted_ids()
    ckind = np.zeros(n, dtype=np.int8)
    if table.version >= COUNTED_SINCE:
        ckind[counted & (rid == share_id) & (share_id >= 0)] = 1
        ckind[counted & (rid == unshare_id) & (unshare_id >= 0)] = 2
    # a refused multi-page hypercall changes none of its pages; markers couple nothing
    plain = np.where(table.mutates[np.maximum(rid, 0)], _ATOMIC, _EACH)
    mode = np.select([ckind == 1, ckind == 2], [_PREFIX, _EACH], plain).astype(np.int8)
    return _Rows(
        ts=ts,
        event_index=tr["event_index"].to_numpy(dtype=np.int64),
        line=line,
        rid=np.where(bad, table.noop, rid).astype(np.int16),
        ckind=ckind,
        mode=mode,
        first=first,
        npages=npages,
        global_lost=np.flatnonzero(global_lost),
    )


def _problem(log: ProblemLog, mask: np.ndarray, line: np.ndarray, kind: str, detail: str) -> None:
    """Record one problem per masked row; ``where`` is the source line (Problem prints it in
    hex, so the detail repeats it in decimal)."""
    for where in line[mask]:
        log.add(Problem(kind, int(where), f"line {int(where)}: {detail}", source="transitions"))


# ---------------------------------------------------------------------------------------------
# exploded entries (one per page and transition), grouped by page
# ---------------------------------------------------------------------------------------------
@dataclass
class _Entries:
    seq: np.ndarray  # row (replay order) of each entry
    k: np.ndarray  # page offset within its row
    seg: np.ndarray  # segment (= touched page) index, non-decreasing
    seg_page: np.ndarray  # page number of each segment
    seg_start: np.ndarray  # first entry of each segment (len = nseg + 1)


def _explode(rows: _Rows) -> _Entries:
    total = int(rows.npages.sum())
    if total > _MAX_ENTRIES:
        raise InputError(f"transitions cover {total} pages: more than {_MAX_ENTRIES}; wrong sizes?")
    seq = np.repeat(np.arange(len(rows.npages), dtype=np.int64), rows.npages)
    starts = np.cumsum(rows.npages) - rows.npages
    k = np.arange(total, dtype=np.int64) - np.repeat(starts, rows.npages)
    page = rows.first[seq] + k
    order = np.argsort(page, kind="stable")  # (page, seq) order: seq was already ascending
    page, seq, k = page[order], seq[order], k[order]
    new = np.r_[True, page[1:] != page[:-1]] if total else np.zeros(0, dtype=bool)
    seg = np.cumsum(new) - 1
    first_idx = np.flatnonzero(new)
    return _Entries(seq, k, seg, page[first_idx], np.r_[first_idx, total])


def _initial_of(pages: np.ndarray, init: _Initial) -> np.ndarray:
    """Initial state id of each (sorted) page: its initial range's, else host owned."""
    if len(init.start) == 0:
        return np.full(len(pages), _HOST_OWNED, dtype=np.int64)
    i = np.maximum(np.searchsorted(init.start, pages, "right") - 1, 0)
    inside = (init.start[i] <= pages) & (pages < init.stop[i])
    return np.where(inside, init.state[i], _HOST_OWNED).astype(np.int64)


def _segments_of(seg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local segment id, index of each entry's segment start, and segment starts."""
    n = len(seg)
    new = np.r_[True, seg[1:] != seg[:-1]] if n else np.zeros(0, dtype=bool)
    lseg = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    return lseg, starts[lseg], starts


def _reflected(d: np.ndarray, seg: np.ndarray, h0: np.ndarray) -> np.ndarray:
    """Per segment, ``h = max(0, h + d)`` from ``h0``: the value after each step.

    Closed form of the clamped walk: h_j = S_j - min(-h0, min_{i<=j} S_i) with S the
    segment's inclusive prefix sum; the segmented minimum uses per-segment offsets.
    """
    if len(d) == 0:
        return np.zeros(0, dtype=np.int64)
    lseg, start_of, _ = _segments_of(seg)
    cs = np.cumsum(d, dtype=np.int64)
    s = cs - (cs - d)[start_of]
    big = 2 * (int(np.abs(s).max()) + int(h0.max()) + 1) + 1
    shift = lseg.astype(np.int64) * big
    running_min = np.minimum.accumulate(s - shift) + shift
    return s - np.minimum(-h0, running_min)


# ---------------------------------------------------------------------------------------------
# the two engines
# ---------------------------------------------------------------------------------------------
def _lut(table: RuleTable, cap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Rule x encoded-state table for guest counts up to ``cap``; state -> (base, count); overflow.

    Encoded states: base ids (0..nb-1; the shared_guest id itself is unused), then
    shared_guest with count 1..cap, then an absorbing overflow state.
    """
    nb = len(table.states)
    n_states = nb + cap + 1
    over = n_states - 1
    s = np.arange(n_states)
    base = np.where(s < nb, s, _SHARED_GUEST)
    count = np.where(s < nb, 0, s - nb + 1)
    nr = len(table.rules)
    rule = np.repeat(np.arange(nr), n_states)
    nbase, ncount, _ = table.apply(rule, np.tile(base, nr), np.tile(count, nr))
    enc = np.where(nbase == _SHARED_GUEST, np.where(ncount > cap, over, nb + ncount - 1), nbase)
    enc = enc.reshape(nr, n_states)
    enc[:, _SHARED_GUEST] = _SHARED_GUEST  # unused code: identity
    enc[:, over] = over
    dtype = np.uint8 if n_states <= 256 else np.uint16
    return enc.astype(dtype), base.astype(np.int16), count.astype(np.int32), over


def _scan_engine(
    rid: np.ndarray,
    active: np.ndarray,
    seg: np.ndarray,
    base0: np.ndarray,
    table: RuleTable,
    cap: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(base before, base after, guest count before, overflowed) per entry.

    The state after each active entry is the composition of the maps of the page's active
    entries so far (Hillis-Steele scan over rows of the lookup table), applied to the page's
    initial state.
    """
    n = len(rid)
    lut, dec_base, dec_count, over = _lut(table, cap)
    nb = len(table.states)
    init = np.where(base0 == _SHARED_GUEST, nb, base0)  # shared_guest at count 1
    after = np.empty(n, dtype=np.int64)
    ai = np.flatnonzero(active)
    if len(ai):
        _, a_start_of, _ = _segments_of(seg[ai])
        pos = np.arange(len(ai)) - a_start_of
        maps = lut[rid[ai]]
        d = 1
        while d <= int(pos.max()):
            idx = np.flatnonzero(pos >= d)
            maps[idx] = np.take_along_axis(maps[idx], maps[idx - d], axis=1)
            d *= 2
        after[ai] = maps[np.arange(len(ai)), init[ai]]
    before = _carry(active, seg, after, init)
    after = np.where(active, after, before)
    return dec_base[before], dec_base[after], dec_count[before], after == over


def _carry(mask: np.ndarray, seg: np.ndarray, value: np.ndarray, init: np.ndarray) -> np.ndarray:
    """Per entry, ``value`` of the last ``mask`` entry strictly before it in its segment, else
    ``init``."""
    n = len(mask)
    if n == 0:
        return init.copy()
    _, start_of, _ = _segments_of(seg)
    last = np.maximum.accumulate(np.where(mask, np.arange(n), -1))
    prev = np.r_[-1, last[:-1]]
    return np.where(prev >= start_of, value[np.maximum(prev, 0)], init)


def _loop_engine(
    rid: np.ndarray, active: np.ndarray, seg: np.ndarray, base0: np.ndarray, table: RuleTable
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact (uncapped) engine: one vectorised step per k-th entry of every page.

    Returns (base before, base after, guest count before) per entry.
    """
    n = len(rid)
    _, _, starts = _segments_of(seg)
    lengths = np.diff(np.r_[starts, n])
    base = base0[starts].astype(np.int64)
    count = (base == _SHARED_GUEST).astype(np.int64)
    before = np.empty(n, dtype=np.int64)
    after = np.empty(n, dtype=np.int64)
    count_before = np.empty(n, dtype=np.int64)
    for k in range(int(lengths.max()) if n else 0):
        live = np.flatnonzero(lengths > k)
        e = starts[live] + k
        before[e] = base[live]
        count_before[e] = count[live]
        nbase, ncount, _ = table.apply(rid[e], base[live], count[live])
        act = active[e]
        base[live] = np.where(act, nbase, base[live])
        count[live] = np.where(act, ncount, count[live])
        after[e] = base[live]
    return before, after, count_before


# ---------------------------------------------------------------------------------------------
# replaying pages independently, then fixing what multi-page transitions couple
# ---------------------------------------------------------------------------------------------
@dataclass
class _Outcome:
    rid: np.ndarray  # effective rule id (after the kvm_share_hyp count)
    before: np.ndarray  # base state before the entry
    after: np.ndarray  # base state after it
    code: np.ndarray  # broken check (0 = none)
    share_count: np.ndarray  # host kvm_share_hyp count of the page before the entry
    guest_count: np.ndarray  # host_share_guest_count before the entry
    skip: np.ndarray  # entry not executed (kvm_share_hyp stopped at an earlier page)
    loop_pages: int = 0
    sequential_rows: int = 0


def _counted(
    rid: np.ndarray, ckind: np.ndarray, seg: np.ndarray, base0: np.ndarray, table: RuleTable
) -> tuple[np.ndarray, np.ndarray]:
    """(effective rule, share count before) of every entry.

    Only a 0->1 counted share and a 1->0 counted unshare reach EL2; an unshare at 0 is the
    WARN_ON.  An initially hyp-shared page starts at count 1.
    """
    h0 = (base0 == _SHARED_HYP).astype(np.int64)
    ci = np.flatnonzero(ckind > 0)
    if len(ci) == 0:
        return rid, h0
    share = ckind[ci] == 1
    d = np.where(share, 1, -1).astype(np.int64)
    h = _reflected(d, seg[ci], h0[ci])
    mask = np.zeros(len(rid), dtype=bool)
    mask[ci] = True
    after = np.zeros(len(rid), dtype=np.int64)
    after[ci] = h
    before = _carry(mask, seg, after, h0)
    hb = before[ci]
    eff = rid[ci].copy()
    eff[share & (hb > 0)] = table.noop
    eff[~share & (hb == 0)] = table.unshare_not_shared
    eff[~share & (hb > 1)] = table.noop
    out = rid.copy()
    out[ci] = eff
    return out, before


def _guest_bound(
    rid: np.ndarray, seg: np.ndarray, base0: np.ndarray, table: RuleTable
) -> np.ndarray:
    """Per entry, an upper bound of its page's host_share_guest_count over the whole replay.

    The count rises only on an accepted guest share and falls on every guest unshare while
    > 0, so the walk clamped at 0 over all guest shares/unshares bounds it.
    """
    bound = (base0 == _SHARED_GUEST).astype(np.int64)
    gi = np.flatnonzero(table.delta[rid] != 0)
    if len(gi):
        h = _reflected(table.delta[rid[gi]].astype(np.int64), seg[gi], bound[gi])
        _, _, starts = _segments_of(seg[gi])
        seg_peak = np.zeros(int(seg.max()) + 1, dtype=np.int64)
        seg_peak[seg[gi][starts]] = np.maximum.reduceat(h, starts)
        bound = np.maximum(bound, seg_peak[seg])
    return bound


def _run(ent: _Entries, rows: _Rows, base0_seg: np.ndarray, table: RuleTable) -> _Outcome:
    """Replay every page on its own (exact wherever multi-page transitions agree)."""
    seg = ent.seg
    base0 = base0_seg[seg]
    rid, share_count = _counted(rows.rid[ent.seq], rows.ckind[ent.seq], seg, base0, table)
    active = table.mutates[rid]
    bound = _guest_bound(rid, seg, base0, table)
    slow = bound > _SCAN_COUNT_CAP
    n = len(rid)
    before, after = np.empty(n, dtype=np.int16), np.empty(n, dtype=np.int16)
    guest_count = np.empty(n, dtype=np.int64)
    fast = ~slow
    if fast.any():
        cap = max(1, int(bound[fast].max()))
        b, a, g, overflow = _scan_engine(
            rid[fast], active[fast], seg[fast], base0[fast], table, cap
        )
        before[fast], after[fast], guest_count[fast] = b, a, g
        if overflow.any():  # cannot happen with cap >= bound; never trust it silently
            slow |= np.isin(seg, seg[fast][overflow])
    if slow.any():
        b, a, g = _loop_engine(rid[slow], active[slow], seg[slow], base0[slow], table)
        before[slow], after[slow], guest_count[slow] = b, a, g
    code = table.fail[rid, before].astype(np.int16)
    loop_pages = len(np.unique(seg[slow])) if slow.any() else 0
    return _Outcome(
        rid, before, after, code, share_count, guest_count, np.zeros(n, dtype=bool), loop_pages
    )


def _coupled_rows(ent: _Entries, rows: _Rows, out: _Outcome) -> tuple[np.ndarray, np.ndarray]:
    """Multi-page rows that couple their pages, as (entry indices by (seq, k), disagreeing).

    Disagreeing: an atomic row with some pages refused and others applied, or a counted share
    (prefix) with pages executed after one that failed.
    """
    multi = np.flatnonzero((rows.npages[ent.seq] > 1) & (rows.mode[ent.seq] != _EACH))
    multi = multi[np.lexsort((ent.k[multi], ent.seq[multi]))]
    if len(multi) == 0:
        return multi, np.zeros(0, dtype=bool)
    mseq = ent.seq[multi]
    head = np.r_[True, mseq[1:] != mseq[:-1]]
    starts = np.flatnonzero(head)
    group = np.cumsum(head) - 1
    mode = rows.mode[mseq[starts]]
    failed = out.code[multi] != 0
    any_fail = np.logical_or.reduceat(failed, starts)
    applied = np.logical_or.reduceat(~failed, starts)
    k = ent.k[multi]
    first_fail = np.minimum.reduceat(np.where(failed, k, np.iinfo(np.int64).max), starts)
    late = np.logical_or.reduceat(k > first_fail[group], starts)
    bad_row = ((mode == _ATOMIC) & any_fail & applied) | ((mode == _PREFIX) & late)
    return multi, bad_row[group]


def _resolve(ent: _Entries, rows: _Rows, base0_seg: np.ndarray, table: RuleTable) -> _Outcome:
    """Replay every page independently, then redo exactly what multi-page rows couple.

    When some multi-page row disagrees, a forward sweep over the coupling rows finds, for
    every page, the first row from which its history may differ (the row itself, or an
    earlier-tainted row sharing a page); entries from there on are replayed row by row in time
    order (:func:`_sequential`), starting from the states the independent pass computed.
    """
    out = _run(ent, rows, base0_seg, table)
    multi, bad = _coupled_rows(ent, rows, out)
    if not bad.any():
        return out
    dirty = _taint(ent.seg[multi], ent.seq[multi], bad, len(ent.seg_page))
    redo = np.flatnonzero(ent.seq >= dirty[ent.seg])
    out.sequential_rows = _sequential(redo, ent, rows, out, table)
    return out


def _taint(seg: np.ndarray, seq: np.ndarray, bad: np.ndarray, nseg: int) -> np.ndarray:
    """Per page, the seq from which its history may change (``_END``: never).

    Rows are visited in time order (a Python loop over coupling rows from the first
    disagreement on: only reached when some multi-page transition was refused in part).
    """
    dirty = np.full(nseg, _END, dtype=np.int64)
    head = np.flatnonzero(np.r_[True, seq[1:] != seq[:-1]])
    stop = np.r_[head[1:], len(seq)]
    begin = int(np.searchsorted(head, np.flatnonzero(bad)[0], "right")) - 1
    for a, b in zip(head[begin:], stop[begin:], strict=True):
        segs = seg[a:b]
        row = seq[a]
        if bad[a] or dirty[segs].min() < row:
            np.minimum.at(dirty, segs, row)
    return dirty


def _sequential(
    redo: np.ndarray, ent: _Entries, rows: _Rows, out: _Outcome, table: RuleTable
) -> int:
    """Replay entries ``redo`` row by row in time order, with the kernel's multi-page coupling.

    States, guest counts and share counts start from the independent pass's values before each
    page's first redone entry (exact: nothing before it can change).  Updates ``out`` in place
    and returns the number of rows replayed.  A Python loop per row: reached only around
    partly refused multi-page transitions.
    """
    order = redo[np.lexsort((ent.k[redo], ent.seq[redo]))]
    seg = ent.seg[order]
    first = np.unique(seg, return_index=True)
    base = np.zeros(len(ent.seg_page), dtype=np.int64)
    gcount = np.zeros_like(base)
    hcount = np.zeros_like(base)
    base[first[0]] = out.before[order[first[1]]]
    gcount[first[0]] = out.guest_count[order[first[1]]]
    hcount[first[0]] = out.share_count[order[first[1]]]
    seqs = ent.seq[order]
    head = np.flatnonzero(np.r_[True, seqs[1:] != seqs[:-1]])
    stop = np.r_[head[1:], len(order)]
    for a, b in zip(head, stop, strict=True):
        e = order[a:b]
        s = seg[a:b]
        row = int(seqs[a])
        rid = np.full(len(e), rows.rid[row], dtype=np.int64)
        ckind, mode = rows.ckind[row], rows.mode[row]
        hb = hcount[s]
        out.share_count[e] = hb
        out.guest_count[e] = gcount[s]
        out.before[e] = base[s]
        executed = np.ones(len(e), dtype=bool)
        if ckind == 1:  # counted share: 0->1 reaches EL2; kvm_share_hyp stops at a failure
            rid[hb > 0] = table.noop
            code = table.fail[rid, base[s]]
            if (code != 0).any():
                executed = np.arange(len(e)) <= int(np.flatnonzero(code != 0)[0])
            hcount[s[executed]] += 1
        elif ckind == 2:  # counted unshare: every page; 1->0 reaches EL2; 0 is the WARN_ON
            rid[hb == 0] = table.unshare_not_shared
            rid[hb > 1] = table.noop
            hcount[s[hb > 0]] -= 1
        code = np.where(executed, table.fail[rid, base[s]], 0)
        apply = executed & table.mutates[rid] & (code == 0)
        if mode == _ATOMIC and (code != 0).any():
            apply[:] = False
        nbase, ncount, _ = table.apply(rid, base[s], gcount[s])
        base[s] = np.where(apply, nbase, base[s])
        gcount[s] = np.where(apply, ncount, gcount[s])
        out.rid[e] = rid
        out.code[e] = code
        out.skip[e] = ~executed
        out.after[e] = base[s]
    return len(head)


# ---------------------------------------------------------------------------------------------
# tables out
# ---------------------------------------------------------------------------------------------
def _subtract_pages(
    start: np.ndarray, stop: np.ndarray, pages: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pieces of ranges [start, stop) not containing any of ``pages`` (sorted, unique)."""
    if len(pages) == 0:
        return start, stop, np.arange(len(start))
    brk = np.r_[True, np.diff(pages) != 1]
    run_start = pages[brk]
    run_stop = pages[np.r_[brk[1:], True]] + 1
    lo = np.iinfo(np.int64).min
    gap_start = np.r_[lo, run_stop]
    gap_stop = np.r_[run_start, _END]
    j0 = np.searchsorted(gap_stop, start, "right")
    j1 = np.searchsorted(gap_start, stop, "left")
    cnt = np.clip(j1 - j0, 0, None)
    ri = np.repeat(np.arange(len(start)), cnt)
    j = j0[ri] + np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    ps = np.maximum(start[ri], gap_start[j])
    pe = np.minimum(stop[ri], gap_stop[j])
    keep = pe > ps
    return ps[keep], pe[keep], ri[keep]


def _lost_between(lost: np.ndarray, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """Whether a lost marker's seq lies strictly between each (start, stop) pair."""
    return np.searchsorted(lost, stop, "left") > np.searchsorted(lost, start, "right")


@dataclass
class _Pieces:
    """Interval pieces: page range, state, and the rows (seq) that start and end them."""

    pstart: np.ndarray  # first page (int64)
    pcount: np.ndarray  # pages (int64)
    vis: np.ndarray  # base state id (int16)
    sseq: np.ndarray  # starting row, -1 = initial
    eseq: np.ndarray  # ending row, _END = still current
    inc: np.ndarray  # incomplete (bool)

    def take(self, idx: np.ndarray) -> _Pieces:
        return _Pieces(*(a[idx] for a in (self.pstart, self.pcount, self.vis, self.sseq,
                                          self.eseq, self.inc)))  # fmt: skip


def _page_pieces(
    ent: _Entries, rows: _Rows, out: _Outcome, base0_seg: np.ndarray, table: RuleTable
) -> _Pieces:
    """One piece per touched page and state: its initial state, then one per change."""
    nseg = len(ent.seg_page)
    chg = out.after != out.before
    npieces = 1 + np.bincount(ent.seg[chg], minlength=nseg)
    off = np.cumsum(npieces) - npieces
    total = int(npieces.sum())
    vis = np.empty(total, dtype=np.int16)
    sseq = np.empty(total, dtype=np.int64)
    vis[off], sseq[off] = base0_seg, -1
    cc = np.cumsum(chg)
    before_seg = (cc - chg)[ent.seg_start[:-1]] if nseg else np.zeros(0, dtype=np.int64)
    ci = np.flatnonzero(chg)
    at = off[ent.seg[ci]] + cc[ci] - before_seg[ent.seg[ci]]
    vis[at] = out.after[ci]
    sseq[at] = ent.seq[ci]
    eseq = np.empty(total, dtype=np.int64)
    eseq[:-1] = sseq[1:]
    eseq[off + npieces - 1] = _END
    inc = _lost_between(rows.global_lost, sseq, eseq)
    li = np.flatnonzero(out.rid == table.lost)  # ranged markers: the piece alive at them
    inc[off[ent.seg[li]] + cc[li] - before_seg[ent.seg[li]]] = True
    pstart = np.repeat(ent.seg_page, npieces)
    return _Pieces(pstart, np.ones(total, dtype=np.int64), vis, sseq, eseq, inc)


def _untouched_pieces(ent: _Entries, rows: _Rows, init: _Initial) -> _Pieces:
    """The parts of the initial ranges no transition touched: one piece each, -inf to +inf."""
    us, ue, ri = _subtract_pages(init.start, init.stop, ent.seg_page)
    n = len(us)
    return _Pieces(
        us, ue - us, init.state[ri].astype(np.int16), np.full(n, -1, dtype=np.int64),
        np.full(n, _END, dtype=np.int64), np.full(n, len(rows.global_lost) > 0),
    )  # fmt: skip


def _merge(p: _Pieces, rows: _Rows) -> _Pieces:
    """Merge adjacent pages with the same state over the same span.

    Two pages can share a span only if its start and its end are each the initial/current
    state or one multi-page transition, so only those candidate pieces are sorted.
    """
    multi_row = np.r_[rows.npages > 1, False]  # index -1: padding
    start_ok = (p.sseq < 0) | multi_row[np.where(p.sseq < 0, -1, p.sseq)]
    end_ok = (p.eseq == _END) | multi_row[np.where(p.eseq == _END, -1, p.eseq)]
    cand = np.flatnonzero(start_ok & end_ok)
    if len(cand) < 2:
        return p
    o = cand[np.lexsort((p.pstart[cand], p.eseq[cand], p.sseq[cand]))]
    same = (
        (p.sseq[o[1:]] == p.sseq[o[:-1]])
        & (p.eseq[o[1:]] == p.eseq[o[:-1]])
        & (p.vis[o[1:]] == p.vis[o[:-1]])
        & (p.inc[o[1:]] == p.inc[o[:-1]])
        & (p.pstart[o[1:]] == p.pstart[o[:-1]] + p.pcount[o[:-1]])
    )
    if same.any():
        head = np.r_[True, ~same]
        p.pcount[o[head]] = np.add.reduceat(p.pcount[o], np.flatnonzero(head))
        keep = np.ones(len(p.pstart), dtype=bool)
        keep[o[~head]] = False
        p = p.take(keep)
    return p


def _intervals(
    ent: _Entries,
    rows: _Rows,
    out: _Outcome,
    base0_seg: np.ndarray,
    init: _Initial,
    table: RuleTable,
    page_size: int,
) -> pd.DataFrame:
    p = _page_pieces(ent, rows, out, base0_seg, table)
    if len(init.start):
        u = _untouched_pieces(ent, rows, init)
        p = _Pieces(*(np.concatenate([a, b]) for a, b in zip(vars(p).values(), vars(u).values(),
                                                               strict=True)))  # fmt: skip
    p = _merge(p, rows)
    if len(init.start):  # page pieces are in (page, time) order already; initial ranges are not
        p = p.take(np.lexsort((p.sseq, p.pstart)))
    has_start = p.sseq >= 0
    has_end = p.eseq != _END
    ts = np.r_[rows.ts, np.nan]  # index -1: the padding, never selected
    t_start = np.where(has_start, ts[np.where(has_start, p.sseq, -1)], -np.inf)
    t_end = np.where(has_end, ts[np.where(has_end, p.eseq, -1)], np.inf)
    cause = np.r_[rows.event_index, 0][np.where(has_start, p.sseq, -1)]
    frame = pd.DataFrame(
        {
            "addr_start": p.pstart.astype(np.uint64) * np.uint64(page_size),
            "size": p.pcount.astype(np.uint64) * np.uint64(page_size),
            **_state_columns(p.vis, table),
            "t_start": t_start,
            "t_end": t_end,
            "cause": pd.arrays.IntegerArray(cause, ~has_start),
            "incomplete": pd.arrays.BooleanArray(p.inc, np.zeros(len(p.inc), dtype=bool)),
        }
    )
    return frame[INTERVALS.names]


def _state_columns(state: np.ndarray, table: RuleTable) -> dict[str, pd.Categorical]:
    """owner, host_state, peer, peer_state categoricals for an array of state ids."""
    states = table.states
    owners = list(dict.fromkeys(["host", "hyp", "guest", "ffa", *(s.owner for s in states)]))
    page_states = list(HOST_STATES)
    cols = {}
    for name, attr, cats in (
        ("owner", "owner", owners),
        ("host_state", "host_state", page_states),
        ("peer", "peer", owners),
        ("peer_state", "peer_state", page_states),
    ):
        codes = np.array(
            [-1 if getattr(s, attr) is None else cats.index(getattr(s, attr)) for s in states],
            dtype=np.int8 if len(cats) < 127 else np.int32,
        )
        cols[name] = pd.Categorical.from_codes(codes[state] if len(state) else [], categories=cats)
    return cols


def _violations(
    ent: _Entries,
    rows: _Rows,
    out: _Outcome,
    tr: pd.DataFrame,
    table: RuleTable,
    page_size: int,
    kernel: str,
) -> pd.DataFrame:
    vi = np.flatnonzero(out.code != 0)
    if len(vi) == 0:
        return VIOLATIONS.empty()
    page = ent.seg_page[ent.seg[vi]]
    seq = ent.seq[vi]
    code = out.code[vi].astype(np.int64)
    before = out.before[vi]
    rid = out.rid[vi].astype(np.int64)
    order = np.lexsort((page, seq))
    page, seq, code, before, rid = (a[order] for a in (page, seq, code, before, rid))
    same = (
        (seq[1:] == seq[:-1])
        & (code[1:] == code[:-1])
        & (before[1:] == before[:-1])
        & (page[1:] == page[:-1] + 1)
    )
    heads = np.flatnonzero(np.r_[True, ~same])
    npages = np.diff(np.r_[heads, len(page)])
    page, seq, code, before, rid = (a[heads] for a in (page, seq, code, before, rid))
    src = tr.iloc[seq]
    details = np.empty(len(heads), dtype=object)
    uns = rid == table.unsupported
    combos = pd.DataFrame({"r": rid, "b": before})
    for (r, b), where in combos[~uns].groupby(["r", "b"]).groups.items():
        details[np.asarray(where)] = table.detail(int(r), int(b))
    if uns.any():  # one sentence per distinct (op, initiator, completer)
        keys = pd.DataFrame({c: _str_array(src[c]) for c in ("op", "initiator", "completer")})
        keys = keys[uns].fillna("\0")
        for (o, i, c), where in keys.groupby(["op", "initiator", "completer"]).groups.items():
            o, i, c = (None if v == "\0" else v for v in (o, i, c))
            details[np.asarray(where)] = table.unsupported_detail(o, i, c, kernel)
    ps = np.uint64(page_size)
    frame = pd.DataFrame(
        {
            "ts": rows.ts[seq],
            "line": rows.line[seq],
            "event_index": rows.event_index[seq],
            "op": src["op"].to_numpy(),
            "initiator": src["initiator"].to_numpy(),
            "completer": src["completer"].to_numpy(),
            "addr": page.astype(np.uint64) * ps,
            "size": npages.astype(np.uint64) * ps,
            "check": pd.Categorical(np.array(table.check_names, dtype=object)[code]),
            "detail": pd.array(details, dtype="string"),
        }
    )
    for c in ("op", "initiator", "completer"):
        frame[c] = frame[c].astype("category")
    return frame[VIOLATIONS.names].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# public entry point
# ---------------------------------------------------------------------------------------------
def replay(
    transitions: pd.DataFrame,
    *,
    initial: pd.DataFrame | Sequence[InitialRange] | None = None,
    page_size: int = 4096,
    kernel: str = "6.12",
    strict: bool = False,
) -> Timeline:
    """Replay TRANSITIONS with the pKVM state machine of ``kernel``; see the module docstring.

    ``initial``: ``None`` (the host owns every page), an ownership map (MAP columns
    ``ipa_start, size, owner, page_state`` and optionally ``kind``; the host stage 2 is an
    identity map, so IPA == PA) or a list of ``(addr, size, owner, host_state[, peer])``.
    ``counted`` is honoured for host->hyp share/unshare from Linux 5.17 and ignored elsewhere;
    ``vm`` and ``gfn`` are not used (the guest-IPA side is not modelled).
    ``strict``: the first recorded problem (malformed transition) or violation raises
    :class:`~s2trace.errors.StrictError`.  Raises :class:`~s2trace.errors.InputError` for
    unusable input (wrong columns, unaligned or overlapping initial ranges, unknown kernel).
    """
    if page_size <= 0 or page_size & (page_size - 1):
        raise InputError(f"page size {page_size}: expected a power of two")
    version = parse_kernel(kernel)
    log = ProblemLog(strict=strict)
    init = _initial(initial, page_size)
    table = rule_table(version, init.extras)
    tr = _sorted(transitions)
    rows = _rows(tr, table, page_size, log)
    ent = _explode(rows)
    base0_seg = _initial_of(ent.seg_page, init)
    out = _resolve(ent, rows, base0_seg, table)
    intervals = _intervals(ent, rows, out, base0_seg, init, table, page_size)
    violations = _violations(ent, rows, out, tr, table, page_size, str(kernel))
    if strict and len(violations):
        v = violations.iloc[0]
        raise StrictError(f"--strict: violation at line {v['line']}: {v['check']}: {v['detail']}")
    lost_rows = tr[tr["op"].astype("object") == "lost"]
    meta = {
        "kernel": str(kernel),
        "version": f"{version[0]}.{version[1]}",
        "family": kernel_family(version),
        "initial": init.source,
        "initial_unknown_state": init.unknown,
        "initial_rows_skipped": init.skipped,
        "transitions": len(tr),
        "pages": len(ent.seg_page),
        "intervals": len(intervals),
        "violations": len(violations),
        "violations_by_check": violations["check"].value_counts().loc[lambda s: s > 0].to_dict(),
        "lost": [
            {
                "ts": float(r.ts),
                "event_index": int(r.event_index),
                "line": int(r.line),
                "addr": int(r.addr),
                "size": int(r.size),
            }
            for r in lost_rows.itertuples(index=False)
        ],
        "problems": list(log),
        "sequential_rows": out.sequential_rows,
        "loop_engine_pages": out.loop_pages,
    }
    return Timeline(intervals, violations, page_size, meta, tr)
