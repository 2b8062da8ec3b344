"""Translation-table geometry of VMSAv8-64 stage 2, as data.

One :class:`Geometry` value (granule, DS, LPA) answers every layout question the decoder and
the walker ask: which levels exist, the address bits each level resolves, which levels allow
block descriptors, and where the output-address bits sit in a descriptor.  Nothing else in
s2trace hard-codes a granule.

Sources (Arm ARM D8.2/D8.3; pgtable-hwdef.h, kvm_pgtable.h; docs/kernel-facts.md §KF-1.2,
§KF-1.3): level shift = (PAGE_SHIFT - 3) * (4 - n) + 3,
the kernel's ``ARM64_HW_PGTABLE_LEVEL_SHIFT``; block levels per granule; 52-bit OA with
FEAT_LPA (64K, OA[51:48] in bits 15:12) and FEAT_LPA2 (4K/16K with DS=1, OA[49:48] in place and
OA[51:50] in bits 9:8).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from s2trace.errors import InputError

__all__ = ["Geometry", "Granule", "bits", "field_mask"]


def field_mask(hi: int, lo: int) -> int:
    """``GENMASK(hi, lo)``: ones in bits ``hi`` down to ``lo`` (empty when hi < lo)."""
    if hi < lo:
        return 0
    return ((1 << (hi - lo + 1)) - 1) << lo


def bits(value: int, hi: int, lo: int) -> int:
    """``FIELD_GET(GENMASK(hi, lo), value)``."""
    return (value >> lo) & ((1 << (hi - lo + 1)) - 1)


class Granule(Enum):
    """Translation granule; the value is the page size in bytes."""

    K4 = 4096
    K16 = 16384
    K64 = 65536

    @property
    def shift(self) -> int:
        """PAGE_SHIFT: 12, 14 or 16."""
        return self.value.bit_length() - 1

    @property
    def index_bits(self) -> int:
        """Address bits one full table resolves: 9, 11 or 13."""
        return self.shift - 3

    @property
    def label(self) -> str:
        """``4k``, ``16k`` or ``64k`` (CLI and DataFrame spelling)."""
        return f"{self.value // 1024}k"

    @classmethod
    def parse(cls, text: str | int) -> Granule:
        """Accept ``4k``/``16K``/``64k``/``4096``... and return the granule."""
        key = str(text).strip().lower().rstrip("b")
        table = {"4k": cls.K4, "16k": cls.K16, "64k": cls.K64}
        table.update({str(g.value): g for g in cls})
        if key not in table:
            raise InputError(f"granule {text!r}: expected 4k, 16k or 64k")
        return table[key]


@dataclass(frozen=True, slots=True)
class Geometry:
    """Stage-2 table format: a granule plus the 52-bit address extensions in force.

    ``ds`` is VTCR_EL2.DS (FEAT_LPA2, 4K/16K only).  ``lpa`` is a 52-bit output address
    with the 64K granule (FEAT_LPA, VTCR_EL2.PS = 52 bits).
    """

    granule: Granule = Granule.K4
    ds: bool = False
    lpa: bool = False

    def __post_init__(self) -> None:
        if self.ds and self.granule is Granule.K64:
            raise InputError("DS=1 (FEAT_LPA2) applies to the 4k and 16k granules only")
        if self.lpa and self.granule is not Granule.K64:
            raise InputError("LPA (52-bit OA in bits 15:12) applies to the 64k granule only")

    # -- levels ---------------------------------------------------------------------------
    @property
    def oa_bits(self) -> int:
        """Largest output address size the descriptor format can express (48 or 52)."""
        return 52 if (self.ds or self.lpa) else 48

    @property
    def levels(self) -> tuple[int, ...]:
        """Lookup levels this format uses, first to last."""
        if self.granule is Granule.K4:
            return (-1, 0, 1, 2, 3) if self.ds else (0, 1, 2, 3)
        if self.granule is Granule.K16:
            return (0, 1, 2, 3)
        return (1, 2, 3)

    @property
    def block_levels(self) -> frozenset[int]:
        """Levels where a block descriptor is architecturally allowed (§KF-1.2)."""
        if self.granule is Granule.K4:
            return frozenset({0, 1, 2} if self.ds else {1, 2})
        if self.granule is Granule.K16:
            return frozenset({1, 2} if self.ds else {2})
        return frozenset({1, 2} if self.lpa else {2})

    def check_level(self, level: int) -> None:
        """Raise :class:`InputError` when ``level`` does not exist in this format."""
        if level not in self.levels:
            raise InputError(
                f"level {level} does not exist with the {self.granule.label} granule"
                f"{' and DS=1' if self.ds else ''}: expected one of "
                f"{', '.join(str(x) for x in self.levels)}"
            )

    def shift(self, level: int) -> int:
        """Address bit where level ``level`` starts resolving (its entry covers 2**shift)."""
        return self.granule.index_bits * (4 - level) + 3

    def span(self, level: int) -> int:
        """Bytes of input address space one entry at ``level`` covers."""
        return 1 << self.shift(level)

    @property
    def entries(self) -> int:
        """Descriptors in one table page."""
        return self.granule.value // 8

    # -- where the address lives in a descriptor --------------------------------------------
    def address_mask(self, level: int, leaf: bool) -> int:
        """Descriptor bits holding address bits in place (table or leaf at ``level``)."""
        lo = self.shift(level) if leaf else self.granule.shift
        hi = 49 if self.ds else 47
        return field_mask(hi, lo)

    def split_address(self, addr: int, level: int, leaf: bool) -> int:
        """The descriptor bits that hold ``addr`` (its in-place and out-of-place pieces).

        Raises :class:`InputError` when ``addr`` is not aligned for the entry or does not
        fit the output-address size of the format.
        """
        align = self.span(level) if leaf else self.granule.value
        if addr % align:
            raise InputError(f"address {addr:#x} is not aligned to {align:#x} at level {level}")
        if addr >> self.oa_bits:
            raise InputError(f"address {addr:#x} does not fit in {self.oa_bits} bits")
        raw = addr & self.address_mask(level, leaf)
        if self.lpa:
            raw |= bits(addr, 51, 48) << 12
        elif self.ds:
            raw |= bits(addr, 51, 50) << 8
        return raw

    @property
    def label(self) -> str:
        extra = "+DS" if self.ds else "+LPA" if self.lpa else ""
        return f"{self.granule.label}{extra}"
