"""The owners-over-time plot: bytes per owner and state as a stacked area, from a sorted
sweep of interval starts and ends (:func:`owner_series`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from s2trace.intervals import sweep
from s2trace.plots.axes import span_text, window
from s2trace.plots.figure import empty_note, legend, new_figure, size_ticks, title_text
from s2trace.plots.focus import focus
from s2trace.plots.marks import cursor, faults, in_window, lost, rug, with_marks
from s2trace.plots.style import FIGSIZE, state_labels
from s2trace.units import byte_unit, fmt_bytes

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.figure import Figure

__all__ = ["owner_series", "plot_owners"]


def owner_series(
    intervals: pd.DataFrame, times: np.ndarray
) -> tuple[np.ndarray, list[str], list[str]]:
    """Bytes per owner/state alive at each of ``times`` (shape ``(len(times), states)``).

    A sweep: +size at every interval start, -size at its end, summed in time order; the value
    at ``t`` is the sum of the changes at or before ``t`` (intervals are ``[t_start, t_end)``).
    """
    codes, labels, colors = state_labels(intervals)
    k = len(labels)
    size = intervals["size"].to_numpy(dtype=np.float64)
    t_start = intervals["t_start"].to_numpy(dtype=np.float64)
    t_end = intervals["t_end"].to_numpy(dtype=np.float64)
    order, level = sweep(t_start, t_end, codes, size, k)
    idx = np.searchsorted(order, np.asarray(times, dtype=np.float64), side="right") - 1
    out = np.where(idx[:, None] >= 0, level[np.maximum(idx, 0)], 0.0)
    return out, labels, colors


def _quiet(intervals: pd.DataFrame, lo: float, hi: float, marks: list[pd.DataFrame]) -> np.ndarray:
    """Per interval: lies inside a quiet range the map folds (:mod:`.focus`)."""
    codes, names, _ = state_labels(intervals)
    a0 = intervals["addr_start"].to_numpy(np.float64)
    a1 = a0 + intervals["size"].to_numpy(np.float64)
    m0 = np.concatenate([np.zeros(0), *(m["addr"].to_numpy(np.float64) for m in marks)])
    fo = focus(
        a0,
        a1,
        intervals["t_start"].to_numpy(np.float64),
        intervals["t_end"].to_numpy(np.float64),
        codes.astype(np.float64),
        lo,
        hi,
        m0,
        m0 + 4096,
        plain=names.index("host owned") if "host owned" in names else -1,
    )
    if not len(fo.band_start):
        return np.zeros(len(intervals), dtype=bool)
    i = np.searchsorted(fo.band_start, a0, side="right") - 1
    ok = i >= 0
    return ok & (a1 <= np.where(ok, fo.band_end[np.maximum(i, 0)], 0))


def _panel(ax: Any, intervals: pd.DataFrame, times: np.ndarray, x: np.ndarray) -> tuple:
    """One stacked area; (handles, peak bytes, unit name)."""
    levels, labels, colors = owner_series(intervals, times)
    peak = float(levels.sum(axis=1).max()) if levels.size else 0.0
    div, uname = byte_unit(peak)
    bottom = np.zeros(len(times))
    handles = []
    for j, (label, color) in enumerate(zip(labels, colors, strict=True)):
        top = bottom + levels[:, j] / div
        if np.any(levels[:, j] > 0):
            h = ax.fill_between(
                x, bottom, top, step="post", color=color, label=label, lw=0.6, edgecolor="white"
            )
            handles.append(h)
        bottom = top
    if not handles:
        empty_note(ax, "no pages touched in this window")
        ax.set_yticks([])
    ax.set_ylim(0, max(peak / div * 1.15, 1e-9))
    if handles:
        size_ticks(ax)
    ax.grid(axis="y", color="#e5e5e5", lw=0.8)
    ax.set_axisbelow(True)
    return handles[::-1], uname


def plot_owners(
    intervals: pd.DataFrame,
    violations: pd.DataFrame | None = None,
    *,
    transitions: pd.DataFrame | None = None,
    t_from: float | None = None,
    t_to: float | None = None,
    at: float | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Figure:
    """Bytes per owner and state over time, as a stacked area (steps at every change).

    Counts the pages the timeline holds (those a transition touched); untouched pages are host
    owned throughout and left out.  When quiet ranges of 1 MiB or more (the ranges the map
    folds, e.g. the hyp carve-out donated at boot) would flatten the rest, a second panel
    below shows the other pages on their own scale (said in its title).  ``transitions``
    (optional) supplies access faults and lost-events markers.
    """
    times_all = np.concatenate(
        [intervals["t_start"].to_numpy(np.float64), intervals["t_end"].to_numpy(np.float64)]
    )
    marked_times = with_marks(times_all, violations, transitions)
    lo, hi, clock = window(marked_times, t_from, t_to, at)
    inside = times_all[(times_all > lo) & (times_all < hi)]
    times = np.unique(np.concatenate([[lo], inside, [hi]]))
    marks = [
        m
        for m in (in_window(violations, lo, hi), in_window(faults(transitions), lo, hi))
        if m is not None
    ]
    # host-owned memory unchanged over the whole window (the replay's ground truth for pages
    # the trace never moves) would flatten everything else: left out, and said so
    host = (intervals["owner"].astype("object") == "host") & (
        intervals["host_state"].astype("object") == "owned"
    )
    still = (
        host.to_numpy(bool)
        & (intervals["t_start"].to_numpy(np.float64) <= lo)
        & (intervals["t_end"].to_numpy(np.float64) >= hi)
    )
    intervals = intervals[~still]
    quiet = _quiet(intervals, lo, hi, marks)
    split = bool(quiet.any() and (~quiet).any())
    fig = new_figure((11.0, 7.5) if split else FIGSIZE)
    axes = fig.subplots(2, 1, sharex=True, height_ratios=[1, 1.6]) if split else [fig.subplots()]
    x = clock(times)
    handles, uname = _panel(axes[0], intervals, times, x)
    axes[0].set_ylabel(f"bytes ({uname})")
    axes[0].set_title(
        "pages that are not host owned throughout the window", loc="left", fontsize=10
    )
    if split:
        rest, rest_unit = _panel(axes[1], intervals[~quiet], times, x)
        size = float(
            intervals.loc[quiet, "size"]
            .astype("float64")
            .groupby(intervals.loc[quiet, "addr_start"].to_numpy())
            .max()
            .sum()
        )
        axes[1].set_ylabel(f"bytes ({rest_unit})")
        axes[1].set_title(
            f"without the quiet ranges ({fmt_bytes(size, compact=True)}, changed at most once, "
            "e.g. at boot): "
            "own scale",
            loc="left",
            fontsize=10,
        )
        handles += [h for h in rest if h.get_label() not in {g.get_label() for g in handles}]
    for ax in axes:
        ax.set_xlim(x[0], x[-1])
    extra = rug(axes[0], clock, lo, hi, violations, faults(transitions))
    extra += lost(axes[-1], clock, lo, hi, transitions)
    extra += cursor(axes[-1], clock, at)
    clock.format(axes[-1])
    axes[-1].set_xlabel(clock.label)
    fig.suptitle(
        title_text("Ownership over time", meta, span_text(marked_times, lo, hi, clock)), fontsize=12
    )
    legend(axes[0], handles + extra, "owner, state")
    return fig
