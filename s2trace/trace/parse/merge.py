"""Two EVENTS tables on one clock merged into one, in time order.

The hypervisor's trace buffer (ACK ``hypervisor/trace``, 7.1+ ``remotes/hypervisor/trace``) is
a file of its own; its ``hyp_enter``/``hyp_exit``/``host_hcall`` events can pin the hypercalls
that the host trace only brackets (:mod:`s2trace.trace.recipes.pin`).  Both must use the same
clock: the hypervisor's is boot time, so the host must have traced with ``trace_clock=boot``
(docs/kernel-facts.md §KF-4.3).  Rows keep their own ``line`` (a line of their own file); a
lost-events marker (no time of its own) keeps its place after the previous event of its file.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pandas.api.types import union_categoricals

from s2trace.columns import EVENTS

__all__ = ["merge_events"]


def merge_events(first: pd.DataFrame, second: pd.DataFrame) -> pd.DataFrame:
    """EVENTS of both tables, ordered by time (ties: ``first``'s rows, then file order)."""
    EVENTS.check(first)
    EVENTS.check(second)
    if not len(second):
        return first
    if not len(first):
        return second
    keys = [
        pd.Series(df["ts"].to_numpy(np.float64)).ffill().fillna(-np.inf).to_numpy()
        for df in (first, second)
    ]
    key = np.concatenate(keys)
    source = np.r_[np.zeros(len(first), np.int8), np.ones(len(second), np.int8)]
    position = np.r_[np.arange(len(first)), np.arange(len(second))]
    order = np.lexsort((position, source, key))
    event = union_categoricals(
        [first["event"].astype("category"), second["event"].astype("category")]
    )
    both = pd.concat([first.drop(columns="event"), second.drop(columns="event")], ignore_index=True)
    both.insert(list(EVENTS.names).index("event"), "event", pd.Series(event))
    out = both.iloc[order].reset_index(drop=True)
    EVENTS.check(out)
    return out
