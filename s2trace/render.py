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

from s2trace.columns import ADDRESS_COLUMNS
from s2trace.errors import InputError
from s2trace.outputs import open_output, output_path, write_text

__all__ = [
    "FORMATS",
    "HEX_COLUMNS",
    "PARQUET_NEEDS_FILE",
    "PIECEWISE_FORMATS",
    "TABLE_WIDTH",
    "hex_frame",
    "json_records",
    "plain_value",
    "write_frame",
    "write_frames",
]

FORMATS = ("table", "csv", "json", "parquet")

#: Formats :func:`write_frames` writes a piece at a time (text, one line per row).
PIECEWISE_FORMATS = ("csv", "json")

#: Columns shown in hex in tables, CSV and JSON (declared in :mod:`s2trace.columns`).
HEX_COLUMNS = ADDRESS_COLUMNS


def plain_value(value: Any) -> Any:
    """A JSON-ready Python value: ints stay ints, NA becomes None, and so does a float that is
    not finite (JSON, RFC 8259, has no infinity: a time before the trace's first event or after
    its last, ``-inf``/``inf`` in tables and CSV, is null in JSON)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_records(df: pd.DataFrame, hex_columns: Iterable[str] = ()) -> Iterator[dict[str, Any]]:
    """Rows as dicts of plain Python values (NA is None; integers stay integers except in
    ``hex_columns``, which become ``0x`` strings)."""
    df = hex_frame(df, hex_columns) if hex_columns else df
    columns = list(df.columns)
    arrays = [df[c].astype(object).to_numpy() for c in columns]
    for row in zip(*arrays, strict=True):
        yield {c: plain_value(v) for c, v in zip(columns, row, strict=True)}


def hex_frame(df: pd.DataFrame, hex_columns: Iterable[str] = HEX_COLUMNS) -> pd.DataFrame:
    """A copy of ``df`` with its integer address-like columns as ``0x`` text."""
    out = df.copy()
    for col in hex_columns:
        if col in out.columns and pd.api.types.is_integer_dtype(out[col].dtype):
            values = out[col].astype(object)
            out[col] = [None if v is pd.NA or v is None else f"{int(v):#x}" for v in values]
    return out


#: Text tables fit this many columns; csv, json and parquet keep every value whole.
TABLE_WIDTH = 120
_GAP = "  "
_MIN_TEXT = 12  # a cut text column keeps at least this many characters


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _wrap(text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width`` characters, broken at spaces where possible."""
    import textwrap

    return textwrap.wrap(text, width, break_long_words=True, break_on_hyphens=False) or [""]


def _fit(widths: list[int], text: list[bool], width: int) -> list[int]:
    """Column widths that fit ``width``: the widest text columns are cut first, evenly, down to
    ``_MIN_TEXT``; numbers and addresses are never shortened (too many of them: blocks)."""
    widths = list(widths)
    while (excess := sum(widths) + len(_GAP) * (len(widths) - 1) - width) > 0:
        shrinkable = sorted(
            (j for j, t in enumerate(text) if t and widths[j] > _MIN_TEXT), key=lambda k: -widths[k]
        )
        if not shrinkable:
            break
        j = shrinkable[0]
        runner_up = widths[shrinkable[1]] if len(shrinkable) > 1 else _MIN_TEXT
        widths[j] = max(_MIN_TEXT, widths[j] - excess, min(runner_up, widths[j] - 1))
    return widths


def _blocks(widths: list[int], width: int) -> list[list[int]]:
    """Columns split into blocks that each fit ``width`` (the first column repeated as the
    key of every block), for tables with more columns than a line holds."""
    blocks: list[list[int]] = [[0]]
    for j in range(1, len(widths)):
        used = sum(widths[k] + len(_GAP) for k in blocks[-1]) + widths[j]
        if used > width and len(blocks[-1]) > 1:
            blocks.append([0])
        blocks[-1].append(j)
    return blocks


def _table_text(df: pd.DataFrame, hex_columns: Iterable[str], width: int = TABLE_WIDTH) -> str:
    """A text table that fits ``width`` columns: numbers right-aligned, text left-aligned, long
    text wrapped (last column) or cut with an ellipsis, and a note saying so; a table with more
    columns than fit is printed in blocks."""
    if df.empty:
        return "(no rows)\n"
    shown = hex_frame(df, hex_columns).astype(object).where(df.notna(), "")
    names = [str(c) for c in shown.columns]
    cells = [[str(v) for v in shown[c].to_list()] for c in shown.columns]
    text = [
        not (pd.api.types.is_numeric_dtype(df[c].dtype) or pd.api.types.is_bool_dtype(df[c]))
        and c not in set(hex_columns)
        for c in df.columns
    ]
    natural = [max(len(n), *(len(v) for v in col)) for n, col in zip(names, cells, strict=True)]
    below = _detail_below(natural, text, width)
    if below:  # the last column goes on its own wrapped lines under each row
        names, cells, text, natural = names[:-1], cells[:-1], text[:-1], natural[:-1]
    blocks = _blocks(_fit(natural, text, width), width)
    shortened = False
    out: list[str] = []
    for block in blocks:
        if out:
            out.append("")
        # each block gets the whole line: text is cut only as much as its own block needs
        fitted = _fit([natural[j] for j in block], [text[j] for j in block], width)
        widths = dict(zip(block, fitted, strict=True))
        shortened |= any(widths[j] < natural[j] for j in block)
        head = [names[j].ljust(widths[j]) if text[j] else names[j].rjust(widths[j]) for j in block]
        out.append(_GAP.join(head).rstrip())
        for i in range(len(shown)):
            parts = [cells[j][i] for j in block]
            parts = [
                _cut(v, widths[j]).ljust(widths[j]) if text[j] else v.rjust(widths[j])
                for j, v in zip(block, parts, strict=True)
            ]
            out.append(_GAP.join(parts).rstrip())
            if below and block is blocks[0]:
                detail = str(shown.iloc[i, -1])
                out.extend("    " + line for line in _wrap(detail, width - 4) if detail)
    if below:
        out.insert(0, f"(each row's {shown.columns[-1]} is printed under it)")
    if shortened:
        out.append(f"(long values cut to {width} columns; csv and json hold them whole)")
    return "\n".join(out) + "\n"


def _detail_below(natural: list[int], text: list[bool], width: int) -> bool:
    """Whether the last column is long text that gets less than 40 characters beside the
    others: then it is printed under its row instead."""
    if len(natural) < 2 or not text[-1]:
        return False
    beside = width - sum(natural[:-1]) - len(_GAP) * (len(natural) - 1)
    return natural[-1] > beside and beside < 40


def _meta_text(meta: dict[str, Any], width: int = TABLE_WIDTH) -> str:
    """``# key: value`` lines, long values wrapped under their key."""
    lines = []
    for k, v in meta.items():
        head = f"# {k}: "
        body = _wrap(str(v), max(width - len(head), 20))
        lines.append(head + body[0])
        lines.extend("#" + " " * (len(head) - 1) + b for b in body[1:])
    return "".join(line + "\n" for line in lines)


#: Parquet is binary: never written to standard output.
PARQUET_NEEDS_FILE = (
    "--format parquet needs -o FILE (Parquet is binary: it is not written to standard output)"
)


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
            raise InputError(PARQUET_NEEDS_FILE)
        table_df = df.copy()
        for c in table_df.columns:
            if isinstance(table_df[c].dtype, pd.CategoricalDtype):
                table_df[c] = table_df[c].astype("string")
        if meta:
            table_df.attrs["s2trace"] = json.dumps(meta, default=str)
        with output_path(path) as tmp:
            table_df.to_parquet(tmp, index=False)
        return
    hex_columns = set(hex_columns)
    if fmt == "json":
        text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in json_records(df, hex_columns))
    elif fmt == "csv":
        text = hex_frame(df, hex_columns).to_csv(index=False)
    elif fmt == "table":
        text = _meta_text(meta or {}) + _table_text(df, hex_columns)
    else:
        raise ValueError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if path is not None:
        write_text(path, text)
    elif out is not None:
        out.write(text)


def write_frames(
    pieces: Iterable[pd.DataFrame],
    fmt: str,
    out: IO[str] | None = None,
    path: str | Path | None = None,
    hex_columns: Iterable[str] = HEX_COLUMNS,
) -> None:
    """Write a table given as consecutive pieces (one schema) as CSV or JSON lines, a piece at
    a time: the same text :func:`write_frame` makes of the pieces joined, without ever holding
    the whole table or its text (a long trace's INTERVALS are kept on disk and read back in
    pieces).  ``path`` is written to a temporary file renamed at the end, as always."""
    if fmt not in PIECEWISE_FORMATS:
        raise ValueError(f"format {fmt!r}: written in pieces only as {PIECEWISE_FORMATS}")
    hex_set = set(hex_columns)

    def text(piece: pd.DataFrame, first: bool) -> str:
        if fmt == "csv":
            return hex_frame(piece, hex_set).to_csv(index=False, header=first)
        return "".join(json.dumps(r, allow_nan=False) + "\n" for r in json_records(piece, hex_set))

    def write_all(fh: IO[str]) -> None:
        first = True
        for piece in pieces:
            if first or len(piece):
                fh.write(text(piece, first))
                first = False

    if path is not None:
        with open_output(path, "w", encoding="utf-8") as fh:
            write_all(fh)
    elif out is not None:
        write_all(out)
