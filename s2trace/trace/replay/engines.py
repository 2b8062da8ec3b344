"""Replay, steps 2 and 3: every segment on its own -- the prefix-composition and loop engines.

Internal to :mod:`s2trace.trace.replay` (whose docstring explains the method).  A segment's
pages replay alike, so "page" below means any page of a segment.  The
kvm_share_hyp count is a clamped walk per page (:func:`_reflected`); the page state machine,
with host_share_guest_count capped at an upper bound computed beforehand, is a segmented
Hillis-Steele composition of lookup-table rows (:func:`_scan_engine`); pages whose bound
exceeds the cap take the exact engine that steps over the k-th entry of every page
(:func:`_loop_engine`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from s2trace.intervals import distinct
from s2trace.pkvm.rules import RuleTable
from s2trace.trace.replay.rows import _SHARED_GUEST, _SHARED_HYP, _Rows
from s2trace.trace.replay.segments import _Entries

_SLICE = 1 << 20  # entries per step of the prefix composition (bounds its temporaries)


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
    g0: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(base before, base after, guest count before, overflowed) per entry.

    The state after each active entry is the composition of the maps of the page's active
    entries so far (Hillis-Steele scan over rows of the lookup table), applied to the page's
    initial state.  ``g0``: the page's guest count at the start, per entry (default: 1 for a
    shared_guest page, as at the start of a trace; a chunk of a replay in chunks starts where
    the previous one left it); at most ``cap``.
    """
    n = len(rid)
    lut, dec_base, dec_count, over = _lut(table, cap)
    nb = len(table.states)
    g = 1 if g0 is None else np.maximum(g0, 1)
    init = np.where(base0 == _SHARED_GUEST, nb + g - 1, base0)  # shared_guest at count g
    after = np.empty(n, dtype=np.int64)
    ai = np.flatnonzero(active)
    if len(ai):
        _, a_start_of, _ = _segments_of(seg[ai])
        pos = np.arange(len(ai)) - a_start_of
        maps = lut[rid[ai]]
        d = 1
        while d <= int(pos.max()):
            idx = np.flatnonzero(pos >= d)
            # in slices (bounded temporaries), last slice first: every slice reads rows below
            # it, which later slices of this step have not yet overwritten
            for lo in range(((len(idx) - 1) // _SLICE) * _SLICE, -1, -_SLICE):
                part = idx[lo : lo + _SLICE]
                maps[part] = np.take_along_axis(maps[part], maps[part - d], axis=1)
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
    rid: np.ndarray,
    active: np.ndarray,
    seg: np.ndarray,
    base0: np.ndarray,
    table: RuleTable,
    g0: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact (uncapped) engine: one vectorised step per k-th entry of every page.

    Returns (base before, base after, guest count before) per entry; ``g0`` as for
    :func:`_scan_engine`.
    """
    n = len(rid)
    _, _, starts = _segments_of(seg)
    lengths = np.diff(np.r_[starts, n])
    base = base0[starts].astype(np.int64)
    count = (base == _SHARED_GUEST).astype(np.int64)
    if g0 is not None:
        count = np.where(base == _SHARED_GUEST, g0[starts], 0).astype(np.int64)
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
    rid: np.ndarray,
    ckind: np.ndarray,
    seg: np.ndarray,
    base0: np.ndarray,
    table: RuleTable,
    h0: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(effective rule, share count before) of every entry.

    Only a 0->1 counted share and a 1->0 counted unshare reach EL2; an unshare at 0 is the
    WARN_ON.  An initially hyp-shared page starts at count 1 (``h0``, per entry: the count
    each page starts at, when a replay in chunks carries it over).
    """
    if h0 is None:
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
    rid: np.ndarray,
    seg: np.ndarray,
    base0: np.ndarray,
    table: RuleTable,
    g0: np.ndarray | None = None,
) -> np.ndarray:
    """Per entry, an upper bound of its page's host_share_guest_count over the whole replay.

    The count rises only on an accepted guest share and falls on every guest unshare while
    > 0, so the walk clamped at 0 over all guest shares/unshares, from the count the page
    starts at (``g0`` per entry, default 1 for a shared_guest page), bounds it.
    """
    bound = (base0 == _SHARED_GUEST).astype(np.int64) if g0 is None else g0.astype(np.int64)
    gi = np.flatnonzero(table.delta[rid] != 0)
    if len(gi):
        h = _reflected(table.delta[rid[gi]].astype(np.int64), seg[gi], bound[gi])
        _, _, starts = _segments_of(seg[gi])
        seg_peak = np.zeros(int(seg.max()) + 1, dtype=np.int64)
        seg_peak[seg[gi][starts]] = np.maximum.reduceat(h, starts)
        bound = np.maximum(bound, seg_peak[seg])
    return bound


def _run(
    ent: _Entries,
    rows: _Rows,
    base0_seg: np.ndarray,
    table: RuleTable,
    scan_cap: int,
    counts0: tuple[np.ndarray, np.ndarray] | None = None,
) -> _Outcome:
    """Replay every page on its own (exact wherever multi-page transitions agree).

    Pages whose guest-share count bound exceeds ``scan_cap`` take the exact loop engine.
    ``counts0``: (host_share_guest_count, kvm_share_hyp count) of every segment at the start
    (a chunk of a replay in chunks: where the previous chunk left them); default: what the
    state implies at the start of a trace.
    """
    seg = ent.seg
    base0 = base0_seg[seg]
    g0 = h0 = None
    if counts0 is not None:
        g0, h0 = counts0[0][seg], counts0[1][seg]
    rid, share_count = _counted(rows.rid[ent.seq], rows.ckind[ent.seq], seg, base0, table, h0)
    active = table.mutates[rid]
    bound = _guest_bound(rid, seg, base0, table, g0)
    slow = bound > scan_cap
    n = len(rid)
    before, after = np.empty(n, dtype=np.int16), np.empty(n, dtype=np.int16)
    guest_count = np.empty(n, dtype=np.int64)
    fast = ~slow
    if n and fast.all():  # the usual case: no boolean-index copies of the entry arrays
        cap = max(1, int(bound.max()))
        del bound
        before[:], after[:], guest_count[:], overflow = _scan_engine(
            rid, active, seg, base0, table, cap, g0
        )
        if overflow.any():  # cannot happen with cap >= bound; never trust it silently
            slow |= np.isin(seg, seg[overflow])
    elif fast.any():
        cap = max(1, int(bound[fast].max()))
        b, a, g, overflow = _scan_engine(
            rid[fast], active[fast], seg[fast], base0[fast], table, cap,
            None if g0 is None else g0[fast],
        )  # fmt: skip
        before[fast], after[fast], guest_count[fast] = b, a, g
        if overflow.any():  # cannot happen with cap >= bound; never trust it silently
            slow |= np.isin(seg, seg[fast][overflow])
    if slow.any():
        b, a, g = _loop_engine(
            rid[slow], active[slow], seg[slow], base0[slow], table,
            None if g0 is None else g0[slow],
        )  # fmt: skip
        before[slow], after[slow], guest_count[slow] = b, a, g
    code = table.fail[rid, before].astype(np.int16)
    loop_pages = int(ent.seg_len[distinct(seg[slow])].sum()) if slow.any() else 0
    return _Outcome(
        rid, before, after, code, share_count, guest_count, np.zeros(n, dtype=bool), loop_pages
    )
