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

What the stream does not bound: the compact rows grow with the events the recipes read, and the
replay still takes every transition at once (docs/benchmarks.md says what remains).
"""

from __future__ import annotations

import os
import sys
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

__all__ = ["STREAM_CHUNK", "StreamedTrace", "kept_events", "stream_trace"]

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


def kept_events(every: RecipeSet, linear_map: tuple[int, int] | None) -> tuple[set[str], set[str]]:
    """(events kept as compact rows, events whose ``fields`` text is kept too); ``s2_`` kprobe
    events are kept as well (their first event with its text)."""
    related = {LOST_EVENT, HCALL, ENTER, EXIT}
    anchors = set()
    for r in every:
        related |= _roles(r)
        if is_row_local(r, linear_map):
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
) -> StreamedTrace:
    """Read a text trace chunk by chunk into a :class:`StreamedTrace` (module docstring).

    ``every``: every recipe that may be used (all kernels: the kernel is chosen later, from
    the kept events); ``linear_map``, when known before the trace is read, lets recipes that
    read kernel linear-map addresses run chunk by chunk too.  Damage is recorded as
    :func:`~s2trace.trace.parse.readers.read_trace` records it.
    """
    if not os.path.lexists(path):
        raise InputError(f"{shown(path)}: no such trace file")
    src = input_file(path, "a trace file")
    kind = fmt or detect_format(src)
    if kind not in TEXT_FORMATS:
        raise InputError(f"{shown(path)}: a {kind} file is read whole, not streamed")
    keep, texts = kept_events(every, linear_map)
    local_recipes = [r for r in every if is_row_local(r, linear_map)]
    local = {id(r): LocalRows() for r in local_recipes}
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
            rows = np.flatnonzero(wanted[code])
            lost = (
                np.flatnonzero(code == names.index(LOST_EVENT)) if LOST_EVENT in names else rows[:0]
            )
            lost_times.feed(cols, lost)
            text_rows = with_text[code]
            for i in first:  # the first event of each name keeps its text
                text_rows[int(np.argmax(code == i))] = True
                text_seen.add(names[i])
            if local_recipes and len(rows):
                present = {names[i] for i in np.unique(code[rows]).tolist()}
                mine = [r for r in local_recipes if r.event in present]
                if mine:
                    ev = EventTable.of(events_frame([cols]))
                    remap = np.cumsum(wanted[code]) - 1 + kept
                    for r in mine:
                        local[id(r)].add(r, ev, linear_map, page_size, remap)
            if len(rows):
                sub = cols.keep(wanted[code])
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
    )
