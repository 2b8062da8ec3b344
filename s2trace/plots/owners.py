"""The owners-over-time plot: bytes per owner and state as a stacked area, from a sorted
sweep of interval starts and ends (:func:`owner_series`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from s2trace.plots.axes import window
from s2trace.plots.figure import empty_note, legend, new_figure, size_ticks
from s2trace.plots.marks import cursor, faults, lost, rug, with_marks
from s2trace.plots.style import state_labels
from s2trace.units import byte_unit

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
    when = np.concatenate([t_start, t_end])
    order = np.unique(when)
    delta = np.zeros((len(order), max(k, 1)))
    np.add.at(delta, (np.searchsorted(order, t_start), codes), size)
    np.add.at(delta, (np.searchsorted(order, t_end), codes), -size)
    level = np.cumsum(delta, axis=0)
    idx = np.searchsorted(order, np.asarray(times, dtype=np.float64), side="right") - 1
    out = np.where(idx[:, None] >= 0, level[np.maximum(idx, 0)], 0.0)
    return out[:, :k], labels, colors


def plot_owners(
    intervals: pd.DataFrame,
    violations: pd.DataFrame | None = None,
    *,
    transitions: pd.DataFrame | None = None,
    t_from: float | None = None,
    t_to: float | None = None,
    at: float | None = None,
) -> Figure:
    """Bytes per owner and state over time, as a stacked area (steps at every change).

    Counts the pages the timeline holds (those a transition touched); untouched pages are host
    owned throughout and left out.  ``transitions`` (optional) supplies access faults and
    lost-events markers.
    """
    times_all = np.concatenate(
        [
            intervals["t_start"].to_numpy(dtype=np.float64),
            intervals["t_end"].to_numpy(float),
        ]
    )
    lo, hi, clock = window(with_marks(times_all, violations, transitions), t_from, t_to, at)
    inside = times_all[(times_all > lo) & (times_all < hi)]
    times = np.unique(np.concatenate([[lo], inside, [hi]]))
    levels, labels, colors = owner_series(intervals, times)
    peak = float(levels.sum(axis=1).max()) if levels.size else 0.0
    div, uname = byte_unit(peak)

    fig = new_figure()
    ax = fig.subplots()
    x = clock(times)
    bottom = np.zeros(len(times))
    handles = []
    for j, (label, color) in enumerate(zip(labels, colors, strict=True)):
        top = bottom + levels[:, j] / div
        if np.any(levels[:, j] > 0):
            h = ax.fill_between(
                x,
                bottom,
                top,
                step="post",
                color=color,
                label=label,
                lw=0.6,
                edgecolor="white",
            )
            handles.append(h)
        bottom = top
    if not handles:
        empty_note(ax, "no pages touched in this window")
        ax.set_yticks([])
    handles = handles[::-1]  # legend top-down like the stack
    handles += rug(ax, clock, lo, hi, violations, faults(transitions))
    handles += lost(ax, clock, lo, hi, transitions)
    handles += cursor(ax, clock, at)
    ax.set_xlim(x[0], x[-1])
    ax.set_ylim(0, max(peak / div * 1.15, 1e-9))
    if handles:
        size_ticks(ax)
    ax.set_xlabel(clock.label)
    ax.set_ylabel(f"bytes of touched pages ({uname})")
    ax.set_title("Ownership over time (pages the trace touches)")
    ax.grid(axis="y", color="#e5e5e5", lw=0.8)
    ax.set_axisbelow(True)
    legend(ax, handles, "owner, state")
    return fig
