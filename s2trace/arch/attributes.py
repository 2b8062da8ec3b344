"""Words for stage-2 attribute values (Arm ARM D8.5/D8.6; hyp/pgtable.c,
asm/memory.h; docs/kernel-facts.md §KF-1.4, §KF-1.5).

Decoding never formats: both engines look names up here, by raw field value, so the Construct
path and the numpy path cannot disagree on spelling.  Each table is indexed by the raw field.
"""

from __future__ import annotations

__all__ = [
    "KINDS",
    "MEMATTR_FWB",
    "MEMATTR_NOFWB",
    "S2AP",
    "SH",
    "XN",
    "memattr_code",
    "memattr_names",
]

#: Descriptor kinds, in the order of the numpy engine's category codes.
KINDS: tuple[str, ...] = ("table", "block", "page", "invalid", "reserved")

#: S2AP[1:0] (bits 7:6): bit 6 = read allowed, bit 7 = write allowed.
S2AP: tuple[str, ...] = ("none", "ro", "wo", "rw")

#: SH[1:0] (bits 9:8): 0b01 is reserved.
SH: tuple[str, ...] = ("non", "reserved", "outer", "inner")

#: XN[1:0] (bits 54:53) with FEAT_XNX.  Without FEAT_XNX only bit 54 counts (0b1x = XN) and
#: mainline KVM before v6.19 writes only 0 or 0b10, which reads the same either way.
XN: tuple[str, ...] = ("px ux", "PXN", "XN", "UXN")

_DEVICE = ("Device-nGnRnE", "Device-nGnRE", "Device-nGRE", "Device-GRE")
_CACHE = {1: "NC", 2: "WT", 3: "WB"}


def _nofwb(value: int) -> str:
    """MemAttr[3:0] with HCR_EL2.FWB = 0: [3:2] outer (00 = Device), [1:0] inner."""
    outer, inner = value >> 2, value & 3
    if outer == 0:
        return _DEVICE[inner]
    if inner == 0:
        return "reserved"
    if outer == inner:
        return f"Normal-{_CACHE[outer]}"
    return f"Normal-o{_CACHE[outer]}-i{_CACHE[inner]}"


def _fwb(value: int) -> str:
    """MemAttr with HCR_EL2.FWB = 1 (FEAT_S2FWB): [2:0] decides; [3] is RES0 here.

    0b0xx Device, 0b101 Normal-NC, 0b110 Normal-WB (forced, kernel MT_S2_FWB_NORMAL),
    0b111 "stage 1 wins" (kernel MT_S2_FWB_AS_S1, v7.0+), 0b100 reserved.
    """
    low = value & 7
    if low < 4:
        name = _DEVICE[low]
    else:
        name = {4: "reserved", 5: "Normal-NC", 6: "Normal-WB", 7: "S1-wins"}[low]
    return name if value < 8 else f"{name}+MemAttr3"


#: Names of MemAttr[3:0] without and with FWB, indexed by the raw 4-bit value.
MEMATTR_NOFWB: tuple[str, ...] = tuple(_nofwb(v) for v in range(16))
MEMATTR_FWB: tuple[str, ...] = tuple(_fwb(v) for v in range(16))


def memattr_names(fwb: bool) -> tuple[str, ...]:
    """The 16 MemAttr names under the given HCR_EL2.FWB setting."""
    return MEMATTR_FWB if fwb else MEMATTR_NOFWB


def memattr_code(name: str, fwb: bool) -> int:
    """Raw MemAttr for a name (case-insensitive; ``normal-wb``, ``device-ngnre`` ...).

    Picks the encoding the kernel writes: without FWB Normal-WB is 0xf and Normal-NC 0x5;
    with FWB Normal-WB is 6 and Normal-NC 5.
    """
    table = memattr_names(fwb)
    wanted = name.strip().lower()
    # Prefer the kernel's values when several raw values share a name.
    order = [0xF, 0x5, 0x6, 0x7, *range(16)]
    for value in order:
        if table[value].lower() == wanted:
            return value
    choices = sorted({n for n in table if "reserved" not in n and "MemAttr3" not in n})
    raise ValueError(f"memattr {name!r}: expected one of {', '.join(choices)}")
