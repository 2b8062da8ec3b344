"""Renderers: DataFrames to text tables, CSV, JSON lines and Parquet.

Results never format themselves; the CLI picks a renderer.  Conventions (public contract):
JSON numbers are integers and missing values ``null``; in CSV and tables, address-like
columns are ``0x``-prefixed hex.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

__all__ = ["FORMATS", "HEX_COLUMNS", "json_records", "plain_value", "write_frame"]

FORMATS = ("table", "csv", "json", "parquet")

#: Columns shown in hex in tables and CSV.
HEX_COLUMNS = frozenset(
    {
        "raw",
        "oa",
        "next_table",
        "size",
        "res0",
        "ipa_start",
        "table_pa",
        "addr",
        "addr_start",
        "gfn",
        "pa",
        "va",
        "start",
        "end",
        "vm_handle",
        "hyp_va",
        "expected_raw",
        "actual_raw",
    }
)


def plain_value(value: Any) -> Any:
    """A JSON-ready Python value: ints stay ints, NA becomes None."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def json_records(df: pd.DataFrame) -> Iterator[dict[str, Any]]:
    """Rows as dicts of plain Python values (integers stay integers, NA is None)."""
    columns = list(df.columns)
    arrays = [df[c].astype(object).to_numpy() for c in columns]
    for row in zip(*arrays, strict=True):
        yield {c: plain_value(v) for c, v in zip(columns, row, strict=True)}


def _hex_frame(df: pd.DataFrame, hex_columns: Iterable[str]) -> pd.DataFrame:
    out = df.copy()
    for col in hex_columns:
        if col in out.columns and pd.api.types.is_integer_dtype(out[col].dtype):
            values = out[col].astype(object)
            out[col] = [None if v is pd.NA or v is None else f"{int(v):#x}" for v in values]
    return out


def _table_text(df: pd.DataFrame, hex_columns: Iterable[str]) -> str:
    shown = _hex_frame(df, hex_columns).astype(object).where(df.notna(), "")
    if shown.empty:
        return "(no rows)\n"
    return shown.to_string(index=False) + "\n"


def write_frame(
    df: pd.DataFrame,
    fmt: str,
    out: IO[str] | None = None,
    path: str | Path | None = None,
    hex_columns: Iterable[str] = HEX_COLUMNS,
    meta: dict[str, Any] | None = None,
) -> None:
    """Write ``df`` as ``fmt`` to ``path`` or the text stream ``out``.

    Parquet needs ``path``; ``meta`` is stored in its schema metadata (key ``s2trace``)
    and printed as a ``#`` comment above a table.
    """
    if fmt == "parquet":
        if path is None:
            raise ValueError("parquet output needs -o FILE")
        table_df = df.copy()
        for c in table_df.columns:
            if isinstance(table_df[c].dtype, pd.CategoricalDtype):
                table_df[c] = table_df[c].astype("string")
        if meta:
            table_df.attrs["s2trace"] = json.dumps(meta, default=str)
        table_df.to_parquet(path, index=False)
        return
    hex_columns = set(hex_columns)
    if fmt == "json":
        text = "".join(json.dumps(r) + "\n" for r in json_records(df))
    elif fmt == "csv":
        text = _hex_frame(df, hex_columns).to_csv(index=False)
    elif fmt == "table":
        head = "".join(f"# {k}: {v}\n" for k, v in (meta or {}).items())
        text = head + _table_text(df, hex_columns)
    else:
        raise ValueError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if path is not None:
        Path(path).write_text(text)
    elif out is not None:
        out.write(text)
