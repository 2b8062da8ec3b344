"""Uncertain transitions settled by a map taken after the trace (a dump).

A row whose basis starts with ``uncertain:`` (a memcache page a refill may or may not have
taken, :mod:`.memcache`) says what *may* have happened in its window.  When no later row touches
its pages, a map taken after the trace shows which it was: the pages still in the state before
the row (the host owns them) -> it never happened and the row is dropped; the pages in the state
after it (the completer owns them) -> it happened within the window, and the basis says the map
showed it.  Anything else is left as it was (the replay's end check then reports it).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["UNCERTAIN_PREFIX", "settle_by_map"]

UNCERTAIN_PREFIX = "uncertain:"


def _rank(df: pd.DataFrame) -> np.ndarray:
    """Replay order of each row (ts, then event_index, then position)."""
    order = np.lexsort((np.arange(len(df)), df["event_index"].to_numpy(), df["ts"].to_numpy()))
    rank = np.empty(len(df), dtype=np.int64)
    rank[order] = np.arange(len(df))
    return rank


def settle_by_map(
    transitions: pd.DataFrame, end_map: pd.DataFrame, map_basis: str, page_size: int
) -> tuple[pd.DataFrame, dict[str, int]]:
    """``transitions`` with its uncertain rows settled by ``end_map`` (MAP columns
    ``ipa_start, size, owner, page_state``), and counts of what was settled."""
    basis = transitions["basis"]
    cats = [str(c) for c in basis.cat.categories]
    unsure_codes = [i for i, c in enumerate(cats) if c.startswith(UNCERTAIN_PREFIX)]
    counts = {"dropped": 0, "confirmed": 0, "left": 0}
    if not unsure_codes or not len(end_map):
        return transitions, counts
    codes = basis.cat.codes.to_numpy()
    unsure = np.flatnonzero(np.isin(codes, unsure_codes))
    ps = np.uint64(page_size)
    addr = transitions["addr"].to_numpy(np.uint64)
    size = transitions["size"].to_numpy(np.uint64)
    first, count = addr // ps, size // ps
    # the uncertain rows' pages (few), and every row touching one of them
    u_count = count[unsure].astype(np.int64)
    u_row = np.repeat(unsure, u_count)
    u_page = np.repeat(first[unsure], u_count) + (
        np.arange(int(u_count.sum())) - np.repeat(np.cumsum(u_count) - u_count, u_count)
    ).astype(np.uint64)
    pages = np.unique(u_page)
    touch = np.searchsorted(pages, first + count) - np.searchsorted(pages, first) > 0
    touch &= count > 0
    rank = _rank(transitions)
    t_rows = np.flatnonzero(touch)
    latest: dict[int, int] = {}
    t_count = count[t_rows].astype(np.int64)
    t_row = np.repeat(t_rows, t_count)
    t_page = np.repeat(first[t_rows], t_count) + (
        np.arange(int(t_count.sum())) - np.repeat(np.cumsum(t_count) - t_count, t_count)
    ).astype(np.uint64)
    last = pd.Series(rank[t_row]).groupby(t_page).max()
    latest = dict(zip(last.index.astype(np.uint64).tolist(), last.tolist(), strict=True))
    owner, state = _map_state(end_map, u_page * ps)
    completer = transitions["completer"].astype("object").to_numpy()
    frame = pd.DataFrame(
        {
            "row": u_row,
            "later": [latest[int(p)] > rank[r] for p, r in zip(u_page, u_row, strict=True)],
            "before": (owner == "host") & (state == "owned"),
            "after": owner == completer[u_row],
        }
    )
    per_row = frame.groupby("row").agg(
        later=("later", "any"), before=("before", "all"), after=("after", "all")
    )
    drop = per_row.index[~per_row["later"] & per_row["before"]].to_numpy()
    keep = per_row.index[~per_row["later"] & ~per_row["before"] & per_row["after"]].to_numpy()
    left = len(per_row) - len(drop) - len(keep)
    counts = {"dropped": len(drop), "confirmed": len(keep), "left": left}
    out = transitions
    if len(keep):
        new = basis.astype("object").to_numpy().copy()
        for i in keep:
            new[i] = (
                f"rule: it happened between t_earliest and this line: the trace alone could "
                f"not tell, {map_basis} shows the page the {completer[i]}'s"
            )
        out = out.assign(basis=pd.Categorical(new))
    if len(drop):
        out = out.drop(index=out.index[drop]).reset_index(drop=True)
    return out, counts


def _map_state(end_map: pd.DataFrame, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Owner and host page state of the map at each address; an address no range covers is the
    host's (the host stage 2 maps host memory lazily: no entry yet)."""
    m = end_map.sort_values("ipa_start")
    start = m["ipa_start"].to_numpy(np.uint64)
    stop = start + m["size"].to_numpy(np.uint64)
    i = np.searchsorted(start, at, "right") - 1
    inside = (i >= 0) & (at < stop[np.maximum(i, 0)])
    owner = np.where(inside, m["owner"].astype("object").to_numpy()[np.maximum(i, 0)], "host")
    state = np.where(inside, m["page_state"].astype("object").to_numpy()[np.maximum(i, 0)], "owned")
    return owner, state
