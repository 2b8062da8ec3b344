"""Build stage-2 page tables and dumps from a description: minimal reproducers and test data.

Public API (users make reproducers with it; the test suite and ``s2trace synth`` use it)::

    b = Stage2Builder(Geometry(Granule.K4), ia_bits=48)
    b.map(0x40000000, 0x200000)                  # one 2 MiB block, host RWX, identity
    b.annotate(0x7F200000, 0xA00000, owner="hyp")  # the hyp carve-out, page by page
    b.map(0x4393D000, 0x1000, state="shared_owned")
    b.write_elf("host-s2.elf")                   # or write_raw(...)
    vttbr, vtcr = b.vttbr, b.vtcr
    expected = b.expected_map()                  # the MAP rows, from the builder's bookkeeping

Every descriptor is encoded by :func:`s2trace.decode.build.build_descriptor` (the Construct
schemas in build mode).  ``expected_map`` is computed from the arguments the builder was given,
never by decoding, so a test compares the walker against an independent answer.  Damage
(loops, pointers outside the dump, reserved encodings) is written with :meth:`set_raw`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from s2trace.arch.attributes import memattr_code, memattr_names
from s2trace.arch.geometry import Geometry
from s2trace.arch.registers import (
    Stage2Config,
    config_from_registers,
    encode_vtcr,
    encode_vttbr,
)
from s2trace.columns import MAP
from s2trace.decode.build import build_descriptor
from s2trace.errors import InputError
from s2trace.io.elfcore import write_elf_core
from s2trace.pkvm.profiles import Profile, get_profile

__all__ = ["Stage2Builder"]


@dataclass
class _Entry:
    """What the builder put at one place, for the expected map."""

    ipa: int
    level: int
    raw: int
    fields: dict[str, Any]


@dataclass
class Stage2Builder:
    """An in-memory stage-2 page table under construction (see the module docstring)."""

    geometry: Geometry = field(default_factory=Geometry)
    ia_bits: int = 48
    start_level: int | None = None
    profile: Profile | str = "linux-5.15"
    table_base: int = 0x7F700000
    fwb: bool = False
    vmid: int = 0

    def __post_init__(self) -> None:
        self._profile = get_profile(self.profile)
        if self.start_level is None:
            self.start_level = self._default_start()
        vtcr = encode_vtcr(self.geometry, self.ia_bits, self.start_level)
        probe = config_from_registers(self.table_base, vtcr)  # validates the combination
        self._page = self.geometry.granule.value
        root_bytes = max(probe.root_bytes, self._page)
        self.root = -(-self.table_base // root_bytes) * root_bytes
        self._next = self.root + root_bytes
        self._tables: dict[int, np.ndarray] = {}
        self._start_tables = max(1, probe.root_bytes // self._page)
        for i in range(self._start_tables):
            self._tables[self.root + i * self._page] = np.zeros(self.geometry.entries, np.uint64)
        self._leaves: dict[tuple[int, int], _Entry] = {}
        self._vtcr = vtcr

    def _default_start(self) -> int:
        """The kernel's choice: the fewest levels, using up to 16 concatenated tables."""
        g = self.geometry
        for level in reversed(g.levels):
            extra = self.ia_bits - (g.shift(level) + g.granule.index_bits)
            if extra <= 4 and self.ia_bits > g.shift(level):
                return level
        raise InputError(f"no start level fits a {self.ia_bits}-bit IPA")

    # -- registers ----------------------------------------------------------------------------
    @property
    def vtcr(self) -> int:
        return self._vtcr

    @property
    def vttbr(self) -> int:
        return encode_vttbr(self.root, self.vmid)

    @property
    def config(self) -> Stage2Config:
        return config_from_registers(self.vttbr, self.vtcr)

    # -- placing entries --------------------------------------------------------------------
    def _alloc(self) -> int:
        pa = self._next
        self._next += self._page
        self._tables[pa] = np.zeros(self.geometry.entries, np.uint64)
        return pa

    def _slot(self, ipa: int, level: int) -> tuple[int, int]:
        """(table PA, index) of the entry for ``ipa`` at ``level``, creating tables above."""
        g = self.geometry
        if not 0 <= ipa < 1 << self.ia_bits:
            raise InputError(f"ipa {ipa:#x} is outside the {self.ia_bits}-bit IPA space")
        start = self.start_level
        assert start is not None
        top_index = ipa >> g.shift(start)
        table = self.root + (top_index // g.entries) * self._page
        index = top_index % g.entries
        for lv in range(start, level):
            cur = int(self._tables[table][index])
            if cur & 3 == 3:
                table = cur & g.address_mask(lv, leaf=False)
            elif cur == 0:
                child = self._alloc()
                self._tables[table][index] = build_descriptor(
                    "table", level=lv, geometry=g, next_table=child
                )
                table = child
            else:
                raise InputError(f"ipa {ipa:#x}: level {lv} already holds a leaf or annotation")
            index = (ipa >> g.shift(lv + 1)) % g.entries
        return table, index

    def set_raw(
        self, ipa: int, level: int, raw: int, *, expect: dict[str, Any] | None = None
    ) -> tuple[int, int]:
        """Write any 64-bit value at the entry for ``ipa`` and ``level`` (damage included).

        ``expect`` gives the map row fields this entry should produce (None: no row).
        Returns the (table PA, index) written.
        """
        table, index = self._slot(ipa, level)
        self._tables[table][index] = raw
        span = self.geometry.span(level)
        base = ipa - ipa % span
        if expect is not None:
            self._leaves[(base, level)] = _Entry(base, level, raw, expect)
        else:
            self._leaves.pop((base, level), None)
        return table, index

    def _level_for(self, ipa: int, oa: int, size: int) -> int:
        g = self.geometry
        start = self.start_level
        assert start is not None  # set by __post_init__
        for level in sorted(g.block_levels | {3}):
            span = g.span(level)
            if level >= start and ipa % span == 0 and oa % span == 0 and size >= span:
                return level
        raise InputError(f"ipa {ipa:#x}: not aligned to the {self._page:#x} granule")

    def map(
        self,
        ipa: int,
        size: int,
        *,
        oa: int | None = None,
        level: int | None = None,
        memattr: str | int = "Normal-WB",
        s2ap: str = "rw",
        sh: str = "inner",
        xn: int = 0,
        contiguous: bool = False,
        state: str | None = None,
        af: bool = True,
    ) -> None:
        """Map ``[ipa, ipa+size)`` to ``oa`` (identity by default) with valid leaves, using
        the largest blocks that fit unless ``level`` is given."""
        oa = ipa if oa is None else oa
        end = ipa + size
        mem = memattr if isinstance(memattr, int) else memattr_code(memattr, self.fwb)
        while ipa < end:
            lv = level if level is not None else self._level_for(ipa, oa, end - ipa)
            span = self.geometry.span(lv)
            kind = "page" if lv == 3 else "block"
            raw = build_descriptor(
                kind,
                level=lv,
                geometry=self.geometry,
                profile=self._profile,
                fwb=self.fwb,
                oa=oa,
                memattr=mem,
                s2ap=s2ap,
                sh=sh,
                xn=xn,
                contiguous=contiguous,
                state=state,
                af=af,
            )
            state_name = self._leaf_state(state)
            self.set_raw(
                ipa,
                lv,
                raw,
                expect=dict(
                    kind=kind,
                    oa=oa,
                    owner=self._profile.mapped_owner,
                    owner_id=self._profile.mapped_owner_id,
                    page_state=state_name,
                    s2ap=s2ap,
                    memattr_name=memattr_names(self.fwb)[mem],
                    xn=xn,
                    contiguous=contiguous,
                    locked=None,
                    inv_type=None,
                    vm_handle=None,
                    gfn=None,
                ),
            )
            ipa += span
            oa += span

    def _leaf_state(self, state: str | None) -> str | None:
        p = self._profile
        if p.state_source == "vmemmap":
            return "unknown"
        if p.state_source == "none":
            return None
        return state or "owned"

    def annotate(
        self,
        ipa: int,
        size: int,
        owner: str | int,
        *,
        level: int = 3,
        locked: bool = False,
        vm_handle: int = 0,
        gfn: int | None = None,
    ) -> None:
        """Mark ``[ipa, ipa+size)`` as owned by ``owner`` with annotated invalid entries at
        ``level`` (pages by default).  For guest donations (7.1+), ``gfn`` is the first guest
        frame and increases with each page."""
        p = self._profile
        span = self.geometry.span(level)
        if ipa % span or size % span:
            raise InputError(f"annotate: {ipa:#x}+{size:#x} is not aligned to level {level}")
        oid = p.owner_id_of(owner)
        name = p.owner_name(oid)
        guest = oid == p.guest_owner
        for i in range(size // span):
            g = (gfn + i) if (guest and gfn is not None) else 0
            raw = build_descriptor(
                "invalid",
                level=level,
                geometry=self.geometry,
                profile=p,
                owner=oid,
                locked=locked,
                vm_handle=vm_handle,
                gfn=g,
            )
            host = oid == p.mapped_owner_id
            state = (
                None
                if p.state_source == "none"
                else (("owned" if p.state_source == "pte" else "unknown") if host else "nopage")
            )
            self.set_raw(
                ipa + i * span,
                level,
                raw,
                expect=dict(
                    kind="invalid",
                    oa=None,
                    owner=name,
                    owner_id=oid,
                    page_state=state,
                    s2ap=None,
                    memattr_name=None,
                    xn=None,
                    contiguous=None,
                    locked=bool(locked)
                    if (p.lock_bit is not None or p.lock_type is not None)
                    else None,
                    inv_type=("donation" if p.type_bits else None),
                    vm_handle=vm_handle if guest and p.handle_bits else None,
                    gfn=g if guest and p.gfn_bits else None,
                ),
            )

    # -- outputs --------------------------------------------------------------------------------
    def table_pages(self) -> dict[int, bytes]:
        """Every table page (PA -> bytes, little-endian)."""
        return {pa: t.astype("<u8").tobytes() for pa, t in sorted(self._tables.items())}

    def segments(self, extra: dict[int, bytes] | None = None) -> list[tuple[int, bytes]]:
        """Contiguous runs of table pages (and ``extra`` ranges) as ELF segments."""
        chunks = sorted({**self.table_pages(), **(extra or {})}.items())
        out: list[tuple[int, bytearray]] = []
        for pa, data in chunks:
            if out and out[-1][0] + len(out[-1][1]) == pa:
                out[-1][1].extend(data)
            else:
                out.append((pa, bytearray(data)))
        return [(pa, bytes(d)) for pa, d in out]

    def write_elf(self, path: str | Path, extra: dict[int, bytes] | None = None) -> Path:
        """An ELF core holding the tables (one PT_LOAD per contiguous run)."""
        return write_elf_core(path, self.segments(extra))

    def write_raw(self, path: str | Path) -> int:
        """A raw image from the lowest table page to the highest; returns its base PA."""
        pages = self.table_pages()
        lo = min(pages)
        hi = max(pages) + self._page
        image = bytearray(hi - lo)
        for pa, data in pages.items():
            image[pa - lo : pa - lo + len(data)] = data
        Path(path).write_bytes(bytes(image))
        return lo

    def expected_map(self) -> pd.DataFrame:
        """The ownership map a correct walk must produce (MAP schema, sorted by IPA)."""
        rows = []
        for (ipa, level), e in sorted(self._leaves.items()):
            table, index = self._slot(ipa, level)
            rows.append(
                dict(
                    ipa_start=ipa,
                    size=self.geometry.span(level),
                    level=level,
                    table_pa=table,
                    index=index,
                    raw=e.raw,
                    **e.fields,
                )
            )
        frame = pd.DataFrame(rows, columns=MAP.names)
        for col, dtype in MAP.dtypes().items():
            frame[col] = (
                frame[col].astype(pd.api.types.pandas_dtype(dtype))
                if dtype != "category"
                else frame[col].astype(object).astype("category")
            )
        return frame


def identity_page_tables(
    ram_base: int, ram_size: int, *, table_base: int = 0x1000_0000, geometry: Geometry | None = None
) -> tuple[Stage2Builder, np.ndarray]:
    """A host stage 2 mapping ``[ram_base, ram_base+ram_size)`` entirely with pages, built
    vectorised (for benchmarks and large tests): the upper levels come from the builder, the
    leaf tables are the builder's page template ORed with every output address.

    Returns the builder (upper levels, registers) and the leaf tables as one uint64 array of
    shape (tables, entries), which sit right after the builder's tables in physical memory
    (``builder.leaf_base``).
    """
    g = geometry or Geometry()
    page = g.granule.value
    span = g.span(2)
    if ram_base % span or ram_size % span:
        raise InputError("ram_base and ram_size must be multiples of the level-2 span")
    b = Stage2Builder(g, table_base=table_base)
    template = build_descriptor("page", level=3, geometry=g, oa=0, profile=b._profile)
    n_tables = ram_size // span
    # Upper levels first (the builder allocates their tables), then reserve the leaf tables.
    for i in range(n_tables):
        b._slot(ram_base + i * span, 2)
    leaf_base = b._next
    b._next += n_tables * page
    for i in range(n_tables):
        table, index = b._slot(ram_base + i * span, 2)
        b._tables[table][index] = build_descriptor(
            "table", level=2, geometry=g, next_table=leaf_base + i * page
        )
    oa = np.arange(ram_base, ram_base + ram_size, page, dtype=np.uint64)
    leaves = (oa | np.uint64(template)).reshape(n_tables, g.entries)
    b.leaf_base = leaf_base  # type: ignore[attr-defined]
    return b, leaves


def write_identity_elf(path: str | Path, ram_base: int, ram_size: int, **kw: Any) -> Stage2Builder:
    """Write :func:`identity_page_tables` as an ELF core (upper tables + leaf tables)."""
    b, leaves = identity_page_tables(ram_base, ram_size, **kw)
    segs = b.segments()
    segs.append((b.leaf_base, leaves.astype("<u8").tobytes()))  # type: ignore[attr-defined]
    write_elf_core(path, sorted(segs))
    return b
