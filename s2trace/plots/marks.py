"""Event marks over a time axis: violations and access faults (markers along the top edge),
lost-events lines and the cursor; and the row selections they are drawn from."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from s2trace.plots.axes import Clock
from s2trace.plots.style import FAULT_STYLE, VIOLATION_STYLE

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.axes import Axes

__all__ = ["cursor", "faults", "in_window", "lost", "rug", "with_marks"]


def with_marks(
    times: np.ndarray, violations: pd.DataFrame | None, transitions: pd.DataFrame | None
) -> np.ndarray:
    """Interval times plus the times of violations and of marker transitions (faults, lost
    events), so the default window shows every marker."""
    extra = [f["ts"].to_numpy(dtype=np.float64) for f in (violations, transitions) if f is not None]
    return np.concatenate([times, *extra])


def faults(transitions: pd.DataFrame | None) -> pd.DataFrame | None:
    """The access-fault rows of ``transitions`` (None without transitions)."""
    if transitions is None or not len(transitions):
        return None
    return transitions[transitions["op"].astype("object").to_numpy() == "access_fault"]


def in_window(frame: pd.DataFrame | None, lo: float, hi: float) -> pd.DataFrame | None:
    """The rows of ``frame`` with ``lo <= ts <= hi`` (None when there are none)."""
    if frame is None or not len(frame):
        return None
    ts = frame["ts"].to_numpy(dtype=np.float64)
    sub = frame[(ts >= lo) & (ts <= hi)]
    return sub if len(sub) else None


def rug(
    ax: Axes,
    clock: Clock,
    lo: float,
    hi: float,
    violations: pd.DataFrame | None,
    fault_rows: pd.DataFrame | None,
) -> list[Any]:
    """Violations and faults as markers along the top edge of a time-series axes."""
    handles = []
    trans = ax.get_xaxis_transform()
    for frame, style, y, name in (
        (violations, VIOLATION_STYLE, 0.96, "violation"),
        (fault_rows, FAULT_STYLE, 0.90, "access fault"),
    ):
        sub = in_window(frame, lo, hi)
        if sub is None:
            continue
        x = clock(sub["ts"].to_numpy(dtype=np.float64))
        (h,) = ax.plot(
            x,
            np.full(len(x), y),
            ls="none",
            transform=trans,
            clip_on=False,
            zorder=5,
            **style,
        )
        h.set_label(f"{name} ({len(sub)})")
        handles.append(h)
    return handles


def cursor(ax: Axes, clock: Clock, at: float | None) -> list[Any]:
    """A dotted vertical line at time ``at`` (nothing without one)."""
    if at is None:
        return []
    line = ax.axvline(float(clock(at)), color="#333333", ls=":", lw=1.2, zorder=4)
    line.set_label(f"t = {at:.6f} s")
    return [line]


def lost(ax: Axes, clock: Clock, lo: float, hi: float, transitions: pd.DataFrame | None) -> list:
    """Lost-events markers: the timeline may miss transitions from there on."""
    if transitions is None or not len(transitions):
        return []
    sub = in_window(transitions[transitions["op"].astype("object") == "lost"], lo, hi)
    if sub is None:
        return []
    x = clock(sub["ts"].to_numpy(dtype=np.float64))
    lines = ax.vlines(x, 0, 1, transform=ax.get_xaxis_transform(), colors="#7f7f7f", ls="--")
    lines.set_label(f"lost events ({len(sub)})")
    return [lines]
