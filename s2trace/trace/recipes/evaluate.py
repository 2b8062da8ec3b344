"""Evaluating a recipe over field values: conditions, labels, page ranges, VM and GFN.

Each function takes the values of the fields a recipe reads, one per event row
(:class:`.related.Value`: text where the recipe compares or labels with a field, integers where
it computes with one, as :func:`fields_read` says), and computes a TRANSITIONS column for all
rows at once, with a validity mask where a value can be missing or malformed.  Integers are
those of :func:`.field_access.parse_uint`, decoded once per field and batch straight from the
field bytes (:func:`.field_access.extract_values`), never per row in Python.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow.compute as pc

from s2trace.pkvm.rules import COMPONENTS, OPS
from s2trace.trace.recipes.model import RECIPE_OPS, Condition, Recipe, Ref
from s2trace.trace.recipes.related import Value

__all__ = [
    "BAD",
    "NONE",
    "OP_CODES",
    "address",
    "condition_holds",
    "fields_read",
    "gfns",
    "labels",
    "range_stop",
    "vm_ids",
]

NONE, BAD = -1, -2
#: recipe operation index -> index in OPS (the TRANSITIONS categories)
OP_CODES = tuple(OPS.index(op) for op in RECIPE_OPS)


def fields_read(
    r: Recipe, conditions: Sequence[Condition] | None = None
) -> tuple[set[Ref], set[Ref]]:
    """The fields the functions below read as text and as integers, for recipe ``r`` (or,
    given ``conditions``, for those conditions only): (text refs, integer refs).

    Integers: the page range, VM and GFN fields, and numeric conditions; text: text and regex
    conditions and ``$field`` labels.  A field in neither (none today) is read as text, which
    every use accepts (:meth:`.related.Value.uint` parses text when no integer was read).
    """
    conds = (
        list(conditions)
        if conditions is not None
        else [*r.where, *(c for o in r.when for c in o.where)]
    )
    uint = {c.ref for c in conds if _numeric(c)}
    text = {c.ref for c in conds if not _numeric(c)}
    if conditions is None:
        uint |= {
            ref
            for ref in (r.addr, r.end, r.size, r.nr_pages, r.order, r.vm, r.gfn)
            if ref is not None
        }
        specs = [r.op, r.initiator, r.completer, *(v for o in r.when for v in o.values.values())]
        text |= {
            Ref.parse(v[1:], r.name) for v in specs if isinstance(v, str) and v.startswith("$")
        }
        text |= set(r.refs()) - uint
    return text, uint


def _numeric(c: Condition) -> bool:
    """Whether :func:`condition_holds` reads the condition's field as an integer."""
    return c.op not in ("=~", "!~") and c.number is not None


def labels(
    r: Recipe, values: Mapping[Ref, Value], n: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Codes of op (in RECIPE_OPS), initiator and completer (in COMPONENTS) per row, after the
    ``when`` overrides (first match wins), and the counted flags.  NONE: no value, BAD: a
    value outside the vocabulary."""
    vocab = {"op": RECIPE_OPS, "initiator": COMPONENTS, "completer": COMPONENTS}
    codes = {k: _codes(getattr(r, k), values, n, vocab[k]) for k in vocab}
    counted = np.full(n, r.counted)
    chosen = np.zeros(n, bool)
    for o in r.when:
        hit = ~chosen
        for c in o.where:
            hit &= condition_holds(c, values[c.ref])
        for k, v in o.values.items():
            if k == "counted":
                counted = np.where(hit, bool(v), counted)
            else:
                codes[k] = np.where(hit, _codes(v, values, n, vocab[k]), codes[k])
        chosen |= hit
    return codes, counted


def _codes(
    spec: str | None, values: Mapping[Ref, Value], n: int, vocab: Sequence[str]
) -> np.ndarray:
    """A literal label for every row, or a field's values (``$name``), as codes in
    ``vocab``; the field's distinct values are looked up once each."""
    if spec is None:
        return np.full(n, NONE, np.int8)
    if not spec.startswith("$"):
        return np.full(n, vocab.index(spec), np.int8)
    enc = values[Ref.parse(spec[1:], "")].text.dictionary_encode()
    lut = [vocab.index(v) if v in vocab else BAD for v in enc.dictionary.to_pylist()]
    lut_arr = np.array([*lut, NONE], np.int8)
    idx = pc.fill_null(enc.indices, len(lut)).to_numpy(zero_copy_only=False)
    return lut_arr[idx]


def condition_holds(c: Condition, field: Value) -> np.ndarray:
    """Where condition ``c`` holds (false where the value is absent)."""
    if _numeric(c):
        num, ok = field.uint()  # ok: present and an integer
        lit = np.uint64(c.number or 0)  # (_numeric: never None here)
        res = {
            "==": num == lit,
            "!=": num != lit,
            "&": (num & lit) != 0,
            "!&": (num & lit) == 0,
        }[c.op]
        return ok & res
    value = field.text
    present = value.is_valid().to_numpy(zero_copy_only=False)
    if c.op in ("=~", "!~"):
        m = pc.fill_null(pc.match_substring_regex(value, c.text), False)
        m = m.to_numpy(zero_copy_only=False)
        return present & (m if c.op == "=~" else ~m)
    text = pc.fill_null(pc.equal(value, c.text), False).to_numpy(zero_copy_only=False)
    return present & (text if c.op == "==" else ~text)


def address(
    value: Value, space: str, linear_map: tuple[int, int] | None, page: int
) -> tuple[np.ndarray, np.ndarray]:
    """Physical address from a field in ``space``: (address, valid)."""
    raw, ok = value.uint()
    if space == "pfn":
        shift = np.uint64(page.bit_length() - 1)
        return raw << shift, ok & (raw < (np.uint64(1) << (np.uint64(64) - shift)))
    if space == "linear":
        if linear_map is None:
            return raw, np.zeros(len(raw), bool)
        va, pa_ = (np.uint64(x) for x in linear_map)
        return raw - va + pa_, ok & (raw >= va)
    return raw, ok


def range_stop(
    r: Recipe,
    values: Mapping[Ref, Value],
    addr: np.ndarray,
    start: np.ndarray,
    linear_map: tuple[int, int] | None,
    page: int,
) -> tuple[np.ndarray, np.ndarray]:
    """End (exclusive, page aligned) of the range: (stop, valid)."""
    mask = np.uint64(page - 1)
    pg = np.uint64(page)
    if r.end is not None:
        end, ok = address(values[r.end], r.space, linear_map, page)
        return (end + mask) & ~mask, ok & (end >= addr)
    if r.size is not None:
        size, ok = values[r.size].uint()
        return (addr + size + mask) & ~mask, ok & (size < np.uint64(1 << 48))
    if r.order is not None:
        order, ok = values[r.order].uint()
        ok &= order < np.uint64(32)
        return start + (pg << np.minimum(order, np.uint64(31))), ok
    count = np.full(len(addr), np.uint64(r.pages or 0))
    ok = np.full(len(addr), r.pages is not None)
    if r.nr_pages is not None:
        num, num_ok = values[r.nr_pages].uint()
        count = np.where(num_ok, num, count)
        ok = num_ok | ok
        ok &= count < np.uint64(1 << 36)
    return start + count * pg, ok


def vm_ids(
    r: Recipe, values: Mapping[Ref, Value], linear_map: tuple[int, int] | None, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """The VM of each row from the ``vm`` field in ``vm_space`` (``vm_none`` and values that
    do not fit an int64 are invalid): (vm, valid)."""
    if r.vm is None:
        return np.zeros(n, np.int64), np.zeros(n, bool)
    raw, ok = values[r.vm].uint()
    if r.vm_space == "linear":
        if linear_map is None:
            return np.zeros(n, np.int64), np.zeros(n, bool)
        va, pa_ = (np.uint64(x) for x in linear_map)
        ok &= raw >= va
        raw = raw - va + pa_
    if r.vm_none is not None:
        ok &= raw != np.uint64(r.vm_none)
    ok &= raw < np.uint64(1 << 63)
    return raw.astype(np.int64), ok


def gfns(
    r: Recipe, values: Mapping[Ref, Value], page: int, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """The guest frame number of each row from the ``gfn`` field (an IPA when ``gfn_space`` is
    ``ipa``): (gfn, valid)."""
    if r.gfn is None:
        return np.zeros(n, np.uint64), np.zeros(n, bool)
    raw, ok = values[r.gfn].uint()
    if r.gfn_space == "ipa":
        raw = raw >> np.uint64(page.bit_length() - 1)
    return raw, ok
