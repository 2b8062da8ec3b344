"""Field extraction fast path: whole rows of ``name=value`` tokens in a learned order.

Most events of one kind print their fields in one fixed layout (a tracepoint's ``TP_printk``,
a kprobe's argument list): ``op=share initiator=host ... gfn=0x0``, optionally after a kprobe
header ``(func+0x0/0x198)`` or ``(caller+0x54/0x198 <- func)``.  A *template* is that layout:
whether there is a header, and the token names in order.  It is learned from one sample row,
then every row is checked against it with vectorised byte tests over the Arrow data buffer
(no regex, no Python object per row); the value spans of the rows that fit are cut out.

Why a fitting row gives exactly what the per-field regex of
:func:`s2trace.trace.parse.field_access.extract_fields` gives (``(?:^|[\\s,(])NAME(?:=|:\\s+)``,
then ``"quoted"`` or ``[^\\s,)]+``, first match wins) -- checked by reasoning over the
grammar below and by comparing both paths on the sample traces and on mixed rows:

* a fitting row is ``[HEADER ' '] TOKEN (' ' TOKEN)*`` with TOKEN = ``NAME=VALUE``, NAME an
  identifier (``[A-Za-z_][A-Za-z0-9_.]*``), VALUE non-empty with no byte among
  ``\\t \\n \\v \\f \\r space , ( ) "``; HEADER is ``(`` + bytes without ``( ) = : "`` or
  control blanks + ``)``;
* a NAME match needs a byte ``=`` or ``:`` right after it; the header has neither, so no match
  starts inside it; in the token part the only bytes preceded by start, a blank, ``,`` or ``(``
  are token starts (values hold none of those), and at a token start ``NAME=`` or
  ``NAME:`` matches exactly when the token's name is NAME (names hold neither ``=`` nor ``:``);
  so the first match of a name is its first token, and a name the template lacks is absent;
* the value has no ``"``, so the plain branch applies, and it runs to the token's end (the
  next space or the end of the text), which is the whole VALUE.

Rows that do not fit any learned template go to the regex path, so nothing changes for them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

__all__ = ["Scan", "Template", "learn", "match", "spans_to_strings"]

_SP, _LPAR, _RPAR = 0x20, 0x28, 0x29
_TOKEN_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_.]*)=[^\t\n\v\f\r ,()\"]+")
_HEADER_RE = re.compile(r"\([^()=:\"\t\n\v\f\r]*\) ")

#: byte classes of the token part: 1 = space (token separator), 2 = never in a fitting row
_CLASS = np.zeros(256, np.uint8)
_CLASS[_SP] = 1
_CLASS[[0x09, 0x0A, 0x0B, 0x0C, 0x0D, ord(","), ord('"'), _LPAR, _RPAR]] = 2
#: bytes a header may not hold between its parentheses
_HEADER_BAD = np.zeros(256, bool)
_HEADER_BAD[[0x09, 0x0A, 0x0B, 0x0C, 0x0D, ord('"'), ord("="), ord(":"), _LPAR, _RPAR]] = True
#: every byte of a class above, and every byte a header may not hold but ':' and '=', is below
_BELOW = 0x2D
_COLON, _EQUALS = ord(":"), ord("=")
assert not _CLASS[_BELOW:].any()
assert set(np.flatnonzero(_HEADER_BAD[_BELOW:]) + _BELOW) == {_COLON, _EQUALS}
PAD = 16  # zero bytes after a span copy: 64-bit word reads near its end stay in bounds


@dataclass(frozen=True)
class Template:
    """A row layout: an optional kprobe header, then these token names in order."""

    header: bool
    names: tuple[str, ...]


def learn(text: str) -> Template | None:
    """The template of one row, or None when the row is not a plain token list."""
    header = _HEADER_RE.match(text)
    body = text[header.end() :] if header else text
    names = []
    for tok in body.split(" "):
        m = _TOKEN_RE.fullmatch(tok)
        if m is None:
            return None
        names.append(m.group(1))
    return Template(header is not None, tuple(names))


def _words(buf: np.ndarray) -> np.ndarray:
    """The unaligned little-endian 64-bit word at every position of ``buf``."""
    return np.ndarray((len(buf) - 7,), dtype="<u8", buffer=buf, strides=(1,))


def _count_in(pos: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """How many of the sorted positions lie in [lo, hi) for each row."""
    return np.searchsorted(pos, hi) - np.searchsorted(pos, lo)


def _starts_with(words: np.ndarray, at: np.ndarray, lit: bytes) -> np.ndarray:
    """Whether the bytes at each position start with ``lit`` (eight bytes per word test)."""
    ok = np.ones(len(at), bool)
    for k in range(0, len(lit), 8):
        part = lit[k : k + 8]
        mask = np.uint64((1 << (8 * len(part))) - 1)
        want = np.uint64(int.from_bytes(part, "little"))
        ok &= (words[np.minimum(at + k, len(words) - 1)] & mask) == want
    return ok


class Scan:
    """The separator positions of one buffer, found once for every template tried on it:
    spaces and bytes no token may hold (one compare over the buffer; the header's ')' and
    forbidden bytes the first time a header template asks)."""

    def __init__(self, buf: np.ndarray) -> None:
        self.buf = buf
        # every byte of either class is below 0x2D: compare all, classify the few candidates
        low = np.flatnonzero(buf < _BELOW)
        kind = _CLASS[buf[low]]
        self.spaces = low[kind == 1]
        self.bad = low[kind == 2]
        self._header: tuple[np.ndarray, np.ndarray] | None = None

    def header(self) -> tuple[np.ndarray, np.ndarray]:
        """(positions of ')' then a sentinel past the end, bytes a header may not hold)."""
        if self._header is None:
            buf = self.buf
            cand = np.flatnonzero((buf < _BELOW) | (buf == _COLON) | (buf == _EQUALS))
            close = np.r_[cand[buf[cand] == _RPAR], len(buf) - 1]  # sentinel: no ')'
            self._header = close, cand[_HEADER_BAD[buf[cand]]]
        return self._header


def match(
    buf: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    tpl: Template,
    wanted: dict[str, int],
    scan: Scan | None = None,
) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Rows ``buf[start:end]`` that fit ``tpl``: (fit mask, {name: (value start, end)} of the
    fitting rows for the names of ``wanted`` (name -> token index in the template)).

    ``buf`` is a copy of the rows' bytes followed by :data:`PAD` zero bytes; ``scan`` its
    :class:`Scan` when the caller keeps one for several templates.
    """
    scan = Scan(buf) if scan is None else scan
    n = len(start)
    ntok = len(tpl.names)
    t0 = start
    ok = end > start
    if tpl.header:
        ok &= buf[start] == _LPAR
        close, hbad = scan.header()
        h = close[np.searchsorted(close, start)]
        ok &= (h + 1 < end) & (buf[np.minimum(h + 1, len(buf) - 1)] == _SP)
        ok &= _count_in(hbad, start + 1, h) == 0
        t0 = np.where(ok, h + 2, start)
    spaces = scan.spaces
    ok &= _count_in(scan.bad, t0, end) == 0
    first = np.searchsorted(spaces, t0)
    ok &= np.searchsorted(spaces, end) - first == ntok - 1
    rows = np.flatnonzero(ok)
    words = _words(buf)
    tok_start = [t0[rows]]
    tok_end = []
    for j in range(ntok - 1):
        at = spaces[first[rows] + j]
        tok_end.append(at)
        tok_start.append(at + 1)
    tok_end.append(end[rows])
    good = np.ones(len(rows), bool)
    for j, name in enumerate(tpl.names):
        lit = name.encode() + b"="
        good &= tok_end[j] - tok_start[j] > len(lit)  # a non-empty value
        good &= _starts_with(words, tok_start[j], lit)
    fit = np.zeros(n, bool)
    fit[rows[good]] = True
    spans = {}
    for name, j in wanted.items():
        lit_len = len(name) + 1
        spans[name] = (tok_start[j][good] + lit_len, tok_end[j][good])
    return fit, spans


def spans_to_strings(buf: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> pa.Array:
    """``buf[lo:hi]`` per row as an Arrow string array (one copy of the value bytes)."""
    length = (hi - lo).astype(np.int64)
    n = len(lo)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(length, out=offsets[1:])
    widest = int(length.max()) if n else 0
    if widest <= 32:  # short values: whole 64-bit words, then drop the bytes past each end
        k = -(-widest // 8)
        words = _words(buf)
        mat = np.zeros((n, max(k, 1)), np.uint64)
        for j in range(k):
            sel = np.flatnonzero(length > 8 * j)
            mat[sel, j] = words[lo[sel] + 8 * j]
        raw = mat.view(np.uint8).reshape(n, -1)
        data = raw[np.arange(raw.shape[1]) < length[:, None]]
    else:
        idx = np.repeat(lo - offsets[:-1], length) + np.arange(int(offsets[-1]))
        data = buf[idx]
    kind = pa.string() if offsets[-1] < 2**31 else pa.large_string()
    off = offsets.astype(np.int32) if kind == pa.string() else offsets
    return pa.Array.from_buffers(kind, n, [None, pa.py_buffer(off), pa.py_buffer(data)])
