"""Scanning one chunk of a text trace into event columns: column templates, then RE2.

Speed is a requirement (traces have millions of lines).  In each chunk a few sample lines are
matched with the layout regexes to learn where the columns are (a template,
:mod:`s2trace.trace.parse.templates`); every line is then checked and split at the template's
offsets with vectorised byte tests, eight bytes at a time in 64-bit words (SWAR), numbers are
decoded the same way, and the text columns are built as Arrow string views over the chunk and
copied out (then trimmed by Arrow; event names only dictionary-encoded).  Lines no template
fits (a longer timestamp, an unusual pid width, a marker, a header) go to a second pass with
Arrow's RE2 ``extract_regex``; what that rejects is malformed.  No Python object is made per
line (only per malformed line, for its Problem).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from s2trace.intervals import distinct
from s2trace.trace.parse.chunk import FRONT, HASH, LBR, Chunk
from s2trace.trace.parse.eventcols import STR, EventCols, empty_cols
from s2trace.trace.parse.formats import DATA_RE, IGNORED_RE, LOST_EVENT, LOST_RE
from s2trace.trace.parse.templates import FastPath, learn_templates

__all__ = ["parse_chunk"]


def parse_chunk(
    buf: np.ndarray, first_line: int, fmt: str, fast: Mapping[str, FastPath]
) -> tuple[EventCols, int, list[tuple[int, str, str]]]:
    """Parse one padded chunk: (event rows, number of lines, malformed lines as
    (line, text, why) triples; ``why`` is empty when no layout fits the line).

    ``fast`` maps a format to its column-template path
    (:data:`s2trace.trace.parse.templates.FAST_PATHS`); formats without one, or an empty mapping,
    use the regex pass alone.  A line holding a NUL byte, a line holding a second event (a lost
    line end), and a line whose CPU, pid or lost count does not fit its column are malformed,
    never cut short or narrowed.
    """
    ch = Chunk(buf)
    n = len(ch.st)
    st, en = ch.st, ch.en
    rest = np.flatnonzero((en > st) & (ch.buf[st] != HASH))
    bad_rows: list[tuple[np.ndarray, str]] = []
    nul = _rows_with_nul(ch)
    if len(nul):
        bad_rows.append((nul, "it holds a NUL byte"))
        rest = np.setdiff1d(rest, nul, assume_unique=True)
    fast_parts: list[EventCols] = []
    if fmt in fast:
        learn, apply = fast[fmt]
        for t in learn_templates(ch, rest, learn):
            ok, cols = apply(ch, rest, t, first_line)
            fast_parts.append(cols)
            rest = rest[~ok]
            if not len(rest):
                break
    # A second event holds a '[', and every row a fast path takes has one in its header:
    # when the chunk has no other '[', no fast row holds a second event (no regex pass).
    clean = bool(fast_parts) and _brackets(ch) == sum(len(p) for p in fast_parts)
    kept, parts = (fast_parts, []) if clean else ([], fast_parts)
    if len(rest):
        slow, unmatched, wide = _slow(ch, rest, first_line, fmt)
        parts.append(slow)
        bad_rows.append((unmatched, ""))
        bad_rows.append((wide, _TOO_WIDE))
    for part in parts:
        part, doubled = _second_events(part, fmt, first_line)
        kept.append(part)
        bad_rows.append((doubled, "it holds a second event (a lost line end?)"))
    cols = EventCols.concat(kept or [empty_cols()])
    bad: list[tuple[int, str, str]] = []
    for rows, why in bad_rows:
        if len(rows):
            texts = ch.strings(st[rows], _shown_length(ch, rows)).to_pylist()
            bad += [(first_line + int(r), t, why) for r, t in zip(rows, texts, strict=True)]
    bad.sort()
    return cols, n, bad


_TOO_WIDE = "a CPU, pid or lost count too large to keep exactly"
_SHOWN = 120  # bytes of a malformed line quoted in its Problem


def _shown_length(ch: Chunk, rows: np.ndarray) -> np.ndarray:
    """Bytes of each row quoted in its Problem: at most :data:`_SHOWN`, cut before a UTF-8
    continuation byte (a cut inside a character would not decode)."""
    start = ch.st[rows]
    length = np.minimum(ch.en[rows] - start, _SHOWN)
    for _ in range(3):  # a character has at most three continuation bytes
        inside = (ch.buf[start + length] & 0xC0) == 0x80
        if not inside.any():
            break
        length -= inside
    return length


#: A second event inside the fields of a line (``TASK-PID [CPU] FLAGS SECS.USECS: EVENT:`` or
#: the hypervisor's ``[CPU]<tab>SECS.USECS: EVENT``): the line end between two events was lost.
_SECOND_EVENT = {
    "ftrace": r"-[0-9]+\s+(?:\([ 0-9-]+\)\s+)?\[[0-9]+\]\s+(?:\S+\s+)?[0-9]+\.[0-9]+: \S+:",
    "hyp": r"\[[0-9]+\]\t[0-9]+\.[0-9]+: ",
    "hyp-early": r"\[\s*[0-9]+\.[0-9]+\] \S",
}
_SECOND_EVENT["trace-cmd"] = _SECOND_EVENT["ftrace"]


def _brackets(ch: Chunk) -> int:
    """Number of '[' bytes in the chunk's lines."""
    return int(np.count_nonzero(ch.buf[FRONT : ch.end] == LBR))


def _rows_with_nul(ch: Chunk) -> np.ndarray:
    """Rows (line indexes) holding a NUL byte (one vectorised pass over the chunk, a second
    only when there is one)."""
    text = ch.buf[ch.st[0] if len(ch.st) else 0 : ch.end]
    if not len(ch.st) or not len(text) or text.min() != 0:
        return np.zeros(0, np.int64)
    at = np.flatnonzero(text == 0)
    return distinct(np.searchsorted(ch.nl, at + ch.st[0]))


def _second_events(cols: EventCols, fmt: str, first_line: int) -> tuple[EventCols, np.ndarray]:
    """``cols`` without the rows whose fields hold another event, and those rows."""
    pattern = _SECOND_EVENT.get(fmt)
    if pattern is None or not len(cols):
        return cols, np.zeros(0, np.int64)
    hit = pc.match_substring_regex(cols.fields, pattern).fill_null(False)
    hit = hit.to_numpy(zero_copy_only=False)
    if not hit.any():
        return cols, np.zeros(0, np.int64)
    return cols.keep(~hit), cols.line[hit] - first_line


def _ints(values: pa.Array, dtype: type[np.integer]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decimal strings (null allowed) -> (values, valid, fits): ``fits`` is false where a
    value does not fit ``dtype`` (its value then reads 0; the caller refuses the row)."""
    valid = values.is_valid().to_numpy(zero_copy_only=False)
    filled = values.fill_null("0")
    huge = pc.greater(pc.utf8_length(filled), 18).to_numpy(zero_copy_only=False)  # > int64
    safe = pc.if_else(pa.array(huge), pa.scalar("0", filled.type), filled) if huge.any() else filled
    out = pc.cast(safe, pa.int64()).to_numpy(zero_copy_only=False)
    info = np.iinfo(dtype)
    fits = ~huge & (out >= info.min) & (out <= info.max)
    return np.where(fits, out, 0).astype(dtype), valid, fits | ~valid


def _slow(
    ch: Chunk, rows: np.ndarray, first_line: int, fmt: str
) -> tuple[EventCols, np.ndarray, np.ndarray]:
    """Lines the fast path did not take, with Arrow's RE2: (event rows, unmatched rows,
    rows whose numbers do not fit their columns)."""
    lines = ch.lines(rows)
    ignored = pc.match_substring_regex(lines, IGNORED_RE).to_numpy(zero_copy_only=False)
    keep = ~ignored
    rows, lines = rows[keep], lines.filter(pa.array(keep))
    parts: list[EventCols] = []
    wide: list[np.ndarray] = []
    for pattern in (DATA_RE[fmt], LOST_RE):
        if not len(rows):
            break
        got = pc.extract_regex(lines, pattern)
        hit = got.is_valid().to_numpy(zero_copy_only=False)
        if hit.any():
            sel = got.filter(pa.array(hit))
            cols, fits = _slow_cols(sel, first_line + rows[hit], lost=pattern is LOST_RE)
            parts.append(cols.keep(fits) if not fits.all() else cols)
            wide.append(rows[hit][~fits])
        rows, lines = rows[~hit], lines.filter(pa.array(~hit))
    too_wide = np.concatenate(wide) if wide else np.zeros(0, np.int64)
    return EventCols.concat(parts or [empty_cols()]), rows, too_wide


def _slow_cols(
    got: pa.StructArray, line: np.ndarray, *, lost: bool
) -> tuple[EventCols, np.ndarray]:
    """EVENTS columns from the named groups of one regex, and which rows' numbers fit."""
    names = {got.type.field(i).name for i in range(got.type.num_fields)}
    m = len(got)

    def col(name: str) -> pa.Array:
        if name not in names:
            return pa.nulls(m, STR)
        arr = got.field(name).cast(STR)
        return pc.if_else(pc.equal(arr, ""), pa.scalar(None, STR), arr)

    cpu, cpu_ok, cpu_fits = _ints(col("cpu"), np.int16)
    pid, pid_ok, pid_fits = _ints(col("pid"), np.int32)
    fits = cpu_fits & pid_fits
    if lost:
        n_lost, lost_ok, lost_fits = _ints(pc.coalesce(col("lost"), col("dropped")), np.int64)
        fits &= lost_fits
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
    cols = EventCols(
        line, ts, cpu, cpu_ok, pid, pid_ok, n_lost, lost_ok, task, flags, event, fields
    )
    return cols, fits
