"""One page's history: its owner/state over time as a coloured lane, every transition that
touched it as a labelled tick (operation, parties, the function or recipe, the source line),
violations and faults on the lane."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from s2trace.plots.axes import span_text, window
from s2trace.plots.figure import legend, new_figure, title_text
from s2trace.plots.marks import cursor, in_window
from s2trace.plots.style import FAULT_STYLE, VIOLATION_STYLE, state_labels, str_values

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.figure import Figure

__all__ = ["plot_page"]


def _covering(frame: pd.DataFrame | None, col: str, addr: int) -> pd.DataFrame | None:
    if frame is None or not len(frame):
        return None
    a = frame[col].to_numpy(np.float64)
    sub = frame[(a <= addr) & (addr < a + frame["size"].to_numpy(np.float64))]
    return sub if len(sub) else None


def _not_violations(faults: pd.DataFrame, vio: pd.DataFrame | None) -> pd.DataFrame:
    """Faults that are not themselves violations (those are drawn once, as the violation)."""
    if vio is None or not len(faults):
        return faults
    return faults[~faults["line"].isin(vio["line"])]


def _event_text(row: Any) -> str:
    who = f"{row.initiator or '?'}→{row.completer or '?'}" if row.op != "access_fault" else "host"
    where = row.function if getattr(row, "function", None) else row.recipe
    return f"{row.op} {who}\n{where} (line {row.line})"


def plot_page(
    intervals: pd.DataFrame,
    transitions: pd.DataFrame,
    addr: int,
    violations: pd.DataFrame | None = None,
    *,
    t_from: float | None = None,
    t_to: float | None = None,
    at: float | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Figure:
    """The owner/state of the page holding ``addr`` over time, with the transitions that
    touched it (a ``function`` column of ``transitions``, when present, names the kernel
    function; else the recipe), and the violations naming it.  Raises ValueError when the
    trace never touches the page."""
    iv = _covering(intervals, "addr_start", addr)
    if iv is None:
        raise ValueError(f"the trace never touches the page at {addr:#x}")
    tr = _covering(transitions[transitions["op"].astype("object") != "lost"], "addr", addr)
    vio = _covering(violations, "addr", addr)
    times = np.concatenate(
        [iv["t_start"].to_numpy(np.float64), iv["t_end"].to_numpy(np.float64)]
        + [f["ts"].to_numpy(np.float64) for f in (tr, vio) if f is not None]
    )
    lo, hi, clock = window(times, t_from, t_to, at)
    codes, names, colors = state_labels(iv)
    fig = new_figure((11.0, 4.8))
    ax = fig.subplots()
    from matplotlib.patches import Patch

    t0 = np.clip(iv["t_start"].to_numpy(np.float64), lo, hi)
    t1 = np.clip(iv["t_end"].to_numpy(np.float64), lo, hi)
    for a, b, c in zip(t0, t1, codes, strict=True):
        if b > a:
            ax.broken_barh([(a, b - a)], (0, 1), facecolors=colors[c], edgecolor="white", lw=1)
            if (b - a) > (hi - lo) * 0.08:
                ax.text((a + b) / 2, 0.5, names[c], ha="center", va="center", fontsize=8.5)
    handles: list[Any] = [
        Patch(facecolor=colors[c], label=names[c]) for c in sorted(set(codes.tolist()))
    ]
    rows = in_window(tr, lo, hi)
    if rows is not None:
        ops = str_values(rows["op"])
        for k, row in enumerate(
            rows.assign(
                op=ops,
                initiator=str_values(rows["initiator"]),
                completer=str_values(rows["completer"]),
                recipe=str_values(rows["recipe"]),
            ).itertuples(index=False)
        ):
            y = 1.25 + (k % 4) * 0.42
            t = float(row.ts)  # type: ignore[arg-type]
            ax.plot([t, t], [0, y], color="#555555", lw=0.8, zorder=2)
            late = t > lo + 0.75 * (hi - lo)  # text to the left of late events: stays inside
            ax.text(
                t, y, _event_text(row), fontsize=7.5, va="bottom", ha="right" if late else "left"
            )
    for frame, style, name in (
        (in_window(vio, lo, hi), VIOLATION_STYLE, "violation"),
        (
            in_window(rows[ops == "access_fault"] if rows is not None else None, lo, hi),
            FAULT_STYLE,
            "access fault",
        ),
    ):
        if frame is None:
            continue
        (h,) = ax.plot(
            frame["ts"], np.full(len(frame), 0.5), ls="none", zorder=5, clip_on=False, **style
        )
        h.set_label(f"{name} ({len(frame)})")
        handles.append(h)
        if name == "violation":
            for t, check in zip(frame["ts"], frame["check"].astype(str), strict=True):
                ax.text(t, -0.15, check, color="#b01515", fontsize=7.5, ha="center", va="top")
    handles += cursor(ax, clock, at)
    ax.set_xlim(lo, hi)
    ax.set_ylim(-0.6, 3.2)
    ax.set_yticks([])
    clock.format(ax)
    ax.set_xlabel(clock.label)
    what = f"Page {addr:#x}"
    ax.set_title(title_text(what, meta, span_text(times, lo, hi, clock)), loc="left")
    legend(ax, handles, "owner, state")
    return fig
