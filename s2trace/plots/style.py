"""Colours, labels and marker styles shared by every plot, and the owner/state key.

The same owner/state gets the same label and colour in every plot (:func:`state_labels`);
violations and access faults use the same markers everywhere.  No matplotlib here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "CHURN_OPS",
    "EXTRA_COLORS",
    "FAULT_STYLE",
    "FIGSIZE",
    "GUEST_COLORS",
    "OP_COLORS",
    "PEER_COLORS",
    "STATES",
    "UNTOUCHED",
    "VIOLATION_STYLE",
    "peer_color",
    "state_labels",
    "str_values",
]

#: The operations the churn plot counts, in stacking order.
CHURN_OPS: tuple[str, ...] = ("donate", "share", "unshare", "reclaim")
OP_COLORS = {
    "donate": "#76b7b2",
    "share": "#f28e2b",
    "unshare": "#edc948",
    "reclaim": "#b07aa1",
}
PEER_COLORS = {"hyp": "#4e79a7", "ffa": "#9c755f", "unknown": "#bab0ac"}
GUEST_COLORS = ("#59a14f", "#8cd17d", "#2f6b2a", "#b6d7a8", "#86bcb6", "#499894")

# (owner, host_state, peer) -> (label, colour).  Shares of a host page are light tints of the
# borrower's colour, pages donated to a component its full colour, pages lent back to the
# host orange; untouched/host owned is grey.  Order = stacking order (bottom first).
STATES: dict[tuple[str, str, str], tuple[str, str]] = {
    ("host", "owned", ""): ("host owned", "#cfcfcf"),
    ("host", "shared_owned", "hyp"): ("host, shared with hyp", "#a0cbe8"),
    ("host", "shared_owned", "guest"): ("host, shared with guest", "#b6e3a8"),
    ("host", "shared_owned", "ffa"): ("host, shared with ffa", "#d4b9e8"),
    ("hyp", "nopage", "hyp"): ("hyp owned", "#4e79a7"),
    ("guest", "nopage", "guest"): ("guest owned", "#3d8b37"),
    ("ffa", "nopage", "ffa"): ("ffa owned", "#8c5fb0"),
    ("hyp", "shared_borrowed", "hyp"): ("hyp owned, lent to host", "#f28e2b"),
    ("guest", "shared_borrowed", "guest"): ("guest owned, lent to host", "#ffbe7d"),
}
EXTRA_COLORS = ("#bab0ac", "#9c755f", "#ff9da7", "#76b7b2", "#e15759", "#edc948")
UNTOUCHED = ("not touched (host owned)", "#f3f3f3")
VIOLATION_STYLE: dict[str, Any] = {
    "marker": "X",
    "color": "#d62728",
    "markeredgecolor": "white",
    "ms": 9,
}
FAULT_STYLE: dict[str, Any] = {"marker": "v", "color": "black", "markeredgecolor": "white", "ms": 8}
FIGSIZE = (11.0, 6.0)


def str_values(col: pd.Series) -> np.ndarray:
    """A categorical/string column as an object array with '' for <NA>."""
    return col.astype("object").where(col.notna(), "").to_numpy(dtype=object)


def state_labels(intervals: pd.DataFrame) -> tuple[np.ndarray, list[str], list[str]]:
    """(code per interval row, label per code, colour per code) of the owner/state pairs.

    The key is (owner, host_state, peer); known pKVM states get fixed labels and colours (the
    same in every plot), anything else ``"owner / host state"`` with a spare colour.
    """
    if len(intervals) == 0:
        return np.zeros(0, dtype=np.int64), [], []
    key = pd.Series(
        str_values(intervals["owner"])
        + "|"
        + str_values(intervals["host_state"])
        + "|"
        + np.where(
            str_values(intervals["host_state"]) == "owned",
            "",
            str_values(intervals["peer"]),
        )
    )
    known = ["|".join(k) for k in STATES]
    present = set(key.unique())
    order = [k for k in known if k in present] + sorted(present - set(known))
    codes = pd.Categorical(key, categories=order).codes.astype(np.int64)
    labels, colors = [], []
    spare = iter(EXTRA_COLORS * 4)
    for k in order:
        owner, state, peer = k.split("|")
        if (owner, state, peer) in STATES:
            label, color = STATES[(owner, state, peer)]
        else:
            label, color = f"{owner} / host {state}", next(spare)
        labels.append(label)
        colors.append(color)
    return codes, labels, colors


def peer_color(peer: str, i: int) -> str:
    """Colour of a churn peer: fixed for hyp/ffa/unknown, the ``i``-th guest or spare colour
    otherwise."""
    if peer in PEER_COLORS:
        return PEER_COLORS[peer]
    if peer.startswith("guest"):
        return GUEST_COLORS[i % len(GUEST_COLORS)]
    return EXTRA_COLORS[i % len(EXTRA_COLORS)]
