"""Replay in chunks with carried per-page state: the whole replay's results in bounded memory.

Internal to :mod:`s2trace.trace.replay` (issue 18, part 2).  The whole replay holds, for every
transition at once, its per-row arrays, its (segment, row) entries, their outcomes and the
interval pieces: about 330 bytes per transition on top of the TRANSITIONS frame.  Here the
time-ordered transitions are cut into chunks of ``chunk`` rows and each chunk is replayed with
the whole replay's own steps (rows, entries, engines, coupled rows, pieces, violations), starting
every page from what the chunks before it left (:class:`_Carry`):

* its state *and* its two counters (``host_share_guest_count``, the host's ``kvm_share_hyp``
  count): the counters are not functions of the state, so a page shared with two guests or
  shared twice with the hypervisor by the host must carry them;
* its open interval: the row that started it (``sseq``, global; -1: the initial state), its
  basis, and whether a lost-events marker fell inside it so far (``incomplete``).

What a page starts from at its first row is static per rule (:mod:`.grounds`: the precondition
of its *first state-changing* transition, which may lie in a later chunk than its first row),
so a first pass over the chunks paints, per page, that precondition (first row wins,
:class:`_Ranges`); the same pass records the problems of every row, which are logged in the
whole replay's order (by kind, then row) before anything is replayed, so ``strict`` stops where
the whole replay does.

Why the results are the whole replay's, exactly:

* chunks follow the replay order (the transitions are sorted once, as the whole replay sorts
  them), so time going back in the trace, even across a chunk boundary, is the sort's business,
  not the chunks';
* a chunk's segments are cut at the carried ranges' and the painted ranges' boundaries too, so
  every segment's pages start alike (a segment is only a compression: pages replay alike);
* every row lies in one chunk, so what multi-page rows couple (:mod:`.coupled`) is resolved
  within it, and a row's violations are merged within it;
* interval pieces merge only when their start rows *and* end rows are the same, so all pieces a
  chunk closes merge among themselves (:func:`~.tables._merge`, with the global multi-page
  flags), and the pieces still open at the end merge with the untouched initial ranges;
  merging and ordering (by page, then start row) are the whole replay's;
* ``end_check`` compares the final carried state of the painted pages with the map.

The only things that may differ are diagnostics: ``meta["sequential_rows"]`` (the row-by-row
pass restarts in each chunk) and ``meta["loop_engine_pages"]`` (a page's guest-count bound is
taken per chunk, so a page may take the exact engine in fewer chunks; both engines are exact).

What is on disk: the transitions may come from a :class:`~s2trace.trace.spill.TransitionStore`
(read a chunk at a time, in both passes); the interval pieces a chunk closes become INTERVALS
rows at once (what the row that starts each says is carried with every open interval:
``_BEGUN``), written as one run per chunk in (page, start row) order, and the runs are merged
into INTERVALS when the table is read (:class:`~s2trace.trace.spill.SortedRuns`).  What stays in
memory: the carried and painted ranges (one per run of touched pages), one flag per transition
(multi-page or not, which merging reads) and the VIOLATIONS (one row per refusal).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from tqdm import tqdm

from s2trace.columns import VIOLATIONS
from s2trace.errors import ProblemLog, StrictError
from s2trace.intervals import distinct
from s2trace.pkvm.rules import RuleTable
from s2trace.trace.replay.coupled import _resolve
from s2trace.trace.replay.engines import _Outcome
from s2trace.trace.replay.grounds import end_compare, first_changes
from s2trace.trace.replay.initial import _Initial, _lookup
from s2trace.trace.replay.rows import (
    _ATOMIC,
    _END,
    _SHARED_GUEST,
    _SHARED_HYP,
    _Rows,
    _rows,
)
from s2trace.trace.replay.segments import _Entries, _explode
from s2trace.trace.replay.tables import (
    _Begun,
    _categorised,
    _concat,
    _interval_frame,
    _merge,
    _page_pieces,
    _Pieces,
    _subtract_pages,
    _violations,
)
from s2trace.trace.spill import SortedRuns, Spill, TransitionStore

#: Transitions per chunk of a replay in chunks (``replay(chunk=...)``; what
#: :func:`~s2trace.jobs.analyze` asks for when it reads a trace in bounded memory; read at
#: each call, tests shrink it).  The whole replay holds about 330 bytes per transition at its
#: peak: a half-million-row chunk, about 170 MB.
REPLAY_CHUNK = 1 << 19

#: The order the whole replay records row problems in (:func:`~.rows._rows`: kind by kind).
_PROBLEM_ORDER = ("no_timestamp", "unknown_op", "empty_transition", "unaligned_transition")


@dataclass
class _Ranges:
    """Sorted, disjoint page ranges [start, stop) with per-range values (``vals``, by name)."""

    start: np.ndarray
    stop: np.ndarray
    vals: dict[str, np.ndarray]

    @classmethod
    def empty(cls, **dtypes: type) -> _Ranges:
        z = np.zeros(0, dtype=np.int64)
        return cls(z, z.copy(), {k: np.zeros(0, dtype=d) for k, d in dtypes.items()})

    def find(self, pages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(range index, covered) of each page (index 0 where not covered)."""
        i = np.searchsorted(self.start, pages, "right") - 1
        ok = i >= 0
        i = np.maximum(i, 0)
        if len(self.start):
            ok &= pages < self.stop[i]
        else:
            ok[:] = False
        return i, ok

    def put(self, start: np.ndarray, count: np.ndarray, vals: dict[str, np.ndarray]) -> None:
        """Ranges [start, start + count) (sorted, disjoint) take ``vals``; the rest keeps its."""
        ks, ke, ri = _subtract_pages(self.start, self.stop, start, count)
        s = np.concatenate([ks, start])
        order = np.argsort(s, kind="stable")
        self.start = s[order]
        self.stop = np.concatenate([ke, start + count])[order]
        self.vals = {
            k: np.concatenate([v[ri], vals[k].astype(v.dtype)])[order] for k, v in self.vals.items()
        }

    def add_new(self, start: np.ndarray, count: np.ndarray, vals: dict[str, np.ndarray]) -> None:
        """Ranges [start, start + count) (sorted, disjoint) where no range lies yet take
        ``vals`` (the first writer wins); adjacent ranges with equal values become one."""
        ns, ne, ri = _subtract_pages(start, start + count, self.start, self.stop - self.start)
        s = np.concatenate([self.start, ns])
        e = np.concatenate([self.stop, ne])
        v = {k: np.concatenate([a, vals[k][ri].astype(a.dtype)]) for k, a in self.vals.items()}
        order = np.argsort(s, kind="stable")
        s, e = s[order], e[order]
        v = {k: a[order] for k, a in v.items()}
        same = s[1:] == e[:-1]
        for a in v.values():
            same &= a[1:] == a[:-1]
        head = np.r_[True, ~same] if len(s) else np.zeros(0, dtype=bool)
        tail = np.r_[~same, True] if len(s) else np.zeros(0, dtype=bool)
        self.start, self.stop = s[head], e[tail]
        self.vals = {k: a[head] for k, a in v.items()}

    def bounds(self) -> np.ndarray:
        return np.concatenate([self.start, self.stop])


@dataclass
class _Carry(_Ranges):
    """Every page touched so far: state, counters and open interval (module docstring).

    ``vals``: ``base`` (state id), ``g`` (host_share_guest_count), ``h`` (kvm_share_hyp
    count), ``sseq`` (row that started the open interval, -1: initial), ``inc``
    (incomplete so far), ``bas`` (basis index of an initial interval, -1: a row's).
    """

    @classmethod
    def new(cls) -> _Carry:
        r = _Ranges.empty(base=np.int16, g=np.int64, h=np.int64, sseq=np.int64, inc=bool,
                          bas=np.int64, t0=np.float64, te0=np.float64, l0=np.int64,
                          e0=np.int64, b0=np.int64)  # fmt: skip
        return cls(r.start, r.stop, r.vals)


def _chunk_bounds(n: int, chunk: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + chunk, n)) for lo in range(0, n, chunk)] if n else []


def _inside(cuts: np.ndarray, rows: _Rows) -> np.ndarray:
    """The cut points that lie strictly inside some multi-page row of ``rows`` (the only
    ones :func:`~.segments._explode` can use)."""
    multi = rows.npages > 1
    if not multi.any() or not len(cuts):
        return cuts[:0]
    first = np.sort(rows.first[multi])
    stop = np.sort(rows.first[multi] + rows.npages[multi])
    live = np.searchsorted(first, cuts, "left") - np.searchsorted(stop, cuts, "right")
    return cuts[live > 0]


def _parts(
    tr: pd.DataFrame | TransitionStore, spans: list[tuple[int, int]], chunk: int
) -> Iterator[tuple[int, int, pd.DataFrame]]:
    """(lo, hi, frame) of every chunk of the transitions in replay order."""
    if isinstance(tr, TransitionStore):
        for (lo, hi), part in zip(spans, tr.chunks(chunk), strict=True):
            yield lo, hi, part
    else:
        for lo, hi in spans:
            yield lo, hi, tr.iloc[lo:hi]


#: Rows per record batch of the interval runs (one is read per run at a time while merging),
#: and rows held by the merge of all runs at once (a share each).
_RUN_BATCH = 1 << 13
_MERGE_ROWS = 1 << 20

#: The begun values a piece takes from the row that starts it (:class:`~.tables._Begun`),
#: carried with each page's open interval: ts, t_earliest, line, event_index, basis code.
_BEGUN = ("t0", "te0", "l0", "e0", "b0")


def replay_chunks(
    tr: pd.DataFrame | TransitionStore,
    table: RuleTable,
    page_size: int,
    log: ProblemLog,
    *,
    explicit: _Initial,
    ground: _Initial,
    end: _Initial,
    texts: _Initial,
    row_texts: list[str],
    precondition: bool,
    chunk: int,
    scan_cap: int,
    kernel: str,
    strict: bool,
    progress: bool | None,
) -> tuple[SortedRuns | pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """(INTERVALS, VIOLATIONS, meta counts) of the TRANSITIONS ``tr`` in replay order (a frame
    or a :class:`~s2trace.trace.spill.TransitionStore`), ``chunk`` rows at a time (module
    docstring).  ``explicit``/``ground``/``end``: the caller's initial ranges, every range
    source overlaid, the map taken after the trace; ``texts``: ``ground`` with the basis texts
    of the intervals (:func:`~s2trace.trace.replay.replay`); ``row_texts``: the categories of
    the transitions' ``basis`` (the codes of every chunk index them).  INTERVALS are on disk
    (:class:`~s2trace.trace.spill.SortedRuns`), or the frame when there are none; meta
    ``lost_rows`` holds the lost-events markers' rows."""
    n = len(tr)
    chunk = max(1, int(chunk))
    spans = _chunk_bounds(n, chunk)
    show = sys.stderr.isatty() if progress is None else bool(progress)
    multi = np.zeros(n, dtype=bool)
    painted = _Ranges.empty(pre=np.int64)
    static_cuts = np.concatenate([ground.start, ground.stop, explicit.start, explicit.stop,
                                  end.start, end.stop])  # fmt: skip
    found: list = []
    lost_rows: list[pd.DataFrame] = []
    runs = Spill("interval-runs", batch=_RUN_BATCH)
    out_of = _IntervalMaker(row_texts, texts.texts, table, page_size, runs)
    with tqdm(total=2 * n, unit="tr", unit_scale=True, desc="replaying", file=sys.stderr,
              disable=not show, leave=False) as bar:  # fmt: skip
        # pass 1: row problems, multi-page rows, each page's first state-changing transition
        for lo, hi, part in _parts(tr, spans, chunk):
            quiet = ProblemLog()
            rows = _rows(part, table, page_size, quiet)
            found.extend((_PROBLEM_ORDER.index(p.kind), lo, i, p) for i, p in enumerate(quiet))
            multi[lo:hi] = rows.npages > 1
            is_lost = (part["op"] == "lost").to_numpy(dtype=bool, na_value=False)
            if is_lost.any():
                lost_rows.append(part[is_lost])
            ent = _explode(rows)  # add_new keeps what earlier chunks painted
            segs, pre = first_changes(ent, rows, table)
            painted.add_new(ent.seg_page[segs], ent.seg_len[segs], {"pre": pre})
            bar.update(hi - lo)
        for *_, p in sorted(found, key=lambda f: f[:3]):
            log.add(p)  # strict: the whole replay's first problem raises here
        del found
        # pass 2: replay chunk by chunk from the carried state
        carry = _Carry.new()
        vframes: list[pd.DataFrame] = []
        lost_before = False
        seq_rows = loop_pages = 0
        for lo, hi, part in _parts(tr, spans, chunk):
            rows = _rows(part, table, page_size, ProblemLog())
            cuts = _inside(np.concatenate([static_cuts, painted.bounds(), carry.bounds()]), rows)
            ent = _explode(rows, cuts)
            chunk_lost = len(rows.global_lost) > 0
            if len(ent.seq):
                start, counts0 = _starts(ent, carry, painted, explicit, ground, precondition,
                                         lost_before)  # fmt: skip
                ent, out, start = _resolve(ent, rows, start, table, scan_cap, counts0)
                seq_rows += out.sequential_rows
                loop_pages += out.loop_pages
                p = _page_pieces(ent, rows, out, start[0], table, start[1])
                first = p.sseq < 0  # one per segment, in segment order
                last = p.eseq == _END
                p.inc[first] |= start[3]
                at = np.where(first, 0, p.sseq)
                begun = [a[at] for a in (rows.ts, rows.t_earliest, rows.line, rows.event_index,
                                         rows.basis)]  # fmt: skip
                for b, carried in zip(begun, start[4:], strict=True):
                    b[first] = carried
                p.sseq = np.where(first, 0, p.sseq + lo)
                p.sseq[first] = start[2]
                p.eseq = np.where(last, _END, p.eseq + lo)
                done = p.take(~last)
                if len(done.pstart):
                    done = _merge(done, multi)  # every end row lies in this chunk
                    t_end = rows.ts[done.eseq - lo]
                    out_of.run(done, _begun_of(done.sseq, p.sseq, begun), t_end)
                g_after, h_after = _counts_after(ent, rows, out, table)
                carry.vals["inc"] |= chunk_lost  # pages this chunk does not touch
                carry.put(ent.seg_page, ent.seg_len, {
                    "base": p.vis[last], "g": g_after, "h": h_after, "sseq": p.sseq[last],
                    "inc": p.inc[last], "bas": p.bas[last],
                    **{k: b[last] for k, b in zip(_BEGUN, begun, strict=True)},
                })  # fmt: skip
                v = _violations(ent, rows, out, part, table, page_size, kernel, False)
                if len(v):
                    v.index = v.index + lo  # any index: reset at the end
                    vframes.append(v)
                    if strict:
                        v0 = v.iloc[0]
                        raise StrictError(
                            f"--strict: violation at line {v0['line']}: {v0['check']}: "
                            f"{v0['detail']}"
                        )
                del ent, out, start, p, done, begun
            else:
                carry.vals["inc"] |= chunk_lost
            lost_before |= chunk_lost
            bar.update(hi - lo)
    _open_intervals(carry, multi, texts, out_of, lost_before)
    intervals = out_of.finish()
    violations = (
        _categorised(pd.concat(vframes, ignore_index=True)) if vframes else VIOLATIONS.empty()
    )
    meta: dict[str, Any] = {
        "pages": int((carry.stop - carry.start).sum()),
        "sequential_rows": seq_rows,
        "loop_engine_pages": loop_pages,
        "replay_chunks": len(spans),
        "intervals": out_of.count,
        "lost_rows": pd.concat(lost_rows) if lost_rows else None,
    }
    if len(end.start):
        meta["end_check"] = _end_check(carry, painted, table, end, page_size)
    return intervals, violations, meta


def _begun_of(sseq: np.ndarray, known: np.ndarray, begun: list[np.ndarray]) -> _Begun:
    """What the rows that start pieces ``sseq`` say, from pieces ``known`` (their start rows)
    whose ``begun`` values are known; any value for pieces that start at the initial state."""
    keys, at = np.unique(known, return_index=True)
    i = np.minimum(np.searchsorted(keys, sseq), max(len(keys) - 1, 0))
    src = at[i] if len(keys) else np.zeros(len(sseq), np.int64)
    if not len(known):
        return _Begun(*(np.zeros(len(sseq), dtype=b.dtype) for b in begun))
    vals = [b[src] for b in begun]
    return _Begun(vals[0].astype(np.float64), vals[1].astype(np.float64),
                  vals[2].astype(np.int64), vals[3].astype(np.int64),
                  vals[4].astype(np.int64))  # fmt: skip


class _IntervalMaker:
    """INTERVALS pieces become frames as they close, each run (pieces in (page, start row)
    order) appended to ``runs``; :meth:`finish` merges the runs into the INTERVALS, on disk."""

    def __init__(
        self, row_texts: list[str], init_texts: tuple[str, ...], table: RuleTable,
        page_size: int, runs: Spill,
    ) -> None:  # fmt: skip
        self.row_texts, self.init_texts = row_texts, init_texts
        self.table, self.page_size, self.runs = table, page_size, runs
        self.count = 0
        self.empty: pd.DataFrame | None = None

    def run(self, p: _Pieces, begun: _Begun, t_end: np.ndarray) -> None:
        order = np.lexsort((p.sseq, p.pstart))
        p = p.take(order)
        begun = _Begun(*(a[order] for a in vars(begun).values()))
        frame = _interval_frame(p, begun, t_end[order], self.row_texts, self.init_texts,
                                self.table, self.page_size)  # fmt: skip
        if self.empty is None:
            self.empty = frame.iloc[:0]
        frame["_page"] = p.pstart
        frame["_seq"] = p.sseq
        self.runs.append(frame)
        self.runs.end_run()
        self.count += len(frame)

    def finish(self) -> SortedRuns | pd.DataFrame:
        """The INTERVALS: the runs, merged in (page, start row) order when read, or the empty
        frame when there are none."""
        if not self.count:
            assert self.empty is not None
            return self.empty.reset_index(drop=True)
        return SortedRuns(self.runs, _interval_key, ["_page", "_seq"], _MERGE_ROWS)


def _interval_key(b: pa.RecordBatch) -> list[np.ndarray]:
    return [b.column("_page").to_numpy(), b.column("_seq").to_numpy()]


def _open_intervals(
    carry: _Carry, multi: np.ndarray, texts: _Initial, out_of: _IntervalMaker, any_lost: bool
) -> None:
    """The pieces still open, merged with the untouched initial ranges (as
    :func:`~.tables._intervals` merges them): the last run."""
    v = carry.vals
    m = len(carry.start)
    p = _Pieces(carry.start, carry.stop - carry.start, v["base"].astype(np.int16), v["sseq"],
                np.full(m, _END, dtype=np.int64), v["inc"], v["bas"])  # fmt: skip
    known = p.sseq.copy()
    begun = [v[k] for k in _BEGUN]
    if len(texts.start):
        us, ue, ri = _subtract_pages(texts.start, texts.stop, carry.start, carry.stop - carry.start)
        k = len(us)
        u = _Pieces(
            us, ue - us, texts.state[ri].astype(np.int16), np.full(k, -1, dtype=np.int64),
            np.full(k, _END, dtype=np.int64), np.full(k, any_lost), texts.basis[ri],
        )  # fmt: skip
        p = _concat(p, u)
    p = _merge(p, multi)
    out_of.run(p, _begun_of(p.sseq, known, begun), np.full(len(p.pstart), np.inf))


def _starts(
    ent: _Entries,
    carry: _Carry,
    painted: _Ranges,
    explicit: _Initial,
    ground: _Initial,
    precondition: bool,
    lost_before: bool,
) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, np.ndarray]]:
    """Per segment of a chunk: ((state, basis, open interval's start row, incomplete, and what
    that row says: :data:`_BEGUN`), (guest count, share count)) before the chunk's first row:
    the carried ones for pages touched before, else :func:`~.grounds.starting_states`' (with
    the painted preconditions)."""
    pages = ent.seg_page
    state, basis, covered = _lookup(pages, ground)
    basis = np.where(covered, basis, len(ground.texts) + 1)
    if precondition:
        pi, pre_ok = painted.find(pages)
        x_state, x_basis, x_cov = _lookup(pages, explicit)
        pre = painted.vals["pre"][pi] if len(painted.start) else np.zeros(len(pages), np.int64)
        state = np.where(pre_ok, np.where(x_cov, x_state, pre), state)
        basis = np.where(pre_ok, np.where(x_cov, x_basis, len(ground.texts)), basis)
    g0 = (state == _SHARED_GUEST).astype(np.int64)
    h0 = (state == _SHARED_HYP).astype(np.int64)
    sseq = np.full(len(pages), -1, dtype=np.int64)
    inc = np.full(len(pages), lost_before)
    begun = [np.zeros(len(pages), dtype=carry.vals[k].dtype) for k in _BEGUN]
    ci, old = carry.find(pages)
    if old.any():
        v = {k: a[ci[old]] for k, a in carry.vals.items()}
        state[old], basis[old], g0[old], h0[old] = v["base"], v["bas"], v["g"], v["h"]
        sseq[old], inc[old] = v["sseq"], v["inc"]
        for b, k in zip(begun, _BEGUN, strict=True):
            b[old] = v[k]
    return (state, basis, sseq, inc, *begun), (g0, h0)


def _counts_after(
    ent: _Entries, rows: _Rows, out: _Outcome, table: RuleTable
) -> tuple[np.ndarray, np.ndarray]:
    """(host_share_guest_count, kvm_share_hyp count) of every segment after its last entry.

    The guest count moves only when the entry's rule is applied (:meth:`RuleTable.apply`):
    not when it is refused, skipped (kvm_share_hyp stopped before the page) or part of an
    atomic row refused on another page.  The share count follows :func:`~.engines._counted`
    (a counted share raises it on every page it reaches, an unshare lowers it to at least 0).
    """
    le = ent.seg_start[1:] - 1
    rid = out.rid[le].astype(np.int64)
    before = out.before[le].astype(np.int64)
    gc = out.guest_count[le].astype(np.int64)
    hc = out.share_count[le].astype(np.int64)
    skip = out.skip[le]
    code = out.code[le]
    seq = ent.seq[le]
    refused = np.zeros(len(rows.ts), dtype=bool)
    refused[ent.seq[out.code != 0]] = True
    applied = table.mutates[rid] & (code == 0) & ~skip
    applied &= ~((rows.mode[seq] == _ATOMIC) & refused[seq])
    _, ncount, _ = table.apply(rid, before, gc)
    g_after = np.where(applied, ncount, gc)
    ck = rows.ckind[seq]
    h_after = np.where(ck == 1, hc + ~skip, np.where(ck == 2, np.maximum(hc - 1, 0), hc))
    return g_after, h_after


def _end_check(
    carry: _Carry, painted: _Ranges, table: RuleTable, end: _Initial, page_size: int
) -> dict[str, Any]:
    """:func:`~.grounds.end_check` on the final carried state of the painted pages (those some
    transition changes)."""
    b = distinct(np.concatenate([carry.bounds(), painted.bounds()]))
    lo, hi = b[:-1], b[1:]
    ci, in_c = carry.find(lo)
    _, in_p = painted.find(lo)
    keep = in_c & in_p
    final = carry.vals["base"][ci[keep]].astype(np.int64)
    return end_compare(lo[keep], (hi - lo)[keep], final, table, end, page_size)
