"""Scanning one chunk of a text trace into event columns: column templates, then RE2.

Speed is a requirement (traces have millions of lines).  In each chunk a few sample lines are
matched with the layout regexes to learn where the columns are (a template,
:mod:`s2trace.trace.parse.templates`); every line is then checked and split at the template's
offsets with vectorised byte tests, eight bytes at a time in 64-bit words (SWAR), numbers are
decoded the same way, and the text columns are built as Arrow string views over the chunk and
copied out once (event names only dictionary-encoded).  Lines no template fits (a longer
timestamp, an unusual pid width, a marker, a header) go to a second pass with Arrow's RE2
``extract_regex``; what that rejects is malformed.  No Python object is made per line (only
per malformed line, for its Problem).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from s2trace.trace.parse.chunk import HASH, Chunk
from s2trace.trace.parse.eventcols import STR, EventCols, empty_cols
from s2trace.trace.parse.formats import DATA_RE, IGNORED_RE, LOST_EVENT, LOST_RE
from s2trace.trace.parse.templates import FastPath, learn_templates

__all__ = ["parse_chunk"]


def parse_chunk(
    buf: np.ndarray, first_line: int, fmt: str, fast: Mapping[str, FastPath]
) -> tuple[EventCols, int, list[tuple[int, str]]]:
    """Parse one padded chunk: (event rows, number of lines, malformed (line, text) pairs).

    ``fast`` maps a format to its column-template path
    (:data:`s2trace.trace.parse.templates.FAST_PATHS`); formats without one, or an empty mapping,
    use the regex pass alone.
    """
    ch = Chunk(buf)
    n = len(ch.st)
    st, en = ch.st, ch.en
    rest = np.flatnonzero((en > st) & (ch.buf[st] != HASH))
    parts: list[EventCols] = []
    if fmt in fast:
        learn, apply = fast[fmt]
        for t in learn_templates(ch, rest, learn):
            ok, cols = apply(ch, rest, t, first_line)
            parts.append(cols)
            rest = rest[~ok]
            if not len(rest):
                break
    bad: list[tuple[int, str]] = []
    if len(rest):
        slow, unmatched = _slow(ch, rest, first_line, fmt)
        parts.append(slow)
        if len(unmatched):
            texts = ch.strings(st[unmatched], np.minimum(en[unmatched] - st[unmatched], 120))
            bad = list(zip((first_line + unmatched).tolist(), texts.to_pylist(), strict=True))
    return EventCols.concat(parts or [empty_cols()]), n, bad


def _ints(values: pa.Array, dtype: type[np.integer]) -> tuple[np.ndarray, np.ndarray]:
    """Decimal strings (null allowed) -> (values, valid)."""
    valid = values.is_valid().to_numpy(zero_copy_only=False)
    out = pc.cast(values.fill_null("0"), pa.int64()).to_numpy(zero_copy_only=False)
    return out.astype(dtype), valid


def _slow(ch: Chunk, rows: np.ndarray, first_line: int, fmt: str) -> tuple[EventCols, np.ndarray]:
    """Lines the fast path did not take, with Arrow's RE2: (event rows, unmatched rows)."""
    lines = ch.lines(rows)
    ignored = pc.match_substring_regex(lines, IGNORED_RE).to_numpy(zero_copy_only=False)
    keep = ~ignored
    rows, lines = rows[keep], lines.filter(pa.array(keep))
    parts: list[EventCols] = []
    for pattern in (DATA_RE[fmt], LOST_RE):
        if not len(rows):
            break
        got = pc.extract_regex(lines, pattern)
        hit = got.is_valid().to_numpy(zero_copy_only=False)
        if hit.any():
            sel = got.filter(pa.array(hit))
            parts.append(_slow_cols(sel, first_line + rows[hit], lost=pattern is LOST_RE))
        rows, lines = rows[~hit], lines.filter(pa.array(~hit))
    return EventCols.concat(parts or [empty_cols()]), rows


def _slow_cols(got: pa.StructArray, line: np.ndarray, *, lost: bool) -> EventCols:
    """EVENTS columns from the named groups of one regex."""
    names = {got.type.field(i).name for i in range(got.type.num_fields)}
    m = len(got)

    def col(name: str) -> pa.Array:
        if name not in names:
            return pa.nulls(m, STR)
        arr = got.field(name).cast(STR)
        return pc.if_else(pc.equal(arr, ""), pa.scalar(None, STR), arr)

    cpu, cpu_ok = _ints(col("cpu"), np.int16)
    pid, pid_ok = _ints(col("pid"), np.int32)
    if lost:
        n_lost, lost_ok = _ints(pc.coalesce(col("lost"), col("dropped")), np.int64)
        ts = np.full(m, np.nan)
        event = pa.DictionaryArray.from_arrays(
            pa.array(np.zeros(m, np.int32)), pa.array([LOST_EVENT])
        )
        fields = pa.nulls(m, STR)
        task = flags = pa.nulls(m, STR)
    else:
        n_lost, lost_ok = np.zeros(m, np.int64), np.zeros(m, bool)
        ts = pc.cast(col("ts"), pa.float64()).to_numpy(zero_copy_only=False)
        event = col("event").dictionary_encode()
        fields = pc.coalesce(col("fields"), pa.scalar("", STR))
        task = pc.utf8_trim_whitespace(col("task")) if "task" in names else col("task")
        task = pc.coalesce(task, pa.scalar("", STR)) if "task" in names else task
        flags = col("flags")
    return EventCols(
        line, ts, cpu, cpu_ok, pid, pid_ok, n_lost, lost_ok, task, flags, event, fields
    )
