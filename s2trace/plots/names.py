"""Words on the map: the text of folded bands and the names of the objects beside the map.

A label (LABELS columns: ``start, end, label``) names a band when it covers most of it; the
name column lists the labels that meet the map's active segments, each with a bracket over its
rows, nearest first and never overlapping.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from s2trace.plots.axes import AddressAxis
from s2trace.plots.focus import Focus
from s2trace.units import fmt_bytes

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.axes import Axes

__all__ = ["band_texts", "draw_names", "label_for"]


def label_for(labels: pd.DataFrame | None, start: float, end: float) -> str | None:
    """The label covering at least 90% of ``[start, end)`` (the tightest), or None."""
    if labels is None or not len(labels):
        return None
    s = labels["start"].to_numpy(np.float64)
    e = labels["end"].to_numpy(np.float64)
    cover = np.clip(np.minimum(e, end) - np.maximum(s, start), 0, None)
    ok = cover >= 0.9 * (end - start)
    if not ok.any():
        return None
    j = np.flatnonzero(ok)[np.argmin((e - s)[ok])]
    return str(labels["label"].iloc[j])


def band_texts(
    ax: Axes,
    axis: AddressAxis,
    fo: Focus,
    names: list[str],
    labels: pd.DataFrame | None,
    clock: Any,
) -> None:
    """Each folded band's text in its middle: size, name (or end state), change time."""
    for s, e, code, t in zip(fo.band_start, fo.band_end, fo.band_code, fo.band_t, strict=True):
        i = int(np.searchsorted(axis.start, s, side="right") - 1)
        what = label_for(labels, s, e) or (names[code] if 0 <= code < len(names) else "?")
        since = f" since t = {clock.text(t)} s" if np.isfinite(t) else ""
        ax.text(
            0.5,
            (axis.row[i] + axis.row[i + 1]) / 2,
            f"{fmt_bytes(e - s, compact=True)} {what}{since}, unchanged (folded)",
            transform=ax.get_yaxis_transform(),
            ha="center",
            va="center",
            fontsize=8,
            color="#222222",
            bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "#999999", "alpha": 0.85},
            zorder=6,
        )


def draw_names(ax: Axes, axis: AddressAxis, labels: pd.DataFrame) -> None:
    """The labels meeting active segments, as bracketed names in their own column."""
    ax.set_axis_off()
    ax.set_xlim(0, 1)
    s = labels["start"].to_numpy(np.float64)
    e = labels["end"].to_numpy(np.float64)
    active = ~axis.folded
    i = np.clip(np.searchsorted(axis.start, s, side="right") - 1, 0, len(axis.start) - 1)
    inside = active[i] & (s >= axis.start[i]) & (e <= axis.end[i])
    y0, y1 = axis(s[inside]), axis(e[inside])
    text = labels["label"].astype(str).to_numpy()[inside]
    order = np.argsort((y0 + y1) / 2, kind="stable")
    min_gap = axis.rows / 34
    last = -np.inf
    seen: set[str] = set()
    for k in order:
        mid = (y0[k] + y1[k]) / 2
        if mid - last < min_gap or (text[k] in seen and mid - last < 3 * min_gap):
            continue
        inset = min(0.15 * (y1[k] - y0[k]), axis.rows / 150)
        top = max(y1[k] - inset, y0[k] + inset + 0.3)
        ax.plot(
            [0.05, 0.02, 0.02, 0.05],
            [y0[k] + inset, y0[k] + inset, top, top],
            color="#444444",
            lw=1.2,
        )
        name = text[k] if len(text[k]) <= 34 else text[k][:33] + "…"
        ax.text(0.06, mid, name, va="center", ha="left", fontsize=7.5, color="#222222")
        last = mid
        seen.add(text[k])
    ax.set_title("objects (from the labels)", fontsize=8.5, loc="left", color="#444444")
