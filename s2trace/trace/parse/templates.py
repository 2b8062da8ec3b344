"""The fast path of the text scanner: fixed-width column templates.

The kernel prints event lines with fixed column widths (kernel/trace/trace_output.c,
docs/kernel-facts.md §KF-4.4: "%16s-%-7d ", optional
"(%7d) ", "[%03d] ", five flag characters, " %5lu.%06lu: "), and so does trace-cmd with its
own widths: within a file almost every line has its delimiters at the same offsets.  A
template records those offsets, learned from a few sample lines of each chunk with the layout
regexes (:mod:`s2trace.trace.parse.formats`); every line is then checked and split at the
template's offsets with a handful of vectorised byte tests (:mod:`s2trace.trace.parse.chunk`).
Lines no template fits (a longer timestamp, an unusual pid width) fall through to the regex
pass (:mod:`s2trace.trace.parse.textscan`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from s2trace.intervals import distinct
from s2trace.trace.parse.chunk import (
    BYTES,
    COLON,
    DASH,
    DOT,
    LBR,
    LPAR,
    RBR,
    RPAR,
    SP,
    TAB,
    Chunk,
    LineWords,
    U,
    blanks_then_digits,
    ctz,
    digits_then_blanks,
    digits_value,
    low_bits,
    movemask,
    zero_bytes,
)
from s2trace.trace.parse.eventcols import STR, EventCols
from s2trace.trace.parse.formats import HOST_RE, HYP_RE

__all__ = ["FAST_PATHS", "FastPath", "learn_templates"]

_WIN = 16  # widest pid, tgid or flags column a template accepts
_EVWIN = 64  # event names longer than this go to the regex pass


@dataclass(frozen=True)
class _HostTemplate:
    """Offsets from the line start: '-' before the pid, '(' of the tgid (-1: no tgid column),
    '[' and ']' around the CPU, the flags word [fstart, fend) (empty: no flags column), the
    dot and the colon of the timestamp."""

    dash: int
    par: int
    lb: int
    rb: int
    fstart: int
    fend: int
    dot: int
    colon: int

    @staticmethod
    def learn(text: str) -> _HostTemplate | None:
        m = _HOST_PY.match(text)
        if m is None or not text[: m.end("ts") + 2].isascii():
            return None
        dash, lb, rb = m.start("pid") - 1, m.start("cpu") - 1, m.end("cpu")
        par = text.rfind("(", 0, m.start("tgid")) if m.group("tgid") is not None else -1
        fstart, fend = m.span("flags") if m.group("flags") is not None else (rb + 1, rb + 1)
        dot, colon = text.index(".", m.start("ts")), m.end("ts")
        t = _HostTemplate(dash, par, lb, rb, fstart, fend, dot, colon)
        anchor = par if par >= 0 else lb
        fits = (
            text[lb - 1] == " " == text[colon + 1]
            and text[rb + 1 : fstart].strip(" ") == ""
            and 1 <= rb - lb - 1 <= 5
            and 2 <= anchor - dash - 1 <= _WIN
            and (par < 0 or (text[par - 1] == " " and text[lb - 2] == ")" and lb - par - 3 <= _WIN))
            and fend - fstart <= _WIN
            and 2 <= dot - fend <= 12
            and 1 <= colon - dot - 1 <= 9
        )
        return t if fits else None


@dataclass(frozen=True)
class _HypTemplate:
    """Offsets of ']' after the CPU, and of the dot and colon of the timestamp."""

    rb: int
    dot: int
    colon: int

    @staticmethod
    def learn(text: str) -> _HypTemplate | None:
        m = _HYP_PY.match(text)
        if m is None or not text[: m.end("ts") + 2].isascii():
            return None
        rb, dot, colon = m.end("cpu"), text.index(".", m.start("ts")), m.end("ts")
        fits = (
            1 <= rb - 1 <= 5
            and text[rb + 1] == "\t"
            and text[colon + 1] == " "
            and 1 <= dot - rb - 2 <= 12
            and 1 <= colon - dot - 1 <= 9
        )
        return _HypTemplate(rb, dot, colon) if fits else None


_HOST_PY = re.compile(HOST_RE)
_HYP_PY = re.compile(HYP_RE)
_SAMPLES = 24  # sample lines per chunk for learning templates
_MAX_TEMPLATES = 4


def learn_templates(ch: Chunk, rows: np.ndarray, learn: Callable[[str], Any]) -> list[Any]:
    """The distinct templates of a few sample lines (first lines and evenly spread ones),
    most frequent first."""
    if not len(rows):
        return []
    pick = distinct(
        np.concatenate(
            [rows[: _SAMPLES // 2], rows[np.linspace(0, len(rows) - 1, _SAMPLES // 2).astype(int)]]
        )
    )
    texts = ch.strings(ch.st[pick], np.minimum(ch.en[pick] - ch.st[pick], 200)).to_pylist()
    counts: dict[Any, int] = {}
    for text in texts:
        t = learn(text)
        if t is not None:
            counts[t] = counts.get(t, 0) + 1
    return sorted(counts, key=lambda t: -counts[t])[:_MAX_TEMPLATES]


def _timestamp(lw: LineWords, lead: int, dot: int, colon: int) -> tuple[np.ndarray, np.ndarray]:
    """The timestamp right-aligned in ``[lead, dot)`` from each line start (blanks then
    digits), '.', and the fraction digits up to ``colon``: (ok, seconds).

    ts = (secs * 10^f + frac) / 10^f: two exact integers divided once, so it equals float() of
    the printed decimal.
    """
    digit, space = lw.masks(lead, dot - lead, "ds")
    ok, ilen = blanks_then_digits(digit, space, dot - lead)
    secs = lw.digits(dot, np.where(ok, ilen, 0))  # digits where ok: tested just above
    flen = colon - dot - 1
    frac, ok_f = lw.decimal(colon, flen)
    scale = float(10**flen)
    ts = (secs * U(10**flen) + frac).astype(np.float64) / scale
    return ok & ok_f, ts


def _event_colon(
    ch: Chunk, lw: LineWords, at: int, evs: np.ndarray, en: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``EVENT:`` ``at`` bytes from each line start (``evs``), followed by a blank or the
    line end: (ok, position of ':')."""
    off = lw.find(at, _EVWIN, COLON)
    evc = evs + np.minimum(off, _EVWIN - 1)
    first = lw.block(at)[0] & U(0xFF)  # the name's first byte, from the searched block
    ok = (off < _EVWIN) & (evc > evs) & (evc < en) & (first > U(SP))
    after = ch.buf[evc + 1]
    return ok & ((evc + 1 == en) | (after == SP)), evc


def _valid_events(names: pa.DictionaryArray) -> np.ndarray:
    """Per row: the event name is non-empty and has no blank, colon or bracket.

    Checked once per distinct name (a chunk has few), not per line.
    """
    good = np.array(
        [bool(re.fullmatch(r"[^\s:\[\]]+", s)) for s in names.dictionary.to_pylist()], dtype=bool
    )
    codes = names.indices.to_numpy(zero_copy_only=False)
    return good[codes] if len(good) else np.zeros(len(codes), dtype=bool)


def _widen(ok: np.ndarray, subset: np.ndarray) -> np.ndarray:
    """A fit mask over a subset of rows, as a mask over all of them."""
    out = np.zeros(len(subset), bool)
    out[subset] = ok
    return out


def _host_rows(
    ch: Chunk, rows: np.ndarray, t: _HostTemplate, first_line: int
) -> tuple[np.ndarray, EventCols]:
    """Lines of ``rows`` that fit template ``t``: (fit mask, their columns).

    Checked at the template's offsets: '-', ' [', ']', '.', ': ' bytes; CPU digits; the pid
    as digits then blanks; the tgid as digits, blanks or dashes in '(...)'; the flags word
    without blanks, blanks around it; the timestamp as blanks then digits, '.', digits; then
    ``EVENT:`` (no blank in the name) followed by a blank or the line end.
    """
    s, en = ch.spans(rows)
    long_enough = en >= s + t.colon + 3
    if not long_enough.all():  # windows past the end of a short last line would leave the pad
        ok, cols = _host_rows(ch, rows[long_enough], t, first_line)
        return _widen(ok, long_enough), cols
    lw = LineWords(ch, s)
    fixed = [(t.dash, DASH), (t.lb - 1, SP), (t.lb, LBR), (t.rb, RBR), (t.dot, DOT)]
    ok = lw.bytes_are([*fixed, (t.colon, COLON), (t.colon + 1, SP)])
    cpu, ok_c = lw.decimal(t.rb, t.rb - t.lb - 1)
    anchor = t.par if t.par >= 0 else t.lb
    pw = anchor - t.dash - 1
    digit, space = lw.masks(t.dash + 1, pw, "ds")
    ok_p, plen = digits_then_blanks(digit, space, pw)
    if pw <= 8:  # the digits (tested above) lead the word: moved to its top, where read
        plen = np.where(ok_p, plen, 0)
        pid = digits_value(lw.at(t.dash + 1) << (U(8) * (U(8) - plen.astype(U))), plen)
    else:
        pid, ok_p2 = ch.decimal(s + t.dash + 1 + plen, plen)
        ok_p &= ok_p2
    ok &= ok_c & ok_p & (pid < 1 << 31) & (cpu < 1 << 15)  # wider: the regex pass
    if t.par >= 0:
        width = t.lb - t.par - 3
        digit, space = lw.masks(t.par + 1, width, "ds")
        dashes = movemask(zero_bytes(lw.at(t.par + 1) ^ (BYTES * U(DASH))))
        if width > 8:
            more = zero_bytes(lw.at(t.par + 9) ^ (BYTES * U(DASH)))
            dashes |= movemask(more) << U(8)
        ok &= lw.bytes_are([(t.par - 1, SP), (t.par, LPAR), (t.lb - 2, RPAR)])
        ok &= (digit | space | (dashes & low_bits(width))) == low_bits(width)
    if t.fend > t.fstart:
        (blank,) = lw.masks(t.fstart, t.fend - t.fstart, "b")
        ok &= blank == 0
        if t.fstart > t.rb + 1:
            (space,) = lw.masks(t.rb + 1, t.fstart - t.rb - 1, "s")
            ok &= space == low_bits(t.fstart - t.rb - 1)
    ok_t, ts = _timestamp(lw, t.fend, t.dot, t.colon)
    evs = s + t.colon + 2
    ok_e, evc = _event_colon(ch, lw, t.colon + 2, evs, en)
    ok &= ok_t & ok_e
    good = np.flatnonzero(ok)
    every = len(good) == len(ok)

    def pick(a: np.ndarray) -> np.ndarray:
        return a if every else a[good]

    name = lw.block(t.colon + 2)  # gathered by the search for the colon
    event = ch.dictionary(pick(evs), pick(evc) - pick(evs), (pick(name[0]), pick(name[1])))
    valid = _valid_events(event)
    if not valid.all():
        ok[good[~valid]] = False
        event = event.filter(pa.array(valid))
        good = good[valid]
        every = False
    sg, fs = pick(s), pick(evc) + 1
    m = len(good)
    if 1 <= t.dash <= 16:  # the usual 16-byte comm column: copied whole, then trimmed
        task = _trim(_fixed_strings(lw, 0, t.dash, None if every else good))
    else:
        ts0, ts1 = ch.trim(sg, sg + t.dash)
        task = ch.strings(ts0, ts1 - ts0)
    cols = EventCols(
        line=first_line + pick(rows),
        ts=pick(ts),
        cpu=pick(cpu).astype(np.int16),
        cpu_ok=np.ones(m, bool),
        pid=pick(pid).astype(np.int32),
        pid_ok=np.ones(m, bool),
        lost=np.zeros(m, np.int64),
        lost_ok=np.zeros(m, bool),
        task=task,
        flags=_fixed_strings(lw, t.fstart, t.fend - t.fstart, None if every else good),
        event=event,
        fields=_trim(ch.strings(fs, pick(en) - fs)),
    )
    return ok, cols


def _trim(text: pa.Array) -> pa.Array:
    """``text`` without leading and trailing spaces and tabs (Arrow's byte trim: neither
    byte can be part of a multi-byte UTF-8 character)."""
    return pc.ascii_trim(text, " \t")


def _fixed_strings(lw: LineWords, off: int, width: int, good: np.ndarray | None) -> pa.Array:
    """The ``width`` (<= 16) bytes at ``off`` from each line start (of the rows ``good``,
    or all) as a string array; all null when ``width`` is 0 (no such column)."""
    words = [lw.at(off), lw.at(off + 8)] if width > 8 else [lw.at(off)]
    if good is not None:
        words = [w[good] for w in words]
    m = len(words[0])
    if width == 0:
        return pa.nulls(m, STR)
    raw = np.stack(words, axis=1).view(np.uint8)[:, :width]
    offsets = np.arange(0, (m + 1) * width, width, dtype=np.int64)
    return pa.Array.from_buffers(STR, m, [None, pa.py_buffer(offsets), pa.py_buffer(raw.copy())])


def _hyp_rows(
    ch: Chunk, rows: np.ndarray, t: _HypTemplate, first_line: int
) -> tuple[np.ndarray, EventCols]:
    """Lines of ``rows`` that fit the hypervisor template ``t`` (``[CPU]\\tSECS.USECS: EVENT
    FIELDS``): (fit mask, their columns).  The event name ends at the first blank."""
    s, en = ch.spans(rows)
    long_enough = en >= s + t.colon + 3
    if not long_enough.all():  # as in _host_rows
        ok, cols = _hyp_rows(ch, rows[long_enough], t, first_line)
        return _widen(ok, long_enough), cols
    lw = LineWords(ch, s)
    fixed = [(0, LBR), (t.rb, RBR), (t.rb + 1, TAB), (t.dot, DOT)]
    ok = lw.bytes_are([*fixed, (t.colon, COLON), (t.colon + 1, SP)])
    cpu, ok_c = lw.decimal(t.rb, t.rb - 1)
    ok_t, ts = _timestamp(lw, t.rb + 2, t.dot, t.colon)
    evs = s + t.colon + 2
    (blank,) = lw.masks(t.colon + 2, _EVWIN, "b")
    first = ctz(blank)
    elen = np.minimum(first, en - evs)
    ok &= ok_c & ok_t & (first < _EVWIN) & (elen >= 1) & (cpu < 1 << 15)
    good = np.flatnonzero(ok)
    event = ch.dictionary(evs[good], elen[good])
    valid = _valid_events(event)
    if not valid.all():
        ok[good[~valid]] = False
        event = event.filter(pa.array(valid))
        good = good[valid]
    fs = evs[good] + elen[good]
    m = len(good)
    cols = EventCols(
        line=first_line + rows[good],
        ts=ts[good],
        cpu=cpu[good].astype(np.int16),
        cpu_ok=np.ones(m, bool),
        pid=np.zeros(m, np.int32),
        pid_ok=np.zeros(m, bool),
        lost=np.zeros(m, np.int64),
        lost_ok=np.zeros(m, bool),
        task=pa.nulls(m, STR),
        flags=pa.nulls(m, STR),
        event=event,
        fields=_trim(ch.strings(fs, en[good] - fs)),
    )
    return ok, cols


#: A format's fast path: how to learn a template from a line, and how to apply it to rows.
FastPath = tuple[
    Callable[[str], Any], Callable[[Chunk, np.ndarray, Any, int], tuple[np.ndarray, EventCols]]
]
#: The formats with fixed-width columns, and their fast paths.
FAST_PATHS: dict[str, FastPath] = {
    "ftrace": (_HostTemplate.learn, _host_rows),
    "trace-cmd": (_HostTemplate.learn, _host_rows),
    "hyp": (_HypTemplate.learn, _hyp_rows),
}
