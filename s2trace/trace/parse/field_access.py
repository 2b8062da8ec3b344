"""Field access: named values from the ``fields`` text of EVENTS, and integer parsing.

Everything is vectorised over Arrow string arrays: one RE2 pass per field name, integers
decoded column-wise (no Python object per row).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from s2trace.errors import InputError
from s2trace.trace.parse.chunk import decimal8
from s2trace.trace.parse.field_templates import PAD, Template, learn, match, spans_to_strings

__all__ = ["PSEUDO_FIELDS", "as_arrow", "extract_fields", "extract_rows", "fields", "parse_uint"]

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
    the selected rows' text.

    Rows whose text is a plain ``name=value`` list in a layout learned from the rows
    themselves take the vectorised byte path (:mod:`s2trace.trace.parse.field_templates`, which
    explains why it gives the same values); the other rows, and the ``@func``/``@caller``
    pseudo-fields, take one RE2 pass per name.
    """
    for name in names:
        if name not in PSEUDO_FIELDS and not re.fullmatch(r"[A-Za-z_][\w.]*", name):
            raise InputError(f"field name {name!r}: expected a C identifier")
    chunks = text.chunks if isinstance(text, pa.ChunkedArray) else [text]
    total = sum(len(c) for c in chunks)
    rows = np.arange(total, dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
    plain = list(dict.fromkeys(n for n in names if n not in PSEUDO_FIELDS))
    out: dict[str, pa.Array] = {}
    if plain:
        out.update(_plain_fields(chunks, rows, plain))
    pseudo = [n for n in names if n in PSEUDO_FIELDS]
    if pseudo:
        out.update(_regex_fields(_take(text, rows), pseudo))
    return {n: out[n] for n in names}


def _take(text: pa.Array | pa.ChunkedArray, rows: np.ndarray) -> pa.Array:
    """``text[rows]`` as one (copied) string array."""
    got = text.take(pa.array(rows, pa.int64()))
    return as_arrow(got).cast(pa.large_string())


_BATCH_ROWS = 1 << 18  # rows per byte scan
_BATCH_BYTES = 64 << 20  # text bytes per byte scan (sparse rows: fewer rows)
_MAX_TEMPLATES = 8  # layouts learned per call before the rest go to the regexes


def _plain_fields(
    chunks: Sequence[pa.Array], rows: np.ndarray, names: list[str]
) -> dict[str, pa.Array]:
    """Plain field names of ``rows``: template byte path, then regexes for the rest."""
    m = len(rows)
    order = np.argsort(rows, kind="stable")
    srows = rows[order]
    bounds = np.cumsum([0] + [len(c) for c in chunks])
    parts: dict[str, list[pa.Array]] = {n: [] for n in names}
    placed: list[np.ndarray] = []  # output positions of each part, in part order
    rest: list[np.ndarray] = []  # sorted-row indices left to the regexes
    templates: list[Template] = []
    for ci, chunk in enumerate(chunks):
        a, b = np.searchsorted(srows, bounds[ci : ci + 2])
        if a == b:
            continue
        arr = chunk.cast(pa.large_string()) if chunk.type != pa.large_string() else chunk
        offsets = np.frombuffer(arr.buffers()[1], np.int64)[arr.offset : arr.offset + len(arr) + 1]
        data = (
            np.frombuffer(arr.buffers()[2], np.uint8) if arr.buffers()[2] else np.zeros(0, np.uint8)
        )
        valid = arr.is_valid().to_numpy(zero_copy_only=False) if arr.null_count else None
        i = a
        while i < b:
            j = min(i + _BATCH_ROWS, b)
            local = srows[i:j] - bounds[ci]
            s, e = offsets[local], offsets[local + 1]
            if e[-1] - s[0] > _BATCH_BYTES:  # sparse rows: cut the batch at the byte budget
                j = i + max(1, int(np.searchsorted(e, s[0] + _BATCH_BYTES)))
                local, s, e = local[: j - i], s[: j - i], e[: j - i]
            ok = valid[local] if valid is not None else np.ones(len(local), bool)
            fit = _fit_batch(data, s, e, ok, names, templates, parts, placed, order[i:j])
            rest.append(i + np.flatnonzero(~fit))
            i = j
    left = np.concatenate(rest) if rest else np.zeros(0, np.int64)
    if len(left):
        whole = pa.chunked_array([c.cast(pa.large_string()) for c in chunks], pa.large_string())
        got = _regex_fields(_take(whole, srows[left]), names)
        for n in names:
            parts[n].append(got[n])
        placed.append(order[left])
    return _assemble(parts, placed, m)


def _fit_batch(
    data: np.ndarray,
    s: np.ndarray,
    e: np.ndarray,
    ok: np.ndarray,
    names: list[str],
    templates: list[Template],
    parts: dict[str, list[pa.Array]],
    placed: list[np.ndarray],
    pos: np.ndarray,
) -> np.ndarray:
    """Rows of one batch that fit a (known or newly learned) template; their values are
    appended to ``parts`` and their output positions to ``placed``."""
    lo, hi = int(s[0]), int(e[-1])
    buf = np.zeros(hi - lo + PAD, np.uint8)
    buf[: hi - lo] = data[lo:hi]
    s, e = s - lo, e - lo
    fit = ~ok
    done = np.zeros(len(s), bool)
    tried: set[Template] = set()
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
        wanted = {n: tpl.names.index(n) for n in names if n in tpl.names}
        hit, spans = match(buf, s[todo], e[todo], tpl, wanted)
        if not hit.any():
            continue
        rows = todo[hit]
        fit[rows] = done[rows] = True
        null = pa.nulls(len(rows), pa.string())
        for n in names:
            parts[n].append(spans_to_strings(buf, *spans[n]) if n in spans else null)
        placed.append(pos[rows])
    return done


def _assemble(
    parts: dict[str, list[pa.Array]], placed: list[np.ndarray], m: int
) -> dict[str, pa.Array]:
    """One array per name in output order from the parts and their output positions."""
    where = np.concatenate(placed) if placed else np.zeros(0, np.int64)
    in_order = np.array_equal(where, np.arange(m))
    idx = None
    if not in_order:
        inv = np.empty(m, np.int64)
        inv[where] = np.arange(len(where))
        idx = pa.array(inv)
    out = {}
    for n, p in parts.items():
        joined = (
            pa.concat_arrays([x.cast(pa.string()) for x in p]) if p else pa.array([], pa.string())
        )
        out[n] = joined if idx is None else joined.take(idx)
    return out


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
    buf = np.zeros(24 + last - first + 8, np.uint8)  # 24 zero bytes before: look-back reads
    buf[24 : 24 + last - first] = data[first:last]
    end = offsets[1:] - first + 24
    length = np.diff(offsets)
    words = np.ndarray((len(buf) - 7,), dtype="<u8", buffer=buf, strides=(1,))
    valid = arr.is_valid().to_numpy(zero_copy_only=False) if arr.null_count else True
    out = np.zeros(n, np.uint64)
    done = np.zeros(n, bool)
    prefix = (words[end - length] & _U(0xFFFF)) | _U(0x2000)  # "0x" / "0X" -> 0x7830
    is_0x = valid & (length >= 3) & (length <= 18) & (prefix == _U(0x7830))
    h = np.flatnonzero(is_0x)
    if len(h):  # hex digits right-aligned in 16 bytes, nibbles packed into big-endian words
        raw = np.stack([words[end[h] - 16], words[end[h] - 8]], axis=1).view(np.uint8)
        raw = raw.reshape(len(h), 16)
        mask = np.arange(16) >= 16 - (length[h, None] - 2)
        nib = _HEX[raw]
        ok = np.all((nib < 16) | ~mask, axis=1)
        nib = np.where(mask, nib, np.uint8(0))
        packed = np.ascontiguousarray((nib[:, 0::2] << 4) | nib[:, 1::2])
        out[h] = packed.view(">u8").ravel()
        done[h] = ok
    d = np.flatnonzero(valid & ~is_0x & (length >= 1) & (length <= 19))
    if len(d):  # up to 19 digits: three SWAR words (8 + 8 + 3 digits)
        ln, e = length[d], end[d]
        lo, ok0 = decimal8(words[e - 8], np.minimum(ln, 8))
        mid, ok1 = decimal8(words[e - 16], np.clip(ln - 8, 0, 8))
        hi, ok2 = decimal8(words[e - 24], np.clip(ln - 16, 0, 8))
        out[d] = hi * _U(10**16) + mid * _U(10**8) + lo
        done[d] = ok0 & ok1 & ok2
    out[~done] = 0
    return out, done, done


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
