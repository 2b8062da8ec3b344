"""Whole-map operations on an ownership map: coalescing into ranges and the summary.

Both are vectorised over the map (one comparison per column between neighbouring rows), so
they stay fast on the 16 M rows of a 64 GiB page-mapped table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from s2trace.columns import MAP
from s2trace.units import fmt_bytes
from s2trace.walk.result import WalkResult

__all__ = ["ATTRIBUTES", "Summary", "coalesce", "summarize", "totals"]

#: Columns that must be equal for two neighbouring rows to merge.
ATTRIBUTES = (
    "kind",
    "owner",
    "owner_id",
    "page_state",
    "s2ap",
    "memattr_name",
    "xn",
    "contiguous",
    "locked",
    "inv_type",
    "vm_handle",
)


def _codes(s: pd.Series) -> np.ndarray:
    """Comparable integer view of a column; NA becomes its own value."""
    if isinstance(s.dtype, pd.CategoricalDtype):
        return s.cat.codes.to_numpy().astype(np.int64)
    na = s.isna().to_numpy()
    if pd.api.types.is_bool_dtype(s.dtype):
        values = s.fillna(False).to_numpy(dtype=np.int64)
    else:
        values = s.fillna(0).to_numpy(dtype=np.uint64).astype(np.int64)
    return np.where(na, np.int64(-(1 << 62)), values)


def _continues(values: pd.Series, steps: np.ndarray) -> np.ndarray:
    """Row i continues row i-1: value_i == value_{i-1} + step_{i-1}, or both NA."""
    na = values.isna().to_numpy()
    v = values.fillna(0).to_numpy(dtype=np.uint64)
    same = v[1:] == v[:-1] + steps[:-1]
    return (same & ~na[1:] & ~na[:-1]) | (na[1:] & na[:-1])


def coalesce(map_df: pd.DataFrame, page_size: int = 4096) -> pd.DataFrame:
    """Merge adjacent rows with equal attributes into ranges.

    Rows merge when their IPAs touch, every column of :data:`ATTRIBUTES` is equal, output
    addresses continue (leaves) and guest frame numbers continue (7.1 guest donations).
    Levels may differ inside a run (a block next to pages); ``level``, ``raw``, ``table_pa``
    and ``index`` describe the first entry of each run.
    """
    if len(map_df) < 2:
        return map_df.copy()
    df = map_df.sort_values("ipa_start", kind="stable", ignore_index=True)
    ipa = df["ipa_start"].to_numpy(dtype=np.uint64)
    size = df["size"].to_numpy(dtype=np.uint64)
    keep = ipa[1:] == ipa[:-1] + size[:-1]
    for col in ATTRIBUTES:
        c = _codes(df[col])
        keep &= c[1:] == c[:-1]
    keep &= _continues(df["oa"], size)
    keep &= _continues(df["gfn"], size // np.uint64(page_size))
    starts = np.flatnonzero(np.concatenate(([True], ~keep)))
    out = df.iloc[starts].reset_index(drop=True)
    out["size"] = np.add.reduceat(size, starts).astype(np.uint64)
    MAP.check(out)
    return out


@dataclass
class Summary:
    """Bytes per owner and page state, tables per level, entries by kind, problems."""

    by_owner: pd.DataFrame
    by_state: pd.DataFrame
    tables_per_level: pd.DataFrame
    entries_by_kind: pd.DataFrame
    problems: pd.DataFrame
    meta: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        """The summary as a screenful of text."""
        out = ["# " + ", ".join(f"{k}={v}" for k, v in self.meta.items())]
        out.append("\nbytes by owner and page state:")
        out.append(_fmt_bytes_table(self.by_state))
        out.append("\ntables per level:")
        out.append(self.tables_per_level.to_string(index=False))
        out.append("\nentries by kind:")
        out.append(self.entries_by_kind.to_string(index=False))
        if len(self.problems):
            out.append("\nproblems:")
            out.append(self.problems.to_string(index=False))
        else:
            out.append("\nproblems: none")
        out += [f"note: {n}" for n in self.notes]
        return "\n".join(out) + "\n"


def _fmt_bytes_table(df: pd.DataFrame) -> str:
    shown = df.copy()
    shown["human"] = [fmt_bytes(int(b)) for b in shown["bytes"]]
    return shown.to_string(index=False)


def totals(m: pd.DataFrame, keys: list[str], rows: str, dropna: bool = True) -> pd.DataFrame:
    """Bytes and rows of ``m`` per observed combination of the categorical columns ``keys``:
    ``m.groupby(keys, observed=True, dropna=dropna)["size"].agg(["sum", "count"])`` renamed
    ``bytes`` and ``rows``, computed on the category codes (a groupby's set-up costs more than
    the sums on a map of a few hundred rows, and a fleet summarises thousands of maps).
    Groups come in category order, a missing value after the categories."""
    cats = [m[k].array for k in keys]
    if not all(isinstance(c, pd.Categorical) for c in cats):
        grouped = m.groupby(keys, observed=True, dropna=dropna)["size"].agg(["sum", "count"])
        return grouped.rename(columns={"sum": "bytes", "count": rows}).reset_index()
    codes = [np.asarray(c.codes, np.int64) for c in cats]
    widths = [len(c.categories) + 1 for c in cats]  # NA (-1) sorts after every category
    key = np.zeros(len(m), np.int64)
    keep = np.ones(len(m), bool)
    for code, width in zip(codes, widths, strict=True):
        if dropna:
            keep &= code >= 0
        key = key * width + np.where(code < 0, width - 1, code)
    size = m["size"].to_numpy(np.uint64)[keep]
    groups, inverse = np.unique(key[keep], return_inverse=True)
    out: dict[str, object] = {}
    rest = groups
    parts = []
    for width in widths[::-1]:
        parts.append(rest % width)
        rest = rest // width
    for k, c, part in zip(keys, cats, parts[::-1], strict=True):
        out[k] = pd.Categorical.from_codes(
            np.where(part == len(c.categories), -1, part), dtype=c.dtype, validate=False
        )
    sums = np.zeros(len(groups), np.uint64)
    np.add.at(sums, inverse, size)
    out["bytes"] = sums
    out[rows] = np.bincount(inverse, minlength=len(groups)).astype(np.int64)
    return pd.DataFrame(out)


def summarize(result: WalkResult) -> Summary:
    """Summary of a walk (``s2trace decode DUMP --summary``)."""
    m = result.map
    rows = "ranges" if result.meta.get("coalesced") else "entries"
    by_owner = totals(m, ["owner"], rows)
    by_state = totals(m, ["owner", "page_state"], rows, dropna=False)
    tables = result.tables.groupby("level").size().rename("tables").reset_index()
    kinds = pd.DataFrame(
        {"kind": list(result.entry_counts), "entries": list(result.entry_counts.values())}
    )
    counts = result.problems.counts()
    problems = pd.DataFrame({"problem": list(counts), "count": list(counts.values())})
    notes = []
    if result.profile.state_source == "vmemmap":
        notes.append(
            f"profile {result.profile.name}: host page states are kept in the hypervisor's "
            "hyp_vmemmap since 6.14, not in the host stage 2, so valid pages read 'unknown'. "
            "Give --ttbr0-el2/--tcr-el2 and --kallsyms (or --vmemmap VA) to read them."
        )
    return Summary(by_owner, by_state, tables, kinds, problems, dict(result.meta), notes)
