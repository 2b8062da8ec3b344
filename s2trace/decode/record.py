"""The typed record of one decoded stage-2 descriptor.

:class:`Descriptor` has exactly the fields of the ``descriptors`` schema
(:data:`s2trace.columns.DESCRIPTOR`), so a record, a DataFrame row and a JSON object are three
spellings of the same thing.  ``str()`` is one readable line, for example::

    page oa=0x4393d000 Normal-WB rw inner AF | pKVM: host, shared_owned
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["Descriptor"]


@dataclass(frozen=True, slots=True)
class Descriptor:
    """One decoded descriptor.  ``None`` marks a field that does not apply to the kind."""

    raw: int
    level: int
    granule: str
    kind: str
    oa: int | None
    next_table: int | None
    size: int
    memattr: int | None
    memattr_name: str | None
    s2ap: str | None
    sh: str | None
    af: bool | None
    nt: bool | None
    dbm: bool | None
    contiguous: bool | None
    xn: int | None
    xn_name: str | None
    sw: int | None
    pbha: int | None
    res0: int
    owner: str | None
    owner_id: int | None
    page_state: str | None
    locked: bool | None
    inv_type: str | None
    vm_handle: int | None
    gfn: int | None
    note: bool | None
    fnxs: bool | None

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with the schema's keys (JSON-ready: ints, strs, bools, None)."""
        return asdict(self)

    def __str__(self) -> str:
        parts = [self.kind]
        if self.kind == "table":
            parts.append(f"next={self.next_table:#x}")
        elif self.kind in ("block", "page"):
            parts += [f"oa={self.oa:#x}", str(self.memattr_name), str(self.s2ap)]
            if self.sh is not None:
                parts.append(self.sh)
            parts += [name for name, on in self._flags() if on]
            if self.xn:
                parts.append(f"xn={self.xn_name}")
            if self.sw:
                parts.append(f"sw={self.sw:#x}")
            if self.pbha:
                parts.append(f"pbha={self.pbha:#x}")
        elif self.kind == "invalid" and self.raw == 0:
            parts.append("(zero)")
        if self.res0:
            parts.append(f"RES0!={self.res0:#x}")
        text = " ".join(parts)
        pkvm = self._pkvm()
        return f"{text} | pKVM: {pkvm}" if pkvm else text

    def _flags(self) -> list[tuple[str, bool | None]]:
        return [
            ("AF", self.af),
            ("nT", self.nt),
            ("DBM", self.dbm),
            ("CONT", self.contiguous),
            ("FnXS", self.fnxs),
        ]

    def _pkvm(self) -> str:
        bits = []
        if self.owner is not None:
            bits.append(self.owner)
        if self.page_state is not None:
            bits.append(self.page_state)
        if self.inv_type not in (None, "none"):
            bits.append(f"type={self.inv_type}")
        if self.locked:
            bits.append("locked")
        if self.note:
            bits.append("note")
        if self.vm_handle is not None:
            bits.append(f"vm={self.vm_handle:#x} gfn={self.gfn:#x}")
        return ", ".join(bits)
