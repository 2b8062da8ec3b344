"""Address-range operations on ownership maps (vectorised interval sweeps).

:func:`clip_map` cuts a map to the ranges another table covers -- e.g. a dump's map to the
pages a trace touched, before :func:`~s2trace.trace.queries.diff_maps` compares them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from s2trace.intervals import covering, distinct

__all__ = ["clip_map"]


def clip_map(frame: pd.DataFrame, cover: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``frame`` cut to the address ranges of ``cover`` (both with ipa_start and
    size; ``cover``'s rows may touch but not overlap).  Returns ipa_start, size, owner and
    page_state -- what :func:`~s2trace.trace.queries.diff_maps` compares.  One interval sweep
    over the union of both frames' boundaries (no loop per row)."""
    f = frame.sort_values("ipa_start", kind="stable")
    c = cover.sort_values("ipa_start", kind="stable")
    fs = f["ipa_start"].to_numpy(np.uint64)
    fe = fs + f["size"].to_numpy(np.uint64)
    cs = c["ipa_start"].to_numpy(np.uint64)
    ce = cs + c["size"].to_numpy(np.uint64)
    bounds = distinct(np.concatenate([fs, fe, cs, ce]))
    if bounds.size < 2 or fs.size == 0:
        return pd.DataFrame(
            {
                "ipa_start": np.empty(0, np.uint64),
                "size": np.empty(0, np.uint64),
                "owner": pd.Categorical([]),
                "page_state": pd.Categorical([]),
            }
        )
    seg_s, seg_e = bounds[:-1], bounds[1:]

    row = covering(fs, fe, seg_s)
    keep = np.flatnonzero((row >= 0) & (covering(cs, ce, seg_s) >= 0))
    take = row[keep]
    return pd.DataFrame(
        {
            "ipa_start": seg_s[keep],
            "size": (seg_e - seg_s)[keep],
            "owner": f["owner"].array.take(take),
            "page_state": f["page_state"].array.take(take),
        }
    )
