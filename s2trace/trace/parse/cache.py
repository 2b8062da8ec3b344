"""EVENTS on disk: the canonical tabular files and the cache of parsed traces.

Tabular files (CSV, JSON lines, Parquet) hold exactly the EVENTS columns, so a trace can be
converted once (:func:`write_events`) and read back (:func:`read_events`) with the same dtypes.
CSV keeps <NA> apart from the empty string (<NA> is an empty cell, ``""`` a quoted empty
string); JSON lines use ``null``.

The cache keeps a parsed trace as Parquet (the events) plus a small JSON record (format, line
count, problems, the s2trace version, the Parquet file's checksum and the record's own) under
``traces`` in the cache root (``$S2TRACE_CACHE``, else ``$XDG_CACHE_HOME/s2trace``, else
``~/.cache/s2trace``), keyed by the sha256 of the file's content, the parser version and the
format, so a second read of the same file costs one hash, one checksum and one Parquet read.
Entries are written to a temporary name and renamed into place; an entry that does not match
its record is dropped with a warning and the trace parsed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from s2trace import __version__
from s2trace.columns import EVENTS
from s2trace.errors import CacheWarning, InputError
from s2trace.files import cache_root, content_digest, shown

__all__ = [
    "TABULAR_FORMATS",
    "cache_dir",
    "cache_key",
    "conform_events",
    "load",
    "read_events",
    "sorted_categorical",
    "store",
    "write_events",
]

TABULAR_FORMATS: tuple[str, ...] = ("csv", "jsonl", "parquet")
_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
_SUFFIXES[".pq"] = "parquet"
_ARROW_TYPES: dict[str, pa.DataType] = {
    "float64": pa.float64(),
    "Int16": pa.int16(),
    "Int32": pa.int32(),
    "Int64": pa.int64(),
    "int64": pa.int64(),
    "string": pa.string(),
    "category": pa.string(),
}
_SCHEMA = pa.schema([(c.name, _ARROW_TYPES[c.dtype]) for c in EVENTS.columns])


def sorted_categorical(codes: np.ndarray, names: list[str]) -> pd.Categorical:
    """A categorical with its categories in sorted order (so the same events give the same
    dtype however they were parsed); ``codes`` index ``names``."""
    order = np.argsort(np.array(names, dtype=object), kind="stable") if names else np.zeros(0, int)
    rank = np.empty(len(names), np.int64)
    rank[order] = np.arange(len(names))
    new = rank[codes] if len(names) else np.asarray(codes, np.int64)
    return pd.Categorical.from_codes(new, dtype=pd.CategoricalDtype([names[i] for i in order]))


# -- tabular files ----------------------------------------------------------------------------
def _format_of(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in TABULAR_FORMATS:
            raise InputError(f"{path}: table format {fmt!r}: expected csv, jsonl or parquet")
        return fmt
    kind = _SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise InputError(
            f"{path}: cannot tell the table format from the suffix (expected .csv, .jsonl, "
            ".ndjson, .parquet or .pq)"
        )
    return kind


def _to_arrow(events: pd.DataFrame) -> pa.Table:
    EVENTS.check(events)
    cols = {}
    for c in EVENTS.columns:
        s = events[c.name]
        if c.dtype == "category":
            s = s.astype("string")
        cols[c.name] = pa.array(s, type=_ARROW_TYPES[c.dtype], from_pandas=True)
    return pa.table(cols, schema=_SCHEMA)


def write_events(
    events: pd.DataFrame, path: str | os.PathLike[str], fmt: str | None = None
) -> None:
    """Write EVENTS as CSV, JSON lines or Parquet (``fmt``, or from the suffix)."""
    out = Path(path)
    kind = _format_of(out, fmt)
    table = _to_arrow(events)
    try:
        if kind == "parquet":
            pq.write_table(table, out)
        elif kind == "csv":
            pa_csv.write_csv(table, out)
        else:
            # pandas writes <NA> and NaN as null and nullable integers as integers; ten
            # decimals give back every timestamp a tracer prints (at most 9 decimals) exactly
            events.to_json(out, orient="records", lines=True, double_precision=10)
    except OSError as e:
        raise InputError(f"{out}: cannot write ({e.strerror or e})") from e


def conform_events(df: pd.DataFrame, source: str = "") -> pd.DataFrame:
    """``df`` with exactly the EVENTS columns and dtypes (InputError if a column is missing)."""
    missing = [n for n in EVENTS.names if n not in df.columns]
    if missing:
        raise InputError(f"{source}: not an events table: missing columns {', '.join(missing)}")
    out = {}
    for c in EVENTS.columns:
        s = df[c.name]
        try:
            if c.dtype == "category":
                s = s.astype("string")
            out[c.name] = s.astype(pd.api.types.pandas_dtype(c.dtype))
        except (TypeError, ValueError) as e:
            raise InputError(f"{source}: column {c.name!r} is not {c.dtype} ({e})") from e
    return pd.DataFrame(out)


def _from_arrow(table: pa.Table, source: str) -> pd.DataFrame:
    names = set(table.column_names)
    missing = [n for n in EVENTS.names if n not in names]
    if missing:
        raise InputError(f"{source}: not an events table: missing columns {', '.join(missing)}")
    table = table.select(EVENTS.names)
    try:
        table = table.cast(_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise InputError(f"{source}: columns do not have the EVENTS types ({e})") from e
    ev = table.column("event").combine_chunks().dictionary_encode()
    cols: dict[str, Any] = {}
    for c in EVENTS.columns:
        col = table.column(c.name)
        if c.name == "event":
            if ev.null_count:
                raise InputError(f"{source}: column 'event' has empty values")
            cols[c.name] = sorted_categorical(
                ev.indices.to_numpy(zero_copy_only=False), ev.dictionary.to_pylist()
            )
        elif c.dtype == "string":
            cols[c.name] = pd.arrays.ArrowStringArray(col)
        elif c.dtype == "float64":
            cols[c.name] = col.to_numpy()
        elif c.dtype == "int64":
            if col.null_count:
                raise InputError(f"{source}: column {c.name!r} has empty values")
            cols[c.name] = col.to_numpy()
        else:
            cols[c.name] = pd.array(col.to_numpy(zero_copy_only=False), dtype=c.dtype)
    df = pd.DataFrame(cols)
    EVENTS.check(df)
    return df


def read_events(path: str | os.PathLike[str], fmt: str | None = None) -> pd.DataFrame:
    """Read an EVENTS table written by :func:`write_events` (or by another tool, with the
    same columns); dtypes are restored exactly."""
    src = Path(path)
    kind = _format_of(src, fmt)
    try:
        if kind == "parquet":
            table = pq.read_table(src)
        elif kind == "csv":
            types = {c.name: _ARROW_TYPES[c.dtype] for c in EVENTS.columns}
            table = pa_csv.read_csv(
                src,
                parse_options=pa_csv.ParseOptions(newlines_in_values=True),
                convert_options=pa_csv.ConvertOptions(
                    column_types=types, strings_can_be_null=True, quoted_strings_can_be_null=False
                ),
            )
        else:
            if src.stat().st_size == 0:
                table = _SCHEMA.empty_table()
            else:
                table = pa_json.read_json(
                    src,
                    parse_options=pa_json.ParseOptions(
                        explicit_schema=_SCHEMA, unexpected_field_behavior="ignore"
                    ),
                )
    except OSError as e:
        raise InputError(f"{src}: cannot read ({e.strerror or e})") from e
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise InputError(f"{src}: not a valid {kind} events table ({e})") from e
    return _from_arrow(table, str(src))


# -- the cache of parsed traces ---------------------------------------------------------------
#: Layout version of a cache entry (Parquet + JSON record).
ENTRY_VERSION = 1


def cache_dir() -> Path:
    """``traces`` under the cache root (:func:`s2trace.files.cache_root`: ``$S2TRACE_CACHE``,
    else ``$XDG_CACHE_HOME/s2trace``, else ``~/.cache/s2trace``; not created here)."""
    return cache_root() / "traces"


def cache_key(path: Path, fmt: str, parser_version: str) -> str:
    """sha256 of the file's content, the parser version and the format."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(16 << 20):
                h.update(block)
    except OSError as e:
        raise InputError(f"{shown(path)}: cannot read ({e.strerror})") from e
    return f"{h.hexdigest()}-p{parser_version}-{fmt}"


def _record_check(meta: dict[str, Any]) -> str:
    """sha256 of the record without its own check (canonical JSON)."""
    body = {k: v for k, v in meta.items() if k != "check"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def load(key: str) -> tuple[pd.DataFrame, dict[str, Any]] | None:
    """The cached (events, metadata) for ``key``, or None when there is no entry.

    An entry is verified before use: its record's own checksum, the s2trace version, key and
    layout that wrote it, and the checksum of the Parquet file.  One that does not match is
    dropped with a :class:`~s2trace.errors.CacheWarning` (the trace is then parsed again and
    the entry rewritten), so a damaged cache never changes an answer.
    """
    root = cache_dir()
    meta_path, data_path = root / f"{key}.json", root / f"{key}.parquet"
    if not (meta_path.exists() or data_path.exists()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        trouble = _trouble(meta, key, data_path)
        if trouble is None:
            events = _from_arrow(pq.read_table(data_path), str(data_path))
            if len(events) != int(meta["rows"]):
                trouble = "holds a different number of rows than its record"
    except (OSError, ValueError, KeyError, TypeError, InputError, pa.ArrowException) as e:
        trouble = f"cannot be read ({type(e).__name__})"
    if trouble is None:
        return events, meta
    warnings.warn(
        f"parsed-trace cache entry {shown(data_path)} {trouble}; parsing the trace again",
        CacheWarning,
        stacklevel=3,
    )
    return None


def _trouble(meta: Any, key: str, data_path: Path) -> str | None:
    if not isinstance(meta, dict) or meta.get("check") != _record_check(meta):
        return "does not match its record's checksum (damaged or edited)"
    if meta.get("entry_version") != ENTRY_VERSION or meta.get("s2trace") != __version__:
        return "was written by another version of s2trace"
    if meta.get("key") != key:
        return "was written for another file or other options"
    int(meta["lines"])
    for p in meta["problems"]:
        (p["kind"], int(p["where"]), p["detail"])
    if content_digest(data_path) != meta.get("parquet"):
        return "does not match its checksum (damaged)"
    return None


def store(key: str, events: pd.DataFrame, meta: dict[str, Any]) -> None:
    """Cache a parsed trace with its record (see :func:`load`); failure to write (read-only
    home, full disk) is not an error."""
    root = cache_dir()
    data_path = root / f"{key}.parquet"
    try:
        root.mkdir(parents=True, exist_ok=True)
        _atomic(data_path, lambda p: pq.write_table(_to_arrow(events), p))
        record = {
            **meta,
            "key": key,
            "rows": len(events),
            "entry_version": ENTRY_VERSION,
            "s2trace": __version__,
            "parquet": content_digest(data_path),
        }
        record["check"] = _record_check(record)
        _atomic(root / f"{key}.json", lambda p: Path(p).write_text(json.dumps(record)))
    except OSError:
        return


def _atomic(target: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
