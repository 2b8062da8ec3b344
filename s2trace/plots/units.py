"""Readable durations and 1-2-5 steps for axis labels and titles (byte sizes:
:mod:`s2trace.units`)."""

from __future__ import annotations

import numpy as np

__all__ = ["decimals", "fmt_duration", "nice"]


def nice(x: float) -> float:
    """The smallest 1, 2 or 5 × 10^k not below ``x`` (x > 0)."""
    exp = np.floor(np.log10(x))
    for m in (1.0, 2.0, 5.0, 10.0):
        if m * 10**exp >= x * (1 - 1e-9):
            return float(m * 10**exp)
    return float(10 ** (exp + 1))  # pragma: no cover - unreachable


def fmt_duration(seconds: float) -> str:
    """``seconds`` in s, ms, µs or ns, whichever keeps the number at or above 1."""
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if seconds >= scale:
            return f"{seconds / scale:g} {unit}"
    return f"{seconds / 1e-9:g} ns"


def decimals(scale: float) -> int:
    """Decimal places of one unit of ``scale`` per second (1e3 -> 3)."""
    return round(np.log10(scale))
