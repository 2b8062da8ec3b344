"""Replay, step 4: what multi-page transitions couple, redone exactly.

Internal to :mod:`s2trace.trace.replay`.  A hypercall over a range is refused as a whole when
one page fails (atomic); kvm_share_hyp stops at the first page that fails (prefix).  Segments
are first replayed independently (:func:`~s2trace.trace.replay.engines._run`); where a
multi-page row was refused on some pages only, a forward sweep finds from which row each
segment's history may differ and those entries are replayed again, row by row in time order
(splitting a segment where a counted share stops inside it: :mod:`.splits`).
"""

from __future__ import annotations

import numpy as np

from s2trace.pkvm.rules import RuleTable
from s2trace.trace.replay.engines import _Outcome, _run
from s2trace.trace.replay.rows import _ATOMIC, _EACH, _END, _PREFIX, _Rows
from s2trace.trace.replay.segments import _Entries
from s2trace.trace.replay.splits import _PER_ENTRY, _grown, _Slots


def _coupled_rows(ent: _Entries, rows: _Rows, out: _Outcome) -> tuple[np.ndarray, np.ndarray]:
    """Multi-page rows that couple their pages, as (entry indices by (seq, k), disagreeing).

    Disagreeing: an atomic row with some pages refused and others applied, or a counted share
    (prefix) with pages executed after one that failed.  An entry stands for its segment's
    pages ``k .. k + seg_len - 1`` of the row, which all fail or all pass.
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
    last_k = k + ent.seg_len[ent.seg[multi]] - 1
    first_fail = np.minimum.reduceat(np.where(failed, k, np.iinfo(np.int64).max), starts)
    late = np.logical_or.reduceat(last_k > first_fail[group], starts)
    bad_row = ((mode == _ATOMIC) & any_fail & applied) | ((mode == _PREFIX) & late)
    return multi, bad_row[group]


def _resolve(
    ent: _Entries,
    rows: _Rows,
    start: tuple[np.ndarray, ...],
    table: RuleTable,
    scan_cap: int,
    counts0: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[_Entries, _Outcome, tuple[np.ndarray, ...]]:
    """Replay every segment independently, then redo exactly what multi-page rows couple.

    ``start`` is each segment's (state, basis, ...) before its first row (any further
    per-segment arrays follow the segments through splits); ``counts0`` its two counters
    (:func:`~s2trace.trace.replay.engines._run`).  When some multi-page
    row disagrees, a forward sweep over the coupling rows finds, for every segment, the first
    row from which its history may differ (the row itself, or an earlier-tainted row sharing a
    segment); entries from there on are replayed row by row in time order
    (:func:`_sequential`), starting from the states the independent pass computed.  Returns
    the entries, outcomes and ``start`` again: the row-by-row pass may split segments
    (:mod:`~s2trace.trace.replay.splits`).
    """
    out = _run(ent, rows, start[0], table, scan_cap, counts0)
    multi, bad = _coupled_rows(ent, rows, out)
    if not bad.any():
        return ent, out, start
    dirty = _taint(ent.seg[multi], ent.seq[multi], bad, len(ent.seg_page))
    redo = np.flatnonzero(ent.seq >= dirty[ent.seg])
    out.sequential_rows, slots = _sequential(redo, ent, rows, out, table)
    if slots.made:
        ent, out, start = _grown(slots, ent, rows, out, start)
    return ent, out, start


def _taint(seg: np.ndarray, seq: np.ndarray, bad: np.ndarray, nseg: int) -> np.ndarray:
    """Per segment, the seq from which its history may change (``_END``: never).

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
) -> tuple[int, _Slots]:
    """Replay entries ``redo`` row by row in time order, with the kernel's multi-page coupling.

    States, guest counts and share counts start from the independent pass's values before each
    segment's first redone entry (exact: nothing before it can change).  Updates ``out`` in
    place and returns the number of rows replayed and the slots, with the segments split off
    when a counted share stopped inside one (:mod:`~s2trace.trace.replay.splits`).  A Python
    loop per row: reached only around partly refused multi-page transitions.
    """
    order = redo[np.lexsort((ent.k[redo], ent.seq[redo]))]
    seg = ent.seg[order]
    first = np.unique(seg, return_index=True)
    nseg = len(ent.seg_page)
    zeros = np.zeros(nseg, dtype=np.int64)
    slots = _Slots(
        ent.seg_page.copy(), ent.seg_len.copy(), np.arange(nseg), zeros, zeros.copy(), zeros.copy()
    )
    slots.base[first[0]] = out.before[order[first[1]]]
    slots.gcount[first[0]] = out.guest_count[order[first[1]]]
    slots.hcount[first[0]] = out.share_count[order[first[1]]]
    seqs = ent.seq[order]
    head = np.flatnonzero(np.r_[True, seqs[1:] != seqs[:-1]])
    stop = np.r_[head[1:], len(order)]
    for a, b in zip(head, stop, strict=True):
        row = int(seqs[a])
        s, e = slots.expand(seg[a:b], order[a:b])
        values, stopped = _row_outcome(row, s, slots, rows, table)
        if stopped >= 0 and slots.length[s[stopped]] > 1:
            # kvm_share_hyp stopped at the first page of a segment of several: split it
            new = slots.split(int(s[stopped]), row)
            s = np.insert(s, stopped + 1, new)
            e = np.insert(e, stopped + 1, -1)
            values, _ = _row_outcome(row, s, slots, rows, table)
        _commit(row, s, e, values, slots, out)
    return len(head), slots


def _row_outcome(
    row: int, s: np.ndarray, slots: _Slots, rows: _Rows, table: RuleTable
) -> tuple[dict[str, np.ndarray], int]:
    """What ``row`` does to slots ``s`` (page order), without changing them; and where a
    counted share stopped (the slot whose page failed, -1: it did not stop)."""
    rid = np.full(len(s), rows.rid[row], dtype=np.int64)
    ckind = rows.ckind[row]
    hb, base, gc = slots.hcount[s], slots.base[s], slots.gcount[s]
    stopped = -1
    skip = np.zeros(len(s), dtype=bool)
    if ckind == 1:  # counted share: 0->1 reaches EL2; kvm_share_hyp stops at a failure
        rid[hb > 0] = table.noop
        code = table.fail[rid, base]
        failed = np.flatnonzero(code)
        if len(failed):
            stopped = int(failed[0])
            skip[stopped + 1 :] = True
            code[stopped + 1 :] = 0
        h_after = hb + ~skip
    else:
        if ckind == 2:  # counted unshare: every page; 1->0 reaches EL2; 0 is the WARN_ON
            rid[hb == 0] = table.unshare_not_shared
            rid[hb > 1] = table.noop
            h_after = hb - (hb > 0)
        else:
            h_after = hb
        code = table.fail[rid, base]
    refused = code != 0
    if rows.mode[row] == _ATOMIC and refused.any():
        apply = np.zeros(len(s), dtype=bool)
    else:
        apply = table.mutates[rid] & ~refused & ~skip
    nbase, ncount, _ = table.apply(rid, base, gc)
    values = {
        "rid": rid,
        "before": base,
        "after": np.where(apply, nbase, base),
        "code": code,
        "share_count": hb,
        "guest_count": gc,
        "skip": skip,
        "gcount_after": np.where(apply, ncount, gc),
        "hcount_after": h_after,
    }
    return values, stopped


def _commit(
    row: int,
    s: np.ndarray,
    e: np.ndarray,
    values: dict[str, np.ndarray],
    slots: _Slots,
    out: _Outcome,
) -> None:
    """Apply a row's outcome to the slots and write it to its entries (or record it, for
    slots split off, which have no entries yet)."""
    slots.base[s] = values["after"]
    slots.gcount[s] = values["gcount_after"]
    slots.hcount[s] = values["hcount_after"]
    if not slots.chain or e.min() >= 0:  # the usual case: every slot has its entry
        for name in _PER_ENTRY:
            getattr(out, name)[e] = values[name]
        return
    own = e >= 0
    for name in _PER_ENTRY:
        getattr(out, name)[e[own]] = values[name][own]
    slots.record(s[~own], row, {n: values[n][~own] for n in _PER_ENTRY})
