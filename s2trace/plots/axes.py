"""The two axes of the plots: time (window and readable clock) and compressed addresses.

* :func:`window` picks the plotted time window and its :class:`Clock` (seconds -> an offset
  in s, ms or µs from a round origin);
* :class:`AddressAxis` maps physical addresses to raster rows with the large gaps between
  touched regions cut out; :func:`address_ticks` labels it in hex.

matplotlib is only touched through the ``Axes`` passed in; nothing here imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from s2trace.plots.units import decimals
from s2trace.units import fmt_bytes

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.axes import Axes

__all__ = ["AddressAxis", "Clock", "address_ticks", "window"]


@dataclass(frozen=True)
class Clock:
    """Trace seconds -> a readable axis: offset from the window start in s, ms or µs."""

    t0: float
    scale: float
    unit: str

    @classmethod
    def for_window(cls, lo: float, hi: float, first: float) -> Clock:
        """Unit from the window's span; origin ``first`` (the first data time, not the padded
        window start) rounded down to a whole unit, so the label reads ``ms after t =
        18.537 s`` rather than an arbitrary time."""
        span = hi - lo
        for scale, unit, limit in (
            (1e6, "µs", 2e-3),
            (1e3, "ms", 2.0),
            (1.0, "s", np.inf),
        ):
            if span < limit:
                return cls(float(np.floor(first * scale) / scale), scale, unit)
        raise AssertionError("unreachable")  # pragma: no cover

    def __call__(self, t: Any) -> Any:
        return (np.asarray(t, dtype=np.float64) - self.t0) * self.scale

    @property
    def label(self) -> str:
        return f"time ({self.unit} after t = {self.t0:.{decimals(self.scale)}f} s)"


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
    first = lo if t_from is None else t_from
    pad = (hi - lo) * 0.04 if hi > lo else max(abs(lo) * 1e-6, 1e-3)
    lo = t_from if t_from is not None else lo - pad
    hi = t_to if t_to is not None else hi + pad
    if hi <= lo:
        raise ValueError(f"empty time window: from {lo} to {hi}")
    return lo, hi, Clock.for_window(lo, hi, first)


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


def address_ticks(ax: Axes, axis: AddressAxis, page_size: int) -> None:
    """Hex ticks: every region's start (with its size), and round addresses inside tall
    regions, never closer than 1/22 of the axis to each other."""
    min_gap = axis.rows / 22
    ticks: list[float] = []
    labels: list[str] = []
    for i in range(len(axis.start)):
        s, e = float(axis.start[i]), float(axis.end[i])
        r0, r1 = float(axis.row[i]), float(axis.row[i + 1])
        cand = [(r0, f"{int(s):#x} ({fmt_bytes(e - s, compact=True)})")]
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
