"""Loading the hypervisor's view of a dump: its EL2 stage 1 walked, the kernel image placed
and ``hyp_vmemmap`` read (:func:`load_hyp_view`), and the page sets it is read for.

The image is placed from /proc/iomem when given, else from the hyp stage 1's identity map of
``__hyp_idmap_text_start`` (:func:`image_from_hyp_idmap`); the vmemmap VA is read from
``__kvm_nvhe___hyp_vmemmap`` through that placement unless given.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from s2trace.arch.stage1 import config_from_el2
from s2trace.errors import InputError
from s2trace.hyp.evidence import KernelImage, read_symbol_u64
from s2trace.hyp.stage1_walk import HypWalkResult, walk_hyp
from s2trace.hyp.vmemmap import KernelLayout, VmemmapResult, read_vmemmap
from s2trace.walk.tables import Memory

__all__ = [
    "HypView",
    "image_from_hyp_idmap",
    "load_hyp_view",
    "memory_pfns",
    "ram_pfns",
]


@dataclass
class HypView:
    """The hyp stage 1, the kernel image placement and the vmemmap of one dump."""

    hyp: HypWalkResult
    layout: KernelLayout
    vmemmap: VmemmapResult | None = None
    image: KernelImage | None = None
    notes: list[str] = field(default_factory=list)


def memory_pfns(memory: Memory, page_size: int = 4096) -> np.ndarray:
    """PFNs of every page the dump holds in full (its RAM)."""
    parts = []
    for r in getattr(memory, "regions", ()):
        lo = -(-r.pa // page_size)
        hi = r.end // page_size
        if hi > lo:
            parts.append(np.arange(lo, hi, dtype=np.uint64))
    return np.concatenate(parts) if parts else np.empty(0, np.uint64)


def ram_pfns(iomem: pd.DataFrame, page_size: int = 4096) -> np.ndarray:
    """PFNs of the top-level ``System RAM`` ranges of /proc/iomem (end inclusive there,
    exclusive here): the pages the hyp_vmemmap describes, whether or not the dump holds
    them (a trimmed dump keeps the vmemmap but not the RAM)."""
    ram = iomem[(iomem["name"] == "System RAM") & (iomem["depth"] == 0)]
    parts = [
        np.arange(-(-int(lo) // page_size), int(hi) // page_size, dtype=np.uint64)
        for lo, hi in zip(ram["start"], ram["end"], strict=True)
    ]
    return np.concatenate(parts) if parts else np.empty(0, np.uint64)


def image_from_hyp_idmap(kallsyms: pd.DataFrame, hyp_map: pd.DataFrame) -> KernelImage:
    """Place the kernel image without /proc/iomem, from the hyp stage 1.

    The hyp stage 1 identity-maps the page of ``__hyp_idmap_text_start`` (the idmap used to
    turn the MMU on), so PA(_text) = PA(that page) - (VA(that symbol) - VA(_text)); the image
    is loaded 2 MiB aligned (arm64 booting.rst, text_offset 0 since v5.8), which picks the
    right page when several leaves happen to have VA == PA.
    """
    first = kallsyms.drop_duplicates("name").set_index("name")["addr"]
    name = "__kvm_nvhe___hyp_idmap_text_start"
    if name not in first or "_text" not in first:
        raise InputError(f"kallsyms: need _text and {name} to place the kernel image")
    sym, text = int(first[name]), int(first["_text"])
    ident = hyp_map[hyp_map["va_start"] == hyp_map["pa"]]
    cands = []
    for pa in ident["pa"].to_numpy(np.uint64).tolist():
        text_pa = pa + (sym & 0xFFF) - (sym - text)
        if text_pa >= 0 and text_pa % 0x200000 == 0:
            cands.append(text_pa)
    if len(set(cands)) != 1:
        raise InputError(
            "cannot place the kernel image from the hyp idmap "
            f"({len(set(cands))} candidates); give /proc/iomem (--iomem)"
        )
    return KernelImage(text, cands[0])


def load_hyp_view(
    memory: Memory,
    ttbr0: int,
    tcr: int,
    layout: KernelLayout,
    *,
    hcr: int | None = None,
    mair: int | None = None,
    e2h: bool | None = None,
    vmemmap_va: int | None = None,
    kallsyms: pd.DataFrame | None = None,
    iomem: pd.DataFrame | None = None,
    pfns: np.ndarray | None = None,
    strict: bool = False,
) -> HypView:
    """Walk the hyp stage 1 and read the vmemmap (when its VA is given or in kallsyms)."""
    cfg = config_from_el2(ttbr0, tcr, e2h=e2h, hcr=hcr, mair=mair)
    hyp = walk_hyp(memory, cfg, hyp_states=layout.hyp_states, strict=strict)
    view = HypView(hyp, layout, notes=list(cfg.notes))
    if kallsyms is not None:
        view.image = (
            KernelImage.from_evidence(kallsyms, iomem)
            if iomem is not None
            else image_from_hyp_idmap(kallsyms, hyp.map)
        )
        if vmemmap_va is None:
            vmemmap_va = int(
                read_symbol_u64(memory, kallsyms, view.image, "__kvm_nvhe___hyp_vmemmap")
            )
    if vmemmap_va is None:
        view.notes.append(
            "hyp_vmemmap not read: give --vmemmap VA or --kallsyms FILE"
            + (
                " (needed for the page states of this kernel)"
                if layout.host_states == "vmemmap" or layout.hyp_states == "vmemmap"
                else ""
            )
        )
        return view
    page = cfg.geometry.granule.value
    want = memory_pfns(memory, page) if pfns is None else pfns
    view.vmemmap = read_vmemmap(
        memory,
        hyp.translate,
        vmemmap_va,
        layout.hyp_page,
        want,
        page_size=page,
        strict=strict,
    )
    return view
