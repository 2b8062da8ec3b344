"""Trace readers: host ftrace text, hypervisor trace buffers and trace-cmd output -> EVENTS.

:func:`read_trace` turns a trace file into the EVENTS DataFrame (``s2trace.columns.EVENTS``),
one row per event line and per lost-events marker, in file order.  Formats (auto-detected from
the first lines, or forced with ``fmt=``):

``ftrace``
    the host's ``trace`` / ``trace_pipe`` text (kernel/trace/trace_output.c; docs/kernel-facts.md
    §KF-4.4): ``# `` header comments, then
    ``TASK-PID [(TGID)] [CPU] [FLAGS] SECS.USECS: EVENT: FIELDS``.  The comm may contain
    spaces and dashes: the pid follows the last dash before the CPU column.  The ``(tgid)``
    column (``options/record-tgid``) and the latency-flags column are optional.
``trace-cmd``
    ``trace-cmd report`` output: the same event lines (other column widths, event names
    padded), ``version = N`` / ``cpus=N`` / ``CPU N is empty`` header lines and
    ``CPU:N [n EVENTS DROPPED]`` markers (read in trace-cmd's ``trace-read.c``).
``hyp``
    the pKVM hypervisor trace buffer of mainline 7.1 and ACK (trace_remote.c 7.1; §KF-4.3):
    ``[CPU]\\tSECS.USECS: EVENT FIELDS``; task and pid are <NA>.
``hyp-early``
    the early (2023) ACK per-CPU form ``[SECS.USECS] EVENT FIELDS``; the CPU is taken from a
    ``cpuN`` directory in the path when there is one.
``csv``, ``jsonl``, ``parquet``
    the canonical tabular forms of EVENTS (:func:`.cache.write_events`).

Every text format also accepts the kernel's lost-events marker ``CPU:N [LOST n EVENTS]``
(``trace``, ``trace_pipe`` and the hypervisor buffer print it): a row with event
``lost_events``, ``lost=n``, the CPU, and no timestamp (<NA>: the marker carries none).
Blank lines and ``#`` comments are skipped; any other line that no layout matches is a
``malformed_line`` :class:`~s2trace.errors.Problem` with its 1-based line number.

Speed (a requirement: traces have millions of lines).  The file is read -- decompressed as a
stream when it is compressed -- in 4 MiB pieces cut at line ends, into one reused buffer
(:mod:`.sources`).  In each piece a few sample lines teach where the fixed-width
columns are; every line is split at those offsets with vectorised byte tests (SWAR,
:mod:`.templates`, :mod:`.chunk`), and the lines no template fits
go to a pass with Arrow's RE2 (:mod:`.textscan`); what that rejects is
malformed.  No Python object is made per line (only per malformed line, for its Problem).
``benchmarks/bench_trace_parse.py`` measures the rate (about 3 M lines/s on one core).

A parsed trace is cached (:mod:`.cache`), keyed by the file's sha256.

This module is the entry point; the work is done by: :mod:`.formats` (line
layouts, :func:`detect_format`), :mod:`.sources` (reading in chunks),
:mod:`.chunk`, :mod:`.templates` and
:mod:`.textscan` (splitting lines into columns), :mod:`.eventcols`
(the EVENTS frame) and :mod:`.field_access` (reading named fields, :func:`fields`).
Their public names are re-exported here.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from s2trace.errors import InputError, Problem, ProblemLog
from s2trace.files import input_file, shown
from s2trace.trace.parse import cache
from s2trace.trace.parse.eventcols import EventCols, events_frame
from s2trace.trace.parse.field_access import (
    PSEUDO_FIELDS,
    as_arrow,
    extract_fields,
    fields,
    parse_uint,
)
from s2trace.trace.parse.formats import (
    HOST_RE,
    HYP_EARLY_RE,
    HYP_RE,
    IGNORED_RE,
    LOST_EVENT,
    LOST_RE,
    TEXT_FORMATS,
    TRACE_FORMATS,
    detect_format,
)
from s2trace.trace.parse.sources import CHUNK_BYTES, read_chunks
from s2trace.trace.parse.templates import FAST_PATHS
from s2trace.trace.parse.textscan import parse_chunk

__all__ = [
    "HOST_RE",
    "HYP_EARLY_RE",
    "HYP_RE",
    "IGNORED_RE",
    "LOST_EVENT",
    "LOST_RE",
    "PARSER_VERSION",
    "PSEUDO_FIELDS",
    "TEXT_FORMATS",
    "TRACE_FORMATS",
    "Trace",
    "as_arrow",
    "detect_format",
    "extract_fields",
    "fields",
    "parse_uint",
    "read_trace",
]

#: Bump when parsing changes what a file parses to: it invalidates cached traces.
PARSER_VERSION = "2"


@dataclass(frozen=True)
class Trace:
    """A parsed trace: its EVENTS, the damage found in it, and where it came from.

    ``lines`` is the number of lines read (data rows for tabular files); ``notes`` say what
    an answer from the trace must carry (:func:`trace_notes`: no event, time going back).
    """

    events: pd.DataFrame
    problems: ProblemLog = field(default_factory=ProblemLog)
    path: str = ""
    fmt: str = ""
    lines: int = 0
    notes: tuple[str, ...] = ()


# How read_trace scans text (module attributes, read at each call, so tests can shrink the
# chunks or turn the column templates off to check that neither changes the result).
_CHUNK = CHUNK_BYTES
_FAST = FAST_PATHS


def read_trace(
    path: str | os.PathLike[str],
    *,
    fmt: str | None = None,
    strict: bool = False,
    progress: bool | None = None,
    use_cache: bool = True,
) -> Trace:
    """Parse a trace file into a :class:`Trace` (EVENTS + problems).

    ``fmt`` forces one of :data:`TRACE_FORMATS` instead of detecting it.  ``strict`` makes the
    first malformed line a :class:`~s2trace.errors.StrictError`.  ``progress`` shows a tqdm bar
    on stderr (default: when stderr is a terminal).  With ``use_cache`` a file parsed before
    (same content, same parser version, same format) is loaded from the cache.
    Raises :class:`~s2trace.errors.InputError` for a missing, unreadable or unrecognisable file.
    """
    if not os.path.lexists(path):
        raise InputError(f"{shown(path)}: no such trace file")
    src = input_file(path, "a trace file")  # a FIFO or a device is refused before open()
    if fmt is not None and fmt not in TRACE_FORMATS:
        raise InputError(f"trace format {fmt!r}: expected one of {', '.join(TRACE_FORMATS)}")
    kind = fmt or detect_format(src)
    if kind == "parquet":
        events = cache.read_events(src, kind)
        return Trace(
            events, ProblemLog(strict=strict), str(src), kind, len(events),
            trace_notes(events, len(events)),
        )  # fmt: skip
    key = cache.cache_key(src, kind, PARSER_VERSION) if use_cache else None
    if key is not None and (hit := cache.load(key)) is not None:
        events, meta = hit
        log = ProblemLog(strict=strict)
        log.extend(
            Problem(p["kind"], p["where"], p["detail"], None, str(src)) for p in meta["problems"]
        )
        lines = int(meta["lines"])
        return Trace(events, log, str(src), kind, lines, trace_notes(events, lines))
    log = ProblemLog(strict=strict)
    if kind in cache.TABULAR_FORMATS:
        events = cache.read_events(src, kind)
        lines = len(events)
    else:
        events, lines = _parse_text(src, kind, log, _show_progress(progress))
    if key is not None:
        problems = [{"kind": p.kind, "where": p.where, "detail": p.detail} for p in log]
        cache.store(key, events, {"fmt": kind, "lines": lines, "problems": problems})
    return Trace(events, log, str(src), kind, lines, trace_notes(events, lines))


def trace_notes(events: pd.DataFrame, lines: int) -> tuple[str, ...]:
    """What a reader of answers from this trace must know about it as a whole: that it holds
    no event at all (every answer would be the initial state), or that its timestamps go back
    in time (events are replayed in time order, not in file order).  Not damage: the
    ProblemLog and ``--strict`` are for lines that cannot be used."""
    ts = events["ts"].to_numpy(np.float64)
    timed = np.isfinite(ts)
    finite = None if timed.all() else np.flatnonzero(timed)  # None: every row
    if finite is not None:
        ts = ts[finite]
    back = np.flatnonzero(ts[1:] < ts[:-1])
    first = None
    if len(back):
        row = back[0] + 1 if finite is None else finite[back[0] + 1]
        line = int(events["line"].iloc[row])
        first = (line, float(ts[back[0] + 1]), float(ts[back[0]]))
    return notes_text(len(ts), lines, len(back), first)


def notes_text(
    finite: int, lines: int, back: int, first: tuple[int, float, float] | None
) -> tuple[str, ...]:
    """The notes of :func:`trace_notes` from ``finite`` timed events and ``back`` steps back
    in time, the first at ``first`` = (line, time, time before it)."""
    if not finite:
        return (f"the trace holds no event ({lines} line(s) read); answers from it are the "
                "initial state only",)  # fmt: skip
    if not back or first is None:
        return ()
    line, now, before = first
    return (
        f"timestamps go back in time {back} time(s), first at line {line} ({now} "
        f"after {before}); events are replayed in time order",
    )


def _show_progress(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else bool(progress)


def _parse_text(src: Path, fmt: str, log: ProblemLog, show: bool) -> tuple[pd.DataFrame, int]:
    """Parse a text trace chunk by chunk; malformed lines go to ``log``."""
    size = src.stat().st_size
    parts: list[EventCols] = []
    next_line = 1
    default_cpu = cpu_from_path(src) if fmt == "hyp-early" else None
    with tqdm(
        total=size,
        unit="B",
        unit_scale=True,
        desc=f"reading {src.name}",
        file=sys.stderr,
        disable=not show,
        leave=False,
    ) as bar:
        for raw in read_chunks(src, bar, _CHUNK):
            cols, nlines, bad = parse_chunk(raw, next_line, fmt, _FAST)
            for lineno, text, why in bad:
                detail = f"not a {fmt} trace line: {text!r}" + (f" ({why})" if why else "")
                log.add(Problem("malformed_line", lineno, detail, None, str(src)))
            if default_cpu is not None:
                cols.cpu[~cols.cpu_ok] = default_cpu
                cols.cpu_ok[:] = True
            parts.append(cols)
            next_line += nlines
    return events_frame(parts), next_line - 1


def cpu_from_path(src: Path) -> int | None:
    """The N of a ``cpuN`` directory in the path (per-CPU hypervisor trace files)."""
    for part in reversed(src.parts[:-1]):
        if m := re.fullmatch(r"cpu(\d+)", part):
            return int(m.group(1))
    return None
