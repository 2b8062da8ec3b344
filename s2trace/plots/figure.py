"""The figure and its furniture: an Agg figure without pyplot, the legend, size ticks and the
"nothing here" note.  matplotlib is imported inside the functions only."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from s2trace.plots.style import FIGSIZE

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["empty_note", "legend", "new_figure", "size_ticks", "title_text"]


def new_figure(figsize: tuple[float, float] = FIGSIZE) -> Figure:
    """A Figure on the Agg canvas, without pyplot (no global figure registry, no GUI).

    The Agg backend is forced unless pyplot is already in use (a notebook's inline backend
    must keep working); the figure draws on its own Agg canvas either way.
    """
    import sys

    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg", force=True)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def legend(ax: Axes, handles: list[Any], title: str | None = None) -> None:
    """Legend outside the axes, on the right, so it never covers data."""
    if handles:
        ax.legend(
            handles=handles,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            borderaxespad=0.0,
            frameon=False,
            fontsize=9,
            title=title,
            title_fontsize=9,
            alignment="left",
        )


def size_ticks(ax: Axes, integer: bool = False) -> None:
    """Byte-size ticks at 1, 2, 4, 5 or 8 × 10^k of the unit (pages: whole numbers)."""
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(nbins=8, steps=[1, 2, 4, 5, 8, 10], integer=integer))


def empty_note(ax: Axes, text: str) -> None:
    """A grey note in the middle of an axes that has nothing to draw."""
    ax.text(
        0.5,
        0.5,
        text,
        transform=ax.transAxes,
        ha="center",
        va="center",
        color="#555555",
    )


def title_text(what: str, meta: Mapping[str, Any] | None, span: str) -> str:
    """``what — capture, kernel K, t A–B s``: the plot, the capture it shows (the folder's or
    trace file's name), the kernel and the time span, as far as ``meta`` (an analysis's
    ``meta``) knows them."""
    meta = meta or {}
    where = meta.get("capture") or meta.get("trace")
    parts = [PurePath(str(where)).name] if where else []
    if meta.get("kernel"):
        parts.append(f"kernel {meta['kernel']}")
    parts.append(span)
    return f"{what} — {', '.join(parts)}"
