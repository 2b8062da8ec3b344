"""Render an ownership map in the kernel's stage-2 ptdump line style.

The kernel (``arch/arm64/kvm/ptdump.c`` with the arm64 ``note_page``, v6.12+;
docs/kernel-facts.md §KF-5) prints one
line per run of entries with equal level and equal attributes::

    0x%016lx-0x%016lx   %9lu%c %s <labels>

with the size in KiB scaled by 1024 while it divides (units K M G T P E), the level number,
and the labels: ``F`` for invalid (else a space), ``R``, ``W``, the XN label, ``AF``, ``BLK``.
pKVM owner and page state follow, and runs never merge entries of different owner or state.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from s2trace.walk.ownership import ATTRIBUTES, _codes

__all__ = ["ptdump_lines", "size_label"]

_UNITS = "KMGTPE"
_XN = {0: "px ux ", 1: "PXNux ", 2: "PXNUXN", 3: "px UXN"}


def size_label(nbytes: int) -> str:
    """``%9lu%c``: KiB, scaled by 1024 while it divides evenly (the kernel's rule)."""
    value, unit = nbytes >> 10, 0
    while value and value % 1024 == 0 and unit < len(_UNITS) - 1:
        value //= 1024
        unit += 1
    return f"{value:9d}{_UNITS[unit]}"


def _labels(row: pd.Series) -> str:
    valid = row["kind"] in ("block", "page")
    s2ap = row["s2ap"] if valid else "none"
    parts = [
        " " if valid else "F",
        "R" if s2ap in ("ro", "rw") else " ",
        "W" if s2ap in ("wo", "rw") else " ",
        _XN.get(int(row["xn"]), "      ") if valid and not pd.isna(row["xn"]) else "      ",
        "AF" if valid else "  ",
        "BLK" if row["kind"] == "block" else "   ",
    ]
    owner = row["owner"] if not pd.isna(row["owner"]) else "-"
    state = row["page_state"] if not pd.isna(row["page_state"]) else "-"
    return " ".join(parts) + f" {owner} {state}"


def ptdump_lines(map_df: pd.DataFrame, marker: str = "Host IPA") -> list[str]:
    """The map as ptdump lines (runs of touching entries with equal level and attributes)."""
    lines = [f"---[ {marker} ]---"]
    if map_df.empty:
        return lines
    df = map_df.sort_values("ipa_start", kind="stable", ignore_index=True)
    ipa = df["ipa_start"].to_numpy(dtype=np.uint64)
    size = df["size"].to_numpy(dtype=np.uint64)
    same = ipa[1:] == ipa[:-1] + size[:-1]
    for col in ("level", *ATTRIBUTES):
        c = _codes(df[col]) if col != "level" else df[col].to_numpy()
        same &= c[1:] == c[:-1]
    starts = np.flatnonzero(np.concatenate(([True], ~same)))
    ends = np.concatenate((starts[1:], [len(df)])) - 1
    for s, e in zip(starts, ends, strict=True):
        row = df.iloc[s]
        lo, hi = int(ipa[s]), int(ipa[e] + size[e])
        lines.append(
            f"0x{lo:016x}-0x{hi:016x}   {size_label(hi - lo)} {int(row['level'])}   {_labels(row)}"
        )
    return lines
