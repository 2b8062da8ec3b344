"""The churn plot: bytes (or pages) donated, shared, unshared and reclaimed per time bin,
stacked by operation (top) and by peer (bottom).  Binned with ``np.histogram``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from s2trace.plots.axes import span_text, window
from s2trace.plots.figure import empty_note, legend, new_figure, size_ticks, title_text
from s2trace.plots.marks import cursor, faults, lost, rug
from s2trace.plots.style import CHURN_OPS, OP_COLORS, peer_color, str_values
from s2trace.plots.units import fmt_duration, nice
from s2trace.units import byte_unit, fmt_bytes

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.figure import Figure

__all__ = ["default_bin", "plot_churn", "tall_bins"]


def _peers(rows: pd.DataFrame) -> np.ndarray:
    """The component the host dealt with (hyp, ffa, guest vm N): the non-host side."""
    init = str_values(rows["initiator"])
    comp = str_values(rows["completer"])
    peer = np.where(init == "host", comp, init).astype(object)
    peer[peer == ""] = "unknown"
    vm = rows["vm"]
    guest = (peer == "guest") & vm.notna().to_numpy()
    if guest.any():
        ids = vm[guest].astype("int64").to_numpy()
        peer[guest] = [f"guest vm {v:#x}" if v > 0xFFFF else f"guest vm {v}" for v in ids]
    return peer


def tall_bins(total: np.ndarray, ratio: float = 6.0) -> float | None:
    """The y limit that keeps the few tallest bins (e.g. the boot donation of the hyp
    carve-out) from flattening the rest: when one of the three tallest bin totals is more than
    ``ratio`` times the next, 1.35 × that next one (None: no such jump)."""
    s = np.sort(total[total > 0])[::-1]
    for k in range(min(3, len(s) - 1)):
        if s[k] > ratio * s[k + 1]:
            return float(1.35 * s[k + 1])
    return None


def default_bin(lo: float, hi: float, target: int = 40) -> float:
    """A 1-2-5 bin width giving about ``target`` bins over ``[lo, hi]``."""
    return nice(max(hi - lo, 1e-9) / target)


def plot_churn(
    transitions: pd.DataFrame,
    violations: pd.DataFrame | None = None,
    *,
    bin_width: float | None = None,
    unit: str = "bytes",
    t_from: float | None = None,
    t_to: float | None = None,
    at: float | None = None,
    page_size: int = 4096,
    meta: Mapping[str, Any] | None = None,
) -> Figure:
    """Donations, shares, unshares and reclaims per time bin, stacked by operation (top) and
    by peer (bottom: hyp, ffa, each guest); ``unit`` ``"bytes"`` or ``"pages"``.

    ``bin_width`` is the bin width in seconds (default: a 1-2-5 width giving about 40 bins over the
    window).  Access faults (``op == "access_fault"`` rows of ``transitions``) and violations
    are marked along the top; lost-events markers are dashed lines.
    """
    if unit not in ("bytes", "pages"):
        raise ValueError(f"unit {unit!r}: expected 'bytes' or 'pages'")
    ts_all = transitions["ts"].to_numpy(dtype=np.float64)
    lo, hi, clock = window(ts_all, t_from, t_to, at)
    width = float(bin_width) if bin_width else default_bin(lo, hi)
    if width <= 0:
        raise ValueError(f"bin width {bin_width}: expected a positive number of seconds")
    first = np.floor(lo / width) * width
    nbins = max(int(np.ceil((hi - first) / width - 1e-9)), 1)
    if nbins > 100_000:
        raise ValueError(f"bin {width} s gives {nbins} bins over the window: choose a wider bin")
    edges = first + width * np.arange(nbins + 1)
    ops = transitions["op"].astype("object").to_numpy()
    rows = transitions[np.isin(ops, CHURN_OPS) & (ts_all >= lo) & (ts_all <= hi)]
    value = rows["size"].to_numpy(dtype=np.float64)
    if unit == "pages":
        value = value / page_size
    total = np.histogram(rows["ts"].to_numpy(dtype=np.float64), edges, weights=value)[0]
    cap = tall_bins(total)
    div, uname = byte_unit(cap if cap else float(total.max()) if len(total) else 0.0)
    if unit == "pages":
        div, uname = 1.0, "pages"

    fig = new_figure((11.0, 7.0))
    ax_op, ax_peer = fig.subplots(2, 1, sharex=True)
    x_edges = clock(edges)
    centers = (x_edges[:-1] + x_edges[1:]) / 2
    bar_w = (x_edges[1] - x_edges[0]) * 0.85
    fault_rows = faults(transitions)
    groups = (
        (ax_op, rows["op"].astype("object").to_numpy(), "by operation", OP_COLORS),
        (ax_peer, _peers(rows), "by peer", None),
    )
    for ax, key, title, palette in groups:
        handles = []
        bottom = np.zeros(nbins)
        names = [o for o in CHURN_OPS if o in set(key)] if palette else sorted(set(key))
        for i, name in enumerate(names):
            h = np.histogram(
                rows["ts"].to_numpy(dtype=np.float64)[key == name],
                edges,
                weights=value[key == name],
            )[0]
            color = palette[name] if palette else peer_color(str(name), i)
            bars = ax.bar(
                centers,
                h / div,
                bar_w,
                bottom=bottom / div,
                color=color,
                label=str(name),
            )
            bottom += h
            handles.append(bars)
        if names:
            size_ticks(ax, integer=unit == "pages")
        else:
            empty_note(ax, "no donations, shares, unshares or reclaims in this window")
            ax.set_yticks([])
        per_bin = "bytes per bin" + (f" ({uname})" if uname != "bytes" else "")
        ax.set_ylabel("pages per bin" if unit == "pages" else per_bin)
        ax.yaxis.set_major_formatter("{x:,.0f}" if unit == "pages" else "{x:,g}")
        ax.set_title(f"{title}", loc="left", fontsize=10)
        top = cap if cap else float(bottom.max()) * 1.18
        ax.set_ylim(0, max(top / div, 1.0 if unit == "pages" else 0.0) or 1)
        if cap:
            _broken(ax, centers, bottom, cap, div, uname, bar_w)
        ax.grid(axis="y", color="#e5e5e5", lw=0.8)
        ax.set_axisbelow(True)
        handles += rug(ax, clock, lo, hi, violations, fault_rows)
        handles += lost(ax, clock, lo, hi, transitions)
        handles += cursor(ax, clock, at)
        legend(ax, handles)
    ax_peer.set_xlim(clock(lo), clock(hi))
    clock.format(ax_peer)
    ax_peer.set_xlabel(clock.label)
    what = f"Ownership churn per {fmt_duration(width)} bin"
    fig.suptitle(title_text(what, meta, span_text(ts_all, lo, hi, clock)), fontsize=12)
    if cap:
        fig.text(
            0.01,
            0.0,
            "y axis cut: bins taller than the axis (e.g. the boot donation) are drawn broken "
            "(zigzag) with their value written above, so later churn stays readable.",
            fontsize=8,
            color="#555555",
            ha="left",
            va="bottom",
        )
    return fig


def _broken(
    ax: Any, x: np.ndarray, height: np.ndarray, cap: float, div: float, unit: str, w: float
) -> None:
    """Mark the bars cut by the y limit: a white zigzag near the top, the value above."""
    for xi, h in zip(x, height, strict=True):
        if h <= cap:
            continue
        y = cap / div * 0.9
        ax.plot(
            [xi - w / 2, xi - w / 6, xi + w / 6, xi + w / 2],
            [y, y * 1.03, y * 0.97, y],
            color="white",
            lw=2.5,
            zorder=4,
            clip_on=False,
        )
        value = f"{h:,.0f} pages" if unit == "pages" else fmt_bytes(h, compact=True)
        ax.annotate(
            f"↑ {value}",
            (xi, cap / div),
            xytext=(3, -2),
            textcoords="offset points",
            fontsize=8,
            va="top",
            ha="left",
            color="#222222",
            annotation_clip=False,
        )
