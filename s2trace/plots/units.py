"""Readable byte sizes and durations for axis labels and titles (binary units, 1-2-5 steps)."""

from __future__ import annotations

import numpy as np

__all__ = ["byte_unit", "decimals", "fmt_duration", "fmt_size", "nice"]


def byte_unit(maximum: float) -> tuple[float, str]:
    """Divisor and name of the binary unit that keeps ``maximum`` readable."""
    for shift, name in ((40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")):
        if maximum >= 1 << shift:
            return float(1 << shift), name
    return 1.0, "bytes"


def fmt_size(n: float) -> str:
    """``n`` bytes in the unit of :func:`byte_unit` (``"2 MiB"``, ``"1.5 GiB"``, ``"12 B"``)."""
    div, unit = byte_unit(n)
    value = n / div
    text = f"{value:.0f}" if value == int(value) else f"{value:.3g}"
    return f"{text} {unit}" if unit != "bytes" else f"{text} B"


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
