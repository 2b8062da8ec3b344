"""Plots of an ownership timeline: churn, owners over time and the address × time map.

Every function takes DataFrames of the public API (TRANSITIONS, INTERVALS, VIOLATIONS) and
returns a :class:`matplotlib.figure.Figure`; nothing is shown or saved here.  matplotlib is
imported inside the functions, with the headless Agg backend, so importing s2trace (or decoding
a dump) never imports it.

* :func:`plot_churn` -- bytes (or pages) donated, shared, unshared and reclaimed per time bin,
  stacked by operation (top) and by peer (bottom);
* :func:`plot_owners` -- bytes per owner and state as a stacked area over time;
* :func:`plot_map` -- an address × time raster coloured by owner/state.

All three overlay violations (red crosses) and access faults (black triangles), and take a
time window (``t_from``, ``t_to``) and a cursor (``at``).  Only the pages a trace touches are
in the timeline; the others are host owned throughout and are left out of the byte counts.

Binning is vectorised: ``np.histogram`` for the churn, a sorted sweep of interval starts and
ends for the areas, and a 2-D difference array (summed area of every interval over every
raster cell) for the map -- no Python loop per page, interval or transition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "CHURN_OPS",
    "plot_churn",
    "plot_map",
    "plot_owners",
    "state_labels",
]

#: The operations the churn plot counts, in stacking order.
CHURN_OPS: tuple[str, ...] = ("donate", "share", "unshare", "reclaim")
_OP_COLORS = {"donate": "#76b7b2", "share": "#f28e2b", "unshare": "#edc948", "reclaim": "#b07aa1"}
_PEER_COLORS = {"hyp": "#4e79a7", "ffa": "#9c755f", "unknown": "#bab0ac"}
_GUEST_COLORS = ("#59a14f", "#8cd17d", "#2f6b2a", "#b6d7a8", "#86bcb6", "#499894")

# (owner, host_state, peer) -> (label, colour).  Shares of a host page are light tints of the
# borrower's colour, pages donated to a component its full colour, pages lent back to the
# host orange; untouched/host owned is grey.  Order = stacking order (bottom first).
_STATES: dict[tuple[str, str, str], tuple[str, str]] = {
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
_EXTRA_COLORS = ("#bab0ac", "#9c755f", "#ff9da7", "#76b7b2", "#e15759", "#edc948")
_UNTOUCHED = ("not touched (host owned)", "#f3f3f3")
_VIOLATION_STYLE = {"marker": "X", "color": "#d62728", "markeredgecolor": "white", "ms": 9}
_FAULT_STYLE = {"marker": "v", "color": "black", "markeredgecolor": "white", "ms": 8}
_FIGSIZE = (11.0, 6.0)


# ---------------------------------------------------------------------------------------------
# matplotlib, lazily
# ---------------------------------------------------------------------------------------------
def _pyplot_free_figure(figsize: tuple[float, float] = _FIGSIZE) -> Figure:
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


# ---------------------------------------------------------------------------------------------
# shared helpers: states, units, time axis, markers
# ---------------------------------------------------------------------------------------------
def _str(col: pd.Series) -> np.ndarray:
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
        _str(intervals["owner"])
        + "|"
        + _str(intervals["host_state"])
        + "|"
        + np.where(_str(intervals["host_state"]) == "owned", "", _str(intervals["peer"]))
    )
    known = ["|".join(k) for k in _STATES]
    present = set(key.unique())
    order = [k for k in known if k in present] + sorted(present - set(known))
    codes = pd.Categorical(key, categories=order).codes.astype(np.int64)
    labels, colors = [], []
    spare = iter(_EXTRA_COLORS * 4)
    for k in order:
        owner, state, peer = k.split("|")
        if (owner, state, peer) in _STATES:
            label, color = _STATES[(owner, state, peer)]
        else:
            label, color = f"{owner} / host {state}", next(spare)
        labels.append(label)
        colors.append(color)
    return codes, labels, colors


def _byte_unit(maximum: float) -> tuple[float, str]:
    """Divisor and name of the binary unit that keeps ``maximum`` readable."""
    for shift, name in ((40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")):
        if maximum >= 1 << shift:
            return float(1 << shift), name
    return 1.0, "bytes"


def _fmt_size(n: float) -> str:
    div, unit = _byte_unit(n)
    value = n / div
    text = f"{value:.0f}" if value == int(value) else f"{value:.3g}"
    return f"{text} {unit}" if unit != "bytes" else f"{text} B"


def _nice(x: float) -> float:
    """The smallest 1, 2 or 5 × 10^k not below ``x`` (x > 0)."""
    exp = np.floor(np.log10(x))
    for m in (1.0, 2.0, 5.0, 10.0):
        if m * 10**exp >= x * (1 - 1e-9):
            return float(m * 10**exp)
    return float(10 ** (exp + 1))  # pragma: no cover - unreachable


def _fmt_duration(seconds: float) -> str:
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if seconds >= scale:
            return f"{seconds / scale:g} {unit}"
    return f"{seconds / 1e-9:g} ns"


def _decimals(scale: float) -> int:
    return round(np.log10(scale))


@dataclass(frozen=True)
class _Clock:
    """Trace seconds -> a readable axis: offset from the window start in s, ms or µs."""

    t0: float
    scale: float
    unit: str

    @classmethod
    def for_window(cls, lo: float, hi: float, first: float) -> _Clock:
        """Unit from the window's span; origin ``first`` (the first data time, not the padded
        window start) rounded down to a whole unit, so the label reads ``ms after t =
        18.537 s`` rather than an arbitrary time."""
        span = hi - lo
        for scale, unit, limit in ((1e6, "µs", 2e-3), (1e3, "ms", 2.0), (1.0, "s", np.inf)):
            if span < limit:
                return cls(float(np.floor(first * scale) / scale), scale, unit)
        raise AssertionError("unreachable")  # pragma: no cover

    def __call__(self, t: Any) -> Any:
        return (np.asarray(t, dtype=np.float64) - self.t0) * self.scale

    @property
    def label(self) -> str:
        return f"time ({self.unit} after t = {self.t0:.{_decimals(self.scale)}f} s)"


def _window(
    times: np.ndarray, t_from: float | None, t_to: float | None, at: float | None = None
) -> tuple[float, float, _Clock]:
    """The plotted time window and its axis clock: ``t_from``/``t_to`` where given, else the
    finite times (and ``at``) padded by 4% on each side so the first and last changes are not
    on the frame."""
    finite = times[np.isfinite(times)]
    if at is not None:
        finite = np.append(finite, at)
    if t_from is not None:
        finite = finite[finite >= t_from]
    if t_to is not None:
        finite = finite[finite <= t_to]
    lo = float(finite.min()) if len(finite) else (t_from if t_from is not None else 0.0)
    hi = float(finite.max()) if len(finite) else (t_to if t_to is not None else lo + 1.0)
    first = lo if t_from is None else t_from
    pad = (hi - lo) * 0.04 if hi > lo else max(abs(lo) * 1e-6, 1e-3)
    lo = t_from if t_from is not None else lo - pad
    hi = t_to if t_to is not None else hi + pad
    if hi <= lo:
        raise ValueError(f"empty time window: from {lo} to {hi}")
    return lo, hi, _Clock.for_window(lo, hi, first)


def _with_marks(
    times: np.ndarray, violations: pd.DataFrame | None, transitions: pd.DataFrame | None
) -> np.ndarray:
    """Interval times plus the times of violations and of marker transitions (faults, lost
    events), so the default window shows every marker."""
    extra = [f["ts"].to_numpy(dtype=np.float64) for f in (violations, transitions) if f is not None]
    return np.concatenate([times, *extra])


def _faults(transitions: pd.DataFrame | None) -> pd.DataFrame | None:
    if transitions is None or not len(transitions):
        return None
    return transitions[transitions["op"].astype("object").to_numpy() == "access_fault"]


def _in_window(frame: pd.DataFrame | None, lo: float, hi: float) -> pd.DataFrame | None:
    if frame is None or not len(frame):
        return None
    ts = frame["ts"].to_numpy(dtype=np.float64)
    sub = frame[(ts >= lo) & (ts <= hi)]
    return sub if len(sub) else None


def _rug(
    ax: Axes,
    clock: _Clock,
    lo: float,
    hi: float,
    violations: pd.DataFrame | None,
    faults: pd.DataFrame | None,
) -> list[Any]:
    """Violations and faults as markers along the top edge of a time-series axes."""
    handles = []
    trans = ax.get_xaxis_transform()
    for frame, style, y, name in (
        (violations, _VIOLATION_STYLE, 0.96, "violation"),
        (faults, _FAULT_STYLE, 0.90, "access fault"),
    ):
        sub = _in_window(frame, lo, hi)
        if sub is None:
            continue
        x = clock(sub["ts"].to_numpy(dtype=np.float64))
        (h,) = ax.plot(
            x, np.full(len(x), y), ls="none", transform=trans, clip_on=False, zorder=5, **style
        )
        h.set_label(f"{name} ({len(sub)})")
        handles.append(h)
    return handles


def _cursor(ax: Axes, clock: _Clock, at: float | None) -> list[Any]:
    if at is None:
        return []
    line = ax.axvline(float(clock(at)), color="#333333", ls=":", lw=1.2, zorder=4)
    line.set_label(f"t = {at:.6f} s")
    return [line]


def _lost(ax: Axes, clock: _Clock, lo: float, hi: float, transitions: pd.DataFrame | None) -> list:
    """Lost-events markers: the timeline may miss transitions from there on."""
    if transitions is None or not len(transitions):
        return []
    sub = _in_window(transitions[transitions["op"].astype("object") == "lost"], lo, hi)
    if sub is None:
        return []
    x = clock(sub["ts"].to_numpy(dtype=np.float64))
    lines = ax.vlines(x, 0, 1, transform=ax.get_xaxis_transform(), colors="#7f7f7f", ls="--")
    lines.set_label(f"lost events ({len(sub)})")
    return [lines]


def _legend(ax: Axes, handles: list[Any], title: str | None = None) -> None:
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


def _size_ticks(ax: Axes, integer: bool = False) -> None:
    """Byte-size ticks at 1, 2, 4, 5 or 8 × 10^k of the unit (pages: whole numbers)."""
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(nbins=8, steps=[1, 2, 4, 5, 8, 10], integer=integer))


def _empty_note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="#555555")


# ---------------------------------------------------------------------------------------------
# churn
# ---------------------------------------------------------------------------------------------
def _peers(rows: pd.DataFrame) -> np.ndarray:
    """The component the host dealt with (hyp, ffa, guest vm N): the non-host side."""
    init = _str(rows["initiator"])
    comp = _str(rows["completer"])
    peer = np.where(init == "host", comp, init).astype(object)
    peer[peer == ""] = "unknown"
    vm = rows["vm"]
    guest = (peer == "guest") & vm.notna().to_numpy()
    if guest.any():
        ids = vm[guest].astype("int64").to_numpy()
        peer[guest] = [f"guest vm {v:#x}" if v > 0xFFFF else f"guest vm {v}" for v in ids]
    return peer


def _peer_color(peer: str, i: int) -> str:
    if peer in _PEER_COLORS:
        return _PEER_COLORS[peer]
    if peer.startswith("guest"):
        return _GUEST_COLORS[i % len(_GUEST_COLORS)]
    return _EXTRA_COLORS[i % len(_EXTRA_COLORS)]


def default_bin(lo: float, hi: float, target: int = 40) -> float:
    """A 1-2-5 bin width giving about ``target`` bins over ``[lo, hi]``."""
    return _nice(max(hi - lo, 1e-9) / target)


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
    lo, hi, clock = _window(ts_all, t_from, t_to, at)
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
    div, uname = _byte_unit(float(total.max()) if len(total) else 0.0)
    if unit == "pages":
        div, uname = 1.0, "pages"

    fig = _pyplot_free_figure((11.0, 7.0))
    ax_op, ax_peer = fig.subplots(2, 1, sharex=True)
    x_edges = clock(edges)
    centers = (x_edges[:-1] + x_edges[1:]) / 2
    bar_w = (x_edges[1] - x_edges[0]) * 0.85
    faults = _faults(transitions)
    groups = (
        (ax_op, rows["op"].astype("object").to_numpy(), "by operation", _OP_COLORS),
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
            color = palette[name] if palette else _peer_color(str(name), i)
            bars = ax.bar(
                centers, h / div, bar_w, bottom=bottom / div, color=color, label=str(name)
            )
            bottom += h
            handles.append(bars)
        if names:
            _size_ticks(ax, integer=unit == "pages")
        else:
            _empty_note(ax, "no donations, shares, unshares or reclaims in this window")
            ax.set_yticks([])
        per_bin = "bytes per bin" + (f" ({uname})" if uname != "bytes" else "")
        ax.set_ylabel("pages per bin" if unit == "pages" else per_bin)
        ax.yaxis.set_major_formatter("{x:,.0f}" if unit == "pages" else "{x:,g}")
        ax.set_title(f"{title}", loc="left", fontsize=10)
        ax.set_ylim(0, max(float(bottom.max()) / div * 1.18, 1.0 if unit == "pages" else 0.0) or 1)
        ax.grid(axis="y", color="#e5e5e5", lw=0.8)
        ax.set_axisbelow(True)
        handles += _rug(ax, clock, lo, hi, violations, faults)
        handles += _lost(ax, clock, lo, hi, transitions)
        handles += _cursor(ax, clock, at)
        _legend(ax, handles)
    ax_peer.set_xlim(clock(lo), clock(hi))
    ax_peer.set_xlabel(clock.label)
    fig.suptitle(f"Ownership churn per {_fmt_duration(width)} bin", fontsize=12)
    return fig


# ---------------------------------------------------------------------------------------------
# owners over time
# ---------------------------------------------------------------------------------------------
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
        [intervals["t_start"].to_numpy(dtype=np.float64), intervals["t_end"].to_numpy(float)]
    )
    lo, hi, clock = _window(_with_marks(times_all, violations, transitions), t_from, t_to, at)
    inside = times_all[(times_all > lo) & (times_all < hi)]
    times = np.unique(np.concatenate([[lo], inside, [hi]]))
    levels, labels, colors = owner_series(intervals, times)
    peak = float(levels.sum(axis=1).max()) if levels.size else 0.0
    div, uname = _byte_unit(peak)

    fig = _pyplot_free_figure()
    ax = fig.subplots()
    x = clock(times)
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
        _empty_note(ax, "no pages touched in this window")
        ax.set_yticks([])
    handles = handles[::-1]  # legend top-down like the stack
    handles += _rug(ax, clock, lo, hi, violations, _faults(transitions))
    handles += _lost(ax, clock, lo, hi, transitions)
    handles += _cursor(ax, clock, at)
    ax.set_xlim(x[0], x[-1])
    ax.set_ylim(0, max(peak / div * 1.15, 1e-9))
    if handles:
        _size_ticks(ax)
    ax.set_xlabel(clock.label)
    ax.set_ylabel(f"bytes of touched pages ({uname})")
    ax.set_title("Ownership over time (pages the trace touches)")
    ax.grid(axis="y", color="#e5e5e5", lw=0.8)
    ax.set_axisbelow(True)
    _legend(ax, handles, "owner, state")
    return fig


# ---------------------------------------------------------------------------------------------
# ownership map
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AddressAxis:
    """A compressed address axis: the touched ranges grouped into regions, the large gaps
    between regions cut out, each region drawn over rows ``[row[i], row[i+1])``.

    Rule: ranges are merged into one region when the gap between them is at most
    ``max(16 pages, 2% of the touched bytes)``; of the larger gaps at most ``max_cuts`` (the
    largest) are cut.  Each region gets rows in proportion to its span, but at least a quarter
    of an equal share, so a one-page region stays visible beside a gigabyte one.
    """

    start: np.ndarray  # region first address (uint64 values as float64-safe ints)
    end: np.ndarray  # region end address (exclusive)
    row: np.ndarray  # row boundaries, len(start) + 1, row[-1] == rows

    @property
    def rows(self) -> int:
        return int(self.row[-1])

    @classmethod
    def from_ranges(
        cls,
        start: np.ndarray,
        end: np.ndarray,
        rows: int,
        *,
        page_size: int = 4096,
        max_cuts: int = 11,
    ) -> AddressAxis:
        if len(start) == 0:
            return cls(np.array([0.0]), np.array([float(page_size)]), np.array([0, rows]))
        order = np.argsort(start, kind="stable")
        s = np.asarray(start, dtype=np.float64)[order]
        e = np.maximum.accumulate(np.asarray(end, dtype=np.float64)[order])
        touched = float(np.sum(e - s))
        gap = s[1:] - e[:-1]
        limit = max(16.0 * page_size, 0.02 * touched)
        cut = np.flatnonzero(gap > limit)
        if len(cut) > max_cuts:
            cut = np.sort(cut[np.argsort(gap[cut], kind="stable")[-max_cuts:]])
        r_start = s[np.r_[0, cut + 1]]
        r_end = np.r_[e[cut], e[-1]]
        span = r_end - r_start
        n = len(span)
        share = 0.25 / n + 0.75 * span / span.sum()  # sums to 1, each >= a quarter of 1/n
        bounds = np.round(np.cumsum(share) * rows).astype(np.int64)
        bounds = np.maximum(bounds, np.arange(1, n + 1))  # at least one row each
        return cls(r_start, r_end, np.r_[0, bounds])

    def __call__(self, addr: Any) -> np.ndarray:
        """Fractional row of each address (NaN outside every region)."""
        a = np.asarray(addr, dtype=np.float64)
        i = np.clip(np.searchsorted(self.start, a, side="right") - 1, 0, len(self.start) - 1)
        frac = (a - self.start[i]) / (self.end[i] - self.start[i])
        y = self.row[i] + frac * (self.row[i + 1] - self.row[i])
        inside = (a >= self.start[i]) & (a <= self.end[i])
        return np.where(inside, y, np.nan)


def _pieces(a0: np.ndarray, a1: np.ndarray, n: int) -> list[tuple[np.ndarray, ...]]:
    """Split each span ``[a0, a1)`` (cell units) into first, middle and last cell runs:
    (first cell, end cell, weight per cell, valid) for each of the three."""
    f0 = np.floor(a0).astype(np.int64)
    f1 = np.floor(a1).astype(np.int64)
    same = f0 == f1
    first = (f0, f0 + 1, np.where(same, a1 - a0, f0 + 1 - a0), np.ones(len(a0), dtype=bool))
    middle = (f0 + 1, f1, np.ones(len(a0)), f1 > f0 + 1)
    last = (f1, f1 + 1, a1 - f1, ~same & (a1 > f1))
    return [
        (np.clip(i0, 0, n), np.clip(i1, 0, n), w, ok & (w > 0))
        for i0, i1, w, ok in (first, middle, last)
    ]


def rasterize(
    y0: np.ndarray,
    y1: np.ndarray,
    x0: np.ndarray,
    x1: np.ndarray,
    code: np.ndarray,
    k: int,
    shape: tuple[int, int],
    chunk: int = 200_000,
) -> np.ndarray:
    """Area of every cell covered by each of ``k`` codes: array ``(k, rows, cols)``.

    Each rectangle ``[y0, y1) × [x0, x1)`` (fractional cell units) is cut into at most 3 × 3
    runs of cells with a uniform covered fraction; each run adds its fraction to the four
    corners of a 2-D difference array (``np.bincount``), and two cumulative sums give the
    covered area of every cell.  Memory: one float64 per code and cell.
    """
    rows, cols = shape
    stride_k = (rows + 1) * (cols + 1)
    diff = np.zeros(k * stride_k)
    for lo in range(0, len(y0), chunk):
        sl = slice(lo, lo + chunk)
        ys = _pieces(y0[sl], y1[sl], rows)
        xs = _pieces(x0[sl], x1[sl], cols)
        base = code[sl] * stride_k
        for r0, r1, wy, oky in ys:
            for c0, c1, wx, okx in xs:
                ok = oky & okx
                if not ok.any():
                    continue
                w = (wy * wx)[ok]
                b, a0, a1, b0, b1 = base[ok], r0[ok], r1[ok], c0[ok], c1[ok]
                idx = np.concatenate(
                    [
                        b + a0 * (cols + 1) + b0,
                        b + a1 * (cols + 1) + b0,
                        b + a0 * (cols + 1) + b1,
                        b + a1 * (cols + 1) + b1,
                    ]
                )
                diff += np.bincount(
                    idx, weights=np.concatenate([w, -w, -w, w]), minlength=len(diff)
                )
    area = diff.reshape(k, rows + 1, cols + 1).cumsum(axis=1).cumsum(axis=2)
    return area[:, :rows, :cols]


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
    lo, hi, clock = _window(
        _with_marks(np.concatenate([t_start, t_end]), violations, transitions), t_from, t_to, at
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
        for f in (_in_window(violations, lo, hi), _in_window(_faults(transitions), lo, hi))
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
    from matplotlib.patches import Patch

    palette = np.array([to_rgb(c) for c in (_UNTOUCHED[1], *colors)])
    image = palette[winner]

    fig = _pyplot_free_figure((11.0, 6.5))
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
    _address_ticks(ax, axis, page_size)
    shown = np.unique(winner)
    handles: list[Any] = [
        Patch(facecolor=c, edgecolor="#999999", lw=0.5, label=lab)
        for j, (lab, c) in enumerate(zip((_UNTOUCHED[0], *labels), palette, strict=True))
        if j in shown or (j > 0 and j - 1 in set(codes.tolist()))
    ]
    for frame, style, name in (
        (_in_window(violations, lo, hi), _VIOLATION_STYLE, "violation"),
        (_in_window(_faults(transitions), lo, hi), _FAULT_STYLE, "access fault"),
    ):
        if frame is None:
            continue
        y = axis(frame["addr"].to_numpy(dtype=np.float64) + page_size / 2)
        (h,) = ax.plot(clock(frame["ts"].to_numpy(np.float64)), y, ls="none", zorder=5, **style)
        h.set_label(f"{name} ({len(frame)})")
        handles.append(h)
    handles += _lost(ax, clock, lo, hi, transitions)
    handles += _cursor(ax, clock, at)
    ax.set_xlim(clock(lo), clock(hi))
    ax.set_ylim(0, axis.rows)
    ax.set_xlabel(clock.label)
    ax.set_ylabel("physical address (large gaps cut at - - -)")
    ax.set_title("Ownership map")
    _legend(ax, handles, "owner, state")
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
    fig.get_layout_engine().set(h_pad=0.25)
    return fig


def _address_ticks(ax: Axes, axis: AddressAxis, page_size: int) -> None:
    """Hex ticks: every region's start (with its size), and round addresses inside tall
    regions, never closer than 1/22 of the axis to each other."""
    min_gap = axis.rows / 22
    ticks: list[float] = []
    labels: list[str] = []
    for i in range(len(axis.start)):
        s, e = float(axis.start[i]), float(axis.end[i])
        r0, r1 = float(axis.row[i]), float(axis.row[i + 1])
        cand = [(r0, f"{int(s):#x} ({_fmt_size(e - s)})")]
        inner = int((r1 - r0) // (min_gap * 2.5))
        if inner >= 1:
            step = max(2.0 ** np.ceil(np.log2((e - s) / (inner + 1))), page_size)
            for a in np.arange(np.ceil(s / step) * step, e, step)[: inner + 1]:
                cand.append((r0 + (a - s) / (e - s) * (r1 - r0), f"{int(a):#x}"))
        for y, text in cand:
            if not ticks or y - ticks[-1] >= min_gap:
                ticks.append(y)
                labels.append(text)
    if axis.rows - ticks[-1] >= min_gap:
        ticks.append(float(axis.rows))
        labels.append(f"{int(axis.end[-1]):#x}")
    ax.set_yticks(ticks, labels, fontsize=8, family="monospace")
