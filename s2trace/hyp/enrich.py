"""A host ownership map enriched with page states: the vmemmap (and, up to v6.15, the hyp
stage 1) read for the pages the map covers, applied by
:func:`s2trace.hyp.host_state.apply_states`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from s2trace.hyp.evidence import read_iomem, read_kallsyms
from s2trace.hyp.host_state import apply_states, page_states
from s2trace.hyp.hyp_view import load_hyp_view, memory_pfns, ram_pfns
from s2trace.hyp.kernel_guess import resolve_layout
from s2trace.hyp.vmemmap import KernelLayout
from s2trace.walk.tables import Memory
from s2trace.walk.walker import WalkResult

__all__ = ["enrich_with_vmemmap"]


def enrich_with_vmemmap(
    walk_result: WalkResult,
    memory: Memory,
    ttbr0: int,
    tcr: int,
    vmemmap_va: int | None = None,
    kallsyms: pd.DataFrame | str | Path | None = None,
    kernel: str | KernelLayout | None = None,
    *,
    iomem: pd.DataFrame | str | Path | None = None,
    hcr: int | None = None,
    e2h: bool | None = None,
) -> pd.DataFrame:
    """The host ownership map of ``walk_result`` with page states from the vmemmap (and, up
    to v6.15, hyp states from the hyp stage 1): HOST_STATE_MAP schema, blocks split where the
    states inside differ.  Without a vmemmap VA (``vmemmap_va`` or ``kallsyms``) on 6.14+,
    ``page_state`` stays ``unknown``.  ``kernel`` None guesses the layout from the dump."""
    ks = read_kallsyms(kallsyms) if isinstance(kallsyms, str | Path) else kallsyms
    io = read_iomem(iomem) if isinstance(iomem, str | Path) else iomem
    layout, _ = resolve_layout(
        kernel, walk_result.map, memory, ttbr0, tcr, hcr, e2h, vmemmap_va, ks, io
    )
    page = walk_result.config.geometry.granule.value
    m = walk_result.map
    start = m["ipa_start"].to_numpy(np.uint64) // np.uint64(page)
    npages = m["size"].to_numpy(np.uint64) // np.uint64(page)
    dump = ram_pfns(io, page) if io is not None else memory_pfns(memory, page)
    inside = np.zeros(dump.size, bool)
    if len(m):
        lo, hi = np.searchsorted(dump, start), np.searchsorted(dump, start + npages)
        marks = np.zeros(dump.size + 1, np.int64)
        np.add.at(marks, lo, 1)
        np.add.at(marks, hi, -1)
        inside = np.cumsum(marks)[:-1] > 0
    pfns = dump[inside]
    view = load_hyp_view(
        memory,
        ttbr0,
        tcr,
        layout,
        hcr=hcr,
        e2h=e2h,
        vmemmap_va=vmemmap_va,
        kallsyms=ks,
        iomem=io,
        pfns=pfns,
    )
    vm = view.vmemmap.frame if view.vmemmap is not None else None
    states = page_states(layout, pfns, m, view.hyp.map, vm, page)
    return apply_states(m, states, page)
