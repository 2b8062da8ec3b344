"""System-register layouts as data: named bit fields, read and written through one table.

A :class:`Layout` lists the fields of one register (name, highest and lowest bit) and the bits
that read as one (RES1).  Decoders read a field by name with :meth:`Layout.get`; encoders build
a value with :meth:`Layout.encode`.  Both go through the same table, so a field position is
written once.  The tables themselves sit beside their decoders: VTCR_EL2, VTTBR_EL2 and
HCR_EL2 in :mod:`s2trace.arch.registers`, TCR_EL2 and MAIR_EL2 in :mod:`s2trace.arch.stage1`.

The encodings VTCR_EL2 and TCR_EL2 share -- the granule in TG0 and the physical-address size
in PS/IPS -- are here too.  Arm ARM (DDI 0487 J.a, chapter D19 "AArch64 System Register
Descriptions"): TG0 0b00 = 4KB, 0b01 = 64KB, 0b10 = 16KB, 0b11 reserved; TG1 (TCR_EL1 layout,
used by TCR_EL2 with E2H=1) 0b01 = 16KB, 0b10 = 4KB, 0b11 = 64KB, 0b00 reserved; PS/IPS
0b000..0b110 = 32, 36, 40, 42, 44, 48, 52 bits, 0b111 reserved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

from s2trace.arch.geometry import Granule, bits, field_mask
from s2trace.errors import InputError

__all__ = [
    "PA_SIZE_BITS",
    "TG0_GRANULE",
    "TG1_GRANULE",
    "WALK_ATTRIBUTES",
    "Field",
    "Layout",
    "code_of",
]

#: TG0 code -> granule (TCR_ELx.TG0, VTCR_EL2.TG0).
TG0_GRANULE: dict[int, Granule] = {0: Granule.K4, 1: Granule.K64, 2: Granule.K16}
#: TG1 code -> granule (TCR_EL1.TG1, the E2H=1 TCR_EL2 layout).
TG1_GRANULE: dict[int, Granule] = {1: Granule.K16, 2: Granule.K4, 3: Granule.K64}
#: PS/IPS code -> physical address bits (TCR_ELx.PS/IPS, VTCR_EL2.PS).
PA_SIZE_BITS: dict[int, int] = {0: 32, 1: 36, 2: 40, 3: 42, 4: 44, 5: 48, 6: 52}


_K = TypeVar("_K")
_V = TypeVar("_V")


def code_of(table: dict[_K, _V], value: _V, what: str) -> _K:
    """The code that ``table`` maps to ``value`` (the encoder's side of a decode table)."""
    for code, meaning in table.items():
        if meaning == value:
            return code
    raise InputError(f"{what}: {value} has no encoding (expected one of {list(table.values())})")


@dataclass(frozen=True, slots=True)
class Field:
    """Bits ``hi`` down to ``lo`` of a register, called ``name`` as in the Arm ARM."""

    name: str
    hi: int
    lo: int

    @property
    def mask(self) -> int:
        return field_mask(self.hi, self.lo)

    def get(self, value: int) -> int:
        return bits(value, self.hi, self.lo)

    def put(self, code: int, register: str) -> int:
        """``code`` placed at the field's position; InputError when it does not fit."""
        width = self.hi - self.lo + 1
        if not 0 <= code < 1 << width:
            raise InputError(f"{register}.{self.name} = {code:#x} does not fit in {width} bits")
        return code << self.lo


#: The table-walk attributes at the same place in VTCR_EL2, TCR_EL2 and TCR_EL1: the
#: cacheability (IRGN0, ORGN0) and shareability (SH0) of walks through TTBR0/VTTBR, and TG0.
WALK_ATTRIBUTES = (
    Field("IRGN0", 9, 8),
    Field("ORGN0", 11, 10),
    Field("SH0", 13, 12),
    Field("TG0", 15, 14),
)


@dataclass(frozen=True)
class Layout:
    """The named fields of one register and its RES1 bits (see the module docstring)."""

    register: str
    fields: tuple[Field, ...]
    res1: int = 0
    _by_name: dict[str, Field] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        taken = self.res1
        for f in self.fields:
            if taken & f.mask:
                raise ValueError(f"{self.register}.{f.name} overlaps another field")
            taken |= f.mask
        object.__setattr__(self, "_by_name", {f.name: f for f in self.fields})

    @property
    def defined(self) -> int:
        """Mask of the bits this table gives a meaning (fields and RES1)."""
        mask = self.res1
        for f in self.fields:
            mask |= f.mask
        return mask

    def __getitem__(self, name: str) -> Field:
        return self._by_name[name]

    def get(self, value: int, name: str) -> int:
        """Field ``name`` of ``value``."""
        return self._by_name[name].get(value)

    def flag(self, value: int, name: str) -> bool:
        """One-bit field ``name`` of ``value`` as a bool."""
        return bool(self._by_name[name].get(value))

    def decode(self, value: int) -> dict[str, int]:
        """Every field of ``value`` by name."""
        return {f.name: f.get(value) for f in self.fields}

    def encode(self, **codes: int) -> int:
        """A value with the RES1 bits set and the named fields holding ``codes`` (others 0)."""
        value = self.res1
        for name, code in codes.items():
            if name not in self._by_name:
                raise InputError(f"{self.register} has no field {name}")
            value |= self._by_name[name].put(int(code), self.register)
        return value
