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

__all__ = ["PSEUDO_FIELDS", "as_arrow", "extract_fields", "fields", "parse_uint"]

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


def extract_fields(text: pa.Array, names: Sequence[str]) -> dict[str, pa.Array]:
    """:func:`fields` on an Arrow string array: one string array per name (null if absent)."""
    text = as_arrow(text)
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
            if not re.fullmatch(r"[A-Za-z_][\w.]*", name):
                raise InputError(f"field name {name!r}: expected a C identifier")
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
    arr = as_arrow(values).cast(pa.string())
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
