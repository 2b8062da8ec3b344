"""The two axes of the plots: time (window and readable clock) and compressed addresses.

* :func:`window` picks the plotted time window and its :class:`Clock` (the trace's own
  seconds, with the decimals the span needs);
* :class:`AddressAxis` maps physical addresses to raster rows with the large gaps between
  touched regions cut out; :func:`address_ticks` labels it in hex.

matplotlib is only touched through the ``Axes`` passed in; nothing here imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from s2trace.intervals import distinct

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.axes import Axes

__all__ = ["AddressAxis", "Clock", "address_ticks", "span_text", "window"]


@dataclass(frozen=True)
class Clock:
    """The time axis in the trace's own seconds (never rebased: a violation printed at
    4.222222 s is drawn at 4.222222), with as many decimals as the window's span needs."""

    digits: int

    @classmethod
    def for_window(cls, lo: float, hi: float) -> Clock:
        span = max(hi - lo, 1e-9)
        return cls(int(np.clip(np.ceil(-np.log10(span / 5)), 0, 9)))

    def __call__(self, t: Any) -> Any:
        return np.asarray(t, dtype=np.float64)

    @property
    def label(self) -> str:
        return "trace time (s)"

    def text(self, t: float) -> str:
        """``t`` with two decimals more than the ticks (titles, annotations)."""
        return f"{t:.{min(self.digits + 2, 9)}f}"

    def format(self, ax: Axes) -> None:
        """Tick labels in plain seconds: no offset, no exponent, as many decimals as the tick
        spacing needs."""
        ax.ticklabel_format(axis="x", style="plain", useOffset=False)


def span_text(times: np.ndarray, lo: float, hi: float, clock: Clock) -> str:
    """``t A–B s``: the first and last finite times inside the window (the window itself when
    none), for titles."""
    t = times[np.isfinite(times) & (times >= lo) & (times <= hi)]
    a, b = (float(t.min()), float(t.max())) if len(t) else (lo, hi)
    if b - a < 0.5 * (hi - lo):  # a zoom around a few events: name the window
        a, b = lo, hi
    return f"t {clock.text(a)}–{clock.text(b)} s"


def window(
    times: np.ndarray, t_from: float | None, t_to: float | None, at: float | None = None
) -> tuple[float, float, Clock]:
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
    pad = (hi - lo) * 0.04 if hi > lo else max(abs(lo) * 1e-6, 1e-3)
    lo = t_from if t_from is not None else lo - pad
    hi = t_to if t_to is not None else hi + pad
    if hi <= lo:
        raise ValueError(f"empty time window: from {lo} to {hi}")
    return lo, hi, Clock.for_window(lo, hi)


@dataclass(frozen=True)
class AddressAxis:
    """A compressed address axis: segments drawn over rows ``[row[i], row[i+1])``, the
    untouched gaps between them cut out.

    Active segments (the touched ranges, grouped when the gap between them is at most 2
    pages; of the larger gaps at most ``max_cuts``, the largest, are cut) share the rows in
    proportion to their span, each at least a quarter of an equal share, so a one-page region
    stays visible beside a gigabyte one.  Folded segments (quiet bands, :mod:`.focus`) and
    active segments none of whose ranges is ``busy`` get a fixed ``band_share`` of the rows
    each.
    """

    start: np.ndarray  # segment first address (float64: exact below 2^53)
    end: np.ndarray  # segment end address (exclusive)
    row: np.ndarray  # row boundaries, len(start) + 1, row[-1] == rows
    folded: np.ndarray  # bool per segment: a folded band

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
        max_cuts: int = 15,
        band_start: np.ndarray | None = None,
        band_end: np.ndarray | None = None,
        band_share: float = 0.05,
        busy: np.ndarray | None = None,
        own_rows: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> AddressAxis:
        busy = np.ones(len(start), bool) if busy is None else np.asarray(busy, bool)
        a_s, a_e, a_busy = _group(
            np.asarray(start, np.float64),
            np.asarray(end, np.float64),
            busy,
            2.0 * page_size,
            max_cuts,
        )
        a_mark = np.zeros(len(a_s), bool)
        if own_rows is not None and len(own_rows[0]):
            a_s, a_e, a_busy, a_mark = _split(a_s, a_e, a_busy, *own_rows)
        b_s = np.zeros(0) if band_start is None else np.asarray(band_start, np.float64)
        b_e = np.zeros(0) if band_end is None else np.asarray(band_end, np.float64)
        if len(a_s) + len(b_s) == 0:
            return cls(
                np.array([0.0]),
                np.array([float(page_size)]),
                np.array([0, rows]),
                np.array([False]),
            )
        seg_s = np.concatenate([a_s, b_s])
        seg_e = np.concatenate([a_e, b_e])
        folded = np.r_[np.zeros(len(a_s), bool), np.ones(len(b_s), bool)]
        wide = np.r_[a_busy, np.zeros(len(b_s), bool)]
        mark = np.r_[a_mark, np.zeros(len(b_s), bool)]
        order = np.argsort(seg_s, kind="stable")
        seg_s, seg_e, folded, wide = seg_s[order], seg_e[order], folded[order], wide[order]
        mark = mark[order]
        n_wide = int(wide.sum())
        band = min(band_share, 0.5 / max(int((~wide).sum()), 1)) if n_wide else 1 / len(seg_s)
        share = np.full(len(seg_s), band)
        if n_wide:
            span = (seg_e - seg_s)[wide]
            rest = 1.0 - band * int((~wide).sum())
            share[wide] = rest * (0.25 / n_wide + 0.75 * span / span.sum())
            if mark.any():  # a marked page keeps at least 3% of the axis
                floor = min(0.03, 0.5 * rest / int(mark.sum()))
                lift = np.maximum(floor - share, 0.0) * mark
                others = wide & ~mark
                if others.any():
                    share[others] *= 1 - lift.sum() / share[others].sum()
                share += lift
        bounds = np.round(np.cumsum(share) * rows).astype(np.int64)
        bounds = np.maximum(bounds, np.arange(1, len(seg_s) + 1))  # at least one row each
        bounds[-1] = max(rows, len(seg_s))
        return cls(seg_s, seg_e, np.r_[0, bounds], folded)

    def __call__(self, addr: Any) -> np.ndarray:
        """Fractional row of each address (NaN outside every segment)."""
        a = np.asarray(addr, dtype=np.float64)
        i = np.clip(np.searchsorted(self.start, a, side="right") - 1, 0, len(self.start) - 1)
        frac = (a - self.start[i]) / (self.end[i] - self.start[i])
        y = self.row[i] + frac * (self.row[i + 1] - self.row[i])
        inside = (a >= self.start[i]) & (a <= self.end[i])
        return np.where(inside, y, np.nan)

    def clip(self, a0: np.ndarray, a1: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row spans of the ranges ``[a0, a1)`` cut to the segments (the cut-out parts drop):
        (first row, end row, index of the range) per piece.  One pass per segment."""
        y0, y1, which = [], [], []
        for i in range(len(self.start)):
            s = np.maximum(a0, self.start[i])
            e = np.minimum(a1, self.end[i])
            k = np.flatnonzero(e > s)
            scale = (self.row[i + 1] - self.row[i]) / (self.end[i] - self.start[i])
            y0.append(self.row[i] + (s[k] - self.start[i]) * scale)
            y1.append(self.row[i] + (e[k] - self.start[i]) * scale)
            which.append(k)
        return np.concatenate(y0), np.concatenate(y1), np.concatenate(which)

    def gaps(self) -> np.ndarray:
        """Bytes cut out above each segment but the last (0: the next segment follows on)."""
        return np.maximum(self.start[1:] - self.end[:-1], 0.0)


def _group(
    s: np.ndarray, e: np.ndarray, busy: np.ndarray, limit: float, max_cuts: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ranges grouped into regions: merged across gaps up to ``limit`` bytes, and across the
    smallest larger gaps until at most ``max_cuts`` remain; a region is busy when any of its
    ranges is."""
    if len(s) == 0:
        return s, e, busy
    order = np.argsort(s, kind="stable")
    s = s[order]
    e = np.maximum.accumulate(e[order])
    gap = s[1:] - e[:-1]
    cut = np.flatnonzero(gap > limit)
    if len(cut) > max_cuts:
        cut = np.sort(cut[np.argsort(gap[cut], kind="stable")[-max_cuts:]])
    heads = np.r_[0, cut + 1]
    return s[heads], np.r_[e[cut], e[-1]], np.maximum.reduceat(busy[order], heads)


def _split(
    s: np.ndarray, e: np.ndarray, busy: np.ndarray, m_s: np.ndarray, m_e: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Segments cut at the edges of the ranges ``[m_s, m_e)`` (marked pages), which become
    busy segments of their own: their rows cannot shrink below a share of the axis, so a
    marker always sits inside its page's rows, never on a boundary."""
    points = distinct(np.concatenate([s, e, m_s, m_e]))
    lo, hi = points[:-1], points[1:]
    seg = np.searchsorted(s, lo, side="right") - 1
    inside = (seg >= 0) & (lo < e[np.maximum(seg, 0)])
    lo, hi, seg = lo[inside], hi[inside], seg[inside]
    mark = np.sort(m_s)
    j = np.searchsorted(mark, lo, side="right") - 1
    marked = (j >= 0) & (hi <= np.sort(m_e)[np.maximum(j, 0)])
    # merge neighbouring unmarked pieces of the same segment back together
    head = np.r_[True, (seg[1:] != seg[:-1]) | marked[1:] | marked[:-1]]
    idx = np.flatnonzero(head)
    ends = np.r_[hi[idx[1:] - 1], hi[-1]]
    return lo[idx], ends, busy[seg[idx]] | marked[idx], marked[idx]


def address_ticks(ax: Axes, axis: AddressAxis, page_size: int) -> None:
    """Hex ticks, one convention: every tick is the address at its row.  Each segment's
    first address, round addresses inside tall active segments, and the last segment's end;
    never closer than 1/22 of the axis to each other."""
    min_gap = axis.rows / 22
    ticks: list[float] = []
    labels: list[str] = []
    for i in range(len(axis.start)):
        s, e = float(axis.start[i]), float(axis.end[i])
        r0, r1 = float(axis.row[i]), float(axis.row[i + 1])
        cand = [(r0, f"{int(s):#x}")]
        inner = 0 if axis.folded[i] else int((r1 - r0) // (min_gap * 2.5))
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
