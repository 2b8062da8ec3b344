"""Field access: named values from the ``fields`` text of EVENTS, and integer parsing.

Everything is vectorised over Arrow string arrays: one RE2 pass per field name, integers
decoded column-wise (no Python object per row).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from s2trace.errors import InputError
from s2trace.trace.parse.chunk import SWAR_ASCII0, SWAR_FLAGS, above, decimal8, zero_bytes
from s2trace.trace.parse.field_templates import (
    PAD,
    Scan,
    Template,
    learn,
    match,
    spans_to_strings,
)

__all__ = [
    "LOOK_BACK",
    "PSEUDO_FIELDS",
    "FieldValues",
    "as_arrow",
    "extract_fields",
    "extract_rows",
    "extract_values",
    "fields",
    "parse_uint",
    "plain_uints_at",
]

#: The kprobe header ``(func+0x0/0x198)`` or kretprobe ``(caller+0x54/0x198 <- func)``.
_PROBE_RE = (
    r"^\((?P<site>[^\s()+<]+)(?:\+0x[0-9a-fA-F]+/0x[0-9a-fA-F]+)?"
    r"(?:\s+<-\s+(?P<callee>[^\s()]+))?\)"
)
#: Pseudo-fields read from the kprobe header instead of a ``name=value`` pair.
PSEUDO_FIELDS = ("@func", "@caller")


def as_arrow(values: pd.Series | pa.Array | pa.ChunkedArray) -> pa.Array:
    """A (single-chunk) Arrow array of a Series or (chunked) Arrow array, without copying
    when it already is one chunk."""
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    if isinstance(values, pa.Array):
        return values
    arr = pa.array(values.astype("string"), from_pandas=True)
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


def fields(events: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """Named values from the ``fields`` column, one string column per name (<NA> if absent).

    A name matches ``name=value`` or ``name: value`` where it starts the text or follows a
    blank, comma or parenthesis; the value runs to the next blank, comma or ')' (a
    ``"quoted"`` value loses its quotes).  Two pseudo-names read the kprobe header: ``@func``,
    the probed function (``(func+0x0/..)``, or the callee of a kretprobe
    ``(caller+0x54/.. <- func)``), and ``@caller``, the function a kretprobe returned to.
    Vectorised: one RE2 pass per name over the rows given.
    """
    got = extract_fields(as_arrow(events["fields"]), names)
    return pd.DataFrame(
        {n: pd.arrays.ArrowStringArray(got[n].cast(pa.large_string())) for n in names},
        index=events.index,
    )


def extract_fields(text: pa.Array | pa.ChunkedArray, names: Sequence[str]) -> dict[str, pa.Array]:
    """:func:`fields` on an Arrow string array: one string array per name (null if absent)."""
    return extract_rows(text, None, names)


def extract_rows(
    text: pa.Array | pa.ChunkedArray, rows: np.ndarray | None, names: Sequence[str]
) -> dict[str, pa.Array]:
    """:func:`extract_fields` on ``text[rows]`` (all rows when None), without first copying
    the selected rows' text (see :func:`extract_values`)."""
    return extract_values(text, rows, names, ()).text


@dataclass
class FieldValues:
    """Named fields of a set of rows, read once: as text (an Arrow string array, null where
    absent) and as unsigned integers (:func:`parse_uint`'s (values, valid), invalid where
    absent), each for the names asked for."""

    text: dict[str, pa.Array]
    uint: dict[str, tuple[np.ndarray, np.ndarray]]


def extract_values(
    text: pa.Array | pa.ChunkedArray,
    rows: np.ndarray | None,
    names: Sequence[str],
    uint_names: Sequence[str],
) -> FieldValues:
    """The fields ``names`` of ``text[rows]`` (all rows when None) as text, and the fields
    ``uint_names`` as integers: ``uint[n]`` equals ``parse_uint(extract_rows(...)[n])``.

    Rows whose text is a plain ``name=value`` list in a layout learned from the rows
    themselves take the vectorised byte path (:mod:`s2trace.trace.parse.field_templates`, which
    explains why it gives the same values); there integers are decoded straight from the value
    bytes (:func:`plain_uints_at`), no string is made for them.  The other rows, and the
    ``@func``/``@caller`` pseudo-fields, take one RE2 pass per name, then :func:`parse_uint`.
    """
    for name in (*names, *uint_names):
        if name not in PSEUDO_FIELDS and not re.fullmatch(r"[A-Za-z_][\w.]*", name):
            raise InputError(f"field name {name!r}: expected a C identifier")
    chunks = text.chunks if isinstance(text, pa.ChunkedArray) else [text]
    total = sum(len(c) for c in chunks)
    rows = np.arange(total, dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
    plain_text = list(dict.fromkeys(n for n in names if n not in PSEUDO_FIELDS))
    plain_uint = list(dict.fromkeys(n for n in uint_names if n not in PSEUDO_FIELDS))
    got = FieldValues({}, {})
    if plain_text or plain_uint:
        got = _plain_fields(chunks, rows, plain_text, plain_uint)
    pseudo = list(dict.fromkeys(n for n in (*names, *uint_names) if n in PSEUDO_FIELDS))
    if pseudo:
        probe = _regex_fields(_take(text, rows), pseudo)
        got.text.update((n, probe[n]) for n in names if n in PSEUDO_FIELDS)
        got.uint.update((n, parse_uint(probe[n])) for n in uint_names if n in PSEUDO_FIELDS)
    return FieldValues({n: got.text[n] for n in names}, {n: got.uint[n] for n in uint_names})


def _take(text: pa.Array | pa.ChunkedArray, rows: np.ndarray) -> pa.Array:
    """``text[rows]`` as one (copied) string array."""
    got = text.take(pa.array(rows, pa.int64()))
    return as_arrow(got).cast(pa.large_string())


_BATCH_ROWS = 1 << 18  # rows per byte scan
_BATCH_BYTES = 64 << 20  # text bytes per byte scan (sparse rows: fewer rows)
_MAX_TEMPLATES = 8  # layouts learned per call before the rest go to the regexes


@dataclass
class _Parts:
    """Values of the rows read so far, in pieces, and each piece's output positions."""

    text: dict[str, list[pa.Array]]
    uint: dict[str, list[tuple[np.ndarray, np.ndarray]]]
    placed: list[np.ndarray]

    def add(
        self,
        pos: np.ndarray,
        text: dict[str, pa.Array],
        uint: dict[str, tuple[np.ndarray, np.ndarray]],
    ) -> None:
        for n, arr in text.items():
            self.text[n].append(arr)
        for n, pair in uint.items():
            self.uint[n].append(pair)
        self.placed.append(pos)


def _plain_fields(
    chunks: Sequence[pa.Array], rows: np.ndarray, names: list[str], uint_names: list[str]
) -> FieldValues:
    """Plain field names of ``rows``: template byte path, then regexes for the rest."""
    m = len(rows)
    order = np.argsort(rows, kind="stable")
    srows = rows[order]
    bounds = np.cumsum([0] + [len(c) for c in chunks])
    parts = _Parts({n: [] for n in names}, {n: [] for n in uint_names}, [])
    every = list(dict.fromkeys([*names, *uint_names]))
    rest: list[np.ndarray] = []  # sorted-row indices left to the regexes
    templates: list[Template] = []
    for ci, chunk in enumerate(chunks):
        a, b = np.searchsorted(srows, bounds[ci : ci + 2])
        if a == b:
            continue
        offsets, data = _string_buffers(chunk)
        valid = chunk.is_valid().to_numpy(zero_copy_only=False) if chunk.null_count else None
        i = a
        while i < b:
            j = min(i + _BATCH_ROWS, b)
            local = srows[i:j] - bounds[ci]
            s, e = offsets[local], offsets[local + 1]
            if e[-1] - s[0] > _BATCH_BYTES:  # sparse rows: cut the batch at the byte budget
                j = i + max(1, int(np.searchsorted(e, s[0] + _BATCH_BYTES)))
                local, s, e = local[: j - i], s[: j - i], e[: j - i]
            ok = valid[local] if valid is not None else np.ones(len(local), bool)
            if 2 * int((e - s).sum()) < int(e[-1] - s[0]):
                # sparse rows (a recipe's events between many others): copy their text alone
                # (Arrow's take), so that the byte scans cover the rows' bytes only
                sub_offsets, sub_data = _string_buffers(chunk.take(pa.array(local)))
                b_data, s, e = sub_data, sub_offsets[:-1], sub_offsets[1:]
            else:
                b_data = data
            fit = _fit_batch(b_data, s, e, ok, names, uint_names, templates, parts, order[i:j])
            rest.append(i + np.flatnonzero(~fit))
            i = j
    left = np.concatenate(rest) if rest else np.zeros(0, np.int64)
    if len(left):
        whole = pa.chunked_array([c.cast(pa.large_string()) for c in chunks], pa.large_string())
        got = _regex_fields(_take(whole, srows[left]), every)
        parts.add(
            order[left],
            {n: got[n] for n in names},
            {n: parse_uint(got[n]) for n in uint_names},
        )
    return _assemble(parts, m)


def _string_buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(int64 offsets, data bytes) of a string or large string array, without copying the
    data (the offsets of a 32-bit string array are widened)."""
    if arr.type not in (pa.string(), pa.large_string()):
        arr = arr.cast(pa.large_string())
    wide = np.int64 if arr.type == pa.large_string() else np.int32
    offsets = np.frombuffer(arr.buffers()[1], wide)[arr.offset : arr.offset + len(arr) + 1]
    data = np.frombuffer(arr.buffers()[2], np.uint8) if arr.buffers()[2] else np.zeros(0, np.uint8)
    return offsets.astype(np.int64, copy=False), data


def _fit_batch(
    data: np.ndarray,
    s: np.ndarray,
    e: np.ndarray,
    ok: np.ndarray,
    names: list[str],
    uint_names: list[str],
    templates: list[Template],
    parts: _Parts,
    pos: np.ndarray,
) -> np.ndarray:
    """Rows of one batch that fit a (known or newly learned) template; their values are
    added to ``parts`` with their output positions."""
    lo, hi = int(s[0]), int(e[-1])
    buf = np.zeros(LOOK_BACK + hi - lo + PAD, np.uint8)  # LOOK_BACK: plain_uints_at reads back
    buf[LOOK_BACK : LOOK_BACK + hi - lo] = data[lo:hi]
    s, e = s - lo + LOOK_BACK, e - lo + LOOK_BACK
    scan = Scan(buf)
    fit = ~ok
    done = np.zeros(len(s), bool)
    tried: set[Template] = set()
    every = list(dict.fromkeys([*names, *uint_names]))
    while True:
        todo = np.flatnonzero(~fit)
        if not len(todo):
            break
        tpl = next((t for t in templates if t not in tried), None)
        if tpl is None and len(templates) < _MAX_TEMPLATES:
            for k in dict.fromkeys((todo[0], todo[len(todo) // 2], todo[-1])):
                cand = learn(bytes(buf[s[k] : e[k]]).decode("utf-8", "replace"))
                if cand is not None and cand not in templates:
                    templates.append(tpl := cand)
                    break
        if tpl is None:
            break
        tried.add(tpl)
        wanted = {n: tpl.names.index(n) for n in every if n in tpl.names}
        hit, spans = match(buf, s[todo], e[todo], tpl, wanted, scan)
        if not hit.any():
            continue
        rows = todo[hit]
        fit[rows] = done[rows] = True
        k = len(rows)
        null = pa.nulls(k, pa.string())
        absent = (np.zeros(k, np.uint64), np.zeros(k, bool))
        parts.add(
            pos[rows],
            {n: spans_to_strings(buf, *spans[n]) if n in spans else null for n in names},
            {n: _span_uints(buf, *spans[n]) if n in spans else absent for n in uint_names},
        )
    return done


def _span_uints(buf: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`parse_uint` of the values ``buf[lo:hi]``, from the bytes: the common forms by
    :func:`plain_uints_at`, the few others as strings through the general path."""
    value, ok = plain_uints_at(buf, hi, hi - lo)
    rest = np.flatnonzero(~ok)
    if len(rest):
        value[rest], ok[rest] = parse_uint(spans_to_strings(buf, lo[rest], hi[rest]))
    return value, ok


def _assemble(parts: _Parts, m: int) -> FieldValues:
    """One array per name in output order from the parts and their output positions."""
    where = np.concatenate(parts.placed) if parts.placed else np.zeros(0, np.int64)
    in_order = len(where) == m and bool((where[1:] > where[:-1]).all()) if m else True
    idx = None
    if not in_order:
        inv = np.empty(m, np.int64)
        inv[where] = np.arange(len(where))
        idx = pa.array(inv)
    text = {}
    for n, p in parts.text.items():
        joined = (
            pa.concat_arrays([x.cast(pa.string()) for x in p]) if p else pa.array([], pa.string())
        )
        text[n] = joined if idx is None else joined.take(idx)
    uint = {}
    for n, q in parts.uint.items():
        value, ok = np.zeros(m, np.uint64), np.zeros(m, bool)
        if q:
            value[where] = np.concatenate([v for v, _ in q])
            ok[where] = np.concatenate([o for _, o in q])
        uint[n] = (value, ok)
    return FieldValues(text, uint)


def _regex_fields(text: pa.Array, names: Sequence[str]) -> dict[str, pa.Array]:
    """The per-field regex path: one RE2 pass per name over ``text``."""
    null = pa.scalar(None, pa.string())
    out: dict[str, pa.Array] = {}
    probe = None
    for name in names:
        if name in PSEUDO_FIELDS:
            if probe is None:
                probe = pc.extract_regex(text, _PROBE_RE)
            site = pc.if_else(probe.is_valid(), probe.field("site").cast(pa.string()), null)
            callee = probe.field("callee").cast(pa.string())
            callee = pc.if_else(pc.fill_null(pc.equal(callee, ""), True), null, callee)
            if name == "@func":
                value = pc.coalesce(callee, site)
            else:
                value = pc.if_else(pc.is_null(callee), null, site)
        else:
            pattern = (
                r"(?:^|[\s,(])" + re.escape(name) + r'(?:=|:\s+)(?:"(?P<q>[^"]*)"|(?P<v>[^\s,)]+))'
            )
            got = pc.extract_regex(text, pattern)
            plain = got.field("v").cast(pa.string())
            plain = pc.if_else(pc.fill_null(pc.equal(plain, ""), True), null, plain)
            quoted = got.field("q").cast(pa.string())
            value = pc.if_else(got.is_valid(), pc.coalesce(plain, quoted), null)
        out[name] = value
    return out


_HEX = np.full(256, 255, np.uint8)
for _d in range(10):
    _HEX[0x30 + _d] = _d
for _d in range(6):
    _HEX[0x61 + _d] = _HEX[0x41 + _d] = 10 + _d


def parse_uint(values: pd.Series | pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Integer text -> (uint64 values, valid mask), vectorised.

    ``0x``-prefixed hex (up to 16 digits, as kprobes print ``%x`` arguments and pointers) or
    decimal, optionally negative (``ret=-22``, stored two's complement, so ``view(int64)``
    gives the signed value).  Decimals above 2^64-1, empty or other text are invalid.
    """
    arr = as_arrow(values).cast(pa.large_string())
    n = len(arr)
    out = np.zeros(n, np.uint64)
    ok = np.zeros(n, bool)
    if n == 0:
        return out, ok
    for lo in range(0, n, _PARSE_BATCH):
        part = arr.slice(lo, _PARSE_BATCH)
        v, good, done = _plain_uints(part)
        out[lo : lo + len(part)], ok[lo : lo + len(part)] = v, good
        if not done.all():  # signs, blanks, 20-digit decimals, junk: the general path
            rest = np.flatnonzero(~done)
            v, good = _general_uints(part.take(pa.array(rest)))
            out[lo + rest], ok[lo + rest] = v, good
    return out, ok


_PARSE_BATCH = 1 << 20
_U = np.uint64


def _plain_uints(arr: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The common forms, from the bytes of the Arrow buffer: ``0x``/``0X`` + 1-16 hex digits,
    or 1-19 decimal digits, nothing else.  Returns (values, valid, handled); rows not handled
    (other text, nulls) go to :func:`_general_uints`, which gives these forms the same value.
    """
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], np.int64)[arr.offset : arr.offset + n + 1]
    data = np.frombuffer(arr.buffers()[2], np.uint8) if arr.buffers()[2] else np.zeros(0, np.uint8)
    first, last = int(offsets[0]), int(offsets[-1])
    buf = np.zeros(LOOK_BACK + last - first + 8, np.uint8)  # zero bytes before: look-back reads
    buf[LOOK_BACK : LOOK_BACK + last - first] = data[first:last]
    valid = arr.is_valid().to_numpy(zero_copy_only=False) if arr.null_count else None
    out, done = plain_uints_at(buf, offsets[1:] - first + LOOK_BACK, np.diff(offsets), valid)
    return out, done, done


#: zero bytes :func:`plain_uints_at` needs before the first value (it reads 24 bytes back)
LOOK_BACK = 24
_HEX_HI = _U(0x2020202020202020)
_ASCII_A = _U(0x6060606060606060)
_LOW_NIBBLES = _U(0x0F0F0F0F0F0F0F0F)
_NINE = _U(0x0909090909090909)
_EVEN_BYTES = _U(0x00FF00FF00FF00FF)


def plain_uints_at(
    buf: np.ndarray, end: np.ndarray, length: np.ndarray, valid: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`parse_uint`'s common forms for the values ``buf[end - length : end]``:
    (values, handled).  ``0x``/``0X`` + 1-16 hex digits or 1-19 decimal digits, nothing else;
    other rows (and rows not ``valid``) are not handled and read 0, for the caller to give to
    the general path.  ``buf`` must have :data:`LOOK_BACK` bytes before the first value and 8
    after the last (any bytes: those outside a value are masked).

    SWAR over 64-bit words, eight bytes per operation: hex digits are checked and turned into
    nibbles in place, then packed; decimals take :func:`.chunk.decimal8` per eight digits,
    the second and third words only for the rows that have that many digits.
    """
    n = len(end)
    words = np.ndarray((len(buf) - 7,), dtype="<u8", buffer=buf, strides=(1,))
    out = np.zeros(n, np.uint64)
    done = np.zeros(n, bool)
    ok_rows = (length >= 1) if valid is None else (valid & (length >= 1))
    start = end - length
    prefix = (words[start] & _U(0xFFFF)) | _U(0x2000)  # "0x" / "0X" -> 0x7830
    is_0x = ok_rows & (length >= 3) & (length <= 18) & (prefix == _U(0x7830))
    h = np.flatnonzero(is_0x)
    if len(h):
        e, digits = end[h], length[h] - 2
        lo, ok = _hex8(words[e - 8], np.minimum(digits, 8))
        wide = np.flatnonzero(digits > 8)
        if len(wide):
            hi, ok_hi = _hex8(words[e[wide] - 16], digits[wide] - 8)
            lo[wide] |= hi << _U(32)
            ok[wide] &= ok_hi
        out[h] = np.where(ok, lo, _U(0))
        done[h] = ok
    d = np.flatnonzero(ok_rows & ~is_0x & (length <= 19))
    if len(d):  # up to 19 digits: three SWAR words (8 + 8 + 3 digits)
        e, ln = end[d], length[d]
        val, ok = decimal8(words[e - 8], np.minimum(ln, 8))
        long = np.flatnonzero(ln > 8)
        if len(long):
            el, ll = e[long], ln[long]
            mid, ok1 = decimal8(words[el - 16], np.minimum(ll - 8, 8))
            hi, ok2 = decimal8(words[el - 24], np.clip(ll - 16, 0, 8))
            val[long] += hi * _U(10**16) + mid * _U(10**8)
            ok[long] &= ok1 & ok2
        out[d] = np.where(ok, val, _U(0))
        done[d] = ok
    return out, done


def _hex8(w: np.ndarray, digits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Value of the last ``digits`` (1-8) bytes of each little-endian word as hex digits, and
    whether they all are ``[0-9a-fA-F]`` (the bytes before them read as '0')."""
    fill = ((8 - digits) * 8).astype(_U)  # bytes before the digits, as bits (0-56)
    keep_low = (_U(1) << fill) - _U(1)
    w = (w & ~keep_low) | (SWAR_ASCII0 & keep_low)
    dec = ~above(w ^ SWAR_ASCII0, 9) & SWAR_FLAGS  # '0'-'9'
    alpha = (w | _HEX_HI) ^ _ASCII_A  # 'a'-'f' / 'A'-'F' -> 1..6
    alpha = ~above(alpha, 6) & ~zero_bytes(alpha) & SWAR_FLAGS
    ok = (dec | alpha) == SWAR_FLAGS
    nib = (w & _LOW_NIBBLES) + ((alpha >> _U(7)) * _U(9))  # one nibble per byte, first digit low
    pairs = ((nib & _EVEN_BYTES) << _U(4)) | ((nib >> _U(8)) & _EVEN_BYTES)  # a byte per 16 bits
    val = (
        ((pairs & _U(0xFF)) << _U(24))
        | (((pairs >> _U(16)) & _U(0xFF)) << _U(16))
        | (((pairs >> _U(32)) & _U(0xFF)) << _U(8))
        | (pairs >> _U(48))
    )
    return val, ok


def _general_uints(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Every accepted form (blanks around, ``+``/``-`` signs, 20-digit decimals), with RE2."""
    n = len(arr)
    out = np.zeros(n, np.uint64)
    ok = np.zeros(n, bool)
    if n == 0:
        return out, ok
    text = pc.utf8_trim_whitespace(arr)
    is_hex = pc.fill_null(pc.match_substring_regex(text, r"^0[xX][0-9a-fA-F]{1,16}$"), False)
    is_neg = pc.fill_null(pc.match_substring_regex(text, r"^-[0-9]{1,18}$"), False)
    is_dec = pc.fill_null(pc.match_substring_regex(text, r"^\+?[0-9]{1,20}$"), False)
    hx = is_hex.to_numpy(zero_copy_only=False)
    if hx.any():
        digits = pc.utf8_lpad(pc.utf8_slice_codeunits(text.filter(is_hex), 2), 16, "0")
        digits = digits.cast(pa.large_string())
        offsets = np.frombuffer(digits.buffers()[1], np.int64)[digits.offset :]
        data = np.frombuffer(digits.buffers()[2], np.uint8)[
            offsets[0] : offsets[0] + 16 * len(digits)
        ]
        nib = _HEX[data.reshape(-1, 16)].astype(np.uint64)
        val = np.zeros(len(nib), np.uint64)
        for j in range(16):  # 16 column operations, not a per-value loop
            val = (val << np.uint64(4)) | nib[:, j]
        out[hx] = val
        ok[hx] = True
    neg = is_neg.to_numpy(zero_copy_only=False)
    if neg.any():
        out[neg] = pc.cast(text.filter(is_neg), pa.int64()).to_numpy().view(np.uint64)
        ok[neg] = True
    dec = is_dec.to_numpy(zero_copy_only=False)
    if dec.any():
        sub = pc.utf8_ltrim(text.filter(is_dec), "+")
        short = pc.less_equal(pc.utf8_length(sub), 19).to_numpy(zero_copy_only=False)
        idx = np.flatnonzero(dec)
        if short.any():
            out[idx[short]] = pc.cast(sub.filter(pa.array(short)), pa.uint64()).to_numpy()
            ok[idx[short]] = True
        for i, s in zip(idx[~short], sub.filter(pa.array(~short)).to_pylist(), strict=True):
            if int(s) < 1 << 64:  # 20-digit decimals only: rare, checked one by one
                out[i], ok[i] = int(s), True
    return out, ok
