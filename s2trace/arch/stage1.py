"""VMSAv8-64 stage 1 of the EL2 translation regime: TCR_EL2, TTBR0_EL2, MAIR_EL2, descriptors.

Arm architecture only (no pKVM meaning here; the hypervisor's page states in the software
bits are read by :mod:`s2trace.hyp.stage1_walk`).  Two formats, chosen by HCR_EL2.E2H:

* **E2H=0** ("nVHE", one VA range, no EL0): TCR_EL2 is T0SZ[5:0] IRGN0[9:8] ORGN0[11:10]
  SH0[13:12] TG0[15:14] PS[18:16] TBI[20] HA[21] HD[22] RES1[23] HPD[24] HWU[28:25] RES1[31]
  DS[32]; bits 63:34 are RES0.  In leaf descriptors AP[1] (bit 6) is RES1, AP[2] (bit 7)
  selects read-only, bit 54 is XN and bits 53 (PXN) and 11 (nG) are RES0.
* **E2H=1** (hVHE, the EL2&0 regime): TCR_EL2 has the TCR_EL1 layout: T0SZ[5:0] EPD0[7]
  IRGN0[9:8] ORGN0[11:10] SH0[13:12] TG0[15:14] T1SZ[21:16] A1[22] EPD1[23] ... TG1[31:30]
  IPS[34:32] AS[36] TBI0[37] TBI1[38] HA[39] HD[40] HPD0[41] HPD1[42] ... DS[59].  AP[2:1]
  are EL2/EL0 permissions (00 RW/none, 01 RW/RW, 10 RO/none, 11 RO/RO), bit 53 is PXN (EL2
  execute-never) and bit 54 is UXN (EL0 execute-never).

Leaf (block/page) descriptor, both formats: type[1:0] AttrIndx[4:2] NS[5] AP[7:6] SH[9:8]
(OA[51:50] with DS=1) AF[10] nG[11] OA bits as in stage 2 (:class:`Geometry`) nT[16]
GP[50] DBM[51] Contiguous[52] PXN[53] UXN/XN[54] SW[58:55] PBHA[62:59].  Table descriptor:
next-level address as in stage 2, PXNTable[59] UXNTable/XNTable[60] APTable[62:61]
NSTable[63] (hierarchical; ignored when TCR_EL2.HPD/HPD0 is 1).

Verified against: the kernel's ``KVM_PTE_LEAF_ATTR_LO_S1_*`` (AttrIndx GENMASK(4,2), AP
GENMASK(7,6), SH GENMASK(9,8), AF BIT(10)) and ``KVM_PTE_LEAF_ATTR_HI_S1_XN`` BIT(54);
Marc Zyngier's hVHE patches ("Adjust EL2 stage-1 leaf AP bits when ARM64_KVM_HVHE is set":
RO/RW = 2/0 with E2H, 3/1 without; "Honor UX/PX attributes for EL2 S1 mappings", Dec 2025:
``__KVM_PTE_LEAF_ATTR_HI_S1_UXN`` BIT(54), ``_PXN`` BIT(53)); TF-A's
``AP_ONE_VA_RANGE_RES1`` (AP[1] RES1 in the single-range EL2/EL3 regimes).  The TCR_EL2 and
MAIR_EL2 field positions (the tables :data:`TCR_EL2_NVHE`, :data:`TCR_EL2_E2H` and
:data:`MAIR_EL2` below, each beside its decoder and encoder) are from the Arm ARM DDI 0487 J.a,
chapter D19, TCR_EL2 / TCR_EL1 / MAIR_EL2; the two real
captures (docs/kernel-facts.md §KF-2.9: 6.1 nVHE 0x80853510, 6.12/7.3 hVHE 0x15001f5b5d53510 /
0x5500075b5903510) decode consistently with them (T0SZ 16, 4K, IPS 48 bits, EPD1 set).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

import numpy as np

from s2trace.arch.attributes import KINDS, SH
from s2trace.arch.fields import (
    PA_SIZE_BITS,
    TG0_GRANULE,
    TG1_GRANULE,
    WALK_ATTRIBUTES,
    Field,
    Layout,
    code_of,
)
from s2trace.arch.geometry import Geometry, Granule, bits, field_mask
from s2trace.arch.registers import hcr_e2h
from s2trace.errors import InputError

__all__ = [
    "AP_E2H",
    "AP_NVHE",
    "MAIR_EL2",
    "TCR_EL2_E2H",
    "TCR_EL2_NVHE",
    "Stage1Codes",
    "Stage1Config",
    "Tcr",
    "Ttbr",
    "ap_names",
    "config_from_el2",
    "decode_stage1",
    "encode_mair",
    "encode_tcr",
    "leaf_fields",
    "mair_attr_name",
    "mair_names",
    "sh_names",
    "stage1_res0",
    "table_attributes",
]

#: TCR_EL2 with HCR_EL2.E2H=0 (DDI 0487 J.a D19, TCR_EL2): bits 23 and 31 are RES1, 63:34 RES0.
TCR_EL2_NVHE = Layout(
    "TCR_EL2",
    (
        Field("T0SZ", 5, 0),
        *WALK_ATTRIBUTES,
        Field("PS", 18, 16),
        Field("TBI", 20, 20),
        Field("HA", 21, 21),
        Field("HD", 22, 22),
        Field("HPD", 24, 24),
        Field("HWU", 28, 25),
        Field("DS", 32, 32),
    ),
    res1=1 << 23 | 1 << 31,
)

#: TCR_EL2 with HCR_EL2.E2H=1: the TCR_EL1 layout (DDI 0487 J.a D19, TCR_EL1).
TCR_EL2_E2H = Layout(
    "TCR_EL2",
    (
        Field("T0SZ", 5, 0),
        Field("EPD0", 7, 7),
        *WALK_ATTRIBUTES,
        Field("T1SZ", 21, 16),
        Field("A1", 22, 22),
        Field("EPD1", 23, 23),
        Field("IRGN1", 25, 24),
        Field("ORGN1", 27, 26),
        Field("SH1", 29, 28),
        Field("TG1", 31, 30),
        Field("IPS", 34, 32),
        Field("AS", 36, 36),
        Field("TBI0", 37, 37),
        Field("TBI1", 38, 38),
        Field("HA", 39, 39),
        Field("HD", 40, 40),
        Field("HPD0", 41, 41),
        Field("HPD1", 42, 42),
        Field("HWU0", 46, 43),  # HWU059..HWU062
        Field("HWU1", 50, 47),  # HWU159..HWU162
        Field("TBID0", 51, 51),
        Field("TBID1", 52, 52),
        Field("NFD0", 53, 53),
        Field("NFD1", 54, 54),
        Field("E0PD0", 55, 55),
        Field("E0PD1", 56, 56),
        Field("TCMA0", 57, 57),
        Field("TCMA1", 58, 58),
        Field("DS", 59, 59),
    ),
)

#: MAIR_EL2 (DDI 0487 J.a D19, MAIR_EL2): Attr<n> is bits [8n+7:8n], selected by AttrIndx n.
MAIR_EL2 = Layout("MAIR_EL2", tuple(Field(f"Attr{n}", 8 * n + 7, 8 * n) for n in range(8)))

_TABLE, _BLOCK, _PAGE, _INVALID, _RESERVED = range(len(KINDS))
_U64 = np.uint64

#: AP[2:1] names, E2H=0: EL2 access only (AP[1] is RES1; a clear AP[1] is reported apart).
AP_NVHE: tuple[str, ...] = ("rw", "rw", "ro", "ro")
#: AP[2:1] names, E2H=1: EL2 access, then EL0 access when EL0 has any.
AP_E2H: tuple[str, ...] = ("rw", "rw el0:rw", "ro", "ro el0:ro")


@dataclass(frozen=True, slots=True)
class Tcr:
    """Decoded TCR_EL2 (the fields a walk of TTBR0_EL2 needs)."""

    value: int
    e2h: bool
    e2h_inferred: bool
    t0sz: int
    epd0: bool
    granule: Granule
    ps_bits: int
    hpd: bool
    ha: bool
    hd: bool
    ds: bool

    @classmethod
    def decode(cls, value: int, e2h: bool | None = None) -> Tcr:
        """Decode ``value``; ``e2h`` None infers the format.

        Inference: bits 63:34 are RES0 in the E2H=0 layout, while the E2H=1 layout has
        IPS[34:32], TBI0, HA/HD, HPD and DS up there (IPS for 48-bit PAs alone sets bit 34),
        so a non-zero upper part means E2H=1.  Give HCR_EL2 (bit 34 is E2H) to be sure.
        """
        if not 0 <= value < 1 << 64:
            raise InputError(f"TCR_EL2 {value:#x} does not fit in 64 bits")
        inferred = e2h is None
        if e2h is None:
            e2h = bool(value >> 34)
        f = (TCR_EL2_E2H if e2h else TCR_EL2_NVHE).decode(value)
        if f["TG0"] not in TG0_GRANULE:
            raise InputError(f"TCR_EL2 {value:#x}: TG0=3 is a reserved granule encoding")
        ps = f["IPS"] if e2h else f["PS"]
        if ps not in PA_SIZE_BITS:
            raise InputError(f"TCR_EL2 {value:#x}: PA size field {ps} is reserved")
        return cls(
            value=value,
            e2h=e2h,
            e2h_inferred=inferred,
            t0sz=f["T0SZ"],
            epd0=bool(f.get("EPD0", 0)),
            granule=TG0_GRANULE[f["TG0"]],
            ps_bits=PA_SIZE_BITS[ps],
            hpd=bool(f["HPD0"] if e2h else f["HPD"]),
            ha=bool(f["HA"]),
            hd=bool(f["HD"]),
            ds=bool(f["DS"]),
        )

    @property
    def va_bits(self) -> int:
        return 64 - self.t0sz


def encode_tcr(geometry: Geometry, va_bits: int, e2h: bool, pa_bits: int = 48) -> int:
    """A TCR_EL2 value for this format (inverse of :meth:`Tcr.decode`).

    The kernel's choices: walks cacheable WBWA and inner shareable.  With E2H=1, EPD1 disables
    the unused TTBR1 range and TG1 holds a valid encoding of the same granule.  52-bit
    descriptors (DS or LPA) imply a 52-bit PA size.
    """
    if geometry.ds or geometry.lpa:
        pa_bits = 52
    common = {
        "T0SZ": 64 - va_bits,
        "IRGN0": 1,
        "ORGN0": 1,
        "SH0": 3,
        "TG0": code_of(TG0_GRANULE, geometry.granule, "TCR_EL2.TG0"),
        "DS": int(geometry.ds),
    }
    ps = code_of(PA_SIZE_BITS, pa_bits, "TCR_EL2.PS")
    if e2h:
        tg1 = code_of(TG1_GRANULE, geometry.granule, "TCR_EL2.TG1")
        return TCR_EL2_E2H.encode(**common, EPD1=1, TG1=tg1, IPS=ps)
    return TCR_EL2_NVHE.encode(**common, PS=ps)


@dataclass(frozen=True, slots=True)
class Ttbr:
    """Decoded TTBR0_EL2: BADDR (with BADDR[51:48] from bits 5:2 for 52-bit PAs), ASID, CnP."""

    value: int
    baddr: int
    asid: int
    cnp: bool

    @classmethod
    def decode(cls, value: int, e2h: bool, pa52: bool = False) -> Ttbr:
        if not 0 <= value < 1 << 64:
            raise InputError(f"TTBR0_EL2 {value:#x} does not fit in 64 bits")
        baddr = value & field_mask(47, 1)
        if pa52:
            baddr = (baddr & ~field_mask(5, 2)) | (bits(value, 5, 2) << 48)
        return cls(value, baddr, bits(value, 63, 48) if e2h else 0, bool(value & 1))


@dataclass(frozen=True, slots=True)
class Stage1Config:
    """Everything a walk of the EL2 stage 1 needs: format, start level, VA size, root."""

    geometry: Geometry
    start_level: int
    va_bits: int
    root: int
    e2h: bool
    hpd: bool = False
    mair: int | None = None
    registers: dict[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def start_entries(self) -> int:
        """Descriptors in the start-level table (stage 1 has no concatenated tables)."""
        return 1 << (self.va_bits - self.geometry.shift(self.start_level))

    def describe(self) -> dict[str, str]:
        out = {
            "format": "E2H=1 (hVHE)" if self.e2h else "E2H=0 (nVHE)",
            "granule": self.geometry.label,
            "va_bits": str(self.va_bits),
            "start_level": str(self.start_level),
            "root": f"{self.root:#x}",
        }
        out.update({k: f"{v:#x}" for k, v in self.registers.items()})
        return out


def _start_level(geometry: Geometry, va_bits: int, what: str) -> int:
    """First level whose table covers ``va_bits`` (no concatenation at stage 1)."""
    page_shift = geometry.granule.shift
    if va_bits <= page_shift:
        raise InputError(f"{what}: a {va_bits}-bit VA is smaller than one page")
    levels = -(-(va_bits - page_shift) // geometry.granule.index_bits)
    start = 4 - levels
    if start not in geometry.levels:
        raise InputError(
            f"{what}: a {va_bits}-bit VA needs {levels} levels with {geometry.granule.label} "
            f"pages (start level {start}), which this format does not have"
            + (" (needs DS=1)" if start == -1 else "")
        )
    return start


def config_from_el2(
    ttbr0: int,
    tcr: int,
    *,
    e2h: bool | None = None,
    hcr: int | None = None,
    mair: int | None = None,
) -> Stage1Config:
    """Walk configuration of the EL2 stage 1 from TTBR0_EL2 and TCR_EL2.

    ``e2h`` forces the format; otherwise HCR_EL2.E2H (bit 34) when ``hcr`` is given,
    otherwise it is inferred from TCR_EL2 (see :meth:`Tcr.decode`; the inference is noted).
    ``mair`` (MAIR_EL2) lets the walk name the memory type of each AttrIndx.
    """
    notes: list[str] = []
    if e2h is None and hcr is not None:
        e2h = hcr_e2h(hcr)
    t = Tcr.decode(tcr, e2h)
    what = f"TCR_EL2 {tcr:#x}"
    if t.e2h_inferred:
        notes.append(
            f"TCR_EL2 format {'E2H=1' if t.e2h else 'E2H=0'} inferred from bits 63:34 "
            "(give HCR_EL2 or --hvhe/--nvhe to be sure)"
        )
    if t.ds and t.granule is Granule.K64:
        raise InputError(f"{what}: DS=1 is not allowed with the 64K granule")
    if t.epd0:
        notes.append("TCR_EL2.EPD0 is set: walks of TTBR0_EL2 are disabled in hardware")
    geometry = Geometry(t.granule, ds=t.ds, lpa=t.granule is Granule.K64 and t.ps_bits == 52)
    if t.va_bits > 48 and not (t.ds or t.granule is Granule.K64):
        raise InputError(f"{what}: a {t.va_bits}-bit VA with {t.granule.label} pages needs DS=1")
    start = _start_level(geometry, t.va_bits, what)
    if (1 << (t.va_bits - geometry.shift(start))) > geometry.entries:
        raise InputError(f"{what}: T0SZ={t.t0sz} gives a start table larger than one page")
    r = Ttbr.decode(ttbr0, t.e2h, pa52=geometry.oa_bits == 52)
    regs = {"ttbr0_el2": ttbr0, "tcr_el2": tcr}
    if mair is not None:
        regs["mair_el2"] = mair
    if hcr is not None:
        regs["hcr_el2"] = hcr
    return Stage1Config(geometry, start, t.va_bits, r.baddr, t.e2h, t.hpd, mair, regs, tuple(notes))


# -- MAIR ------------------------------------------------------------------------------------
_DEVICE = {0x0: "Device-nGnRnE", 0x4: "Device-nGnRE", 0x8: "Device-nGRE", 0xC: "Device-GRE"}


def _cache_policy(nibble: int) -> str | None:
    """Normal-memory cacheability of one MAIR nibble (outer [7:4] or inner [3:0])."""
    if nibble == 0b0100:
        return "NC"
    if nibble >> 2 in (0b00, 0b10) and nibble & 3:
        return "WT"
    if nibble >> 2 in (0b01, 0b11) and nibble & 3:
        return "WB"
    return None


def mair_attr_name(attr: int) -> str:
    """Memory type of one MAIR_ELx attribute byte (Arm ARM MAIR_ELx.Attr<n>).

    [7:4] = 0000 is Device with [3:0] = dd00 (dd: nGnRnE, nGnRE, nGRE, GRE; dd01 is the
    FEAT_XS=0 variant); otherwise Normal, outer [7:4] and inner [3:0] each NC (0100), WT
    (00RW/10RW) or WB (01RW/11RW).  0x40/0xa0 are the FEAT_XS Normal NC/WT encodings and
    0xf0 Normal Tagged (FEAT_MTE2).  Allocation hints are not named.
    """
    attr &= 0xFF
    special = {0x40: "Normal-NC-XS0", 0xA0: "Normal-WT-XS0", 0xF0: "Normal-Tagged"}
    if attr in special:
        return special[attr]
    outer, inner = attr >> 4, attr & 0xF
    if outer == 0:
        base = _DEVICE.get(inner & 0xC) if inner & 3 in (0, 1) else None
        if base is None:
            return f"reserved({attr:#04x})"
        return base + ("-XS0" if inner & 1 else "")
    o, i = _cache_policy(outer), _cache_policy(inner)
    if o is None or i is None:
        return f"reserved({attr:#04x})"
    return f"Normal-{o}" if o == i else f"Normal-o{o}-i{i}"


@cache
def mair_names(mair: int) -> tuple[str, ...]:
    """The eight memory-type names selected by AttrIndx 0..7 under MAIR_EL2 ``mair``."""
    return tuple(mair_attr_name(MAIR_EL2.get(mair, f"Attr{i}")) for i in range(8))


def encode_mair(attrs: tuple[int, ...]) -> int:
    """A MAIR_EL2 value with ``attrs[n]`` in Attr<n> (missing ones 0, Device-nGnRnE)."""
    return MAIR_EL2.encode(**{f"Attr{n}": a for n, a in enumerate(attrs)})


# -- descriptors ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Stage1Codes:
    """What :class:`s2trace.walk.tables.TableWalk` needs: kind codes and addresses."""

    kind: np.ndarray
    addr: np.ndarray


def stage1_res0(geometry: Geometry, level: int, e2h: bool) -> dict[str, int]:
    """RES0 bits per kind at ``level`` (Arm ARM D8.3 stage-1 layouts; see the module doc)."""
    g = geometry.granule
    addr_hi = 0 if geometry.ds else field_mask(49, 48)
    low_12 = 0 if geometry.lpa else field_mask(15, 12)
    page_low = {Granule.K4: 0, Granule.K16: field_mask(13, 12), Granule.K64: low_12}[g]
    block_low = field_mask(geometry.shift(level) - 1, 17) | low_12
    nvhe_leaf = 0 if e2h else field_mask(53, 53) | field_mask(11, 11)
    nvhe_table = 0 if e2h else field_mask(61, 61) | field_mask(59, 59)
    return {
        "table": addr_hi | page_low | field_mask(50, 50) | nvhe_table,
        "block": addr_hi | block_low | nvhe_leaf,
        "page": addr_hi | page_low | nvhe_leaf,
        "invalid": 0,
        "reserved": 0,
    }


def _kind_by_low2(geometry: Geometry, level: int) -> np.ndarray:
    blocks = level != 3 and level in geometry.block_levels
    return np.array(
        [_INVALID, _BLOCK if blocks else _RESERVED, _INVALID, _PAGE if level == 3 else _TABLE],
        dtype=np.int8,
    )


def _addresses(raw: np.ndarray, kind: np.ndarray, geometry: Geometry, level: int) -> np.ndarray:
    """Output address of leaves, next-table address of tables, 0 elsewhere."""
    masks = np.zeros(len(KINDS), dtype=np.uint64)
    masks[_TABLE] = masks[_PAGE] = geometry.address_mask(level, leaf=False)
    if level != 3 and level in geometry.block_levels:
        masks[_BLOCK] = geometry.address_mask(level, leaf=True)
    addr = raw & np.take(masks, kind)
    valid = (kind == _TABLE) | (kind == _BLOCK) | (kind == _PAGE)
    if geometry.lpa:
        addr |= np.where(valid, (raw & _U64(field_mask(15, 12))) << _U64(36), _U64(0))
    elif geometry.ds:
        addr |= np.where(valid, (raw & _U64(field_mask(9, 8))) << _U64(42), _U64(0))
    return addr


def decode_stage1(raw: np.ndarray, geometry: Geometry, level: int) -> Stage1Codes:
    """Kind and address of every stage-1 descriptor (the walk's per-level decode)."""
    geometry.check_level(level)
    raw = np.ascontiguousarray(raw, dtype=np.uint64)
    kind = np.take(_kind_by_low2(geometry, level), (raw & _U64(3)).astype(np.intp))
    return Stage1Codes(kind, _addresses(raw, kind, geometry, level))


def _field(raw: np.ndarray, hi: int, lo: int, dtype: type = np.uint8) -> np.ndarray:
    return ((raw >> _U64(lo)) & _U64((1 << (hi - lo + 1)) - 1)).astype(dtype)


def leaf_fields(raw: np.ndarray, config: Stage1Config) -> dict[str, np.ndarray]:
    """Raw attribute fields of stage-1 leaf descriptors, as small-integer arrays.

    ``pxn`` is "EL2 may not execute" (bit 53 with E2H=1, bit 54 with E2H=0) and ``uxn``
    "EL0 may not execute" (bit 54 with E2H=1; all False with E2H=0, which has no EL0).
    ``ap1_clear`` flags E2H=0 leaves whose RES1 AP[1] bit is clear.
    """
    raw = np.ascontiguousarray(raw, dtype=np.uint64)
    bit = lambda n: ((raw >> _U64(n)) & _U64(1)).astype(bool)  # noqa: E731
    ap = _field(raw, 7, 6)
    return {
        "attrindx": _field(raw, 4, 2),
        "ap": ap,
        "sh": _field(raw, 9, 8),
        "af": bit(10),
        "ng": bit(11) if config.e2h else np.zeros(raw.shape, bool),
        "gp": bit(50),
        "dbm": bit(51),
        "contiguous": bit(52),
        "pxn": bit(53) if config.e2h else bit(54),
        "uxn": bit(54) if config.e2h else np.zeros(raw.shape, bool),
        "sw": _field(raw, 58, 55),
        "pbha": _field(raw, 62, 59),
        "ap1_clear": np.zeros(raw.shape, bool) if config.e2h else (ap & 1) == 0,
    }


def table_attributes(raw: np.ndarray) -> np.ndarray:
    """Hierarchical attribute bits 63:59 of table descriptors (0 when none are set)."""
    return _field(np.ascontiguousarray(raw, dtype=np.uint64), 63, 59)


def ap_names(e2h: bool) -> tuple[str, ...]:
    """AP[2:1] names for the format."""
    return AP_E2H if e2h else AP_NVHE


def sh_names() -> tuple[str, ...]:
    return SH
