"""Engine 2: decode whole uint64 arrays of descriptors with numpy.

Same fields as the Construct engine (:mod:`s2trace.decode.construct_engine`), computed with
whole-array bit operations and small lookup tables, and required to agree with it bit for bit
(the test suite runs every decode test on both engines).  Two entry points:

* :func:`decode_ownership` -- what a walk needs (kind, address, owner, page state) as numpy
  arrays of small integer codes: the fast path;
* :func:`decode_array` -- every field, as a DataFrame with the ``descriptors`` schema.

How it stays fast: the 64-bit words are read once into two narrow copies (bits 15:0 and bits
63:48), where almost every field lives; per-kind decisions are lookup tables indexed by the
kind code (``np.take``), never boolean-mask assignments; category columns are built from
integer codes (``-1`` = not applicable) without validation passes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from s2trace.arch.attributes import KINDS, S2AP, SH, XN, memattr_names
from s2trace.arch.geometry import Geometry, Granule, field_mask
from s2trace.columns import DESCRIPTOR
from s2trace.errors import InputError
from s2trace.pkvm.profiles import Profile, get_profile

__all__ = [
    "KIND_CODE",
    "OwnershipCodes",
    "as_descriptors",
    "decode_array",
    "decode_columns",
    "decode_fields",
    "decode_kinds",
    "decode_ownership",
    "res0_masks",
]

KIND_CODE = {name: i for i, name in enumerate(KINDS)}
_TABLE, _BLOCK, _PAGE, _INVALID, _RESERVED = range(5)
_LEAVES = (_BLOCK, _PAGE)
_U64 = np.uint64
_ALL = (1 << 64) - 1


def as_descriptors(values: object) -> np.ndarray:
    """A contiguous uint64 array from any array-like of descriptors."""
    arr = np.asarray(values)
    if arr.dtype != np.uint64:
        if arr.dtype.kind not in "iu":
            raise InputError(f"descriptors must be integers, not {arr.dtype}")
        if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
            raise InputError("descriptors must not be negative")
        arr = arr.astype(np.uint64)
    return np.ascontiguousarray(arr.reshape(-1))


def res0_masks(geometry: Geometry, level: int) -> dict[str, int]:
    """RES0 bits of each kind at ``level`` (Arm ARM D8.3, derived independently of the
    Construct layouts, which the tests compare against)."""
    g = geometry.granule
    common = field_mask(50, 50) | (0 if geometry.ds else field_mask(49, 48))
    low_12 = 0 if geometry.lpa else field_mask(15, 12)
    page_low = {Granule.K4: 0, Granule.K16: field_mask(13, 12), Granule.K64: low_12}[g]
    block_low = field_mask(geometry.shift(level) - 1, 17) | low_12
    return {
        "table": field_mask(63, 59) | common | page_low,
        "block": common | block_low,
        "page": common | page_low,
        "invalid": 0,
        "reserved": 0,
    }


def _per_kind(values: dict[str, int], dtype: type) -> np.ndarray:
    return np.array([values.get(k, 0) for k in KINDS], dtype=dtype)


@dataclass(frozen=True, slots=True)
class _Tables:
    """Lookup tables for one (geometry, level, profile): built once per call, tiny."""

    kind_by_low2: np.ndarray
    addr_mask: np.ndarray  # uint64 per kind
    valid64: np.ndarray  # all-ones for table/block/page
    leaf: np.ndarray  # bool per kind
    res0: np.ndarray  # uint64 per kind

    @classmethod
    def build(cls, geometry: Geometry, level: int) -> _Tables:
        blocks = level != 3 and level in geometry.block_levels
        kind_by_low2 = np.array(
            [_INVALID, _BLOCK if blocks else _RESERVED, _INVALID, _PAGE if level == 3 else _TABLE],
            dtype=np.int8,
        )
        page_mask = geometry.address_mask(level, leaf=False)
        masks = {"table": page_mask, "page": page_mask}
        if blocks:
            masks["block"] = geometry.address_mask(level, leaf=True)
        return cls(
            kind_by_low2=kind_by_low2,
            addr_mask=_per_kind(masks, np.uint64),
            valid64=_per_kind({"table": _ALL, "block": _ALL, "page": _ALL}, np.uint64),
            leaf=_per_kind({"block": 1, "page": 1}, bool),
            res0=_per_kind(res0_masks(geometry, level), np.uint64),
        )


class _Words:
    """The descriptors plus narrow copies of bits 15:0 and 63:48, where most fields live."""

    def __init__(self, raw: np.ndarray) -> None:
        self.raw = raw
        self.lo = raw.astype(np.uint16)
        self._hi: np.ndarray | None = None

    @property
    def hi(self) -> np.ndarray:
        """Bits 63:48 (made when a field there is first read)."""
        if self._hi is None:
            self._hi = (self.raw >> _U64(48)).astype(np.uint16)
        return self._hi

    def field(self, hi: int, lo: int) -> np.ndarray:
        """``FIELD_GET(GENMASK(hi, lo))`` in the narrowest dtype that holds it."""
        width = hi - lo + 1
        if hi <= 15:
            return ((self.lo >> np.uint16(lo)) & np.uint16((1 << width) - 1)).astype(
                np.uint8 if width <= 8 else np.uint16, copy=False
            )
        if lo >= 48:
            return ((self.hi >> np.uint16(lo - 48)) & np.uint16((1 << width) - 1)).astype(
                np.uint8 if width <= 8 else np.uint16, copy=False
            )
        out = self.raw >> _U64(lo)
        if width < 64:
            out &= _U64((1 << width) - 1)
        return out

    def bit(self, n: int) -> np.ndarray:
        return self.field(n, n).astype(bool)


@dataclass(frozen=True, slots=True)
class OwnershipCodes:
    """The fast subset of a decode, aligned with the input.

    ``kind``: int8 codes into :data:`KINDS`; ``addr``: output address of leaves and
    next-table address of tables (0 elsewhere); ``owner``: int16 codes into ``owner_names``
    (-1 = none); ``state``: int8 codes into ``state_names`` (-1 = none); with ``ids=True``,
    ``owner_id`` (uint32) and ``has_id`` (bool: where the id applies).  Every other field comes
    from :func:`decode_array`, or from :func:`decode_fields` given these codes.
    """

    kind: np.ndarray
    addr: np.ndarray
    owner: np.ndarray
    state: np.ndarray
    owner_names: tuple[str, ...]
    state_names: tuple[str, ...]
    #: Raw owner ids and where they apply (``decode_ownership(..., ids=True)`` only).
    owner_id: np.ndarray | None = None
    has_id: np.ndarray | None = None

    def take(self, rows: Any) -> OwnershipCodes:
        """The codes of the descriptors ``rows`` (positions, a mask or a slice)."""

        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[rows]

        return OwnershipCodes(
            self.kind[rows],
            self.addr[rows],
            self.owner[rows],
            self.state[rows],
            self.owner_names,
            self.state_names,
            pick(self.owner_id),
            pick(self.has_id),
        )


def _addresses(w: _Words, kind: np.ndarray, t: _Tables, geometry: Geometry) -> np.ndarray:
    addr = w.raw & np.take(t.addr_mask, kind)
    if geometry.lpa:
        addr |= ((w.raw & _U64(field_mask(15, 12))) << _U64(36)) & np.take(t.valid64, kind)
    elif geometry.ds:
        addr |= ((w.raw & _U64(field_mask(9, 8))) << _U64(42)) & np.take(t.valid64, kind)
    return addr


def _owner_names(profile: Profile, width: int) -> list[str]:
    """Category list: the profile's owners, then ``id:N`` for every other id of the field
    (for fields up to 8 bits), then the mapped owner and ``inaccessible``."""
    names = list(dict.fromkeys(profile.owners.values()))
    if width <= 8:
        names += [f"id:{i}" for i in range(1 << width) if i not in profile.owners]
    for extra in (profile.mapped_owner, "inaccessible"):
        if extra not in names:
            names.append(extra)
    return names


def _state_names(profile: Profile) -> list[str]:
    return list(
        dict.fromkeys([*profile.states.values(), "owned", "unknown", "nopage", "prot_none"])
    )


@dataclass(frozen=True, slots=True)
class _Key:
    """The pKVM-relevant bits of a descriptor packed into one small integer.

    Radix digits, least significant first: owner field, invalid-entry type, zero flag,
    prot-none bit, page-state field, kind.  Every pKVM answer is a function of this key, so
    the profile is compiled once into lookup tables over all keys (a few thousand entries)
    and applied to millions of descriptors with one ``np.take`` each.
    """

    owner_w: int
    type_w: int
    zero: bool
    prot: bool
    state_w: int

    @classmethod
    def of(cls, profile: Profile) -> _Key:
        def width(r: tuple[int, int] | None) -> int:
            return r[0] - r[1] + 1 if r else 0

        return cls(
            owner_w=width(profile.owner_bits),
            type_w=width(profile.type_bits),
            zero=profile.owner_type is not None or not profile.owner_bits,
            prot=profile.prot_none_bit is not None,
            state_w=width(profile.state_bits) if profile.state_source == "pte" else 0,
        )

    @property
    def digits(self) -> list[tuple[str, int]]:
        return [
            ("owner", 1 << self.owner_w),
            ("type", 1 << self.type_w),
            ("zero", 2 if self.zero else 1),
            ("prot", 2 if self.prot else 1),
            ("state", 1 << self.state_w),
            ("kind", len(KINDS)),
        ]

    @property
    def size(self) -> int:
        return int(np.prod([n for _, n in self.digits]))

    def compute(self, w: _Words, kind: np.ndarray, profile: Profile) -> np.ndarray:
        """The key of every descriptor (uint16 when the key space allows)."""
        parts = {"kind": kind}
        if self.owner_w and profile.owner_bits:
            parts["owner"] = w.field(*profile.owner_bits)
        if self.type_w and profile.type_bits:
            parts["type"] = w.field(*profile.type_bits)
        if self.zero:
            parts["zero"] = w.raw == 0
        if self.prot and profile.prot_none_bit is not None:
            parts["prot"] = w.bit(profile.prot_none_bit)
        if self.state_w and profile.state_bits:
            parts["state"] = w.field(*profile.state_bits)
        # The key space is small for every shipped profile: 16-bit arithmetic on narrow
        # arrays is several times cheaper than 64-bit (wide spaces fall back to intp).
        dtype = np.uint16 if self.size <= 1 << 16 else np.intp
        key: np.ndarray | None = None
        scale = 1
        for name, n in self.digits:
            if name in parts:
                digit: np.ndarray = parts[name].astype(dtype)
                if scale != 1:
                    digit *= dtype(scale)
                key = digit if key is None else np.add(key, digit, out=key)
            scale *= n
        assert key is not None  # the kind digit is always present
        return key

    def space(self) -> dict[str, np.ndarray]:
        """Every key's digits, as arrays over the whole key space."""
        grids = np.unravel_index(np.arange(self.size), [n for _, n in self.digits][::-1])
        return dict(zip([name for name, _ in self.digits][::-1], grids, strict=True))


_COMPILED: dict[str, tuple[_Key, dict[str, np.ndarray], list[str], list[str]]] = {}


def _compile(profile: Profile) -> tuple[_Key, dict[str, np.ndarray], list[str], list[str]]:
    """Compiled lookup tables of a profile, cached by the profile's full value."""
    cache_key = repr(profile)
    if cache_key not in _COMPILED:
        _COMPILED[cache_key] = _compile_tables(profile)
    key, tables, names, snames = _COMPILED[cache_key]
    return key, tables, list(names), list(snames)


def _compile_tables(profile: Profile) -> tuple[_Key, dict[str, np.ndarray], list[str], list[str]]:
    """Lookup tables (owner code, owner id, id valid, state code) over the key space.

    The rules, written once as whole-array logic (hyp/pgtable.c, mem_protect.c, nvhe/memory.h;
    docs/kernel-facts.md §KF-2.2 to §KF-2.4, §KF-2.8): valid leaves belong
    to the profile's mapped owner with the PTE page state (or ``unknown`` where the state moved
    to the vmemmap); invalid entries carry the owner field (read only for ``owner_type`` in
    7.1+), zero entries belong to the host, prot-none entries (RFC v3) are inaccessible; an
    invalid entry is ``nopage`` for the host unless the host owns it.
    """
    key = _Key.of(profile)
    wide = key.owner_w > 8
    if wide:  # ids are looked up per distinct value by _wide_annotations
        key = _Key(0, key.type_w, key.zero, key.prot, key.state_w)
    d = key.space()
    kind = d["kind"]
    names = _owner_names(profile, 99 if wide else key.owner_w)
    index = {name: i for i, name in enumerate(names)}
    leaf = (kind == _BLOCK) | (kind == _PAGE)
    invalid = kind == _INVALID
    if profile.owner_bits:
        gated = (
            invalid if profile.owner_type is None else invalid & (d["type"] == profile.owner_type)
        )
    else:
        gated = np.zeros_like(invalid)
    zero = invalid & (d["zero"] == 1) if key.zero else np.zeros_like(invalid)
    prot = invalid & (d["prot"] == 1) if key.prot else np.zeros_like(invalid)
    ids = np.where(gated, d["owner"] if key.owner_w else 0, 0).astype(np.uint32)
    has_id = (gated | zero) & ~prot
    id_names = (
        [profile.owner_name(i) for i in range(1 << key.owner_w)]
        if key.owner_w
        else [profile.owner_name(0)]
    )
    owner = np.array(
        [index.get(id_names[i], -1) if i < len(id_names) else -1 for i in ids], dtype=np.int16
    )
    owner[~has_id] = -1
    owner[prot] = index["inaccessible"]
    mapped = profile.mapped_owner_id
    owner[leaf] = index[profile.mapped_owner]
    if mapped is not None:
        ids[leaf] = mapped
        has_id = has_id | leaf

    snames = _state_names(profile)
    sindex = {name: i for i, name in enumerate(snames)}
    state = np.full(key.size, -1, dtype=np.int8)
    if profile.state_source != "none":
        host = has_id & invalid & (ids == (mapped if mapped is not None else -1))
        if profile.state_source == "pte" and key.state_w:
            state[leaf] = [sindex[profile.state_name(int(v))] for v in d["state"][leaf]]
            state[host] = sindex["owned"]
        else:
            state[leaf] = sindex["unknown"]
            state[host] = sindex["unknown"]
        state[has_id & invalid & ~host] = sindex["nopage"]
    state[prot] = sindex["prot_none"]
    tables = {"owner": owner, "owner_id": ids, "has_id": has_id, "state": state}
    return key, tables, names, snames


def _annotations(
    w: _Words, kind: np.ndarray, profile: Profile
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str], list[str]]:
    """Owner codes, owner ids, id validity, state codes, and their category names."""
    key, tables, names, snames = _compile(profile)
    if profile.owner_bits and key.owner_w == 0:
        return _wide_annotations(w, kind, profile, key, tables, names, snames)
    k = key.compute(w, kind, profile).astype(np.intp)  # one conversion for four lookups
    return (
        np.take(tables["owner"], k),
        np.take(tables["owner_id"], k),
        np.take(tables["has_id"], k),
        np.take(tables["state"], k),
        names,
        snames,
    )


def _wide_annotations(
    w: _Words,
    kind: np.ndarray,
    profile: Profile,
    key: _Key,
    tables: dict[str, np.ndarray],
    names: list[str],
    snames: list[str],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str], list[str]]:
    """Owner fields wider than 8 bits (rfc-v4: bits 63:32): ids are looked up per distinct
    value, everything else through the compiled tables with the owner digit fixed at 0."""
    k = key.compute(w, kind, profile)
    has_id = np.take(tables["has_id"], k)
    state = np.take(tables["state"], k)
    assert profile.owner_bits is not None  # only profiles with an owner field come here
    field = w.field(*profile.owner_bits).astype(np.uint32)
    invalid = kind == _INVALID
    gated = invalid & has_id
    ids = np.where(gated, field, np.take(tables["owner_id"], k))
    values, inverse = np.unique(np.where(gated, field, np.uint32(0)), return_inverse=True)
    index = {n: i for i, n in enumerate(names)}
    lut = np.empty(len(values), dtype=np.int32)
    for i, v in enumerate(values.tolist()):
        name = profile.owner_name(v)
        if name not in index:
            index[name] = len(names)
            names.append(name)
        lut[i] = index[name]
    owner = np.where(gated, lut[inverse], np.take(tables["owner"], k))
    # States of invalid entries depend on the id: the host's id -> owned, others -> nopage.
    if profile.state_source != "none":
        sindex = {n: i for i, n in enumerate(snames)}
        host_state = sindex["owned" if profile.state_source == "pte" else "unknown"]
        mapped = profile.mapped_owner_id
        state = np.where(gated, np.where(ids == mapped, host_state, sindex["nopage"]), state)
    return owner.astype(np.int32), ids, has_id, state.astype(np.int8), names, snames


def _prepare(
    raw: object, geometry: Geometry | None, level: int, profile: Profile | str | None
) -> tuple[np.ndarray, Geometry, Profile]:
    geometry = geometry or Geometry()
    geometry.check_level(level)
    prof = get_profile(profile) if profile is not None else get_profile()
    return as_descriptors(raw), geometry, prof


def decode_ownership(
    raw: object,
    geometry: Geometry | None = None,
    level: int = 3,
    profile: Profile | str | None = None,
    *,
    ids: bool = False,
) -> OwnershipCodes:
    """Kind, address, owner and page state of every descriptor (the walk's fast path);
    ``ids`` adds the raw owner ids (what :func:`decode_fields` needs)."""
    arr, geometry, prof = _prepare(raw, geometry, level, profile)
    t = _Tables.build(geometry, level)
    w = _Words(arr)
    kind = np.take(t.kind_by_low2, w.lo & np.uint16(3))
    addr = _addresses(w, kind, t, geometry)
    key, tables, owner_names, state_names = _compile(prof)
    owner_id = has_id = None
    if prof.owner_bits and key.owner_w == 0:
        owner, owner_id, has_id, state, owner_names, state_names = _wide_annotations(
            w, kind, prof, key, tables, owner_names, state_names
        )
    else:
        k = key.compute(w, kind, prof)
        if ids:  # one index conversion for four lookups
            k = k.astype(np.intp)
        owner, state = np.take(tables["owner"], k), np.take(tables["state"], k)
        if ids:
            owner_id, has_id = np.take(tables["owner_id"], k), np.take(tables["has_id"], k)
    if not ids:
        owner_id = has_id = None
    return OwnershipCodes(
        kind, addr, owner, state, tuple(owner_names), tuple(state_names), owner_id, has_id
    )


@dataclass(frozen=True, slots=True)
class KindCodes:
    """Kind codes, and the next-table address of table entries (0 elsewhere): what a
    traversal needs to follow tables."""

    kind: np.ndarray
    addr: np.ndarray


def decode_kinds(raw: object, geometry: Geometry | None = None, level: int = 3) -> KindCodes:
    """Kind of every descriptor and next-table address of the tables, nothing else: for walks
    that only look at the raw values (the profile probe of :func:`s2trace.walk.walker.walk`)."""
    arr, geometry, _ = _prepare(raw, geometry, level, None)
    t = _Tables.build(geometry, level)
    kind = np.take(t.kind_by_low2, (arr & _U64(3)).astype(np.intp))
    addr = np.zeros(arr.shape[0], dtype=np.uint64)
    tables = np.flatnonzero(kind == _TABLE)
    if tables.size:
        addr[tables] = _addresses(_Words(arr[tables]), kind[tables], t, geometry)
    return KindCodes(kind, addr)


# -- the full DataFrame ------------------------------------------------------------------------
_DTYPES: dict[tuple[str, ...], pd.CategoricalDtype] = {}


def _cat(codes: np.ndarray, names: list[str] | tuple[str, ...]) -> pd.Categorical:
    """Categorical from integer codes; the dtype (and its validation) is built once per name
    list, since building it costs more than the codes themselves."""
    key = tuple(names)
    dtype = _DTYPES.get(key)
    if dtype is None:
        dtype = _DTYPES.setdefault(key, pd.CategoricalDtype(pd.Index(list(key), dtype="str")))
    return pd.Categorical.from_codes(codes, dtype=dtype, validate=False)


def _lut_cat(values: np.ndarray, table: tuple[str, ...], absent: np.ndarray) -> pd.Categorical:
    """Category column from a raw field and its name table; ``absent`` is int8, -1 where the
    field does not apply (<NA>) and 0 elsewhere.  Distinct names: the raw value is the code."""
    names = list(dict.fromkeys(table))
    if len(names) == len(table) and len(table) <= 127:
        return _cat(values.astype(np.int8) | absent, names)
    lut = np.array([names.index(t) for t in table], dtype=np.int8)
    return _cat(np.take(lut, values.astype(np.intp)) | absent, names)


def _absent(kind: np.ndarray, kinds: tuple[int, ...]) -> np.ndarray:
    """int8 per row: 0 where the row's kind is one of ``kinds``, -1 elsewhere (a bit test on
    the narrow kind codes: cheaper than a lookup)."""
    bits = np.uint8(sum(1 << k for k in kinds))
    present = (np.left_shift(np.uint8(1), kind.astype(np.uint8)) & bits) != 0
    return present.view(np.int8) - np.int8(1)


def _nullable(values: np.ndarray, absent: np.ndarray, dtype: str) -> object:
    """Nullable pandas array: ``values``, <NA> where ``absent``."""
    if dtype == "boolean":
        return pd.arrays.BooleanArray(values.astype(bool, copy=False), absent)
    return pd.arrays.IntegerArray(values.astype(np.dtype(dtype.lower()), copy=False), absent)


def _drop_unused(cat: pd.Categorical) -> pd.Categorical:
    """Remove categories no row uses (one bincount and one lookup over the codes; two
    narrow passes when every row has the same category, as in most chunks of a map)."""
    codes = cat.codes
    if codes.size and len(cat.categories) > 1:
        lo, hi = int(codes.min()), int(codes.max())
        if lo == hi and lo >= 0:
            return _cat(np.zeros(codes.size, np.int8), [cat.categories[lo]])
    ucodes: np.ndarray = (
        codes.view(np.uint8 if codes.dtype.itemsize == 1 else np.uint16)
        if codes.dtype.itemsize <= 2
        else codes
    )
    n = len(cat.categories)
    used = np.bincount(ucodes, minlength=n)[:n] > 0
    if used.all():
        return cat
    keep = np.flatnonzero(used)
    remap = np.full(int(ucodes.max()) + 1 if ucodes.size else 1, -1, dtype=codes.dtype)
    remap[keep] = np.arange(len(keep), dtype=codes.dtype)
    return _cat(np.take(remap, ucodes), list(cat.categories[keep]))


def decode_array(
    raw: object,
    geometry: Geometry | None = None,
    level: int = 3,
    profile: Profile | str | None = None,
    fwb: bool = False,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Every field of every descriptor, as a DataFrame with the ``descriptors`` schema.

    ``columns`` limits the result to those columns (in schema order), computing only them.
    """
    frame = pd.DataFrame(decode_columns(raw, geometry, level, profile, fwb, columns), copy=False)
    if columns is None:
        DESCRIPTOR.check(frame)
    return frame


def decode_columns(
    raw: object,
    geometry: Geometry | None = None,
    level: int = 3,
    profile: Profile | str | None = None,
    fwb: bool = False,
    columns: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The columns :func:`decode_array` puts in its DataFrame, as arrays by name (numpy or
    pandas extension arrays), without the DataFrame."""
    arr, geometry, prof = _prepare(raw, geometry, level, profile)
    wanted = _wanted(columns)
    w = _Words(arr)
    t = _Tables.build(geometry, level)
    kind = np.take(t.kind_by_low2, (w.lo & np.uint16(3)).astype(np.intp)).astype(np.intp)
    return _columns(w, kind, geometry, level, prof, fwb, wanted)


def decode_fields(
    raw: object,
    codes: OwnershipCodes,
    geometry: Geometry | None = None,
    level: int = 3,
    profile: Profile | str | None = None,
    fwb: bool = False,
    columns: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The columns of :func:`decode_array` (as arrays: numpy, or pandas' categorical and
    nullable arrays), for descriptors already decoded by ``decode_ownership(raw, geometry,
    level, profile, ids=True)`` into ``codes``: kinds, addresses and annotations are taken
    from the codes, not decoded again (the walk's map).  The values are those of
    :func:`decode_array`."""
    arr, geometry, prof = _prepare(raw, geometry, level, profile)
    if codes.owner_id is None or codes.has_id is None:
        raise ValueError("decode_fields needs codes from decode_ownership(..., ids=True)")
    if len(codes.kind) != len(arr):
        raise ValueError("decode_fields: codes and descriptors differ in length")
    ann = (
        codes.owner,
        codes.owner_id,
        codes.has_id,
        codes.state,
        list(codes.owner_names),
        list(codes.state_names),
    )
    return _columns(
        _Words(arr),
        codes.kind,
        geometry,
        level,
        prof,
        fwb,
        _wanted(columns),
        addr=codes.addr,
        ann=ann,
    )


def _wanted(columns: Sequence[str] | None) -> list[str]:
    if columns is None:
        return DESCRIPTOR.names
    unknown = set(columns) - set(DESCRIPTOR.names)
    if unknown:
        raise ValueError(f"unknown descriptor columns: {sorted(unknown)}")
    return [c for c in DESCRIPTOR.names if c in set(columns)]


def _columns(
    w: _Words,
    kind: np.ndarray,
    geometry: Geometry,
    level: int,
    prof: Profile,
    fwb: bool,
    wanted: list[str],
    addr: np.ndarray | None = None,
    ann: tuple[Any, ...] | None = None,
) -> dict[str, Any]:
    """The ``wanted`` columns, each computed once and only when asked for; ``addr`` and
    ``ann`` (:func:`_annotations`' answer) when they are known already."""
    arr = w.raw
    n = arr.shape[0]
    t = _Tables.build(geometry, level)
    absent_leaf = _absent(kind, _LEAVES)
    not_leaf = absent_leaf != 0
    lazy: dict[str, Any] = {}
    if addr is not None:
        lazy["addr"] = addr
    if ann is not None:
        lazy["ann"] = ann

    def once(name: str, fn: Callable[[], Any]) -> Any:
        if name not in lazy:
            lazy[name] = fn()
        return lazy[name]

    def address() -> np.ndarray:
        return once("addr", lambda: _addresses(w, kind, t, geometry))

    def annotations() -> tuple[Any, ...]:
        return once("ann", lambda: _annotations(w, kind, prof))

    def inv() -> dict[str, object]:
        inv_type = w.field(*prof.type_bits) if prof.type_bits else None
        return once(
            "inv",
            lambda: _invalid_columns(w, kind, annotations()[1], annotations()[2], inv_type, prof),
        )

    memattr = lambda: once("memattr", lambda: w.field(5, 2))  # noqa: E731
    xn = lambda: once("xn", lambda: w.field(54, 53))  # noqa: E731
    build: dict[str, Callable[[], object]] = {
        "raw": lambda: arr,
        "level": lambda: np.full(n, level, dtype=np.int8),
        "granule": lambda: _cat(np.zeros(n, dtype=np.int8), [geometry.granule.label]),
        "kind": lambda: _cat(kind.astype(np.int8, copy=False), KINDS),
        "oa": lambda: _nullable(address(), not_leaf, "UInt64"),
        "next_table": lambda: _nullable(address(), kind != _TABLE, "UInt64"),
        "size": lambda: np.full(n, geometry.span(level), dtype=np.uint64),
        "memattr": lambda: _nullable(memattr(), not_leaf, "UInt8"),
        "memattr_name": lambda: _lut_cat(memattr(), memattr_names(fwb), absent_leaf),
        "s2ap": lambda: _lut_cat(w.field(7, 6), S2AP, absent_leaf),
        "sh": lambda: _lut_cat(
            w.field(9, 8), SH, _absent(kind, ()) if geometry.ds else absent_leaf
        ),
        "af": lambda: _nullable(w.bit(10), not_leaf, "boolean"),
        "nt": lambda: _nullable(w.bit(16), kind != _BLOCK, "boolean"),
        "dbm": lambda: _nullable(w.bit(51), not_leaf, "boolean"),
        "contiguous": lambda: _nullable(w.bit(52), not_leaf, "boolean"),
        "xn": lambda: _nullable(xn(), not_leaf, "UInt8"),
        "xn_name": lambda: _lut_cat(xn(), XN, absent_leaf),
        "sw": lambda: _nullable(w.field(58, 55), not_leaf, "UInt8"),
        "pbha": lambda: _nullable(w.field(62, 59), not_leaf, "UInt8"),
        "res0": lambda: arr & np.take(t.res0, kind),
        "owner": lambda: _drop_unused(_cat(annotations()[0], annotations()[4])),
        "owner_id": lambda: _nullable(annotations()[1], ~annotations()[2], "UInt32"),
        "page_state": lambda: _cat(annotations()[3], annotations()[5]),
        "fnxs": lambda: _nullable(w.bit(11), not_leaf, "boolean"),
    }

    def from_inv(name: str) -> Callable[[], object]:
        return lambda: inv()[name]

    for name in ("locked", "inv_type", "vm_handle", "gfn", "note"):
        build[name] = from_inv(name)
    return {c: build[c]() for c in wanted}


def _invalid_columns(
    w: _Words,
    kind: np.ndarray,
    ids: np.ndarray,
    has_id: np.ndarray,
    inv_type: np.ndarray | None,
    prof: Profile,
) -> dict[str, object]:
    invalid = kind == _INVALID
    n = invalid.shape[0]
    none = np.ones(n, dtype=bool)
    not_invalid = ~invalid
    if prof.lock_bit is not None:
        locked = _nullable(w.bit(prof.lock_bit), not_invalid, "boolean")
    elif prof.lock_type is not None and inv_type is not None:
        locked = _nullable(inv_type == prof.lock_type, not_invalid, "boolean")
    else:
        locked = _nullable(np.zeros(n, bool), none, "boolean")
    if inv_type is not None and prof.type_bits is not None:
        top = 1 << (prof.type_bits[0] - prof.type_bits[1] + 1)
        inv_type_col = _lut_cat(
            inv_type, tuple(prof.type_name(v) for v in range(top)), _absent(kind, (_INVALID,))
        )
    else:
        inv_type_col = _cat(np.full(n, -1, dtype=np.int8), [])
    guest_id = prof.guest_owner
    if prof.handle_bits and prof.gfn_bits and guest_id is not None:
        not_guest = ~(invalid & has_id & (ids == np.uint32(guest_id)))
        handle = _nullable(w.field(*prof.handle_bits), not_guest, "UInt16")
        gfn = _nullable(w.field(*prof.gfn_bits), not_guest, "UInt64")
    else:
        handle = _nullable(np.zeros(n, np.uint16), none, "UInt16")
        gfn = _nullable(np.zeros(n, np.uint64), none, "UInt64")
    note = (
        _nullable(w.bit(prof.note_bit), not_invalid, "boolean")
        if prof.note_bit is not None
        else _nullable(np.zeros(n, bool), none, "boolean")
    )
    return {
        "locked": locked,
        "inv_type": inv_type_col,
        "vm_handle": handle,
        "gfn": gfn,
        "note": note,
    }
