"""The ownership map: an address × time raster of the timeline coloured by owner/state.

The address axis gives its area to what changes (:mod:`.focus`): the ranges the trace
changes in the window and every page a violation or fault names; quiet ranges of 1 MiB or more
are folded into labelled bands, untouched gaps cut out and labelled.  Each cell takes the
owner/state covering most of its area (:func:`~s2trace.plots.raster.rasterize`).  Objects are
named from ``labels`` in a column beside the map; violations are marked on their page with
their check and address.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from s2trace.intervals import distinct
from s2trace.plots.axes import AddressAxis, address_ticks, span_text, window
from s2trace.plots.figure import new_figure, title_text
from s2trace.plots.focus import FOLD_MIN_BYTES, focus
from s2trace.plots.marks import cursor, faults, in_window, lost, with_marks
from s2trace.plots.names import band_texts, draw_names
from s2trace.plots.raster import rasterize
from s2trace.plots.style import FAULT_STYLE, UNTOUCHED, VIOLATION_STYLE, state_labels
from s2trace.units import fmt_bytes

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_map"]


def _in_range(frame: pd.DataFrame | None, lo: int, hi: int, col: str) -> pd.DataFrame | None:
    """Rows of ``frame`` whose ``[col, col + size)`` meets ``[lo, hi)``."""
    if frame is None or not len(frame):
        return frame
    a = frame[col].to_numpy(np.float64)
    b = a + frame["size"].to_numpy(np.float64)
    sub = frame[(b > lo) & (a < hi)]
    return sub if len(sub) else None


def _marks(
    violations: pd.DataFrame | None, transitions: pd.DataFrame | None, lo: float, hi: float
) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """Violations and access faults in the window; a fault that is itself a violation (same
    time, same page) is drawn once, as the violation."""
    vio = in_window(violations, lo, hi)
    flt = in_window(faults(transitions), lo, hi)
    if vio is not None and flt is not None:
        key_v = {(round(float(t), 9), int(a)) for t, a in zip(vio["ts"], vio["addr"], strict=True)}
        keep = [
            (round(float(t), 9), int(a)) not in key_v
            for t, a in zip(flt["ts"], flt["addr"], strict=True)
        ]
        flt = flt[np.array(keep, dtype=bool)]
        flt = flt if len(flt) else None
    return vio, flt


def _draw_cuts(ax: Axes, axis: AddressAxis) -> None:
    """Segment boundaries: a cut gap (white line, dashed, its size written on it) or, between
    touching segments, a thin line."""
    last, side = -np.inf, 0
    for b, gap in zip(axis.row[1:-1], axis.gaps(), strict=True):
        if gap > 0:
            side = (side + 1) % 2 if b - last < axis.rows / 30 else 0
            last = b
            ax.axhline(b, color="white", lw=4, zorder=3)
            ax.axhline(b, color="#555555", lw=0.8, ls=(0, (4, 3)), zorder=3)
            ax.annotate(
                f"{fmt_bytes(gap, compact=True)} unchanged (cut)",
                (1.0 - side, b),
                xycoords=("axes fraction", "data"),
                xytext=(-4 if side == 0 else 4, 0),
                textcoords="offset points",
                ha="right" if side == 0 else "left",
                va="center",
                fontsize=7,
                color="#444444",
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.9},
                zorder=6,
            )
        else:
            ax.axhline(b, color="#777777", lw=0.6, zorder=3)


def _draw_marks(ax: Axes, axis: AddressAxis, clock: Any, vio: Any, flt: Any, page: int) -> list:
    """Violations (annotated with check and page when few) and access faults, on their page;
    never clipped at the frame."""
    handles = []
    for frame, style, name in ((vio, VIOLATION_STYLE, "violation"), (flt, FAULT_STYLE, "fault")):
        if frame is None:
            continue
        addr = frame["addr"].to_numpy(dtype=np.float64)
        y = axis(addr + page / 2)
        x = clock(frame["ts"].to_numpy(np.float64))
        (h,) = ax.plot(x, y, ls="none", zorder=7, clip_on=False, **style)
        h.set_label(f"{'access fault' if name == 'fault' else name} ({len(frame)})")
        handles.append(h)
        if name == "violation" and len(frame) <= 12:
            checks = frame["check"].astype(str).to_numpy()
            for k, (xi, yi, c, a) in enumerate(zip(x, y, checks, addr, strict=True)):
                ax.annotate(
                    f"{c}\n{int(a):#x}",
                    (xi, yi),
                    xytext=(-8, 10 if k % 2 == 0 else -22),
                    textcoords="offset points",
                    ha="right",
                    fontsize=7.5,
                    color="#b01515",
                    bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "#d62728", "lw": 0.6},
                    arrowprops={"arrowstyle": "-", "color": "#d62728", "lw": 0.7},
                    zorder=8,
                    annotation_clip=False,
                )
    return handles


def plot_map(
    intervals: pd.DataFrame,
    violations: pd.DataFrame | None = None,
    *,
    transitions: pd.DataFrame | None = None,
    at: float | None = None,
    t_from: float | None = None,
    t_to: float | None = None,
    addr_range: tuple[int, int] | None = None,
    labels: pd.DataFrame | None = None,
    meta: Mapping[str, Any] | None = None,
    max_pixels: int = 600_000,
    page_size: int = 4096,
    fold_min_bytes: float = FOLD_MIN_BYTES,
) -> Figure:
    """Address × time raster of the ownership timeline, coloured by owner/state.

    Time is in the trace's own seconds.  ``addr_range`` (start, end) zooms by physical
    address.  The address axis (module docstring) gives its rows to the ranges that change in
    the window and the pages violations and faults name; quiet ranges of ``fold_min_bytes``
    or more become labelled bands; untouched gaps are cut and their size written on the cut.
    The raster has at most ``max_pixels`` cells (at most 1000 time columns); each cell takes
    the owner/state covering the largest part of its address × time area among the touched
    pages (printed under the plot).  ``labels`` (LABELS columns: start, end, label) name the
    objects beside the map; ``meta`` (an analysis's meta) names the capture and kernel in the
    title.
    """
    if addr_range is not None:
        lo_a, hi_a = int(addr_range[0]), int(addr_range[1])
        if hi_a <= lo_a:
            raise ValueError(f"empty address range {lo_a:#x}-{hi_a:#x}")
        zoomed = _in_range(intervals, lo_a, hi_a, "addr_start")
        if zoomed is None:
            raise ValueError(f"the trace touches nothing in {lo_a:#x}-{hi_a:#x}")
        intervals = zoomed
        violations = _in_range(violations, lo_a, hi_a, "addr")
        transitions = _in_range(transitions, lo_a, hi_a, "addr")
    t_start = intervals["t_start"].to_numpy(dtype=np.float64)
    t_end = intervals["t_end"].to_numpy(dtype=np.float64)
    all_times = with_marks(np.concatenate([t_start, t_end]), violations, transitions)
    lo, hi, clock = window(all_times, t_from, t_to, at)
    alive = (t_start < hi) & (t_end > lo)
    iv = intervals[alive]
    codes, names, colors = state_labels(iv)
    cols = int(min(1000, max(max_pixels // 200, 50)))
    rows = int(max(min(600, max_pixels // cols), 20))
    a_start = iv["addr_start"].to_numpy(dtype=np.float64)
    a_end = a_start + iv["size"].to_numpy(dtype=np.float64)
    if addr_range is not None:
        a_start, a_end = np.clip(a_start, lo_a, hi_a), np.clip(a_end, lo_a, hi_a)
    vio, flt = _marks(violations, transitions, lo, hi)
    marked = [f for f in (vio, flt) if f is not None]
    m_start = np.concatenate([np.zeros(0), *(f["addr"].to_numpy(np.float64) for f in marked)])
    m_end = m_start + page_size
    fo = focus(
        a_start,
        a_end,
        t_start[alive],
        t_end[alive],
        codes.astype(np.float64),
        lo,
        hi,
        m_start,
        m_end,
        min_bytes=fold_min_bytes,
        plain=names.index("host owned") if "host owned" in names else -1,
    )
    axis = AddressAxis.from_ranges(
        fo.active_start,
        fo.active_end,
        rows,
        page_size=page_size,
        band_start=fo.band_start,
        band_end=fo.band_end,
        busy=fo.active_busy,
        own_rows=(m_start, m_end) if len(distinct(m_start)) <= 12 else None,
    )
    dt = (hi - lo) / cols
    x0 = np.clip((t_start[alive] - lo) / dt, 0, cols)
    x1 = np.clip((t_end[alive] - lo) / dt, 0, cols)
    y0, y1, keep = axis.clip(a_start, a_end)
    area = rasterize(y0, y1, x0[keep], x1[keep], codes[keep], len(names), (axis.rows, cols))
    untouched = (area.sum(axis=0) <= 1e-9).astype(np.float64)  # no touched page in the cell
    winner = np.argmax(np.concatenate([untouched[None], area]), axis=0)

    from matplotlib.colors import to_rgb
    from matplotlib.patches import Patch

    palette = np.array([to_rgb(c) for c in (UNTOUCHED[1], *colors)])
    fig = new_figure((12.5, 7.5))
    named = labels is not None and len(labels) > 0
    grid = fig.add_gridspec(1, 2 if named else 1, width_ratios=[5, 1.4] if named else [1])
    ax = fig.add_subplot(grid[0, 0])
    ax.imshow(
        palette[winner],
        origin="lower",
        aspect="auto",
        interpolation="nearest",
        extent=(float(clock(lo)), float(clock(hi)), 0, axis.rows),
        rasterized=True,
    )
    _draw_cuts(ax, axis)
    band_texts(ax, axis, fo, names, labels, clock)
    address_ticks(ax, axis, page_size)
    shown = distinct(winner)
    handles: list[Any] = [
        Patch(facecolor=c, edgecolor="#999999", lw=0.5, label=lab)
        for j, (lab, c) in enumerate(zip((UNTOUCHED[0], *names), palette, strict=True))
        if j in shown or (j > 0 and j - 1 in set(codes.tolist()))
    ]
    handles += _draw_marks(ax, axis, clock, vio, flt, page_size)
    handles += lost(ax, clock, lo, hi, transitions)
    handles += cursor(ax, clock, at)
    ax.set_xlim(clock(lo), clock(hi))
    ax.set_ylim(0, axis.rows)
    clock.format(ax)
    ax.set_xlabel(clock.label)
    ax.set_ylabel("physical address")
    span = span_text(all_times, lo, hi, clock)
    if addr_range is not None:
        span += f", {lo_a:#x}–{hi_a:#x}"
    ax.set_title(title_text("Ownership map", meta, span), loc="left", fontsize=11)
    if labels is not None and named:
        draw_names(fig.add_subplot(grid[0, 1], sharey=ax), axis, labels)
    ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(0.0, -0.09),
        ncol=4,
        frameon=False,
        fontsize=8.5,
        title="owner, state",
        title_fontsize=8.5,
        alignment="left",
    )
    fig.text(
        0.01,
        0.0,
        f"{axis.rows} × {cols} cells; each shows the owner/state covering most of its address × "
        f"time area among the touched pages. Rows go to ranges that change in the window and "
        "to pages a violation or fault names; memory that does not change is cut; ranges "
        "that change once and end not host owned, of "
        f"{fmt_bytes(fold_min_bytes, compact=True)} or "
        "more are folded into labelled bands.",
        fontsize=7.5,
        color="#555555",
        ha="left",
        va="bottom",
        wrap=True,
    )
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    engine = fig.get_layout_engine()
    if isinstance(engine, ConstrainedLayoutEngine):
        engine.set(h_pad=0.3)
    return fig
