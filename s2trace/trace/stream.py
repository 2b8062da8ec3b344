"""Traces in bounded memory: parse and row-local recipes chunk by chunk (issue 18, part 2).

:func:`read_trace` keeps every event with its text (``task``, ``flags``, ``fields``): about
180 bytes per event, 1.8 GB for 10 M lines, before any recipe runs.  :func:`stream_trace` reads
the same file in chunks (the parser's own chunks, :mod:`.parse.sources`) and keeps only what the
recipes, the kernel choice and the timing passes read:

* the events no recipe names in any role (anchor, pair, context and its ``until``, completion
  and its ``unless``, memcache fills, refills and frees, with their ``_ret`` probes), no
  hypervisor event the pins read, no ``s2_`` kprobe event (the kernel choice reads their
  functions) and no lost-events marker are counted and dropped;
* the others are kept as *compact rows*: the EVENTS numbers (time, CPU, pid, line, lost count)
  and the event name, without ``task`` and ``flags`` (<NA>);
* their ``fields`` text is kept only where a pass reads it later: events that some recipe
  relates to others, the hypervisor events, the first event of each name (the kernel choice
  reads one), never the events that only row-local recipes read
  (:func:`~s2trace.trace.recipes.engine.is_row_local`: no pairing of any kind);
* row-local recipes are evaluated on each chunk as it is parsed, into their rows
  (:class:`~s2trace.trace.recipes.engine.LocalRows`), and their events' text is dropped with the
  chunk.  Their problems keep the order one pass over the whole trace records them in.

The recipes that relate events to each other (entry/return probes, VM bookkeeping, donation
runs, memcache stacks, teardown, hypervisor pins) then run once over the compact rows
(:func:`~s2trace.trace.recipes.engine.transitions_of_table`): the open pairings are simply
still there, since the compact rows of their event kinds are never dropped.  Every compact row
remembers its row in the whole events table (``event_index``), and every lost-events marker the
time its gap began (the previous event of its CPU, which may be a dropped event): so the
TRANSITIONS are those of ``to_transitions(read_trace(path).events)``, row for row; the tests
check it on the bundled traces and synthetic ones with chunks of a few lines.

With ``spill=True`` (what :func:`~s2trace.jobs.analyze` asks for) the rows of the row-local
recipes no other recipe reads (:func:`spillable`) go to disk as compact transition rows chunk by
chunk (:class:`~s2trace.trace.spill.Spill`), in the engine's order (event, recipe), and their
events are not kept at all (only counted, and the first of each name kept: the kernel choice
looks for it).  :func:`transition_store` then joins them with what the engine assembles from the
compact rows into a :class:`~s2trace.trace.spill.TransitionStore`.  Two passes read every
recipe's rows: the memcache timing (every reclaim) and the VM teardown (every donation); when
the chosen recipes would run them on this trace (:func:`spill_safe`), the caller reads the trace
again without spilling.

What the stream does not bound: the compact rows grow with the events the relational recipes
read (none in a trace of ``pkvm_mem_transition`` events alone), and without ``spill`` the
row-local recipes' rows are held too (docs/benchmarks.md says what remains).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
from tqdm import tqdm

from s2trace.errors import InputError, Problem, ProblemLog
from s2trace.files import input_file, shown
from s2trace.trace.parse import readers
from s2trace.trace.parse.eventcols import STR, EventCols, events_frame
from s2trace.trace.parse.formats import LOST_EVENT, TEXT_FORMATS, detect_format
from s2trace.trace.parse.sources import read_chunks
from s2trace.trace.parse.textscan import parse_chunk
from s2trace.trace.recipes.engine import LocalRows, is_row_local
from s2trace.trace.recipes.model import Recipe, RecipeSet
from s2trace.trace.recipes.pin import ENTER, EXIT, HCALL
from s2trace.trace.recipes.related import EventTable
from s2trace.trace.recipes.rowset import RowSet
from s2trace.trace.spill import (
    COMPACT,
    Run,
    Spill,
    TransitionStore,
    batch_of,
    compact,
    is_sorted,
    replay_key,
)

__all__ = [
    "STREAM_CHUNK",
    "StreamedTrace",
    "kept_events",
    "spill_safe",
    "spillable",
    "stream_trace",
    "transition_store",
]

#: Bytes parsed per chunk (module attribute, read at each call: tests shrink it to a few lines).
STREAM_CHUNK = 16 << 20


@dataclass
class StreamedTrace:
    """A trace read by :func:`stream_trace`: the compact rows and what was learnt on the way.

    ``events`` are EVENTS rows (the kept events, see the module docstring); ``index`` the row
    of each in the whole events table; ``lost_ts`` when each lost-events gap began (one per
    ``lost_events`` row of ``events``, in order); ``local`` the rows of the row-local recipes
    (by ``id()`` of the recipe); ``n_events`` how many events the whole table has.
    """

    events: pd.DataFrame
    index: np.ndarray
    lost_ts: np.ndarray
    local: dict[int, LocalRows]
    problems: ProblemLog
    path: str
    fmt: str
    lines: int
    n_events: int
    notes: tuple[str, ...] = ()
    counts: dict[str, int] = field(default_factory=dict)
    #: the rows of the spilled row-local recipes (``spill=True``), compact columns with
    #: ``recipe`` the recipe's position in ``every``, in (event, recipe) order; whether that
    #: is replay order too (time never goes back between them)
    spilled: Spill | None = None
    spilled_sorted: bool = True
    spilled_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def table(self) -> EventTable:
        return EventTable.of(self.events, self.index, self.lost_ts)


def _roles(r: Recipe) -> set[str]:
    """The events recipe ``r`` relates its own event to."""
    out: set[str] = set()
    if r.pair is not None:
        out.add(r.pair.event)
    if r.context is not None:
        out |= {r.context.event, *r.context.until}
    if r.complete is not None:
        out |= {*r.complete.events, *r.complete.unless}
    if r.memcache is not None:
        mc = r.memcache
        out |= {mc.fill, mc.fill + "_ret", *mc.refill, *(e + "_ret" for e in mc.refill)}
        if mc.free is not None:
            out.add(mc.free)
    return out


def spillable(every: RecipeSet, linear_map: tuple[int, int] | None) -> list[Recipe]:
    """The row-local recipes whose rows no other recipe reads (no ``covered_by`` names them):
    with ``spill=True`` they go to disk as transitions and their events are not kept."""
    covering = {r.covered_by for r in every if r.covered_by is not None}
    return [r for r in every if is_row_local(r, linear_map) and r.name not in covering]


def kept_events(
    every: RecipeSet, linear_map: tuple[int, int] | None, spilled: Sequence[Recipe] = ()
) -> tuple[set[str], set[str]]:
    """(events kept as compact rows, events whose ``fields`` text is kept too); ``s2_`` kprobe
    events are kept as well (their first event with its text); the anchors of ``spilled``
    recipes only when some other recipe reads them."""
    related = {LOST_EVENT, HCALL, ENTER, EXIT}
    anchors = set()
    gone = {id(r) for r in spilled}
    for r in every:
        related |= _roles(r)
        if is_row_local(r, linear_map):
            if id(r) not in gone:
                anchors.add(r.event)
        else:
            related.add(r.event)
    return related | anchors, related


class _Notes:
    """:func:`~s2trace.trace.parse.readers.trace_notes`, fed chunk by chunk."""

    def __init__(self) -> None:
        self.finite = 0
        self.last: float | None = None
        self.back = 0
        self.first: tuple[int, float, float] | None = None

    def feed(self, ts: np.ndarray, line: np.ndarray) -> None:
        at = np.flatnonzero(np.isfinite(ts))
        if not len(at):
            return
        self.finite += len(at)
        t = ts[at]
        seq = t if self.last is None else np.r_[self.last, t]
        back = np.flatnonzero(seq[1:] < seq[:-1])
        if len(back) and self.first is None:
            b = int(back[0])
            later = b if self.last is not None else b + 1  # index in t of the later event
            self.first = (int(line[at[later]]), float(seq[b + 1]), float(seq[b]))
        self.back += len(back)
        self.last = float(t[-1])

    def notes(self, lines: int) -> tuple[str, ...]:
        return readers.notes_text(self.finite, lines, self.back, self.first)


class _LostTimes:
    """When each lost-events gap began: the previous event of the marker's CPU (-inf if
    none), carried from chunk to chunk (``engine._lost_times`` over the whole table)."""

    def __init__(self) -> None:
        self.last: dict[float, float] = {}
        self.out: list[np.ndarray] = []

    def feed(self, cols: EventCols, lost: np.ndarray) -> None:
        cpu = np.where(cols.cpu_ok, cols.cpu, -1).astype(np.float64)
        ts = pd.Series(cols.ts)
        if len(lost):
            prev = ts.groupby(cpu).ffill().to_numpy()[lost]
            carried = np.array([self.last.get(c, np.nan) for c in cpu[lost].tolist()])
            prev = np.where(np.isnan(prev), carried, prev)
            self.out.append(np.where(np.isnan(prev), -np.inf, prev))
        last = ts.groupby(cpu).last()  # one per CPU of the chunk
        for c, t in zip(last.index.to_numpy(np.float64).tolist(), last.to_numpy().tolist(),
                        strict=True):  # fmt: skip
            if not np.isnan(t):
                self.last[c] = t

    def times(self) -> np.ndarray:
        return np.concatenate(self.out) if self.out else np.zeros(0)


def stream_trace(
    path: str | os.PathLike[str],
    every: RecipeSet,
    *,
    fmt: str | None = None,
    strict: bool = False,
    progress: bool | None = None,
    linear_map: tuple[int, int] | None = None,
    page_size: int = 4096,
    spill: bool = False,
) -> StreamedTrace:
    """Read a text trace chunk by chunk into a :class:`StreamedTrace` (module docstring).

    ``every``: every recipe that may be used (all kernels: the kernel is chosen later, from
    the kept events); ``linear_map``, when known before the trace is read, lets recipes that
    read kernel linear-map addresses run chunk by chunk too.  Damage is recorded as
    :func:`~s2trace.trace.parse.readers.read_trace` records it.

    ``spill``: the rows of the recipes :func:`spillable` names become compact transition rows
    on disk chunk by chunk (``StreamedTrace.spilled``) and their events are not kept (only the
    first of each name, which the kernel choice looks for); their problems are kept as they
    are without ``spill``.
    """
    if not os.path.lexists(path):
        raise InputError(f"{shown(path)}: no such trace file")
    src = input_file(path, "a trace file")
    kind = fmt or detect_format(src)
    if kind not in TEXT_FORMATS:
        raise InputError(f"{shown(path)}: a {kind} file is read whole, not streamed")
    spilled = spillable(every, linear_map) if spill else []
    keep, texts = kept_events(every, linear_map, spilled)
    local_recipes = [r for r in every if is_row_local(r, linear_map)]
    local = {id(r): LocalRows() for r in local_recipes}
    position = {id(r): i for i, r in enumerate(every)}
    gone = {id(r) for r in spilled}
    first_only = {r.event for r in spilled} - keep  # their first event only, without text
    out = Spill("rows") if spill else None
    last_key: tuple | None = None
    in_order = True
    per_recipe = np.zeros(len(every), np.int64)
    log = ProblemLog(strict=strict)
    notes, lost_times = _Notes(), _LostTimes()
    parts: list[EventCols] = []
    index: list[np.ndarray] = []
    counts: dict[str, int] = {}
    text_seen: set[str] = set()
    n_events = kept = 0
    next_line = 1
    default_cpu = readers.cpu_from_path(src) if kind == "hyp-early" else None
    show = sys.stderr.isatty() if progress is None else bool(progress)
    with tqdm(
        total=src.stat().st_size, unit="B", unit_scale=True, desc=f"reading {src.name}",
        file=sys.stderr, disable=not show, leave=False,
    ) as bar:  # fmt: skip
        for raw in read_chunks(src, bar, STREAM_CHUNK):
            cols, nlines, bad = parse_chunk(raw, next_line, kind, readers._FAST)
            for lineno, text, why in bad:
                detail = f"not a {kind} trace line: {text!r}" + (f" ({why})" if why else "")
                log.add(Problem("malformed_line", lineno, detail, None, str(src)))
            next_line += nlines
            if not len(cols):
                continue
            if default_cpu is not None:
                cols.cpu[~cols.cpu_ok] = default_cpu
                cols.cpu_ok[:] = True
            notes.feed(cols.ts, cols.line)
            names = cols.event.dictionary.to_pylist()
            code = cols.event.indices.to_numpy(zero_copy_only=False)
            for name, n in zip(names, np.bincount(code, minlength=len(names)).tolist(),
                               strict=True):  # fmt: skip
                counts[name] = counts.get(name, 0) + n
            wanted = np.array([n in keep or n.startswith("s2_") for n in names] or [False])
            with_text = np.array([n in texts for n in names] or [False])
            first = [i for i, n in enumerate(names) if n not in text_seen and n not in texts]
            mask = wanted[code]
            for i, n in enumerate(names):
                if n in first_only and n not in text_seen and not wanted[i]:
                    mask[int(np.argmax(code == i))] = True  # first kept; text below
            rows = np.flatnonzero(mask)
            lost = (
                np.flatnonzero(code == names.index(LOST_EVENT)) if LOST_EVENT in names else rows[:0]
            )
            lost_times.feed(cols, lost)
            text_rows = with_text[code]
            for i in first:  # the first event of each name keeps its text
                text_rows[int(np.argmax(code == i))] = True
                text_seen.add(names[i])
            if local_recipes and len(cols):
                present = {names[i] for i in np.unique(code).tolist()}
                mine = [r for r in local_recipes if r.event in present]
                if mine:
                    ev = EventTable.of(events_frame([cols]))
                    remap = np.cumsum(mask) - 1 + kept
                    made = []
                    for r in mine:
                        got = local[id(r)].add(r, ev, linear_map, page_size,
                                               None if id(r) in gone else remap)  # fmt: skip
                        if id(r) in gone and len(got):
                            made.append(_spilled_columns(got, ev, n_events, position[id(r)]))
                    if made and out is not None:
                        part = _in_order({k: np.concatenate([m[k] for m in made]) for k in made[0]})
                        key = replay_key(part)
                        in_order = in_order and is_sorted(key, last_key)
                        last_key = tuple(k[-1].item() for k in key)
                        out.append(pd.DataFrame(part, copy=False))
                        per_recipe += np.bincount(part["recipe"], minlength=len(every))
                    del ev, made
            if len(rows):
                sub = cols.keep(mask)
                m = len(sub)
                nulls = pa.nulls(m, STR)
                keep_text = text_rows[rows]
                if not keep_text.all():  # a take, not if_else: that keeps every row's bytes
                    at = pa.array(np.arange(m), mask=~keep_text)
                    sub.fields = sub.fields.take(at)
                sub.task = sub.flags = nulls
                parts.append(sub)
                index.append(rows + n_events)
                kept += m
            n_events += len(cols)
    lines = next_line - 1
    if out is not None:
        out.end_run()
    events = events_frame(parts)
    return StreamedTrace(
        events=events,
        index=np.concatenate(index) if index else np.zeros(0, np.int64),
        lost_ts=lost_times.times(),
        local=local,
        problems=log,
        path=str(src),
        fmt=kind,
        lines=lines,
        n_events=n_events,
        notes=notes.notes(lines),
        counts=counts,
        spilled=out,
        spilled_sorted=in_order,
        spilled_counts=per_recipe,
    )


def _spilled_columns(rows: RowSet, ev: EventTable, base: int, recipe: int) -> dict[str, np.ndarray]:
    """Compact transition columns (:data:`~s2trace.trace.spill.COMPACT` but ``basis``) of a
    row-local recipe's rows over one chunk's table (``base``: the chunk's first event), as
    :func:`~s2trace.trace.recipes.engine._assemble` makes them; ``recipe``: its position."""
    n = len(rows.anchor)
    return {
        "ts": ev.ts[rows.done],
        "line": ev.line[rows.done],
        "event_index": rows.done + base,
        "op": rows.op.astype(np.int8),
        "initiator": rows.initiator.astype(np.int8),
        "completer": rows.completer.astype(np.int8),
        "addr": rows.start.astype(np.uint64),
        "size": (rows.stop - rows.start).astype(np.uint64),
        "vm": rows.vm.astype(np.int64),
        "vm_ok": rows.vm_ok.astype(bool),
        "gfn": rows.gfn.astype(np.uint64),
        "gfn_ok": rows.gfn_ok.astype(bool),
        "counted": rows.counted.astype(bool),
        "recipe": np.full(n, recipe, np.int16),
        "t_earliest": ev.ts[rows.early],
    }


def _in_order(c: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rows in (event, recipe) order, as the engine assembles them (ties keep their order)."""
    order = np.lexsort((c["recipe"], c["event_index"]))
    return {k: a[order] for k, a in c.items()}


def spill_safe(streamed: StreamedTrace, rs: RecipeSet) -> bool:
    """Whether no recipe of ``rs`` reads the spilled rows in this trace: a memcache recipe
    that has events and fills (:mod:`~s2trace.trace.recipes.memcache` reads every recipe's
    reclaims) or a VM teardown that has events (:mod:`~s2trace.trace.recipes.teardown` reads
    every donation) do; the caller then reads the trace again without spilling."""
    n = streamed.counts
    for r in rs:
        if r.memcache is not None and n.get(r.event, 0) and n.get(r.memcache.fill, 0):
            return False
        if r.scope == "vm" and n.get(r.event, 0):
            return False
    return True


def transition_store(
    frame: pd.DataFrame, streamed: StreamedTrace, every: RecipeSet, rs: RecipeSet
) -> TransitionStore:
    """The TRANSITIONS of a trace streamed with ``spill=True``, on disk in replay order:
    ``frame`` (what the recipe engine assembled from the compact rows: every recipe of
    ``rs`` but the spilled ones) merged with the spilled rows of the recipes in ``rs``."""
    recipes = [str(c) for c in frame["recipe"].cat.categories]
    basis = [str(c) for c in frame["basis"].cat.categories]
    final = np.full(len(every), -1, np.int16)
    bcode = np.zeros(len(every), np.int16)
    chosen = set(rs.names)
    for i, r in enumerate(every):
        if r.name in chosen and r.name in recipes:
            final[i] = recipes.index(r.name)
            bcode[i] = basis.index(r.basis)
    mine = batch_of(compact(frame, recipes, basis))
    runs: list[Run] = [lambda: iter([mine])]
    known: list[bool | None] = [None]
    n = len(frame)
    spill = streamed.spilled
    if spill is not None and spill.runs:

        def spilled() -> Iterator[pa.RecordBatch]:
            for b in spill.run(0):
                c = {name: b.column(i).to_numpy(zero_copy_only=False)
                     for i, name in enumerate(b.schema.names)}  # fmt: skip
                code = final[c["recipe"]]
                keep = code >= 0
                out = {k: a[keep] for k, a in c.items()}
                out["recipe"] = code[keep]
                out["basis"] = bcode[c["recipe"]][keep]
                yield batch_of({k: out[k] for k in COMPACT})

        runs.append(spilled)
        known.append(streamed.spilled_sorted)
        per = streamed.spilled_counts
        n += int(per[: len(final)][final[: len(per)] >= 0].sum())
    return TransitionStore(runs, n, recipes, basis, known)
