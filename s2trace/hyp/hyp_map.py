"""The hyp stage-1 map for people: page states from the hyp_vmemmap, equal neighbours merged.

* :func:`vmemmap_states` fills ``hyp_state`` from the vmemmap on kernels that keep the hyp
  page state there (v6.16+, where the PTE software bits are unused): a leaf takes the state of
  its pages when they all agree, ``mixed`` when they do not, ``unknown`` when the vmemmap
  holds none of them.
* :func:`coalesce_hyp` merges leaves that continue each other (VA and PA contiguous, every
  attribute equal), so 600 pages of hyp .text read as one row.

Vectorised: ``searchsorted`` over the vmemmap's PFNs and a cumulative count of state changes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["coalesce_hyp", "vmemmap_states"]

#: Columns that may differ inside a merged row (provenance of its first leaf is kept).
_PROVENANCE = ("va_start", "size", "pa", "raw", "table_pa", "index", "level", "kind")


def vmemmap_states(hyp_map: pd.DataFrame, vmemmap: pd.DataFrame, page_size: int) -> pd.DataFrame:
    """``hyp_map`` with ``hyp_state`` read from ``vmemmap`` (VMEMMAP, indexed by PFN)."""
    out = hyp_map.copy()
    if not len(out) or not len(vmemmap):
        return out
    pfn = np.asarray(vmemmap.index, dtype=np.int64)
    order = np.argsort(pfn, kind="stable")
    pfn = pfn[order]
    state = vmemmap["hyp_state"].astype("object").fillna("unknown").to_numpy()[order]
    codes, names = pd.factorize(state)
    first = out["pa"].to_numpy(np.int64) // page_size
    last = first + out["size"].to_numpy(np.int64) // page_size  # exclusive
    i0 = np.searchsorted(pfn, first)
    i1 = np.searchsorted(pfn, last)
    changes = np.r_[0, np.cumsum(codes[1:] != codes[:-1])]
    have = i1 > i0
    j0 = np.minimum(i0, len(pfn) - 1)
    j1 = np.maximum(np.minimum(i1 - 1, len(pfn) - 1), 0)
    uniform = changes[j1] == changes[j0]
    complete = (i1 - i0) == (last - first)
    text = np.where(have, np.asarray(names, dtype=object)[codes[j0]], "unknown")
    text = np.where(have & ~uniform, "mixed", text)
    text = np.where(have & uniform & ~complete, text + " (part read)", text)
    out["hyp_state"] = pd.Categorical(text)
    return out


def coalesce_hyp(hyp_map: pd.DataFrame) -> pd.DataFrame:
    """Leaves merged with the one before when VA and PA continue it and every other column
    (attributes, state, label) is equal; ``size`` is the merged size."""
    if len(hyp_map) < 2:
        return hyp_map.copy()
    df = hyp_map.reset_index(drop=True)
    va = df["va_start"].to_numpy(np.uint64)
    pa = df["pa"].to_numpy(np.uint64)
    size = df["size"].to_numpy(np.uint64)
    cont = (va[1:] == va[:-1] + size[:-1]) & (pa[1:] == pa[:-1] + size[:-1])
    for col in df.columns:
        if col in _PROVENANCE:
            continue
        a = df[col].astype("object").to_numpy()
        same = pd.isna(a[1:]) & pd.isna(a[:-1])
        same |= ~pd.isna(a[1:]) & ~pd.isna(a[:-1]) & (a[1:] == a[:-1])
        cont &= same.astype(bool)
    head = np.r_[True, ~cont]
    group = np.cumsum(head) - 1
    out = df[head].reset_index(drop=True)
    out["size"] = np.bincount(group, weights=size.astype(np.float64)).astype(np.uint64)
    return out
