"""Engine 1: decode one descriptor through the Construct schemas into a typed record.

This is the reference engine: slow (tens of thousands of descriptors per second) but every
field comes from a named schema field, so it is easy to check against the Arm ARM.  The numpy
engine (:mod:`s2trace.decode.numpy_engine`) must agree with it bit for bit.
"""

from __future__ import annotations

import struct
from typing import Any

from s2trace.arch.attributes import S2AP, SH, XN, memattr_names
from s2trace.arch.geometry import Geometry
from s2trace.arch.schema import descriptor_schema
from s2trace.decode.record import Descriptor
from s2trace.errors import InputError
from s2trace.pkvm.profiles import Profile, get_profile

__all__ = ["decode", "parse_fields"]


def parse_fields(raw: int, geometry: Geometry, level: int) -> Any:
    """The Construct container ``{kind, body}`` of ``raw`` at ``level``."""
    if not 0 <= raw < 1 << 64:
        raise InputError(f"{raw:#x} is not a 64-bit descriptor")
    return descriptor_schema(geometry, level).parse(struct.pack("<Q", raw))


def _res0(body: Any) -> int:
    """Bits set in RES0 fields, as a mask in descriptor bit positions."""
    mask = 0
    for name, value in body.items():
        if name.startswith("res0") and value:
            mask |= int(value) << _RES0_LSB[name]
    return mask


# Least-significant descriptor bit of each RES0 field (res0_lo starts at bit 17).
_RES0_LSB = {
    "res0_50": 50,
    "res0_49_48": 48,
    "res0_63_59": 59,
    "res0_15_12": 12,
    "res0_13_12": 12,
    "res0_lo": 17,
}


def decode(
    raw: int,
    geometry: Geometry | None = None,
    level: int = 3,
    profile: Profile | str | None = None,
    fwb: bool = False,
) -> Descriptor:
    """Decode one descriptor read at ``level`` (defaults: 4k granule, level 3, linux-5.15)."""
    geometry = geometry or Geometry()
    prof = get_profile(profile) if profile is not None else get_profile()
    c = parse_fields(raw, geometry, level)
    b = c.body
    kind = c.kind
    leaf = kind in ("block", "page")
    common: dict[str, Any] = dict.fromkeys(Descriptor.field_names())
    common.update(
        raw=raw,
        level=level,
        granule=geometry.granule.label,
        kind=kind,
        size=geometry.span(level),
        res0=0,
    )
    if kind == "table":
        common["next_table"] = _assemble(b, geometry, "nlta", geometry.granule.shift)
        common["res0"] = _res0(b)
    elif leaf:
        oa_lo = geometry.shift(level) if kind == "block" else geometry.granule.shift
        xn = int(b.xn)
        common.update(
            oa=_assemble(b, geometry, "oa", oa_lo),
            memattr=int(b.memattr),
            memattr_name=memattr_names(fwb)[b.memattr],
            s2ap=S2AP[b.s2ap],
            sh=None if geometry.ds else SH[b.sh],
            af=bool(b.af),
            nt=bool(b.nt) if kind == "block" else None,
            dbm=bool(b.dbm),
            contiguous=bool(b.contiguous),
            xn=xn,
            xn_name=XN[xn],
            sw=int(b.sw),
            pbha=int(b.pbha),
            fnxs=bool(b.fnxs),
            res0=_res0(b),
        )
    ann = prof.annotate(raw, kind)
    common.update(
        owner=ann.owner,
        owner_id=ann.owner_id,
        page_state=ann.page_state,
        locked=ann.locked,
        inv_type=ann.inv_type,
        vm_handle=ann.vm_handle,
        gfn=ann.gfn,
        note=ann.note,
    )
    return Descriptor(**common)


def _assemble(body: Any, geometry: Geometry, prefix: str, lo: int) -> int:
    """Address from the schema's pieces: [47:lo], [49:48] (DS), [51:50] (DS), [51:48] (LPA)."""
    addr = int(body[f"{prefix}_47"]) << lo
    if geometry.ds:
        addr |= int(body[f"{prefix}_49_48"]) << 48
        addr |= int(body[f"{prefix}_51_50"]) << 50
    if geometry.lpa:
        addr |= int(body[f"{prefix}_51_48"]) << 48
    return addr
