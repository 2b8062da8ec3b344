"""Build the hypervisor's side of a dump: its EL2 stage 1 and its ``hyp_vmemmap``.

Companions of :class:`s2trace.walk.build.Stage2Builder` (the host stage 2), for reproducers and
tests of :mod:`s2trace.hyp`::

    host = Stage2Builder(profile="linux-7.1", table_base=0x7F600000)
    hyp = HypStage1Builder(e2h=True, table_base=0x7F200000)
    vm = VmemmapBuilder(HYP_PAGE_LAYOUTS["6.16"], va=0x600000000000, first_pfn=0x40000,
                        count=1024, backing=0x7F000000)
    hyp.map(0xFFFF80007F000000, 0x1000, 0x7F000000, perm="rw")  # owned, linear alias
    vm.set(0x40001, host_state="nopage", hyp_state="owned")
    vm.map_into(hyp)                                              # the array itself
    host.write_elf("dump.elf", extra={**hyp.table_pages(), **vm.pages()})

Descriptors are encoded here from the architecture's field positions, independently of the
decoder in :mod:`s2trace.arch.stage1` (which uses masks and lookup tables), and
``expected_map`` comes from the arguments given, never from decoding.  Attribute choices follow
the kernel's ``hyp_set_prot_attr``: AF set, SH inner, AttrIndx 0 (MT_NORMAL) or 4
(MT_DEVICE_nGnRE), AP RW/RO = 1/3 with E2H=0 and 0/2 with E2H=1, non-executable = XN (bit 54)
with E2H=0, PXN|UXN (bits 53, 54) with E2H=1 (``pre_fix_hvhe=True``: UXN only, as hVHE kernels
before Dec 2025 wrote), page states in SW bits 56:55.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from s2trace.arch.geometry import Geometry
from s2trace.arch.registers import HCR_EL2
from s2trace.arch.stage1 import Stage1Config, config_from_el2, encode_tcr
from s2trace.errors import InputError
from s2trace.hyp.vmemmap import HypPageLayout
from s2trace.io.elfcore import write_elf_core

__all__ = ["HypStage1Builder", "VmemmapBuilder", "write_machine"]

_STATE_BITS = {"owned": 0, "shared_owned": 1 << 55, "shared_borrowed": 1 << 56, "reserved": 3 << 55}


@dataclass
class _Leaf:
    va: int
    level: int
    raw: int
    fields: dict[str, object]


@dataclass
class HypStage1Builder:
    """An EL2 stage-1 table under construction (E2H=0 or E2H=1 attribute format)."""

    geometry: Geometry = field(default_factory=Geometry)
    va_bits: int = 48
    e2h: bool = True
    table_base: int = 0x7F200000
    mair: int = 0x40044FFFF
    pre_fix_hvhe: bool = False

    def __post_init__(self) -> None:
        self._page = self.geometry.granule.value
        tcr = encode_tcr(self.geometry, self.va_bits, self.e2h)
        probe = config_from_el2(self.table_base, tcr, e2h=self.e2h)
        self.start_level = probe.start_level
        self.root = -(-self.table_base // self._page) * self._page
        self._tables: dict[int, np.ndarray] = {
            self.root: np.zeros(self.geometry.entries, np.uint64)
        }
        self._next = self.root + self._page
        self._leaves: dict[tuple[int, int], _Leaf] = {}
        self._tcr = tcr

    # -- registers ------------------------------------------------------------------------------
    @property
    def ttbr0(self) -> int:
        return self.root | 1  # CnP, as the kernel sets it when the CPU has it

    @property
    def tcr(self) -> int:
        return self._tcr

    @property
    def hcr(self) -> int:
        """An HCR_EL2 with VM, RW and E2H matching the format (the other pKVM bits aside)."""
        return HCR_EL2.encode(VM=1, RW=1, E2H=int(self.e2h))

    @property
    def config(self) -> Stage1Config:
        return config_from_el2(self.ttbr0, self.tcr, e2h=self.e2h, mair=self.mair)

    # -- placing entries --------------------------------------------------------------------------
    def _slot(self, va: int, level: int) -> tuple[int, int]:
        g = self.geometry
        if not 0 <= va < 1 << self.va_bits:
            raise InputError(f"va {va:#x} is outside the {self.va_bits}-bit VA space")
        table = self.root
        index = (va >> g.shift(self.start_level)) % g.entries
        for lv in range(self.start_level, level):
            cur = int(self._tables[table][index])
            if cur & 3 == 3:
                table = cur & g.address_mask(lv, leaf=False)
            elif cur == 0:
                child = self._next
                self._next += self._page
                self._tables[child] = np.zeros(g.entries, np.uint64)
                # A table descriptor: next-level address and bits[1:0] = 0b11, nothing else.
                self._tables[table][index] = g.split_address(child, lv, leaf=False) | 3
                table = child
            else:
                raise InputError(f"va {va:#x}: level {lv} already holds a leaf")
            index = (va >> g.shift(lv + 1)) % g.entries
        return table, index

    def set_raw(self, va: int, level: int, raw: int) -> tuple[int, int]:
        """Write any value at the entry for ``va`` at ``level`` (damage); no expected row."""
        table, index = self._slot(va, level)
        self._tables[table][index] = raw
        self._leaves.pop((va - va % self.geometry.span(level), level), None)
        return table, index

    def leaf(
        self,
        pa: int,
        level: int,
        *,
        perm: str = "rw",
        state: str = "owned",
        attrindx: int = 0,
        sw_extra: int = 0,
    ) -> int:
        """The stage-1 leaf descriptor the kernel would write (see the module docstring).

        ``perm`` is ``rw``, ``ro`` or ``rx`` (R+X, the hyp text); ``sw_extra`` adds SW bits
        57/58 (raw, shifted to bit 57).
        """
        if perm not in ("rw", "ro", "rx"):
            raise InputError(f"perm {perm!r}: expected rw, ro or rx")
        g = self.geometry
        kind_bits = 3 if level == 3 else 1
        ap = {False: {"rw": 1, "ro": 3, "rx": 3}, True: {"rw": 0, "ro": 2, "rx": 2}}[self.e2h][perm]
        raw = g.split_address(pa, level, leaf=True) | kind_bits | attrindx << 2 | ap << 6
        if not g.ds:
            raw |= 3 << 8  # SH inner (with DS=1 the bits hold OA[51:50])
        raw |= 1 << 10  # AF
        if perm != "rx":
            if not self.e2h:
                raw |= 1 << 54
            else:
                raw |= 1 << 54 if self.pre_fix_hvhe else (1 << 54 | 1 << 53)
        raw |= _STATE_BITS[state] | (sw_extra & 3) << 57
        return raw

    def map(
        self,
        va: int,
        size: int,
        pa: int,
        *,
        perm: str = "rw",
        state: str = "owned",
        attrindx: int = 0,
        level: int | None = None,
    ) -> None:
        """Map ``[va, va+size)`` to ``pa`` with leaves (largest blocks that fit unless
        ``level`` is given)."""
        g = self.geometry
        end = va + size
        while va < end:
            lv = level
            if lv is None:
                for cand in sorted(g.block_levels | {3}):
                    span = g.span(cand)
                    fits = va % span == 0 and pa % span == 0 and end - va >= span
                    if cand >= self.start_level and fits:
                        lv = cand
                        break
            if lv is None:
                raise InputError(f"va {va:#x}: not aligned to the granule")
            raw = self.leaf(pa, lv, perm=perm, state=state, attrindx=attrindx)
            table, index = self._slot(va, lv)
            self._tables[table][index] = raw
            xn = perm != "rx"
            self._leaves[(va, lv)] = _Leaf(
                va,
                lv,
                raw,
                {
                    "pa": pa,
                    "kind": "page" if lv == 3 else "block",
                    "attrindx": attrindx,
                    "ap": "rw" if perm == "rw" else "ro",
                    "pxn": xn and not (self.e2h and self.pre_fix_hvhe),
                    "uxn": xn if self.e2h else None,
                    "hyp_state": state,
                },
            )
            va += g.span(lv)
            pa += g.span(lv)

    # -- outputs ---------------------------------------------------------------------------------
    def table_pages(self) -> dict[int, bytes]:
        return {pa: t.astype("<u8").tobytes() for pa, t in sorted(self._tables.items())}

    def expected_map(self) -> pd.DataFrame:
        """``va_start, size, level, raw`` and the attribute columns the builder chose, by VA."""
        rows = [
            {"va_start": v.va, "size": self.geometry.span(v.level), "level": v.level,
             "raw": v.raw, **v.fields}
            for _, v in sorted(self._leaves.items())
        ]  # fmt: skip
        cols = ["va_start", "size", "level", "raw", "pa", "kind", "attrindx", "ap", "pxn", "uxn",
                "hyp_state"]  # fmt: skip
        return pd.DataFrame(rows, columns=cols)


@dataclass
class VmemmapBuilder:
    """A ``hyp_vmemmap`` array for PFNs ``first_pfn .. first_pfn+count``, in ``layout``,
    stored in physical pages from ``backing`` on (zero-filled: all-zero entries)."""

    layout: HypPageLayout
    va: int = 0x600000000000
    first_pfn: int = 0x40000
    count: int = 1024
    backing: int = 0x7F000000
    page_size: int = 4096

    def __post_init__(self) -> None:
        lo = self.first_pfn * self.layout.size
        self._va_lo = self.va + lo - lo % self.page_size
        hi = self.va + (self.first_pfn + self.count) * self.layout.size
        self._va_hi = -(-hi // self.page_size) * self.page_size
        self._data = bytearray(self._va_hi - self._va_lo)

    @property
    def va_range(self) -> tuple[int, int]:
        """Hyp VAs of the first and past-the-last page of the array."""
        return self._va_lo, self._va_hi

    def encode(
        self,
        *,
        refcount: int = 0,
        order: int = 0,
        host_state: str | None = None,
        hyp_state: str | None = None,
        count: int = 0,
    ) -> int:
        """One entry as a little-endian integer (states by name; hyp state XORed as stored)."""
        lay = self.layout

        def put(value: int, where: tuple[int, int, int] | None, what: str) -> int:
            if where is None:
                if value:
                    raise InputError(f"layout {lay.name} has no {what}")
                return 0
            byte, shift, width = where
            if value >> width:
                raise InputError(f"{what} {value:#x} does not fit in {width} bits")
            return value << (8 * byte + shift)

        def state_value(name: str | None, what: str) -> int:
            if name is None:
                return 0
            for v, n in lay.state_values.items():
                if n == name:
                    return v
            known = ", ".join(lay.state_values.values()) or "no states"
            raise InputError(f"{what} {name!r}: layout {lay.name} has {known}")

        raw = put(refcount, lay.refcount, "refcount") | put(order, lay.order, "order")
        raw |= put(count, lay.share_count, "host_share_guest_count")
        if host_state is not None:
            raw |= put(state_value(host_state, "host_state"), lay.host_state, "host state")
        if hyp_state is not None and lay.hyp_state is None:
            raise InputError(f"layout {lay.name} keeps no hyp state")
        if lay.hyp_state is not None:
            hyp = state_value(hyp_state, "hyp_state") if hyp_state is not None else 3
            raw |= put(hyp ^ lay.hyp_state_xor, lay.hyp_state, "hyp state")
        return raw

    def set(self, pfn: int, **fields: object) -> int:
        """Write the entry of ``pfn`` (fields as :meth:`encode`); returns its raw value."""
        if not self.first_pfn <= pfn < self.first_pfn + self.count:
            raise InputError(f"pfn {pfn:#x} is outside the array")
        raw = self.encode(**fields)  # type: ignore[arg-type]
        off = self.va + pfn * self.layout.size - self._va_lo
        self._data[off : off + self.layout.size] = raw.to_bytes(self.layout.size, "little")
        return raw

    def set_range(self, pfn: int, n: int, **fields: object) -> None:
        """Write ``n`` equal entries from ``pfn`` on (one vectorised byte copy)."""
        raw = self.encode(**fields)  # type: ignore[arg-type]
        entry = np.frombuffer(raw.to_bytes(self.layout.size, "little"), np.uint8)
        off = self.va + pfn * self.layout.size - self._va_lo
        view = np.frombuffer(self._data, np.uint8)
        view[off : off + n * self.layout.size] = np.tile(entry, n)

    def pages(self) -> dict[int, bytes]:
        """Backing physical pages (PA -> bytes)."""
        n = len(self._data) // self.page_size
        return {
            self.backing + i * self.page_size: bytes(
                self._data[i * self.page_size : (i + 1) * self.page_size]
            )
            for i in range(n)
        }

    def map_into(self, hyp: HypStage1Builder) -> None:
        """Map the array's VA range onto the backing pages in ``hyp`` (RW, hyp-owned)."""
        hyp.map(self._va_lo, self._va_hi - self._va_lo, self.backing, level=3)


def write_machine(
    path: str | Path, pages: dict[int, bytes], ram: tuple[int, int] | None = None
) -> Path:
    """An ELF core of ``pages`` (PA -> bytes), laid over a zero-filled RAM range
    ``(base, size)`` when given (so the dump holds "all of RAM"), one PT_LOAD per
    contiguous run."""
    chunks: dict[int, bytes] = {}
    if ram is not None:
        base, size = ram
        image = bytearray(size)
        for pa, data in pages.items():
            if base <= pa and pa + len(data) <= base + size:
                image[pa - base : pa - base + len(data)] = data
            else:
                chunks[pa] = data
        chunks[base] = bytes(image)
    else:
        chunks = dict(pages)
    segs: list[tuple[int, bytearray]] = []
    for pa, data in sorted(chunks.items()):
        if segs and segs[-1][0] + len(segs[-1][1]) == pa:
            segs[-1][1].extend(data)
        else:
            segs.append((pa, bytearray(data)))
    return write_elf_core(path, [(pa, bytes(d)) for pa, d in segs])
