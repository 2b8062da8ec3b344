"""Replay, output: outcomes -> the INTERVALS and VIOLATIONS tables.

Internal to :mod:`s2trace.trace.replay`.  One piece per segment and state change (spanning the
segment's pages), plus one per untouched part of the initial ranges; adjacent pieces with the
same state over the same span are merged (only pieces that start and end at the
initial/current state or at one multi-page row can merge), so the result is the one a replay
page by page gives.  Refused entries become VIOLATIONS rows, merged over adjacent segments of
the same row and check.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from s2trace.columns import INTERVALS, VIOLATIONS
from s2trace.pkvm.rules import HOST_STATES, RuleTable
from s2trace.trace.replay.engines import _Outcome
from s2trace.trace.replay.initial import _Initial
from s2trace.trace.replay.rows import _END, _Rows, _str_array
from s2trace.trace.replay.segments import _Entries


def _subtract_pages(
    start: np.ndarray, stop: np.ndarray, pages: np.ndarray, counts: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pieces of ranges [start, stop) outside every [pages, pages + counts) (sorted, disjoint;
    ``counts`` 1 when not given)."""
    if len(pages) == 0:
        return start, stop, np.arange(len(start))
    ends = pages + (1 if counts is None else counts)
    brk = np.r_[True, pages[1:] != ends[:-1]]
    run_start = pages[brk]
    run_stop = ends[np.r_[brk[1:], True]]
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
    bas: np.ndarray  # basis of an initial piece (index into the initial texts); -1: a row's

    def take(self, idx: np.ndarray) -> _Pieces:
        return _Pieces(*(a[idx] for a in (self.pstart, self.pcount, self.vis, self.sseq,
                                          self.eseq, self.inc, self.bas)))  # fmt: skip


def _page_pieces(
    ent: _Entries,
    rows: _Rows,
    out: _Outcome,
    base0_seg: np.ndarray,
    table: RuleTable,
    basis0_seg: np.ndarray,
) -> _Pieces:
    """One piece per segment and state: its initial state, then one per change (a piece
    spans its segment's pages)."""
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
    pcount = np.repeat(ent.seg_len, npieces)
    bas = np.full(total, -1, dtype=np.int64)
    bas[off] = basis0_seg
    return _Pieces(pstart, pcount, vis, sseq, eseq, inc, bas)


def _untouched_pieces(ent: _Entries, rows: _Rows, init: _Initial) -> _Pieces:
    """The parts of the initial ranges no transition touched: one piece each, -inf to +inf."""
    us, ue, ri = _subtract_pages(init.start, init.stop, ent.seg_page, ent.seg_len)
    n = len(us)
    return _Pieces(
        us, ue - us, init.state[ri].astype(np.int16), np.full(n, -1, dtype=np.int64),
        np.full(n, _END, dtype=np.int64), np.full(n, len(rows.global_lost) > 0),
        init.basis[ri],
    )  # fmt: skip


def _merge(p: _Pieces, multi: np.ndarray) -> _Pieces:
    """Merge adjacent pages with the same state over the same span.

    Two pages can share a span only if its start and its end are each the initial/current
    state or one multi-page transition (``multi``: per row, whether it names several pages),
    so only those candidate pieces are sorted.
    """
    multi_row = np.r_[multi, False]  # index -1: padding
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
        & (p.bas[o[1:]] == p.bas[o[:-1]])
        & (p.pstart[o[1:]] == p.pstart[o[:-1]] + p.pcount[o[:-1]])
    )
    if same.any():
        head = np.r_[True, ~same]
        p.pcount[o[head]] = np.add.reduceat(p.pcount[o], np.flatnonzero(head))
        keep = np.ones(len(p.pstart), dtype=bool)
        keep[o[~head]] = False
        p = p.take(keep)
    return p


def _concat(a: _Pieces, b: _Pieces) -> _Pieces:
    return _Pieces(*(np.concatenate([x, y]) for x, y in zip(vars(a).values(), vars(b).values(),
                                                           strict=True)))  # fmt: skip


def _intervals(
    ent: _Entries,
    rows: _Rows,
    out: _Outcome,
    start: tuple[np.ndarray, ...],
    init: _Initial,
    table: RuleTable,
    page_size: int,
) -> pd.DataFrame:
    """INTERVALS from the outcomes; ``start`` is each touched page's (state, basis) before
    its first transition, ``init`` the ranges untouched pages take (basis texts included)."""
    base0_seg, basis0_seg = start[0], start[1]
    p = _page_pieces(ent, rows, out, base0_seg, table, basis0_seg)
    if len(init.start):
        p = _concat(p, _untouched_pieces(ent, rows, init))
    p = _merge(p, rows.npages > 1)
    if len(init.start):  # page pieces are in (page, time) order already; initial ranges are not
        p = p.take(np.lexsort((p.sseq, p.pstart)))
    has_start = p.sseq >= 0
    has_end = p.eseq != _END
    ts = np.r_[rows.ts, np.nan]  # index -1: the padding, never selected
    t_end = np.where(has_end, ts[np.where(has_end, p.eseq, -1)], np.inf)
    at = np.where(has_start, p.sseq, -1)
    begun = _Begun(
        ts[at], np.r_[rows.t_earliest, np.nan][at], np.r_[rows.line, 0][at],
        np.r_[rows.event_index, 0][at], np.r_[rows.basis, 0][at],
    )  # fmt: skip
    return _interval_frame(p, begun, t_end, rows.basis_texts, init.texts, table, page_size)


@dataclass
class _Begun:
    """What the row that starts each piece says (ts, t_earliest, line, event_index, basis
    code); any value for a piece that starts at the initial state (``sseq`` -1)."""

    ts: np.ndarray
    t_earliest: np.ndarray
    line: np.ndarray
    event_index: np.ndarray
    basis: np.ndarray


def _interval_frame(
    p: _Pieces,
    begun: _Begun,
    t_end: np.ndarray,
    row_texts: list[str],
    init_texts: tuple[str, ...],
    table: RuleTable,
    page_size: int,
) -> pd.DataFrame:
    """The INTERVALS frame of pieces ``p`` (in their order); ``begun``: what the row that
    starts each piece says; ``t_end``: when it ends; ``row_texts``: the transitions' basis
    texts (``begun.basis`` indexes them), ``init_texts``: the initial ranges' (``p.bas``)."""
    has_start = p.sseq >= 0
    initial = ~has_start  # ``begun`` is filled in place (its arrays are the frame's columns)
    begun.ts[initial] = -np.inf
    begun.t_earliest[initial] = -np.inf
    begun.line[initial] = 0
    begun.event_index[initial] = 0
    begun.basis[initial] = len(row_texts) + p.bas[initial]
    frame = pd.DataFrame(
        {
            "addr_start": p.pstart.astype(np.uint64) * np.uint64(page_size),
            "size": p.pcount.astype(np.uint64) * np.uint64(page_size),
            **_state_columns(p.vis, table),
            "t_start": begun.ts,
            "t_end": t_end,
            "t_earliest": begun.t_earliest,
            "cause": pd.arrays.IntegerArray(begun.line, initial),
            "event_index": pd.arrays.IntegerArray(begun.event_index, initial),
            "basis": _basis_column(begun.basis, [*row_texts, *init_texts]),
            "incomplete": pd.arrays.BooleanArray(p.inc, np.zeros(len(p.inc), dtype=bool)),
        },
        copy=False,
    )
    # built in the declared order: selecting the columns again would copy the table
    return frame if list(frame.columns) == INTERVALS.names else frame[INTERVALS.names]


def _basis_column(codes: np.ndarray, texts: list[str]) -> pd.Categorical:
    """The basis categorical: equal texts (a rule in two lists) share one category."""
    cats, inverse = np.unique(np.array(texts, dtype=object), return_inverse=True)
    return pd.Categorical.from_codes(
        inverse[codes] if len(codes) else [], dtype=pd.CategoricalDtype(list(cats))
    )


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
        cols[name] = pd.Categorical.from_codes(
            codes[state] if len(state) else [], dtype=pd.CategoricalDtype(cats)
        )
    return cols


def _violations(
    ent: _Entries,
    rows: _Rows,
    out: _Outcome,
    tr: pd.DataFrame,
    table: RuleTable,
    page_size: int,
    kernel: str,
    categorical: bool = True,
) -> pd.DataFrame:
    """VIOLATIONS of the refused entries, merged over adjacent segments of one row and check.

    ``categorical=False`` leaves ``op``, ``initiator``, ``completer`` and ``check`` plain
    object columns (a replay in chunks concatenates its chunks' tables, then
    :func:`_categorised` makes the categories those of the whole table)."""
    vi = np.flatnonzero(out.code != 0)
    if len(vi) == 0:
        return VIOLATIONS.empty()
    page = ent.seg_page[ent.seg[vi]]
    count = ent.seg_len[ent.seg[vi]]
    seq = ent.seq[vi]
    code = out.code[vi].astype(np.int64)
    before = out.before[vi]
    rid = out.rid[vi].astype(np.int64)
    order = np.lexsort((page, seq))
    page, count, seq, code, before, rid = (a[order] for a in (page, count, seq, code, before, rid))
    same = (
        (seq[1:] == seq[:-1])
        & (code[1:] == code[:-1])
        & (before[1:] == before[:-1])
        & (page[1:] == page[:-1] + count[:-1])
    )
    heads = np.flatnonzero(np.r_[True, ~same])
    npages = np.add.reduceat(count, heads)
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
            "check": np.array(table.check_names, dtype=object)[code],
            "detail": pd.array(details, dtype="string"),
        }
    )
    frame = frame[VIOLATIONS.names].reset_index(drop=True)
    return _categorised(frame) if categorical else frame


def _categorised(frame: pd.DataFrame) -> pd.DataFrame:
    """``op``, ``initiator``, ``completer`` and ``check`` as categoricals (categories: the
    values present, sorted)."""
    for c in ("op", "initiator", "completer", "check"):
        frame[c] = frame[c].astype("category")
    return frame
