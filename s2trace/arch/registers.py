"""VTCR_EL2, VTTBR_EL2 and HCR_EL2: from register values to the geometry of a stage-2 walk.

Each register's fields are one :class:`~s2trace.arch.fields.Layout` table below, read by its
decoder and written by its encoder.  Field positions: Arm ARM DDI 0487 J.a, chapter D19
("AArch64 System Register Descriptions"), VTCR_EL2, VTTBR_EL2 and HCR_EL2.  The start-level
decode is the kernel's ``kvm_vtcr_el2_sl_decode`` table; the number of concatenated start-level
tables is the kernel's ``kvm_pgd_pages(ia_bits, start_level)`` (arch/arm64/include/asm/kvm_arm.h,
kvm_mmu.h; docs/kernel-facts.md §KF-1.7, §KF-1.8).
Worked example (§KF-1.9): VTCR_EL2 0x802d3590 is T0SZ=16 (48-bit IPA),
SL0=2 (start at level 0), IRGN0=ORGN0=1, SH0=3, TG0=4K, PS=5 (48 bits), VS=1, HA=1;
VTTBR_EL2 0x7f709001 is VMID 0, BADDR 0x7f709000, CnP.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from s2trace.arch.fields import (
    PA_SIZE_BITS,
    TG0_GRANULE,
    WALK_ATTRIBUTES,
    Field,
    Layout,
    code_of,
)
from s2trace.arch.geometry import Geometry, Granule, bits, field_mask
from s2trace.errors import InputError

__all__ = [
    "HCR_EL2",
    "VTCR_EL2",
    "VTTBR_EL2",
    "Stage2Config",
    "Vtcr",
    "Vttbr",
    "config_explicit",
    "config_from_registers",
    "encode_vtcr",
    "encode_vttbr",
    "hcr_e2h",
    "hcr_fwb",
]

#: VTCR_EL2 (DDI 0487 J.a D19, VTCR_EL2): bit 31 is RES1; HWU is HWU59..HWU62 (FEAT_HPDS2).
VTCR_EL2 = Layout(
    "VTCR_EL2",
    (
        Field("T0SZ", 5, 0),
        Field("SL0", 7, 6),
        *WALK_ATTRIBUTES,
        Field("PS", 18, 16),
        Field("VS", 19, 19),  # FEAT_VMID16
        Field("HA", 21, 21),  # FEAT_HAFDBS
        Field("HD", 22, 22),
        Field("HWU", 28, 25),
        Field("DS", 32, 32),  # FEAT_LPA2
        Field("SL2", 33, 33),  # FEAT_LPA2, 4K only
    ),
    res1=1 << 31,
)

#: VTTBR_EL2 (DDI 0487 J.a D19, VTTBR_EL2): with 52-bit PAs BADDR[51:48] sit in bits 5:2;
#: with VTCR_EL2.VS=0 only VMID[7:0] (bits 55:48) count.
VTTBR_EL2 = Layout("VTTBR_EL2", (Field("CnP", 0, 0), Field("BADDR", 47, 1), Field("VMID", 63, 48)))

#: HCR_EL2 (DDI 0487 J.a D19, HCR_EL2), the fields s2trace reads; kernel names ``HCR_*`` in
#: arch/arm64/include/asm/kvm_arm.h.  ATA, DCT and TID5 are RES0 without FEAT_MTE2.
HCR_EL2 = Layout(
    "HCR_EL2",
    (
        Field("VM", 0, 0),
        Field("TSC", 19, 19),
        Field("TGE", 27, 27),
        Field("RW", 31, 31),
        Field("E2H", 34, 34),
        Field("APK", 40, 40),
        Field("API", 41, 41),
        Field("FWB", 46, 46),  # FEAT_S2FWB: stage-2 MemAttr has the FWB meaning
        Field("ATA", 56, 56),
        Field("DCT", 57, 57),
        Field("TID5", 58, 58),
    ),
)


def hcr_fwb(hcr: int | None) -> bool:
    """HCR_EL2.FWB (bit 46); False when HCR_EL2 is not known."""
    return hcr is not None and HCR_EL2.flag(hcr, "FWB")


def hcr_e2h(hcr: int) -> bool:
    """HCR_EL2.E2H (bit 34): the EL2 stage 1 uses the EL2&0 (TCR_EL1-like) format."""
    return HCR_EL2.flag(hcr, "E2H")


_CACHE = {0: "NC", 1: "WBWA", 2: "WT", 3: "WBnWA"}
_SHARE = {0: "non", 1: "reserved", 2: "outer", 3: "inner"}

# (granule, SL2, SL0) -> start level; None = reserved.  4K SL0=3 is level 3 with FEAT_TTST.
_SL = {
    (Granule.K4, 0, 0): 2,
    (Granule.K4, 0, 1): 1,
    (Granule.K4, 0, 2): 0,
    (Granule.K4, 0, 3): 3,
    (Granule.K4, 1, 0): -1,
    (Granule.K16, 0, 0): 3,
    (Granule.K16, 0, 1): 2,
    (Granule.K16, 0, 2): 1,
    (Granule.K16, 0, 3): 0,
    (Granule.K64, 0, 0): 3,
    (Granule.K64, 0, 1): 2,
    (Granule.K64, 0, 2): 1,
}


@dataclass(frozen=True, slots=True)
class Vtcr:
    """Decoded VTCR_EL2 fields."""

    value: int
    t0sz: int
    sl0: int
    irgn0: str
    orgn0: str
    sh0: str
    granule: Granule
    ps_bits: int
    vs: bool
    ha: bool
    hd: bool
    hwu: int
    ds: bool
    sl2: bool

    @classmethod
    def decode(cls, value: int) -> Vtcr:
        f = VTCR_EL2.decode(value)
        if f["TG0"] not in TG0_GRANULE:
            raise InputError(f"VTCR_EL2 {value:#x}: TG0=3 is a reserved granule encoding")
        if f["PS"] not in PA_SIZE_BITS:
            raise InputError(f"VTCR_EL2 {value:#x}: PS={f['PS']} is reserved (expected 0..6)")
        return cls(
            value=value,
            t0sz=f["T0SZ"],
            sl0=f["SL0"],
            irgn0=_CACHE[f["IRGN0"]],
            orgn0=_CACHE[f["ORGN0"]],
            sh0=_SHARE[f["SH0"]],
            granule=TG0_GRANULE[f["TG0"]],
            ps_bits=PA_SIZE_BITS[f["PS"]],
            vs=bool(f["VS"]),
            ha=bool(f["HA"]),
            hd=bool(f["HD"]),
            hwu=f["HWU"],
            ds=bool(f["DS"]),
            sl2=bool(f["SL2"]),
        )

    @property
    def ia_bits(self) -> int:
        return 64 - self.t0sz


@dataclass(frozen=True, slots=True)
class Vttbr:
    """Decoded VTTBR_EL2 fields (``baddr`` with BADDR[51:48] from bits 5:2 when 52-bit)."""

    value: int
    baddr: int
    vmid: int
    cnp: bool

    @classmethod
    def decode(cls, value: int, vs: bool = True, pa52: bool = False) -> Vttbr:
        baddr = value & VTTBR_EL2["BADDR"].mask
        if pa52:
            baddr = (baddr & ~field_mask(5, 2)) | (bits(value, 5, 2) << 48)
        vmid = VTTBR_EL2.get(value, "VMID")
        if not vs:
            vmid &= 0xFF
        return cls(value=value, baddr=baddr, vmid=vmid, cnp=VTTBR_EL2.flag(value, "CnP"))


@dataclass(frozen=True, slots=True)
class Stage2Config:
    """Everything a walk needs: format, start level, IPA size, root table(s)."""

    geometry: Geometry
    start_level: int
    ia_bits: int
    root: int
    vmid: int = 0
    registers: dict[str, int] = field(default_factory=dict)

    @property
    def start_entries(self) -> int:
        """Descriptors across the start-level table(s)."""
        return 1 << (self.ia_bits - self.geometry.shift(self.start_level))

    @property
    def concatenated(self) -> int:
        """Number of concatenated start-level tables (kernel ``kvm_pgd_pages``)."""
        return max(1, self.start_entries // self.geometry.entries)

    @property
    def root_bytes(self) -> int:
        """Bytes of the start-level table(s); their required alignment (at least 64)."""
        return max(64, self.start_entries * 8)

    def describe(self) -> dict[str, str]:
        out = {
            "granule": self.geometry.label,
            "ipa_bits": str(self.ia_bits),
            "start_level": str(self.start_level),
            "concatenated_tables": str(self.concatenated),
            "root": f"{self.root:#x}",
            "vmid": str(self.vmid),
        }
        out.update({k: f"{v:#x}" for k, v in self.registers.items()})
        return out


def _check_start(geometry: Geometry, start: int, ia_bits: int, what: str) -> None:
    geometry.check_level(start)
    if ia_bits > geometry.oa_bits:
        raise InputError(
            f"{what}: a {ia_bits}-bit IPA needs 52-bit descriptors "
            f"({'DS=1' if geometry.granule is not Granule.K64 else 'FEAT_LPA'})"
        )
    shift = geometry.shift(start)
    if ia_bits <= shift:
        raise InputError(
            f"{what}: start level {start} resolves bits from {shift} up, but "
            f"the IPA has only {ia_bits} bits (start lower in the tree)"
        )
    extra = ia_bits - (shift + geometry.granule.index_bits)
    if extra > 4:
        raise InputError(
            f"{what}: a {ia_bits}-bit IPA from level {start} would need "
            f"{1 << extra} concatenated tables (at most 16); start one level up"
        )


def config_from_registers(vttbr: int, vtcr: int) -> Stage2Config:
    """The walk configuration from VTTBR_EL2 and VTCR_EL2 values.

    Raises :class:`InputError` naming the reason for impossible combinations (an SL0 the
    granule and T0SZ do not allow, DS with 64K, level -1 without DS ...).
    """
    for name, value in (("VTTBR_EL2", vttbr), ("VTCR_EL2", vtcr)):
        if not 0 <= value < 1 << 64:
            raise InputError(f"{name} {value:#x} does not fit in 64 bits")
    v = Vtcr.decode(vtcr)
    what = f"VTCR_EL2 {vtcr:#x}"
    if v.ds and v.granule is Granule.K64:
        raise InputError(f"{what}: DS=1 is not allowed with the 64K granule")
    start = _SL.get((v.granule, int(v.sl2), v.sl0))
    if start is None or (v.sl2 and v.granule is not Granule.K4):
        raise InputError(
            f"{what}: SL2={int(v.sl2)} SL0={v.sl0} is reserved for the {v.granule.label} granule"
        )
    if start == -1 and not v.ds:
        raise InputError(f"{what}: start level -1 (SL2=1) needs DS=1")
    if v.granule is Granule.K16 and start == 0 and not v.ds:
        raise InputError(f"{what}: 16K start level 0 (SL0=3) needs DS=1")
    geometry = Geometry(v.granule, ds=v.ds, lpa=v.granule is Granule.K64 and v.ps_bits == 52)
    _check_start(geometry, start, v.ia_bits, what)
    t = Vttbr.decode(vttbr, vs=v.vs, pa52=geometry.oa_bits == 52)
    return Stage2Config(
        geometry, start, v.ia_bits, t.baddr, t.vmid, {"vttbr_el2": vttbr, "vtcr_el2": vtcr}
    )


def config_explicit(
    root: int,
    start_level: int,
    ia_bits: int,
    granule: Granule | str = Granule.K4,
    ds: bool = False,
    lpa: bool = False,
) -> Stage2Config:
    """The walk configuration from explicit values (``--root --start-level --ipa-bits``)."""
    g = granule if isinstance(granule, Granule) else Granule.parse(granule)
    geometry = Geometry(g, ds=ds, lpa=lpa)
    _check_start(geometry, start_level, ia_bits, f"start level {start_level}")
    return Stage2Config(geometry, start_level, ia_bits, root)


def encode_vtcr(
    geometry: Geometry, ia_bits: int, start_level: int, pa_bits: int = 48, vs: bool = True
) -> int:
    """A VTCR_EL2 value selecting this format (inverse of :meth:`Vtcr.decode`; §KF-1.7).

    Walks cacheable WBWA and inner shareable, as the kernel's ``kvm_get_vtcr`` writes them;
    52-bit descriptors (DS or LPA) imply PS = 52 bits.
    """
    base = 2 if geometry.granule is Granule.K4 else 3
    sl2 = 0
    if start_level == -1:
        sl0, sl2 = 0, 1
    elif geometry.granule is Granule.K4 and start_level == 3:
        sl0 = 3
    else:
        sl0 = base - start_level
    if geometry.ds or geometry.lpa:
        pa_bits = 52
    return VTCR_EL2.encode(
        T0SZ=64 - ia_bits,
        SL0=sl0,
        IRGN0=1,
        ORGN0=1,
        SH0=3,
        TG0=code_of(TG0_GRANULE, geometry.granule, "VTCR_EL2.TG0"),
        PS=code_of(PA_SIZE_BITS, pa_bits, "VTCR_EL2.PS"),
        VS=int(vs),
        DS=int(geometry.ds),
        SL2=sl2,
    )


def encode_vttbr(baddr: int, vmid: int = 0, cnp: bool = False) -> int:
    """A VTTBR_EL2 value (48-bit BADDR; inverse of :meth:`Vttbr.decode` with ``pa52=False``)."""
    if baddr & ~VTTBR_EL2["BADDR"].mask:
        raise InputError(f"VTTBR_EL2.BADDR {baddr:#x}: expected 2-byte aligned, below 2**48")
    return VTTBR_EL2.encode(BADDR=baddr >> 1, VMID=vmid, CnP=int(cnp))
