"""Hyp memcache pages a trace cannot name, and the dump that names them.

On 7.x the host tops up the hypervisor's memcache (``topup_hyp_memcache(mc, min_pages)``);
the hypervisor takes those pages (e.g. for a guest's stage-2 tables) without a host call that
a probe could see page by page.  A trace that has only the top-up therefore knows *that* N
pages were donated, not *which*: those pages are ``unknown`` until the trace (the
``hyp_memcache_alloc`` recipe, on kernels where ``hyp_mc_alloc_fn`` is probed) or a dump (the
hypervisor's VM table and guest stage 2s: :func:`s2trace.hyp.guests.find_guests`) names them.
:func:`unnamed_topups` finds the top-ups no transition names; :func:`name_untraced` labels
the hyp-owned ranges of a dump that the trace never mentions, using the guests' table pages.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from s2trace.columns import TOPUPS

__all__ = ["TOPUPS", "name_untraced", "unnamed_topups"]

_TOPUP_EVENTS = ("s2_topup_hyp_memcache", "topup_hyp_memcache")
_NAMING_RECIPES = ("hyp_memcache_alloc", "hyp_memcache_topup_page")


def unnamed_topups(events: pd.DataFrame, transitions: pd.DataFrame) -> pd.DataFrame:
    """Top-up events when no transition names memcache pages (TOPUPS schema)."""
    named = (
        transitions["recipe"].astype("string").isin(_NAMING_RECIPES).any()
        if len(transitions)
        else False
    )
    sel = events["event"].astype("string").isin(_TOPUP_EVENTS).fillna(False).to_numpy()
    if named or not sel.any():
        return TOPUPS.empty()
    rows = events[sel]
    pages = rows["fields"].astype("string").str.extract(r"min_pages=(0x[0-9a-fA-F]+|\d+)")[0]
    count = pd.array([int(p, 0) if isinstance(p, str) else None for p in pages], dtype="Int64")
    out = pd.DataFrame(
        {
            "ts": rows["ts"].to_numpy(np.float64),
            "line": rows["line"].to_numpy(np.int64),
            "pages": count,
        }
    )
    TOPUPS.check(out)
    return out


def name_untraced(untraced: pd.DataFrame, guests: Any) -> pd.DataFrame:
    """``untraced`` (map-diff rows the trace never mentions) with a ``named_by_dump`` column:
    the VM whose stage-2 table page each range holds, from ``guests``
    (:class:`s2trace.hyp.guests.GuestsResult`), else <NA>."""
    out = untraced.copy()
    label = pd.Series(pd.NA, index=out.index, dtype="string")
    if guests is not None and len(out):
        start = out["ipa_start"].to_numpy(np.uint64)
        end = start + out["size"].to_numpy(np.uint64)
        for handle, gw in guests.walks.items():
            pas = gw.tables["pa"].to_numpy(np.uint64)
            hit = ((pas[None, :] >= start[:, None]) & (pas[None, :] < end[:, None])).any(axis=1)
            label[hit] = f"stage-2 tables of VM {int(handle):#x}"
    out["named_by_dump"] = label
    return out
