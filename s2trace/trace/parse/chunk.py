"""One padded chunk of trace text, and vectorised byte tests over it (SWAR).

A chunk is the text of whole lines, in a buffer with :data:`FRONT` zero bytes before it and a
final newline then :data:`BACK` zero bytes after it (:func:`padded`), so that 64-bit words read
a little before or after any position stay in bounds.  :class:`Chunk` gives the line spans,
numbers and text cut out as Arrow string views over the buffer; :class:`LineWords` the tests a
column template makes at fixed offsets from many line starts at once, from 64-byte blocks
gathered once per line: eight bytes at a time in 64-bit words (SWAR: bit 7 of each byte is its
flag), numbers decoded the same way.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from s2trace.trace.parse.eventcols import STR

__all__ = [
    "BACK",
    "BYTES",
    "COLON",
    "CR",
    "DASH",
    "DOT",
    "FRONT",
    "HASH",
    "LBR",
    "LPAR",
    "NL",
    "RBR",
    "RPAR",
    "SP",
    "SWAR_ASCII0",
    "SWAR_FLAGS",
    "TAB",
    "Chunk",
    "LineWords",
    "U",
    "above",
    "blanks_then_digits",
    "ctz",
    "decimal8",
    "digits_then_blanks",
    "digits_value",
    "low_bits",
    "movemask",
    "padded",
    "popcount",
    "zero_bytes",
]

FRONT = 32  # zero bytes before a chunk's data: windows that look back stay in bounds
BACK = 192  # zero bytes after it (after the final newline): windows that look ahead
SP, TAB, NL, CR = 0x20, 0x09, 0x0A, 0x0D
LBR, RBR, COLON, DASH, DOT, LPAR, RPAR, HASH = (ord(c) for c in "[]:-.()#")


def padded(buf: np.ndarray, n: int) -> np.ndarray:
    """The chunk ``buf[FRONT:FRONT+n]`` made ready for parsing, in place when possible:
    zero bytes before it, a final newline, ``BACK`` zero bytes after, valid UTF-8."""
    data = buf[FRONT : FRONT + n]
    if n and data.max() >= 0x80:
        blob = data.tobytes()
        try:
            blob.decode("utf-8")
        except UnicodeDecodeError:
            # Arrow strings must be UTF-8: replace bad bytes (never a newline) with U+FFFD.
            fixed = np.frombuffer(blob.decode("utf-8", "replace").encode("utf-8"), np.uint8)
            n = len(fixed)
            buf = np.zeros(FRONT + n + 1 + BACK, np.uint8)
            buf[FRONT : FRONT + n] = fixed
    if n == 0 or buf[FRONT + n - 1] != NL:
        buf[FRONT + n] = NL
        n += 1
    buf[FRONT + n : FRONT + n + BACK] = 0
    return buf[: FRONT + n + BACK]


# -- SWAR helpers: eight bytes per 64-bit word, bit 7 of each byte as its flag -------------------
U = np.uint64
BYTES = U(0x0101010101010101)
SWAR_FLAGS = U(0x8080808080808080)  # bit 7 of every byte
_LO7 = U(0x7F7F7F7F7F7F7F7F)
SWAR_ASCII0 = U(0x3030303030303030)
SWAR_HIGH_NIBBLES = U(0xF0F0F0F0F0F0F0F0)
SWAR_PLUS6 = U(0x0606060606060606)
SWAR_LOW_BYTES = U(0x000000FF000000FF)
SWAR_MUL_A = U(100 + (1000000 << 32))
SWAR_MUL_B = U(1 + (10000 << 32))
_GATHER = U(0x0102040810204080)
#: _KEEP[n]: mask of the low n bytes of a word
_KEEP = np.array([(1 << (8 * n)) - 1 for n in range(9)], dtype=U)


def decimal8(w: np.ndarray, length: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
    """Value of the last ``length`` (0-8) bytes of each little-endian word as decimal digits,
    and whether they all are digits (SWAR: the bytes before them read as '0'; then pairs,
    quads and octets combine in three multiply steps: 10a+b, 100ab+cd, 10^4 abcd+efgh)."""
    keep_low: np.ndarray | np.uint64
    if isinstance(length, int):  # one length for all: the fill mask is a constant
        keep_low = U(0) if length >= 8 else U((1 << (8 * (8 - max(length, 0)))) - 1)
    else:
        shift = (np.clip(8 - length, 1, 7) * 8).astype(U)  # bytes to fill, kept below 64 bits
        keep_low = np.select([length >= 8, length <= 0], [U(0), ~U(0)], (U(1) << shift) - U(1))
    w = (w & ~keep_low) | (SWAR_ASCII0 & keep_low)
    digits = (w & SWAR_HIGH_NIBBLES) == SWAR_ASCII0
    ok = digits & (((w + SWAR_PLUS6) & SWAR_HIGH_NIBBLES) == SWAR_ASCII0)
    v = w - SWAR_ASCII0
    v = v * U(10) + (v >> U(8))
    quads = (v & SWAR_LOW_BYTES) * SWAR_MUL_A + ((v >> U(16)) & SWAR_LOW_BYTES) * SWAR_MUL_B
    v = quads >> U(32)
    return v, ok


def digits_value(w: np.ndarray, length: np.ndarray | int) -> np.ndarray:
    """Value of the last ``length`` (0-8) bytes of each word, bytes the caller has already
    found to be decimal digits (no test here): the bytes before them are shifted out, then
    the three multiply steps of :func:`decimal8`."""
    drop = U(8) * (U(8) - (length.astype(U) if isinstance(length, np.ndarray) else U(length)))
    v = ((w ^ SWAR_ASCII0) >> drop) << drop  # a shift by 64 gives 0 in numpy
    v = v * U(10) + (v >> U(8))
    quads = (v & SWAR_LOW_BYTES) * SWAR_MUL_A + ((v >> U(16)) & SWAR_LOW_BYTES) * SWAR_MUL_B
    return quads >> U(32)


def zero_bytes(x: np.ndarray) -> np.ndarray:
    """Flag (bit 7) of each byte of ``x`` that is 0 (exact: no carries between bytes)."""
    return ~(((x & _LO7) + _LO7) | x) & SWAR_FLAGS


def above(x: np.ndarray, limit: int) -> np.ndarray:
    """Flag of each byte of ``x`` greater than ``limit`` (< 0x80); bytes >= 0x80 are flagged."""
    return (((x & _LO7) + BYTES * U(0x7F - limit)) | x) & SWAR_FLAGS


def movemask(flags: np.ndarray) -> np.ndarray:
    """Byte flags -> an 8-bit mask, bit i for byte i."""
    return ((flags >> U(7)) * _GATHER) >> U(56)


def ctz(m: np.ndarray) -> np.ndarray:
    """Number of trailing zero bits (64 for 0)."""
    return np.bitwise_count((m & (~m + U(1))) - U(1)).astype(np.int64)


def popcount(m: np.ndarray) -> np.ndarray:
    """Number of set bits."""
    return np.bitwise_count(m).astype(np.int64)


def low_bits(width: int) -> np.uint64:
    """A mask of the low ``width`` bits (one bit per byte of a ``width``-byte field)."""
    return U((1 << width) - 1)


class Chunk:
    """One padded chunk (see :func:`padded`): its buffer and line spans.

    ``words`` is the (unaligned, little-endian) 64-bit word at every position: the bytes at a
    set of positions are gathered with one 1-D fancy index per 8 bytes, and tested eight at a
    time with the SWAR helpers above (no 2-D byte arrays, no per-row reductions).
    """

    def __init__(self, buf: np.ndarray) -> None:
        self.buf = buf
        self.end = len(buf) - BACK  # one past the final newline
        self.pa_buf = pa.py_buffer(buf)
        self.words = np.ndarray((len(buf) - 7,), dtype="<u8", buffer=buf, strides=(1,))
        #: the 64 bytes at every position (one gather brings eight words: :class:`LineWords`)
        self.blocks = np.ndarray((len(buf) - 63,), dtype="V64", buffer=buf, strides=(1,))
        nl = np.flatnonzero(buf[FRONT : self.end] == NL) + FRONT
        self.st = np.empty(len(nl), np.int64)
        self.st[:1] = FRONT
        self.st[1:] = nl[:-1] + 1
        self.nl = nl
        en = nl.copy()
        cr = (en > self.st) & (buf[en - 1] == CR)
        en[cr] -= 1
        self.en = en

    def spans(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(start, end) of the lines ``rows`` (sorted, distinct): no copy when they are all
        the lines, the usual case (a chunk without comments)."""
        if len(rows) == len(self.st):
            return self.st, self.en
        return self.st[rows], self.en[rows]

    def decimal(self, end: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Value of the ``length`` (1-16) decimal digits ending before ``end``, and whether they
        all are digits.  SWAR: eight digits per 64-bit word in three multiply steps."""
        lo, ok = self._decimal8(end, np.minimum(length, 8))
        long = length > 8
        if long.any():
            hi, hi_ok = self._decimal8(end - 8, np.clip(length - 8, 1, 8))
            lo = np.where(long, hi * U(10**8) + lo, lo)
            ok &= ~long | hi_ok
        return lo, ok & (length >= 1) & (length <= 16)

    def _decimal8(self, end: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # The word holds bytes end-8 .. end-1; little-endian, so the last digit is the top byte.
        return decimal8(self.words[end - 8], length)

    def _views(
        self,
        start: np.ndarray,
        length: np.ndarray,
        valid: np.ndarray | None = None,
        words: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> pa.Array:
        """``buf[start:start+length]`` per row as an Arrow string view array over the chunk.

        A view is 16 bytes: the int32 length, then the bytes inline when <= 12 (zero padded),
        else a 4-byte prefix, the buffer index (0) and the int32 offset.  Nothing made from it
        may outlive the chunk: callers copy (cast, dictionary) before the buffer is reused.
        ``words``: the words at ``start`` and ``start + 8`` when the caller has them.
        """
        n = len(start)
        views = np.empty((n, 2), U)
        long = length > 12
        w0 = self.words[start] if words is None else words[0]
        if long.all():  # the usual case for fields: length, 4-byte prefix; buffer 0, offset
            views[:, 0] = length.astype(U) | (w0 << U(32))
            views[:, 1] = start.astype(U) << U(32)
        else:  # inline bytes past the length must be zero
            w1 = self.words[start + 8] if words is None else words[1]
            short = np.minimum(length, 12)
            w0 = w0 & _KEEP[np.minimum(short, 8)]
            w1 = w1 & _KEEP[np.clip(short - 8, 0, 4)]
            views[:, 0] = length.astype(U) | (w0 << U(32))
            inline = (w0 >> U(32)) | (w1 << U(32))
            views[:, 1] = np.where(long, start.astype(U) << U(32), inline) if long.any() else inline
        bitmap = None
        if valid is not None and not valid.all():
            bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
        return pa.Array.from_buffers(
            pa.string_view(), n, [bitmap, pa.py_buffer(views), self.pa_buf]
        )

    def strings(
        self, start: np.ndarray, length: np.ndarray, valid: np.ndarray | None = None
    ) -> pa.Array:
        """``buf[start:start+length]`` per row as a (copied) Arrow string array, null where
        not ``valid``."""
        return self._views(start, length, valid).cast(STR)

    def dictionary(
        self,
        start: np.ndarray,
        length: np.ndarray,
        words: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> pa.DictionaryArray:
        """Like :meth:`strings`, dictionary-encoded (for event names: few distinct values, so
        no per-row string is ever materialised)."""
        enc = self._views(start, length, words=words).dictionary_encode()
        return pa.DictionaryArray.from_arrays(enc.indices, enc.dictionary.cast(pa.string()))

    def lines(self, rows: np.ndarray) -> pa.Array:
        """The selected lines as a string array (each with its line terminator)."""
        start = self.st[rows]
        return self.strings(start, self.nl[rows] + 1 - start)

    def trim(self, start: np.ndarray, stop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``[start, stop)`` without leading and trailing blanks (spaces, tabs)."""
        buf = self.buf
        start = start.copy()
        stop = stop.copy()
        todo = np.arange(len(start))
        while len(todo):  # eight bytes per round; one round unless a run of blanks is long
            w = self.words[start[todo]]
            blank = zero_bytes(w ^ (BYTES * U(SP))) | zero_bytes(w ^ (BYTES * U(TAB)))
            lead = np.minimum(ctz(~movemask(blank) & low_bits(8)), 8)
            start[todo] += lead
            todo = todo[lead == 8]
        start = np.minimum(start, stop)
        while True:
            tail = (stop > start) & ((buf[stop - 1] == SP) | (buf[stop - 1] == TAB))
            if not tail.any():
                return start, stop
            stop[tail] -= 1


def digits_then_blanks(
    digit: np.ndarray, space: np.ndarray, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Fields of ``width`` bytes that are digits then spaces, >= 1 of each: (ok, digits)."""
    ok = ((digit | space) == low_bits(width)) & (digit & U(1) == 1) & (space != 0)
    ok &= (digit & (digit + U(1))) == 0  # the digits are the leading bytes
    return ok, popcount(digit)


def blanks_then_digits(
    digit: np.ndarray, space: np.ndarray, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Fields of ``width`` bytes that are spaces then >= 1 digit: (ok, digits)."""
    ok = ((digit | space) == low_bits(width)) & (digit != 0)
    ok &= (space & (space + U(1))) == 0  # the spaces are the leading bytes
    return ok, popcount(digit)


class LineWords:
    """The bytes at fixed offsets from a set of line starts, as 64-bit words gathered once.

    A template's tests all sit at fixed offsets from the line start (:mod:`.templates`), so
    the bytes from 8 before each start on are gathered once, 64 at a time (a gather is the
    costly step, one random access per line, and costs about the same for 8 bytes or 64),
    and every byte test, mask and number is cut out of those words with shifts,
    elementwise.  Words past the line end read the next lines or the chunk's zero padding.
    """

    def __init__(self, ch: Chunk, start: np.ndarray) -> None:
        self.ch = ch
        self.start = start
        self._last = int(start.max()) if len(start) else 0
        self._blocks: dict[int, np.ndarray] = {}
        self._single: dict[int, np.ndarray] = {}
        self._at: dict[int, np.ndarray] = {}
        self._named: dict[int, list[np.ndarray]] = {}

    def _word(self, q: int) -> np.ndarray:
        """Bytes ``8q .. 8q+7`` from each start: a row of the 64-byte block holding them
        (blocks at 0, 64, ... bytes from the start: a template's header fits the first), or a
        gather of its own before the start or near the chunk's end."""
        b, k = divmod(q, 8)
        if q < 0 or self._last + 64 * b + 64 > len(self.ch.buf):
            w = self._single.get(q)
            if w is None:
                w = self._single[q] = self.ch.words[self.start + 8 * q]
            return w
        block = self._blocks.get(b)
        if block is None:
            block = self.ch.blocks[self.start + 64 * b].view("<u8").reshape(len(self.start), 8)
            block = self._blocks[b] = np.ascontiguousarray(block.T)  # rows: one a word
        return block[k]

    def at(self, off: int) -> np.ndarray:
        """The word of bytes ``off .. off+7`` from each start."""
        w = self._at.get(off)
        if w is None:
            q, r = divmod(off, 8)
            w = self._word(q)
            if r:
                w = (w >> U(8 * r)) | (self._word(q + 1) << U(64 - 8 * r))
            self._at[off] = w
        return w

    def bytes_are(self, expected: list[tuple[int, int]]) -> np.ndarray:
        """Whether each line has byte ``b`` at offset ``off`` for every ``(off, b)``: one
        masked compare per 8-byte word the offsets fall in."""
        by_word: dict[int, tuple[int, int]] = {}
        for off, byte in expected:
            q, r = divmod(off, 8)
            mask, want = by_word.get(q, (0, 0))
            by_word[q] = (mask | 0xFF << (8 * r), want | byte << (8 * r))
        ok = np.ones(len(self.start), bool)
        for q, (mask, want) in by_word.items():
            ok &= (self._word(q) & U(mask)) == U(want)
        return ok

    def masks(self, off: int, width: int, kinds: str = "dsb") -> list[np.ndarray]:
        """Bit masks (bit i for byte i) over the ``width`` (<= 64) bytes at ``off`` from each
        start, only the kinds asked for, in that order: ``d`` digits, ``s`` spaces, ``b``
        blanks (any byte <= 0x20: space, tab, line end, control)."""
        full = U(0xFFFFFFFFFFFFFFFF) if width >= 64 else low_bits(width)
        out = []
        for kind in kinds:
            mask = None
            for k in range(-(-width // 8)):
                w = self.at(off + 8 * k)
                if kind == "d":
                    flags = ~above(w ^ SWAR_ASCII0, 9) & SWAR_FLAGS
                elif kind == "s":
                    flags = zero_bytes(w ^ (BYTES * U(SP)))
                else:
                    flags = ~above(w, SP) & SWAR_FLAGS
                bits = movemask(flags) << U(8 * k) if k else movemask(flags)
                mask = bits if mask is None else mask | bits
            assert mask is not None
            out.append(mask & full if width < 64 else mask)
        return out

    def decimal(self, end: int, length: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`Chunk.decimal` of the digits ending ``end`` bytes from each start."""
        if isinstance(length, int):
            lo, ok = decimal8(self.at(end - 8), min(length, 8))
            if length > 8:
                hi, hi_ok = decimal8(self.at(end - 16), min(length - 8, 8))
                lo, ok = hi * U(10**8) + lo, ok & hi_ok
            if not 1 <= length <= 16:
                ok = np.zeros(len(self.start), bool)
            return lo, ok
        lo, ok = decimal8(self.at(end - 8), np.minimum(length, 8))
        long = length > 8
        if long.any():
            hi, hi_ok = decimal8(self.at(end - 16), np.clip(length - 8, 1, 8))
            lo = np.where(long, hi * U(10**8) + lo, lo)
            ok &= ~long | hi_ok
        return lo, ok & (length >= 1) & (length <= 16)

    def block(self, off: int) -> list[np.ndarray]:
        """The eight words of the 64 bytes at ``off`` from each start, gathered at once (for
        a search at an offset no other test uses: no shifting words together)."""
        words = self._named.get(off)
        if words is None:
            if off < -FRONT or self._last + off + 64 > len(self.ch.buf):
                words = [self.at(off + 8 * k) for k in range(8)]
            else:
                block = self.ch.blocks[self.start + off].view("<u8").reshape(len(self.start), 8)
                words = [block[:, k] for k in range(8)]
            self._named[off] = words
        return words

    def digits(self, end: int, length: np.ndarray) -> np.ndarray:
        """Value of the ``length`` (0-16) bytes ending ``end`` bytes from each start, already
        found to be decimal digits (:func:`digits_value`)."""
        value = digits_value(self.at(end - 8), np.minimum(length, 8))
        if (length > 8).any():
            value += digits_value(self.at(end - 16), np.clip(length - 8, 0, 8)) * U(10**8)
        return value

    def find(self, off: int, width: int, byte: int) -> np.ndarray:
        """Offset of the first ``byte`` in the ``width`` (<= 64) bytes at ``off`` from each
        start (eight times the rounds, ``width`` or more, where there is none); eight bytes
        per round, until every line has found it."""
        n = len(self.start)
        todo = np.ones(n, bool)  # not found yet
        before = np.zeros(n, np.int64)  # rounds before the one that found it
        hits = np.zeros(n, U)  # the flags of the round that found it
        pattern = BYTES * U(byte)
        rounds = -(-width // 8)
        words = self.block(off)
        for k in range(rounds):
            x = words[k] ^ pattern
            # bit 7 of the first zero byte of x is the lowest set bit (a borrow can only
            # flag bytes above it), so no exact per-byte test is needed to find the first
            first = (x - BYTES) & ~x & SWAR_FLAGS
            new = todo & (first != 0)
            hits = np.where(new, first, hits)
            todo &= ~new
            if not todo.any():
                break
            if k + 1 < rounds:
                before += todo
        found = 8 * before + (ctz(hits) >> 3)  # 8 * rounds where none: ctz(0) is 64
        return found
