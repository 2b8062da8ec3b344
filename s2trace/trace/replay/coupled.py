"""Replay, step 4: what multi-page transitions couple, redone exactly.

Internal to :mod:`s2trace.trace.replay`.  A hypercall over a range is refused as a whole when
one page fails (atomic); kvm_share_hyp stops at the first page that fails (prefix).  Pages are
first replayed independently (:func:`~s2trace.trace.replay.engines._run`); where a multi-page
row was refused on some pages only, a forward sweep finds from which row each page's history
may differ and those entries are replayed again, row by row in time order.
"""

from __future__ import annotations

import numpy as np

from s2trace.pkvm.rules import RuleTable
from s2trace.trace.replay.engines import _Outcome, _run
from s2trace.trace.replay.rows import _ATOMIC, _EACH, _END, _PREFIX, _Entries, _Rows


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


def _resolve(
    ent: _Entries, rows: _Rows, base0_seg: np.ndarray, table: RuleTable, scan_cap: int
) -> _Outcome:
    """Replay every page independently, then redo exactly what multi-page rows couple.

    When some multi-page row disagrees, a forward sweep over the coupling rows finds, for
    every page, the first row from which its history may differ (the row itself, or an
    earlier-tainted row sharing a page); entries from there on are replayed row by row in time
    order (:func:`_sequential`), starting from the states the independent pass computed.
    """
    out = _run(ent, rows, base0_seg, table, scan_cap)
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
