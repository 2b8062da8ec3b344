"""Byte sizes for people: the one formatter every text, table and plot label uses.

Binary units (KiB = 1024 B) up to TiB.  Two number styles over the same unit choice: fixed
(``"1.5 MiB"``, ``"2.0 GiB"``, one decimal; tables and reports line up) and compact
(``"2 MiB"``, ``"1.5 GiB"``, three significant digits; axis labels and titles).
"""

from __future__ import annotations

__all__ = ["byte_unit", "fmt_bytes"]

_UNITS = ((40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB"))


def byte_unit(maximum: float) -> tuple[float, str]:
    """Divisor and name of the binary unit that keeps ``maximum`` readable (``"bytes"``
    below 1 KiB)."""
    for shift, name in _UNITS:
        if maximum >= 1 << shift:
            return float(1 << shift), name
    return 1.0, "bytes"


def fmt_bytes(n: float, *, compact: bool = False) -> str:
    """``n`` bytes in the largest unit not above ``|n|``: ``"12 B"``, ``"1.5 MiB"``.

    Fixed style: whole bytes, otherwise one decimal.  ``compact``: whole numbers without a
    decimal point, others to three significant digits.
    """
    div, unit = byte_unit(abs(n))
    if div == 1.0:
        return f"{n:.0f} B"
    value = n / div
    if not compact:
        return f"{value:.1f} {unit}"
    return f"{value:.0f} {unit}" if value == int(value) else f"{value:.3g} {unit}"
