"""Encode descriptors from named fields, through the same Construct schemas that decode them.

:func:`build_descriptor` is the inverse of :func:`s2trace.decode.decode`: every field is put
into the schema's container and Construct builds the bytes, so an encoding error in a layout
shows up in both directions (the tests round-trip builder -> decoder -> builder).  The
dump builder of :mod:`s2trace.walk.build` and the ``s2trace build`` command use it.
"""

from __future__ import annotations

import struct
from typing import Any

from s2trace.arch.attributes import S2AP, SH, XN, memattr_code
from s2trace.arch.geometry import Geometry, bits
from s2trace.arch.schema import kind_schema
from s2trace.errors import InputError
from s2trace.pkvm.profiles import Profile, get_profile

__all__ = ["build_descriptor"]


def _blank(schema: Any) -> dict[str, Any]:
    """Every field of a layout set to zero."""
    inner = schema.subcon.subcon  # ByteSwapped -> Bitwise -> Struct
    return {sc.name: 0 for sc in inner.subcons if sc.name}


def _choice(value: str | int, table: tuple[str, ...], what: str) -> int:
    if isinstance(value, int):
        if not 0 <= value < len(table):
            raise InputError(f"{what} {value}: expected 0..{len(table) - 1}")
        return value
    key = value.strip()
    for i, name in enumerate(table):
        if name.lower() == key.lower():
            return i
    raise InputError(f"{what} {value!r}: expected one of {', '.join(table)}")


def _address_fields(prefix: str, addr: int, lo: int, geometry: Geometry) -> dict[str, int]:
    out = {f"{prefix}_47": bits(addr, 47, lo)}
    if geometry.ds:
        out[f"{prefix}_49_48"] = bits(addr, 49, 48)
        out[f"{prefix}_51_50"] = bits(addr, 51, 50)
    if geometry.lpa:
        out[f"{prefix}_51_48"] = bits(addr, 51, 48)
    return out


def build_descriptor(
    kind: str,
    *,
    level: int = 3,
    geometry: Geometry | None = None,
    profile: Profile | str | None = None,
    fwb: bool = False,
    oa: int | None = None,
    next_table: int | None = None,
    memattr: int | str = "Normal-WB",
    s2ap: int | str = "rw",
    sh: int | str = "inner",
    af: bool = True,
    xn: int | str = 0,
    contiguous: bool = False,
    dbm: bool = False,
    nt: bool = False,
    fnxs: bool = False,
    sw: int = 0,
    pbha: int = 0,
    state: str | None = None,
    owner: str | int | None = None,
    locked: bool = False,
    inv_type: str | int | None = None,
    vm_handle: int = 0,
    gfn: int = 0,
    note: bool = False,
    prot_none: bool = False,
) -> int:
    """The 64-bit descriptor with these fields.

    ``kind`` is ``table``, ``block``, ``page`` or ``invalid``.  Leaves take ``oa`` and the
    attributes (``memattr`` by name or raw value; ``state`` puts a pKVM page state in the
    software bits); tables take ``next_table``; invalid entries take the pKVM annotation
    (``owner``, ``locked``, ``inv_type``, ``vm_handle``/``gfn``, ``note``, ``prot_none``)
    encoded by the profile.  Raises :class:`InputError` for fields that do not fit.
    """
    geometry = geometry or Geometry()
    prof = get_profile(profile) if profile is not None else get_profile()
    if kind not in ("table", "block", "page", "invalid"):
        raise InputError(f"kind {kind!r}: expected table, block, page or invalid")
    if kind == "page" and level != 3:
        raise InputError(f"a page descriptor exists only at level 3, not {level}")
    if kind == "table" and level == 3:
        raise InputError("level 3 holds pages, not tables")
    if kind == "block" and level not in geometry.block_levels:
        raise InputError(
            f"{geometry.label} allows no block at level {level} "
            f"(blocks at {sorted(geometry.block_levels)})"
        )
    schema = kind_schema(geometry, level, kind)
    body = _blank(schema)
    if kind == "invalid":
        raw = prof.encode_invalid(
            owner,
            locked=locked,
            note=note,
            inv_type=inv_type,
            vm_handle=vm_handle,
            gfn=gfn,
            prot_none=prot_none,
        )
        if raw & 1:
            raise InputError("the annotation sets bit 0: it would not be an invalid entry")
        body["software"] = raw >> 1
    elif kind == "table":
        if next_table is None:
            raise InputError("a table descriptor needs next_table")
        geometry.split_address(next_table, level, leaf=False)  # validates alignment and size
        body.update(_address_fields("nlta", next_table, geometry.granule.shift, geometry))
        body.update(valid=1, type=1)
    else:
        if oa is None:
            raise InputError(f"a {kind} descriptor needs oa")
        geometry.split_address(oa, level, leaf=True)
        lo = geometry.shift(level) if kind == "block" else geometry.granule.shift
        body.update(_address_fields("oa", oa, lo, geometry))
        if state is not None:
            sw |= prof.encode_state(state) >> 55
        if not 0 <= sw < 16 or not 0 <= pbha < 16:
            raise InputError("sw and pbha are 4-bit fields (0..15)")
        mem = memattr if isinstance(memattr, int) else _memattr(memattr, fwb)
        if not 0 <= mem < 16:
            raise InputError(f"memattr {mem}: expected 0..15")
        body.update(
            valid=1,
            type=1 if kind == "page" else 0,
            memattr=mem,
            s2ap=_choice(s2ap, S2AP, "s2ap"),
            af=int(af),
            fnxs=int(fnxs),
            contiguous=int(contiguous),
            dbm=int(dbm),
            xn=_choice(xn, XN, "xn"),
            sw=sw,
            pbha=pbha,
        )
        if not geometry.ds:
            body["sh"] = _choice(sh, SH, "sh")
        if kind == "block":
            body["nt"] = int(nt)
    data = schema.build(body)
    return struct.unpack("<Q", data)[0]


def _memattr(name: str, fwb: bool) -> int:
    try:
        return memattr_code(name, fwb)
    except ValueError as exc:
        raise InputError(str(exc)) from None
