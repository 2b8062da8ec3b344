"""VM teardown: the hypercall gives back every page donated for the VM, traced or not.

A recipe with ``scope = "vm"`` (``hyp_vm_teardown``: ``pkvm_destroy_hyp_vm(host_kvm)``) makes
one row that stands for the teardown of the VM keyed by its ``struct kvm`` (column ``vm``).
:func:`expand_vm_scope` replaces it by one reclaim hyp -> host per donation made for that VM
since its previous teardown (VM struct, stage-2 pgd, vCPUs, memcache top-ups: every row with
``op`` donate, completer hyp and the same ``vm``), all timed at the teardown row.

Kernel facts (docs/kernel-facts.md §KF-3.5, §KF-3.7): ``pkvm_destroy_hyp_vm`` issues the
teardown hypercall (``__pkvm_teardown_vm`` up to 7.0; ``__pkvm_finalize_teardown_vm`` after
``__pkvm_start_teardown_vm`` in the 7.1-era tree), which donates the hyp VM, the hyp vCPUs,
the stage-2 pgd, the guest stage-2 tables and the pages left in the vCPUs' memcaches back to
the host, into the VM's teardown memcaches; only then does the host call
``free_hyp_memcache()`` on them (``arch/arm64/kvm/pkvm.c``, torvalds/linux @00b0300cf1e2;
``arch/arm64/kvm/hyp/nvhe/pkvm.c`` @03313efed5e2).  So a ``free_pages`` under
``free_hyp_memcache`` only confirms what the hypercall did: such reclaim rows whose page the
teardown already gave back become ``confirm`` rows (they change nothing).
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import pandas as pd

__all__ = ["expand_vm_scope"]


def _rank(df: pd.DataFrame) -> np.ndarray:
    """Replay order of each row (ts, then event_index, then position)."""
    order = np.lexsort((np.arange(len(df)), df["event_index"].to_numpy(), df["ts"].to_numpy()))
    rank = np.empty(len(df), dtype=np.int64)
    rank[order] = np.arange(len(df))
    return rank


def expand_vm_scope(df: pd.DataFrame, scope: Collection[str], page_size: int) -> pd.DataFrame:
    """TRANSITIONS with every row of a ``scope`` recipe replaced by the reclaims it stands for,
    and reclaims of pages a teardown already gave back turned into ``confirm`` rows."""
    cats = df["recipe"].cat.categories
    if not len(df) or not any(name in cats for name in scope):  # no copy of a big column
        return df
    recipe = df["recipe"].astype("object").to_numpy()
    is_scope = np.isin(recipe, list(scope))
    if not is_scope.any():
        return df
    rank = _rank(df)
    op = df["op"].astype("object").to_numpy()
    completer = df["completer"].astype("object").to_numpy()
    vm = df["vm"].to_numpy(dtype="float64", na_value=np.nan)
    donor = (op == "donate") & (completer == "hyp") & ~np.isnan(vm) & ~is_scope
    tear = pd.DataFrame({"row": np.flatnonzero(is_scope), "vm": vm[is_scope]})
    tear["rank"] = rank[tear["row"]]
    tear = tear.dropna(subset=["vm"]).sort_values("rank")
    tear["prev"] = tear.groupby("vm")["rank"].shift(1).fillna(-1).astype(np.int64)
    gift = pd.DataFrame({"drow": np.flatnonzero(donor), "vm": vm[donor]})
    gift["drank"] = rank[gift["drow"]]
    pairs = gift.merge(tear, on="vm")
    pairs = pairs[(pairs["drank"] < pairs["rank"]) & (pairs["drank"] > pairs["prev"])]
    back = df.iloc[pairs["row"].to_numpy()].reset_index(drop=True)
    src = df.iloc[pairs["drow"].to_numpy()]
    back["addr"] = src["addr"].to_numpy()
    back["size"] = src["size"].to_numpy()
    keep = df[~is_scope]
    out = pd.concat([keep, back], ignore_index=True)
    out = out.iloc[np.lexsort((np.arange(len(out)), out["event_index"].to_numpy()))]
    out = out.reset_index(drop=True)
    return _confirmations(out, set(back["recipe"].astype("object")) if len(back) else set(),
                          page_size)  # fmt: skip


def _confirmations(df: pd.DataFrame, scope: set[str], page_size: int) -> pd.DataFrame:
    """Reclaim hyp -> host rows (not from a teardown) whose first page's latest earlier
    donation-or-teardown event is a teardown become ``confirm`` rows."""
    if not scope:
        return df
    recipe = df["recipe"].astype("object").to_numpy()
    op = df["op"].astype("object").to_numpy()
    ini = df["initiator"].astype("object").to_numpy()
    com = df["completer"].astype("object").to_numpy()
    torn = np.isin(recipe, list(scope))
    gift = (op == "donate") & (com == "hyp")
    reclaim = (op == "reclaim") & (ini == "hyp") & (com == "host") & ~torn
    if not reclaim.any():
        return df
    rank = _rank(df)
    ps = np.uint64(page_size)
    marks = np.flatnonzero(torn | gift)
    first = (df["addr"].to_numpy(np.uint64)[marks] // ps).astype(np.int64)
    count = (df["size"].to_numpy(np.uint64)[marks] // ps).astype(np.int64)
    rows = np.repeat(marks, count)
    page = np.repeat(first, count) + (
        np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    )
    events = pd.DataFrame({"page": page, "rank": rank[rows], "torn": torn[rows]})
    asks = np.flatnonzero(reclaim)
    query = pd.DataFrame(
        {
            "page": (df["addr"].to_numpy(np.uint64)[asks] // ps).astype(np.int64),
            "rank": rank[asks],
            "pos": asks,
        }
    )
    m = pd.merge_asof(
        query.sort_values("rank"),
        events.sort_values("rank"),
        on="rank",
        by="page",
        direction="backward",
        allow_exact_matches=False,
    )
    hit = m.loc[m["torn"].fillna(False).astype(bool), "pos"].to_numpy()
    if len(hit):
        new_op = df["op"].astype("object").to_numpy().copy()
        new_op[hit] = "confirm"
        df = df.assign(op=pd.Categorical(new_op, categories=df["op"].cat.categories))
    return df
