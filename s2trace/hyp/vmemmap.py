"""``hyp_vmemmap``: the hypervisor's per-page ``struct hyp_page`` array, by kernel version.

The array is EL2 memory at the hyp VA held in the hyp variable ``__hyp_vmemmap`` (kallsyms
``__kvm_nvhe___hyp_vmemmap``); the entry of physical page ``p`` is at
``__hyp_vmemmap + (p >> PAGE_SHIFT) * sizeof(struct hyp_page)`` (``hyp_phys_to_page``), so it
is read through the hyp stage 1.  It covers memblock memory only, never MMIO.

Layouts (verified against, in order): ``arch/arm64/kvm/hyp/include/nvhe/memory.h`` of the
early pKVM tree (``unsigned short refcount; unsigned short order;``, HYP_NO_ORDER = USHRT_MAX);
Quentin Perret's "KVM: arm64: Make hyp_page::order a u8" (v2 03/18, Dec 2024, merged with the
v6.14 series: ``u16 refcount; u8 order; u8 reserved;``, HYP_NO_ORDER = 0xff) and "Move host
page ownership tracking to the hyp vmemmap" (``enum pkvm_page_state host_state : 8;`` then
``u32 host_share_guest_count;``, BUILD_BUG_ON size 8); "Move hyp state to hyp_vmemmap"
(v6.16: ``unsigned __host_state : 4; unsigned __hyp_state_comp : 4;``, hyp state =
``__hyp_state_comp ^ PKVM_PAGE_STATE_MASK`` (3), so zeroed memory reads hyp NOPAGE).  Little-
endian bit-fields put ``__host_state`` in the low nibble of byte 3 (docs/kernel-facts.md §KF-2.5;
confirmed on the 7.3 capture, §KF-2.8: 0x11, 0x33, 0x00, 0x03).  State values: v6.14-v6.15 OWNED 0,
SHARED_OWNED 1, SHARED_BORROWED 2, NOPAGE BIT(2) = 4; v6.16+ NOPAGE = 3 (§KF-2.4).

Where each side's state is kept, by version (§KF-2.1, §KF-2.6): host state in the host stage 2
up to v6.13, in the vmemmap from v6.14; hyp state in the hyp stage-1 SW bits up to v6.15, in
the vmemmap from v6.16.  From Mostafa Saleh's "Map hyp text as RO and dump instr on panic"
(July 2025; first release unverified, taken as 6.17) the hyp .text stays mapped read-only in
the host stage 2 while hyp-owned (``fix_host_ownership_walker``: PAGE_HYP_EXEC -> host
NOPAGE + ``host_stage2_idmap_locked(.., KVM_PGTABLE_PROT_R)``; seen on 7.3, §KF-2.8).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from s2trace.columns import VMEMMAP
from s2trace.errors import InputError, Problem, ProblemLog
from s2trace.intervals import distinct
from s2trace.walk.tables import Memory

__all__ = [
    "HYP_PAGE_LAYOUTS",
    "STATES",
    "VMEMMAP",
    "HypPageLayout",
    "KernelLayout",
    "VmemmapResult",
    "decode_entries",
    "kernel_layout",
    "read_vmemmap",
]

#: Page-state names, in the order of the category codes used everywhere in s2trace.hyp.
STATES: tuple[str, ...] = ("owned", "shared_owned", "shared_borrowed", "nopage", "reserved")

Field = tuple[int, int, int]  # (byte offset, bit shift within the little-endian word, width)


@dataclass(frozen=True, slots=True)
class HypPageLayout:
    """One ``struct hyp_page`` layout: where each member sits, as data."""

    name: str
    kernels: str
    size: int
    refcount: Field
    order: Field
    no_order: int
    host_state: Field | None = None
    hyp_state: Field | None = None
    hyp_state_xor: int = 0
    share_count: Field | None = None
    #: raw state value -> name (values not listed read ``reserved``)
    state_values: dict[int, str] = field(default_factory=dict)


HYP_PAGE_LAYOUTS: dict[str, HypPageLayout] = {
    "5.16": HypPageLayout(
        "5.16",
        "v5.16-v6.13: unsigned short refcount, unsigned short order",
        4,
        refcount=(0, 0, 16),
        order=(2, 0, 16),
        no_order=0xFFFF,
    ),
    "6.14": HypPageLayout(
        "6.14",
        "v6.14-v6.15: u16 refcount, u8 order, u8 host_state, u32 host_share_guest_count",
        8,
        refcount=(0, 0, 16),
        order=(2, 0, 8),
        no_order=0xFF,
        host_state=(3, 0, 8),
        share_count=(4, 0, 32),
        state_values={0: "owned", 1: "shared_owned", 2: "shared_borrowed", 4: "nopage"},
    ),
    "6.16": HypPageLayout(
        "6.16",
        "v6.16+: u16 refcount, u8 order, host state nibble, hyp state^3 nibble, u32 count",
        8,
        refcount=(0, 0, 16),
        order=(2, 0, 8),
        no_order=0xFF,
        host_state=(3, 0, 4),
        hyp_state=(3, 4, 4),
        hyp_state_xor=3,
        share_count=(4, 0, 32),
        state_values={0: "owned", 1: "shared_owned", 2: "shared_borrowed", 3: "nopage"},
    ),
}


@dataclass(frozen=True, slots=True)
class KernelLayout:
    """Where one kernel keeps pKVM page states (see the module docstring)."""

    version: tuple[int, int]
    hyp_page: HypPageLayout
    host_states: str  # "pte" (host stage 2) or "vmemmap"
    hyp_states: str  # "pte" (hyp stage-1 SW bits) or "vmemmap"
    host_profile: str
    hyp_text_ro_in_host: bool

    @property
    def label(self) -> str:
        return f"{self.version[0]}.{self.version[1]}"


def _parse_version(text: str) -> tuple[int, int]:
    m = re.search(r"(\d+)\.(\d+)", text)
    if not m:
        raise InputError(f"kernel {text!r}: expected a version like 6.12 or 7.3")
    return int(m.group(1)), int(m.group(2))


def kernel_layout(kernel: str | tuple[int, int]) -> KernelLayout:
    """The layout of a kernel version (``"6.12"``, ``"7.3.4"``, ``"linux-7.1"`` ...)."""
    v = kernel if isinstance(kernel, tuple) else _parse_version(kernel)
    if v < (5, 15):
        raise InputError(f"kernel {v[0]}.{v[1]}: pKVM page states start with v5.15")
    hyp_page = HYP_PAGE_LAYOUTS["5.16" if v < (6, 14) else "6.14" if v < (6, 16) else "6.16"]
    profile = "linux-5.15" if v < (6, 14) else "linux-6.14" if v < (7, 1) else "linux-7.1"
    return KernelLayout(
        version=v,
        hyp_page=hyp_page,
        host_states="pte" if v < (6, 14) else "vmemmap",
        hyp_states="pte" if v < (6, 16) else "vmemmap",
        host_profile=profile,
        hyp_text_ro_in_host=v >= (6, 17),
    )


@dataclass
class VmemmapResult:
    """The vmemmap frame (VMEMMAP schema, index ``pfn``), problems and provenance."""

    frame: pd.DataFrame
    problems: ProblemLog
    layout: HypPageLayout
    vmemmap_va: int
    meta: dict[str, str] = field(default_factory=dict)


def _get(raw: np.ndarray, f: Field) -> np.ndarray:
    byte, shift, width = f
    return (raw >> np.uint64(8 * byte + shift)) & np.uint64((1 << width) - 1)


def _state_codes(values: np.ndarray, layout: HypPageLayout) -> np.ndarray:
    lut = np.full(256, STATES.index("reserved"), dtype=np.int8)
    for v, name in layout.state_values.items():
        lut[v] = STATES.index(name)
    return np.take(lut, values.astype(np.intp))


_STATES_DTYPE = pd.CategoricalDtype(list(STATES))


def decode_entries(raw: np.ndarray, layout: HypPageLayout) -> dict[str, object]:
    """Members of ``struct hyp_page`` entries given as little-endian integers (vectorised)."""
    raw = np.asarray(raw, dtype=np.uint64)
    n = raw.size
    na = np.full(n, -1, dtype=np.int8)
    host = _state_codes(_get(raw, layout.host_state), layout) if layout.host_state else na
    if layout.hyp_state:
        hyp = _state_codes(_get(raw, layout.hyp_state) ^ np.uint64(layout.hyp_state_xor), layout)
    else:
        hyp = na
    if layout.share_count:
        count = pd.arrays.IntegerArray(
            _get(raw, layout.share_count).astype(np.uint32), np.zeros(n, bool)
        )
    else:
        count = pd.arrays.IntegerArray(np.zeros(n, np.uint32), np.ones(n, bool))
    cat = _STATES_DTYPE
    return {
        "refcount": _get(raw, layout.refcount).astype(np.uint16),
        "order": _get(raw, layout.order).astype(np.uint16),
        "host_state": pd.Categorical.from_codes(host, dtype=cat, validate=False),
        "hyp_state": pd.Categorical.from_codes(hyp, dtype=cat, validate=False),
        "host_share_guest_count": count,
    }


def _runs(values: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) of runs of consecutive integers in a sorted array."""
    if not values.size:
        return []
    cuts = np.flatnonzero(np.diff(values) != 1) + 1
    return [(int(r[0]), int(r[-1])) for r in np.split(values, cuts)]


def _entries(
    words: np.ndarray, bytes_: np.ndarray, rows: np.ndarray, offs: np.ndarray, size: int, page: int
) -> np.ndarray:
    """The little-endian ``size``-byte entries at byte ``offs`` of page ``rows``: one gather
    of whole words when the entries are aligned words (the usual case), else byte by byte."""
    if size in (1, 2, 4, 8) and not (offs % size).any():
        per_page = words.view(f"<u{size}").reshape(bytes_.shape[0], page // size)
        return per_page[rows, offs // size].astype(np.uint64)
    entry = np.zeros(rows.size, dtype=np.uint64)
    for b in range(size):
        entry |= bytes_[rows, offs + b].astype(np.uint64) << np.uint64(8 * b)
    return entry


def read_vmemmap(
    memory: Memory,
    translate: object,
    vmemmap_va: int,
    layout: HypPageLayout,
    pfns: np.ndarray,
    *,
    page_size: int = 4096,
    strict: bool = False,
) -> VmemmapResult:
    """Read the entries of ``pfns`` through the hyp stage 1.

    ``translate(va) -> (pa, ok)`` is the hyp stage-1 translation (e.g.
    :meth:`s2trace.hyp.stage1_walk.HypWalkResult.translate`).  Entries never straddle a
    page (the size divides the page), so each hyp page of the array is translated and read
    once with one ``gather``.  Entries whose page is unmapped or outside the dump are left out
    and recorded as problems (``vmemmap_unmapped``, ``vmemmap_outside_dump``), one per run.
    """
    log = ProblemLog(strict=strict)
    pfns = distinct(np.asarray(pfns, dtype=np.uint64))
    size = np.uint64(layout.size)
    va = np.uint64(vmemmap_va) + pfns * size
    page = np.uint64(page_size)
    vpage = va - va % page
    # pfns are sorted and distinct, so their hyp pages are sorted: runs, not a search.
    first = np.ones(vpage.size, bool)
    np.not_equal(vpage[1:], vpage[:-1], out=first[1:])
    upages = vpage[first]
    inverse = np.cumsum(first) - 1
    pa_pages, mapped = translate(upages)  # type: ignore[operator]
    words, present = memory.gather(np.where(mapped, pa_pages, 0).astype(np.uint64), page_size)
    present &= mapped
    in_map = mapped[inverse]
    ok = present[inverse]
    for what, bad, why in (
        ("vmemmap_unmapped", ~in_map, "not mapped in the hyp stage 1"),
        ("vmemmap_outside_dump", in_map & ~ok, "mapped to memory the dump does not hold"),
    ):
        for lo, hi in _runs(pfns[bad]):
            detail = (
                f"struct hyp_page of PFNs {lo:#x}..{hi:#x} (hyp VA "
                f"{vmemmap_va + lo * layout.size:#x}) is {why}"
            )
            log.add(Problem(what, lo * page_size, detail))
    keep = np.flatnonzero(ok)
    bytes_ = words.view(np.uint8).reshape(len(upages), page_size)
    offs = (va[keep] % page).astype(np.intp)
    rows = inverse[keep]
    entry = _entries(words, bytes_, rows, offs, layout.size, page_size)
    cols = decode_entries(entry, layout)
    frame = pd.DataFrame(
        {
            "pa": pfns[keep] * page,
            **cols,
            "raw": entry,
            "entry_va": va[keep],
        },
        index=pd.Index(pfns[keep], name="pfn"),
    )
    VMEMMAP.check(frame)
    meta = {"layout": layout.name, "vmemmap_va": f"{vmemmap_va:#x}", "entries": str(len(frame))}
    return VmemmapResult(frame, log, layout, vmemmap_va, meta)
