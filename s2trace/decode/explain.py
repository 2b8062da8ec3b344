"""Per-bit breakdown of one descriptor (``s2trace decode VALUE --explain``).

Walks the Construct layout of the descriptor's kind from bit 63 down, so every bit is listed
exactly once with its field, raw value, Arm ARM name and meaning; RES0 bits that are set are
flagged; the pKVM reading under the chosen profile closes the listing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from s2trace.arch.attributes import S2AP, SH, XN, memattr_names
from s2trace.arch.geometry import Geometry
from s2trace.arch.schema import kind_schema
from s2trace.decode.construct_engine import decode, parse_fields
from s2trace.pkvm.profiles import Profile, get_profile

__all__ = ["BitField", "explain", "explain_text"]


@dataclass(frozen=True, slots=True)
class BitField:
    """One field of a descriptor's layout."""

    hi: int
    lo: int
    name: str
    value: int
    arm_name: str
    meaning: str
    warning: str = ""

    @property
    def bits(self) -> str:
        return f"{self.hi}" if self.hi == self.lo else f"{self.hi}:{self.lo}"


_ARM = {
    "valid": "Valid (bit 0)",
    "type": "Type: table/page (1) or block (0)",
    "memattr": "MemAttr[3:0]",
    "s2ap": "S2AP[1:0]",
    "sh": "SH[1:0]",
    "af": "AF",
    "fnxs": "FnXS (FEAT_XS)",
    "nt": "nT (FEAT_BBM)",
    "dbm": "DBM",
    "contiguous": "Contiguous",
    "xn": "XN[1:0] (FEAT_XNX)",
    "sw": "Software bits SW[3:0] (55-58)",
    "pbha": "PBHA[3:0] (FEAT_HPDS2)",
    "ignored_63": "Ignored",
    "software": "Ignored by hardware (software use)",
    "payload": "Reserved encoding payload",
}


def _meaning(name: str, value: int, geometry: Geometry, fwb: bool, profile: Profile) -> str:
    if name.startswith(("oa_", "nlta_")):
        return "address bits"
    if name.startswith("res0"):
        return "RES0" if not value else "RES0 -- set, which the architecture forbids"
    if name.startswith("ignored"):
        return "ignored by hardware"
    # Each reading is computed only for its own field: a value read under another field's
    # name (the 63-bit software field of an invalid entry) indexes nothing.
    table: dict[str, Callable[[], str]] = {
        "valid": lambda: "valid" if value else "invalid (translation fault)",
        "memattr": lambda: _memattr_meaning(value, fwb),
        "s2ap": lambda: S2AP[value] if value < len(S2AP) else "",
        "sh": lambda: SH[value] if value < len(SH) else "",
        "af": lambda: "accessed" if value else "not accessed (access-flag fault)",
        "xn": lambda: XN[value] if value < len(XN) else "",
        "contiguous": lambda: "part of a contiguous run" if value else "",
        "dbm": lambda: "hardware may set S2AP[1] on write (with VTCR_EL2.HD)" if value else "",
        "sw": lambda: _sw_meaning(value, profile),
        "software": lambda: "pKVM annotation (the decoded line below)" if value else "zero",
    }
    reading = table.get(name)
    return reading() if reading is not None else ""


def _memattr_meaning(value: int, fwb: bool) -> str:
    names = memattr_names(fwb)
    name = names[value] if value < len(names) else f"MemAttr {value:#x}"
    return name + (" (HCR_EL2.FWB=1)" if fwb else "")


def _sw_meaning(value: int, profile: Profile) -> str:
    if profile.state_source == "pte" and profile.state_bits:
        lo = profile.state_bits[1] - 55
        width = profile.state_bits[0] - profile.state_bits[1] + 1
        state = profile.state_name((value >> lo) & ((1 << width) - 1))
        return f"pKVM page state {state} ({profile.name})"
    return "not used for page state by this profile"


def explain(
    raw: int,
    geometry: Geometry | None = None,
    level: int = 3,
    profile: Profile | str | None = None,
    fwb: bool = False,
) -> list[BitField]:
    """Every field of ``raw``'s layout, from bit 63 down."""
    geometry = geometry or Geometry()
    prof = get_profile(profile) if profile is not None else get_profile()
    container = parse_fields(raw, geometry, level)
    schema = kind_schema(geometry, level, container.kind)
    inner = schema.subcon.subcon  # ByteSwapped -> Bitwise -> Struct
    out: list[BitField] = []
    pos = 64
    for sc in inner.subcons:
        width = sc.sizeof()
        hi, lo = pos - 1, pos - width
        pos = lo
        value = int(container.body[sc.name])
        warning = "set in a RES0 field" if sc.name.startswith("res0") and value else ""
        arm = _ARM.get(sc.name, _address_name(sc.name, hi, lo))
        out.append(
            BitField(
                hi, lo, sc.name, value, arm, _meaning(sc.name, value, geometry, fwb, prof), warning
            )
        )
    return out


def _address_name(name: str, hi: int, lo: int) -> str:
    span = f"[{hi}:{lo}]" if hi != lo else f"[{hi}]"
    if name.startswith("oa_"):
        return (
            f"Output address bits {span}"
            if name == "oa_47"
            else f"OA[{name[3:].replace('_', ':')}]"
        )
    if name.startswith("nlta_"):
        return (
            f"Next-level table address {span}"
            if name == "nlta_47"
            else f"NLTA[{name[5:].replace('_', ':')}]"
        )
    if name.startswith("res0"):
        return f"RES0 {span}"
    return f"Ignored {span}"


def explain_text(
    raw: int,
    geometry: Geometry | None = None,
    level: int = 3,
    profile: Profile | str | None = None,
    fwb: bool = False,
) -> str:
    """The breakdown as text: one line per field, then the decoded record."""
    geometry = geometry or Geometry()
    rec = decode(raw, geometry, level, profile, fwb)
    lines = [f"{raw:#018x}  level {level}, {geometry.label}: {rec.kind}"]
    for f in explain(raw, geometry, level, profile, fwb):
        flag = "  <-- " + f.warning if f.warning else ""
        lines.append(f"  [{f.bits:>5}] {f.arm_name:<36} {f.value:#x}  {f.meaning}{flag}")
    lines.append(f"  decoded: {rec}")
    return "\n".join(lines)
