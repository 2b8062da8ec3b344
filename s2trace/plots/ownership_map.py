"""The ownership map: an address × time raster of the timeline coloured by owner/state, on a
compressed address axis (:class:`~s2trace.plots.axes.AddressAxis`), each cell taking the
owner/state covering most of its area (:func:`~s2trace.plots.raster.rasterize`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from s2trace.plots.axes import AddressAxis, address_ticks, window
from s2trace.plots.figure import legend, new_figure
from s2trace.plots.marks import cursor, faults, in_window, lost, with_marks
from s2trace.plots.raster import rasterize
from s2trace.plots.style import FAULT_STYLE, UNTOUCHED, VIOLATION_STYLE, state_labels

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.figure import Figure

__all__ = ["plot_map"]


def plot_map(
    intervals: pd.DataFrame,
    violations: pd.DataFrame | None = None,
    *,
    transitions: pd.DataFrame | None = None,
    at: float | None = None,
    t_from: float | None = None,
    t_to: float | None = None,
    max_pixels: int = 600_000,
    page_size: int = 4096,
) -> Figure:
    """Address × time raster of the ownership timeline, coloured by owner/state.

    The address axis is compressed (:class:`AddressAxis`): regions of touched pages, the
    large gaps between them cut out (white lines), labelled with hex addresses.  The raster
    has at most ``max_pixels`` cells (at most 1000 time columns); each cell takes the
    owner/state covering the largest part of its address × time area among the touched pages
    (untouched pages, host owned throughout, show only where a cell holds no touched page,
    so a lone shared page in a sparse region is not outvoted by its untouched neighbours).
    This downsampling rule is also printed under the plot.
    """
    t_start = intervals["t_start"].to_numpy(dtype=np.float64)
    t_end = intervals["t_end"].to_numpy(dtype=np.float64)
    lo, hi, clock = window(
        with_marks(np.concatenate([t_start, t_end]), violations, transitions),
        t_from,
        t_to,
        at,
    )
    alive = (t_start < hi) & (t_end > lo)
    iv = intervals[alive]
    codes, labels, colors = state_labels(iv)
    cols = int(min(1000, max(max_pixels // 200, 50)))
    rows = int(max(min(600, max_pixels // cols), 20))
    a_start = iv["addr_start"].to_numpy(dtype=np.float64)
    a_end = a_start + iv["size"].to_numpy(dtype=np.float64)
    extra = [
        f
        for f in (in_window(violations, lo, hi), in_window(faults(transitions), lo, hi))
        if f is not None
    ]
    m_start = np.concatenate([a_start, *(f["addr"].to_numpy(np.float64) for f in extra)])
    m_end = np.concatenate(
        [
            a_end,
            *(
                f["addr"].to_numpy(np.float64)
                + np.maximum(f["size"].to_numpy(np.float64), page_size)
                for f in extra
            ),
        ]
    )
    axis = AddressAxis.from_ranges(m_start, m_end, rows, page_size=page_size)
    dt = (hi - lo) / cols
    x0 = np.clip((t_start[alive] - lo) / dt, 0, cols)
    x1 = np.clip((t_end[alive] - lo) / dt, 0, cols)
    area = rasterize(axis(a_start), axis(a_end), x0, x1, codes, len(labels), (axis.rows, cols))
    untouched = (area.sum(axis=0) <= 1e-9).astype(np.float64)  # no touched page in the cell
    winner = np.argmax(np.concatenate([untouched[None], area]), axis=0)

    from matplotlib.colors import to_rgb
    from matplotlib.layout_engine import ConstrainedLayoutEngine
    from matplotlib.patches import Patch

    palette = np.array([to_rgb(c) for c in (UNTOUCHED[1], *colors)])
    image = palette[winner]

    fig = new_figure((11.0, 6.5))
    ax = fig.subplots()
    ax.imshow(
        image,
        origin="lower",
        aspect="auto",
        interpolation="nearest",
        extent=(float(clock(lo)), float(clock(hi)), 0, axis.rows),
        rasterized=True,
    )
    for b in axis.row[1:-1]:
        ax.axhline(b, color="white", lw=3)
        ax.axhline(b, color="#555555", lw=0.8, ls=(0, (4, 3)))
    address_ticks(ax, axis, page_size)
    shown = np.unique(winner)
    handles: list[Any] = [
        Patch(facecolor=c, edgecolor="#999999", lw=0.5, label=lab)
        for j, (lab, c) in enumerate(zip((UNTOUCHED[0], *labels), palette, strict=True))
        if j in shown or (j > 0 and j - 1 in set(codes.tolist()))
    ]
    for frame, style, name in (
        (in_window(violations, lo, hi), VIOLATION_STYLE, "violation"),
        (in_window(faults(transitions), lo, hi), FAULT_STYLE, "access fault"),
    ):
        if frame is None:
            continue
        y = axis(frame["addr"].to_numpy(dtype=np.float64) + page_size / 2)
        (h,) = ax.plot(clock(frame["ts"].to_numpy(np.float64)), y, ls="none", zorder=5, **style)
        h.set_label(f"{name} ({len(frame)})")
        handles.append(h)
    handles += lost(ax, clock, lo, hi, transitions)
    handles += cursor(ax, clock, at)
    ax.set_xlim(clock(lo), clock(hi))
    ax.set_ylim(0, axis.rows)
    ax.set_xlabel(clock.label)
    ax.set_ylabel("physical address (large gaps cut at - - -)")
    ax.set_title("Ownership map")
    legend(ax, handles, "owner, state")
    fig.text(
        0.01,
        0.0,
        f"{axis.rows} × {cols} cells; each shows the owner/state covering most of its "
        "address × time area among the pages the trace touches; lightest grey: no touched page.",
        fontsize=8,
        color="#555555",
        ha="left",
        va="bottom",
    )
    engine = fig.get_layout_engine()
    if isinstance(engine, ConstrainedLayoutEngine):
        engine.set(h_pad=0.25)
    return fig
