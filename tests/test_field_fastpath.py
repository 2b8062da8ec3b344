"""The field readers' fast paths against slow reference models written here (hypothesis).

The fast paths (:mod:`s2trace.trace.parse.field_templates`' learned layouts, integers decoded
straight from the field bytes by :func:`.field_access.plain_uints_at`, SWAR hex and decimal)
must give exactly what the documented grammar gives: the per-field regex of
:func:`.field_access.fields` (first ``name=value`` / ``name: value`` after the start, a blank,
``,`` or ``(``), then :func:`.field_access.parse_uint`'s forms.  The models below restate that
grammar one row at a time in plain Python, so a fast path that drifts (a byte class, a length
limit, a word read out of place) fails here on generated texts: hex of every length and case,
decimals up to and past 2^64, signs, odd spacing, missing and repeated fields, damaged values,
kprobe headers, quotes, non-ASCII bytes.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s2trace.trace.parse.field_access import extract_values, parse_uint, plain_uints_at

# -- reference models ---------------------------------------------------------------------------

_BLANK = "\t\n\f\r "  # RE2's \s (no \v), which the regex path uses


def ref_uint(text: str | None) -> tuple[int, bool]:
    """parse_uint of one value, by its documented forms."""
    if text is None:
        return 0, False
    t = text.strip(" \t\n\v\f\r")  # ASCII blanks around (generated texts hold no others)
    if re.fullmatch(r"0[xX][0-9a-fA-F]{1,16}", t):
        return int(t[2:], 16), True
    if re.fullmatch(r"-[0-9]{1,18}", t):
        return int(t) & ((1 << 64) - 1), True
    if re.fullmatch(r"\+?[0-9]{1,20}", t) and int(t) < 1 << 64:
        return int(t), True
    return 0, False


def ref_field(text: str | None, name: str) -> str | None:
    """The value of ``name`` in one row's fields text: the first match of the grammar."""
    if text is None:
        return None
    b = f"[{_BLANK}]"
    pattern = (
        rf"(?:^|[{_BLANK},(]){re.escape(name)}(?:=|:{b}+)"
        rf'(?:"(?P<q>[^"]*)"|(?P<v>[^{_BLANK},)]+))'
    )
    m = re.search(pattern, text)
    if m is None:
        return None
    return m.group("v") if m.group("v") is not None else m.group("q")


# -- generated texts ----------------------------------------------------------------------------

NAMES = ["op", "addr", "nr_pages", "vm", "gfn"]
ASKED = [*NAMES, "vm_id", "ret", "a"]  # vm_id: a longer name; ret, a: never or rarely there


def _digits(alphabet: str, longest: int) -> st.SearchStrategy[str]:
    """Digit strings of every length 0..longest alike (plain lists favour short ones, and
    the limits at 8, 16, 19 and 20 digits are where a fast path would go wrong)."""
    return st.integers(0, longest).flatmap(
        lambda n: st.lists(st.sampled_from(alphabet), min_size=n, max_size=n).map("".join)
    )


hex_value = st.builds(
    lambda x, d: x + d, st.sampled_from(["0x", "0X"]), _digits("0123456789abcdefABCDEF", 19)
)
dec_value = st.one_of(
    st.integers(0, 99).map(str),
    st.integers(0, (1 << 64) + 5).map(str),
    st.integers(0, 10**22).map(str),
    st.integers(-(10**19), -1).map(str),
    st.integers(0, 10**6).map(lambda v: f"+{v}"),
    _digits("0123456789", 21),
    st.builds(lambda s, d: s + d, st.sampled_from("+-"), _digits("0123456789", 21)),
)
damaged_value = st.text(
    alphabet=st.sampled_from(list("0123456789abcdefxX+-_.:=,()\"' \t\v\u00e9g")),
    min_size=0,
    max_size=22,
)
value = st.one_of(hex_value, hex_value, dec_value, dec_value, damaged_value)
separator = st.sampled_from([" ", " ", " ", " ", "  ", ", ", "\t", ","])
header = st.sampled_from(
    ["", "", "", "(fn+0x0/0x198) ", "(caller+0x54/0x198 <- fn) ", "(vm=7) ", "(vm: 7) ", "(bad "]
)


@st.composite
def row(draw: st.DrawFn, layout: list[str]) -> str | None:
    """One row: mostly the layout with clean separators; sometimes damaged."""
    if draw(st.integers(0, 30)) == 0:
        return None
    names = list(layout)
    damaged = draw(st.integers(0, 3)) == 0
    if damaged:
        op = draw(st.sampled_from(["drop", "swap", "repeat", "colon", "quote", "extra", "none"]))
        if op == "drop" and names:
            names.pop(draw(st.integers(0, len(names) - 1)))
        elif op == "swap" and len(names) > 1:
            names[0], names[-1] = names[-1], names[0]
        elif op == "repeat" and names:
            names.append(names[0])
        elif op == "extra":
            names.insert(draw(st.integers(0, len(names))), "vm_id")
    toks = []
    for n in names:
        v = draw(value) if damaged or draw(st.integers(0, 4)) == 0 else draw(st.sampled_from(
            ["0x40000000", "1", "0", "0x0", "host", "share", "0xffff000012345000"]))  # fmt: skip
        if damaged and op == "colon":
            toks.append(f"{n}: {v}")
        elif damaged and op == "quote":
            toks.append(f'{n}="{v}"')
        else:
            toks.append(f"{n}={v}")
    sep = draw(separator) if damaged else " "
    return draw(header) + sep.join(toks)


@st.composite
def table(draw: st.DrawFn) -> tuple[list[str | None], list[int]]:
    """Rows sharing one or two layouts (so layouts are learned), and the rows to read (a
    subset, unsorted, with repeats)."""
    layouts = [draw(st.permutations(NAMES)), draw(st.lists(st.sampled_from(NAMES), max_size=4))]
    texts = draw(
        st.lists(st.sampled_from(layouts).flatmap(lambda lay: row(lay)), min_size=1, max_size=60)
    )
    rows = draw(st.lists(st.integers(0, len(texts) - 1), max_size=80))
    return texts, rows


def _arrow(texts: list[str | None], cut: int, large: bool) -> pa.ChunkedArray:
    kind = pa.large_string() if large else pa.string()
    cut = min(cut, len(texts))
    parts = [texts[:cut], texts[cut:]] if 0 < cut < len(texts) else [texts]
    return pa.chunked_array([pa.array(p, kind) for p in parts], kind)


def _check(texts: list[str | None], rows: list[int] | None, arr: pa.ChunkedArray) -> None:
    got = extract_values(arr, None if rows is None else np.array(rows, np.int64), ASKED, ASKED)
    picked = texts if rows is None else [texts[i] for i in rows]
    for name in ASKED:
        want = [ref_field(t, name) for t in picked]
        assert got.text[name].to_pylist() == want, name
        value, ok = got.uint[name]
        ref = [ref_uint(w) for w in want]
        assert ok.tolist() == [r[1] for r in ref], name
        assert value.tolist() == [r[0] for r in ref], name


# -- properties ---------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(value, st.none()), max_size=40))
def test_parse_uint_matches_reference(values: list[str | None]) -> None:
    """parse_uint (SWAR fast forms + general path) gives the documented value of each text."""
    for kind in (pa.string(), pa.large_string()):
        out, ok = parse_uint(pa.array(values, kind))
        ref = [ref_uint(v) for v in values]
        assert ok.tolist() == [r[1] for r in ref]
        assert out.tolist() == [r[0] for r in ref]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(hex_value, dec_value, damaged_value), min_size=1, max_size=30))
def test_plain_uints_at_handles_only_what_it_decodes_right(values: list[str]) -> None:
    """The byte decoder, on values packed back to back (bytes around each value are other
    values' digits, not zeros): a value it handles has the reference value; ``0x`` + 1-16 hex
    digits and 1-19 decimal digits are always handled."""
    blob = "".join(values).encode()
    buf = np.zeros(24 + len(blob) + 8, np.uint8)
    buf[24 : 24 + len(blob)] = np.frombuffer(blob, np.uint8)
    lengths = np.array([len(v.encode()) for v in values], np.int64)
    end = 24 + np.cumsum(lengths)
    out, done = plain_uints_at(buf, end, lengths)
    for v, o, d in zip(values, out.tolist(), done.tolist(), strict=True):
        plain = re.fullmatch(r"0[xX][0-9a-fA-F]{1,16}|[0-9]{1,19}", v) is not None
        assert d == plain, v
        if d:
            assert (o, True) == ref_uint(v), v


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table(), st.integers(0, 70), st.booleans())
def test_extract_values_matches_reference(
    data: tuple[list[str | None], list[int]], cut: int, large: bool
) -> None:
    """Text and integers of every asked field, for all rows and for subsets of rows (dense
    with repeats, sparse), equal the reference grammar's, whatever path (learned layout or
    regex) each row takes."""
    texts, rows = data
    arr = _arrow(texts, cut, large)
    _check(texts, None, arr)
    _check(texts, rows, arr)
    _check(texts, list(range(0, len(texts), 4)), arr)  # sparse rows: copied row by row


def test_extract_values_template_path_at_scale() -> None:
    """Thousands of rows in one layout (the byte path) with damaged rows between them."""
    rng = np.random.default_rng(7)
    texts: list[str | None] = []
    for i in range(5000):
        k = int(rng.integers(0, 40))
        if k == 0:
            texts.append(f"op=share addr=0x{i:x}  nr_pages=1 vm=0 gfn=0x0")  # two spaces
        elif k == 1:
            texts.append(f"op=share addr={i} nr_pages=-1 vm=0 gfn=0x0 extra=1")
        elif k == 2:
            texts.append(None)
        else:
            big = int(rng.integers(0, 1 << 62)) * int(rng.integers(1, 4))
            texts.append(f"op=share addr={big:#x} nr_pages={i} vm={big} gfn=0x{i:X}")
    arr = _arrow(texts, 1234, False)
    _check(texts, None, arr)
    _check(texts, list(rng.integers(0, len(texts), 3000)), arr)
    _check(texts, list(range(3, len(texts), 7)), arr)  # sparse rows: copied row by row


def test_reference_model_is_strict() -> None:
    """The models themselves: a test of a fast path is only as good as its reference."""
    assert ref_uint("0x") == (0, False)
    assert ref_uint("0x" + "f" * 16) == ((1 << 64) - 1, True)
    assert ref_uint("0x" + "f" * 17) == (0, False)
    assert ref_uint(str(1 << 64)) == (0, False)
    assert ref_uint("-1") == ((1 << 64) - 1, True)
    assert ref_field("vm_id=3 vm=4", "vm") == "4"
    assert ref_field("(f+0x0/0x8) a=1,b=2", "b") == "2"
    assert ref_field('x: "a b"', "x") == "a b"
    assert ref_field("xa=1", "a") is None


@pytest.mark.parametrize("large", [False, True])
def test_extract_values_empty(large: bool) -> None:
    kind = pa.large_string() if large else pa.string()
    got = extract_values(pa.array([], kind), None, ["a"], ["a"])
    assert got.text["a"].to_pylist() == [] and got.uint["a"][0].tolist() == []
