"""Construct schemas of stage-2 descriptors: parse **and** build, every bit accounted for.

``descriptor_schema(geometry, level)`` returns a Construct that parses 8 little-endian bytes
into a container ``{kind, body}``, where ``body`` holds every field of that kind, named after
the Arm ARM, and builds the same bytes back: ``build(parse(x)) == x`` for every 64-bit ``x``
(tested over all granules, levels and DS settings).  Fields that the architecture reserves are
kept as ``res0_*`` fields so damage is visible, and bits the hardware ignores as ``ignored_*``.

Layouts (Arm ARM D8.3, kvm_pgtable.h; docs/kernel-facts.md §KF-1.3 to
§KF-1.6), most significant field first:

* block / page: ignored[63] PBHA[62:59] SW[58:55] XN[54:53] Contiguous[52] DBM[51] RES0[50]
  OA[49:48] (DS) or RES0, OA[47:n], then for blocks RES0 down to 17, nT[16], and OA[51:48]
  in [15:12] with 64K+LPA (else RES0 or, for 4K pages, OA); FnXS[11] AF[10] SH[9:8] (OA[51:50]
  with DS) S2AP[7:6] MemAttr[5:2] type[1] valid[0].
* table: RES0[63:59] ignored[58:51] RES0[50] NLTA[49:48] (DS) NLTA[47:granule] (NLTA[51:48] in
  [15:12] with 64K+LPA) ignored[11:10] ignored or NLTA[51:50] (DS) in [9:8] ignored[7:2].
* invalid: bits 63:1 are free for software (pKVM annotations live there).
* reserved: a valid bit with an encoding the level does not allow (bit 1 clear at level 3,
  a block where the granule allows none): kept whole.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from construct import (
    BitsInteger,
    BitStruct,
    ByteSwapped,
    Computed,
    Construct,
    Flag,
    Padding,
    Peek,
    Struct,
    Switch,
    this,
)

from s2trace.arch.geometry import Geometry, Granule

__all__ = ["classify", "descriptor_schema", "kind_schema"]


def classify(raw: int, geometry: Geometry, level: int) -> str:
    """Kind of a descriptor from bits[1:0] and the level (Arm ARM D8.3; §KF-1.1)."""
    if not raw & 1:
        return "invalid"
    if raw & 2:
        return "page" if level == 3 else "table"
    if level != 3 and level in geometry.block_levels:
        return "block"
    return "reserved"


def _field(name: str, width: int) -> Construct | None:
    if width <= 0:
        return None
    return name / (Flag if width == 1 else BitsInteger(width))


def _bitstruct(*fields: Construct | None) -> Construct:
    present = [f for f in fields if f is not None]
    width = sum(f.sizeof() for f in present)  # BitStruct members size in bits
    assert width == 64, f"descriptor layout covers {width} bits, not 64"
    return ByteSwapped(BitStruct(*present))


def _leaf(geometry: Geometry, level: int, block: bool) -> Construct:
    oa_lo = geometry.shift(level) if block else geometry.granule.shift
    low: list[Construct | None] = []
    if block:
        # Bits oa_lo-1 .. 17 are RES0, bit 16 is nT, bits 15:12 are OA[51:48] (64K LPA) or RES0.
        low += [_field("res0_lo", oa_lo - 17), _field("nt", 1)]
        low.append(_field("oa_51_48", 4) if geometry.lpa else _field("res0_15_12", 4))
    elif geometry.granule is Granule.K16:
        low.append(_field("res0_13_12", 2))
    elif geometry.granule is Granule.K64:
        low.append(_field("oa_51_48", 4) if geometry.lpa else _field("res0_15_12", 4))
    return _bitstruct(
        _field("ignored_63", 1),
        _field("pbha", 4),
        _field("sw", 4),
        _field("xn", 2),
        _field("contiguous", 1),
        _field("dbm", 1),
        _field("res0_50", 1),
        _field("oa_49_48", 2) if geometry.ds else _field("res0_49_48", 2),
        _field("oa_47", 48 - oa_lo),
        *low,
        _field("fnxs", 1),
        _field("af", 1),
        _field("oa_51_50", 2) if geometry.ds else _field("sh", 2),
        _field("s2ap", 2),
        _field("memattr", 4),
        _field("type", 1),
        _field("valid", 1),
    )


def _table(geometry: Geometry) -> Construct:
    g = geometry.granule
    low: list[Construct | None] = []
    if g is Granule.K16:
        low.append(_field("res0_13_12", 2))
    elif g is Granule.K64:
        low.append(_field("nlta_51_48", 4) if geometry.lpa else _field("res0_15_12", 4))
    return _bitstruct(
        _field("res0_63_59", 5),
        _field("ignored_58_51", 8),
        _field("res0_50", 1),
        _field("nlta_49_48", 2) if geometry.ds else _field("res0_49_48", 2),
        _field("nlta_47", 48 - g.shift),
        *low,
        _field("ignored_11_10", 2),
        _field("nlta_51_50", 2) if geometry.ds else _field("ignored_9_8", 2),
        _field("ignored_7_2", 6),
        _field("type", 1),
        _field("valid", 1),
    )


_INVALID = _bitstruct(_field("software", 63), _field("valid", 1))
_RESERVED = _bitstruct(_field("payload", 62), _field("type", 1), _field("valid", 1))


@cache
def kind_schema(geometry: Geometry, level: int, kind: str) -> Construct:
    """The 64-bit layout of one descriptor kind at ``level`` (no dispatch)."""
    geometry.check_level(level)
    if kind == "table":
        return _table(geometry)
    if kind in ("block", "page"):
        return _leaf(geometry, level, block=kind == "block")
    if kind == "invalid":
        return _INVALID
    if kind == "reserved":
        return _RESERVED
    raise ValueError(f"unknown descriptor kind {kind!r}")


_LOW_BITS = ByteSwapped(BitStruct(Padding(62), "type" / Flag, "valid" / Flag))


@cache
def descriptor_schema(geometry: Geometry, level: int) -> Construct:
    """Schema of any descriptor at ``level``: ``{kind, body}``, dispatching on bits[1:0].

    Parsing peeks at bits[1:0] to choose the kind; building uses the ``kind`` given.
    """
    geometry.check_level(level)
    cases = {k: kind_schema(geometry, level, k) for k in _kinds_at(geometry, level)}

    def _kind(ctx: Any) -> str:
        if ctx._building:
            return ctx.kind
        low = ctx._low
        return classify(int(low.valid) | (int(low.type) << 1), geometry, level)

    return Struct(
        "_low" / Peek(_LOW_BITS),
        "kind" / Computed(_kind),
        "body" / Switch(this.kind, cases),
    )


def _kinds_at(geometry: Geometry, level: int) -> tuple[str, ...]:
    kinds = ["invalid", "reserved"]
    kinds.append("page" if level == 3 else "table")
    if level != 3 and level in geometry.block_levels:
        kinds.append("block")
    return tuple(kinds)
