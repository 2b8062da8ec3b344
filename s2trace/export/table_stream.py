"""Tables written piece by piece: Parquet through pyarrow, CSV through numpy.

A walk of a large map hands its rows over in pieces (dicts of column arrays, in row order);
:class:`StreamWriter` writes each piece as it comes, so the map is never held whole.

* Parquet: one record batch (a row group) per piece, straight from the arrays; categorical
  columns become dictionary-encoded columns (pandas reads them back as categoricals); integer
  columns of few values (``_FEW_VALUES``) are stored with a dictionary page too (read back
  as integers), other integers delta-encoded.  The
  schema carries pandas' metadata for the declared dtypes and the caller's ``meta`` as JSON
  under the key ``s2trace``; columns of a non-nullable dtype (numpy integers and booleans)
  are ``required``.  The caller's thread turns each piece into Arrow arrays; a writer thread
  encodes them (Parquet encoding releases the GIL), so the encoding of one piece overlaps
  the making of the next.
* CSV: the text :func:`s2trace.render.write_frame` writes for the whole frame (address
  columns in ``0x`` hex, booleans ``True``/``False``, missing values empty), made for a
  piece at a time with numpy: each field is laid out at a fixed width in a byte matrix and
  the padding squeezed out, so there is no Python work per row.

The output goes through :func:`s2trace.outputs.output_path` (a temporary file beside the
target, renamed over it by :meth:`StreamWriter.close`; devices and pipes written in place);
:meth:`StreamWriter.abort` drops it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import queue
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from s2trace.columns import Schema
from s2trace.outputs import output_path

__all__ = ["StreamWriter", "csv_bytes"]

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_CSV_ROWS = 1 << 18  # rows laid out at once
_ROW_GROUP_ROWS = 1 << 20  # rows of a Parquet row group (pieces are gathered up to it)
#: Integer columns of the map with a handful of distinct values (levels, XN, owner ids,
#: entry sizes, VM handles): a dictionary page and bit-packed indices encode them about 20 %
#: faster than deltas, and smaller.  Other integer columns are delta-encoded.
_FEW_VALUES = frozenset({"level", "size", "owner_id", "xn", "vm_handle"})


class StreamWriter:
    """Write a table of ``schema`` to ``path`` as ``fmt`` (``parquet`` or ``csv``), piece by
    piece: ``write(piece)`` for each, then ``close()`` (or ``abort()``).  The target is
    checked (and refused with an InputError) when the writer is made."""

    def __init__(
        self,
        path: str | Path,
        fmt: str,
        schema: Schema,
        hex_columns: Iterable[str] = (),
        meta: dict[str, Any] | None = None,
    ) -> None:
        if fmt not in ("parquet", "csv"):
            raise ValueError(f"streamed output is parquet or csv, not {fmt!r}")
        self.path, self.fmt, self.schema = Path(path), fmt, schema
        self.hex_columns = frozenset(hex_columns)
        self.meta = meta
        self._output = contextlib.ExitStack()
        self.tmp = self._output.enter_context(output_path(self.path))
        self.rows = 0
        self._arrow_schema = _arrow_schema(schema)
        self._parquet: pq.ParquetWriter | None = None
        self._queue: queue.Queue[pa.RecordBatch | None] = queue.Queue(maxsize=2)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._csv: Any = None
        if fmt == "csv":
            try:
                self._csv = open(self.tmp, "wb")  # noqa: SIM115 (closed in close/abort)
                self._csv.write((",".join(schema.names) + "\n").encode())
            except BaseException as exc:
                self._fail(exc)

    def write(self, piece: dict[str, Any]) -> None:
        """Append the rows of one piece (columns of ``schema``, any extra ignored)."""
        self.rows += len(piece[self.schema.names[0]])
        if self._csv is not None:
            text = csv_bytes(piece, self.schema, self.hex_columns)
            try:
                self._csv.write(text)
            except OSError as exc:
                self._fail(exc)
            return
        batch = pa.RecordBatch.from_arrays(
            [_arrow(piece[n]) for n in self.schema.names], schema=self._arrow_schema
        )
        if self._thread is None:
            self._thread = threading.Thread(target=self._write_parquet, daemon=True)
            self._thread.start()
        self._queue.put(batch)
        if self._error is not None:
            self._fail(self._error)

    def _write_parquet(self) -> None:
        """The writer thread: Parquet encoding (which releases the GIL) overlaps the walk
        that makes the next piece.  Pieces are gathered into row groups of about a million
        rows (fewer row groups: a smaller footer and slightly less encoding work)."""
        ended = False  # the end marker was taken from the queue
        try:
            held: list[pa.RecordBatch] = []
            rows = 0
            while (batch := self._queue.get()) is not None:
                held.append(batch)
                rows += batch.num_rows
                del batch
                if rows >= _ROW_GROUP_ROWS:
                    self._write_row_group(held)
                    held, rows = [], 0
            ended = True
            if held:
                self._write_row_group(held)
        except BaseException as exc:  # reported by the next write() or close()
            self._error = exc
            while not ended and self._queue.get() is not None:  # unblock the producer
                pass

    def _write_row_group(self, batches: list[pa.RecordBatch]) -> None:
        table = pa.Table.from_batches(batches, schema=self._arrow_schema)
        self._parquet_writer().write_table(table, row_group_size=table.num_rows)

    def _parquet_writer(self) -> pq.ParquetWriter:
        if self._parquet is None:
            schema = self._arrow_schema
            integers = [f.name for f in schema if pa.types.is_integer(f.type)]
            dictionary = [f.name for f in schema if pa.types.is_dictionary(f.type)]
            dictionary += [n for n in integers if n in _FEW_VALUES]
            delta = {n: "DELTA_BINARY_PACKED" for n in integers if n not in _FEW_VALUES}
            self._parquet = pq.ParquetWriter(
                self.tmp,
                schema,
                use_dictionary=dictionary,
                column_encoding=delta,
                write_statistics=[n for n in ("ipa_start", "start") if n in schema.names],
            )
        return self._parquet

    def _join(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def close(self, meta: dict[str, Any] | None = None) -> Path:
        """Finish the file (``meta`` replaces the constructor's) and rename it into place.
        An I/O error (a full disk) is one InputError line and leaves no file."""
        if meta is not None:
            self.meta = meta
        try:
            if self._csv is not None:
                self._csv.close()
            else:
                self._join()
                if self._error is not None:
                    raise self._error
                writer = self._parquet_writer()  # no rows: an empty table with the schema
                if self.meta:
                    writer.add_key_value_metadata({"s2trace": json.dumps(self.meta, default=str)})
                writer.close()
        except BaseException as exc:
            self._fail(exc)
        self._output.close()  # renamed into place
        return self.path

    def abort(self) -> None:
        """Drop the partial output."""
        with contextlib.suppress(Exception):
            self._fail(RuntimeError("aborted"))

    def _fail(self, exc: BaseException) -> None:
        """Close what is open, remove the temporary file and raise ``exc`` (an OSError as
        the output writer's one-line InputError)."""
        with contextlib.suppress(Exception):
            if self._csv is not None:
                self._csv.close()
            self._join()
            if self._parquet is not None:
                self._parquet.close()
        if not self._output.__exit__(type(exc), exc, exc.__traceback__):
            raise exc


def _arrow_schema(schema: Schema) -> pa.Schema:
    """The Arrow schema of a declared table (categoricals as dictionary<int32, string>;
    numpy integer and boolean columns, which cannot hold a missing value, required), with
    pandas' metadata so that pandas reads the declared dtypes back."""
    empty = schema.empty()
    arrow = pa.Schema.from_pandas(empty, preserve_index=False)
    fields = []
    for f in arrow:
        dtype = empty[f.name].dtype
        if pa.types.is_dictionary(f.type):
            f = pa.field(f.name, pa.dictionary(pa.int32(), pa.string()))
        elif isinstance(dtype, np.dtype) and dtype.kind in "iub":
            f = f.with_nullable(False)
        fields.append(f)
    return pa.schema(fields, metadata=arrow.metadata)


def _arrow(values: Any) -> pa.Array:
    """An Arrow array of a piece's column (no validity bitmap where nothing is missing)."""
    if isinstance(values, pd.Categorical):
        codes = np.asarray(values.codes)
        missing = codes < 0
        indices = pa.array(
            codes.astype(np.int32), mask=missing if missing.any() else None, type=pa.int32()
        )
        return pa.DictionaryArray.from_arrays(
            indices, pa.array(np.asarray(values.categories, dtype=object), pa.string())
        )
    if isinstance(values, pd.arrays.IntegerArray | pd.arrays.BooleanArray):
        masked: Any = values  # values and mask: pandas' masked-array layout
        data, mask = np.asarray(masked._data), np.asarray(masked._mask)
        if mask.all():
            return pa.nulls(len(mask), pa.from_numpy_dtype(data.dtype))
        return pa.array(data, mask=mask if mask.any() else None)
    return pa.array(values)


# ---- CSV ---------------------------------------------------------------------------------


def csv_bytes(piece: dict[str, Any], schema: Schema, hex_columns: frozenset[str]) -> bytes:
    """The CSV lines of one piece, as pandas' ``to_csv`` writes them after the renderer's
    hex conversion (no header)."""
    names = schema.names
    n = len(piece[names[0]])
    if n > _CSV_ROWS:  # bound the byte matrices
        return b"".join(
            csv_bytes({k: v[lo : lo + _CSV_ROWS] for k, v in piece.items()}, schema, hex_columns)
            for lo in range(0, n, _CSV_ROWS)
        )
    if n == 0:
        return b""
    fields = []
    for i, name in enumerate(names):
        fields.append(_field_bytes(piece[name], name in hex_columns))
        fields.append(np.full((n, 1), ord("," if i < len(names) - 1 else "\n"), np.uint8))
    matrix = np.concatenate(fields, axis=1)
    return matrix[matrix != 0].tobytes()


def _field_bytes(values: Any, hex_column: bool) -> np.ndarray:
    """An (n, width) uint8 matrix of one column's text, zero bytes as padding."""
    if isinstance(values, pd.Categorical):
        words = [str(c).encode() for c in values.categories]
        width = max([len(w) for w in words] + [1])
        table = np.zeros((len(words) + 1, width), np.uint8)  # last row: missing -> empty
        for k, w in enumerate(words):
            if b"\x00" in w or b"," in w or b'"' in w or b"\n" in w:
                raise ValueError(f"category {w!r} needs CSV quoting")
            table[k, : len(w)] = np.frombuffer(w, np.uint8)
        codes = np.asarray(values.codes, dtype=np.intp)
        return table[np.where(codes < 0, len(words), codes)]
    mask = None
    if isinstance(values, np.ndarray):
        data = values
    else:  # pandas masked arrays (UInt64, boolean ...)
        data, mask = np.asarray(values._data), np.asarray(values._mask)
    if data.dtype == np.bool_:
        table = np.zeros((3, 5), np.uint8)
        table[0, :5] = np.frombuffer(b"False", np.uint8)
        table[1, :4] = np.frombuffer(b"True", np.uint8)
        pick = data.astype(np.intp)
        if mask is not None:
            pick = np.where(mask, 2, pick)
        return table[pick]
    if data.dtype.kind not in "iu":
        raise TypeError(f"no CSV layout for dtype {data.dtype}")
    if data.dtype.kind == "i" and (data < 0).any():
        raise ValueError("negative integers are not laid out")
    out = _hex_digits(data) if hex_column else _dec_digits(data)
    if mask is not None:
        out[mask] = 0
    return out


@functools.cache
def _hex4() -> np.ndarray:
    """The four lowercase hex digits of every 16-bit value: a (65536, 4) uint8 table."""
    x = np.arange(1 << 16, dtype=np.uint32)
    return _HEX[(x[:, None] >> np.array([12, 8, 4, 0], dtype=np.uint32)) & np.uint32(15)]


def _blank_leading_zeros(digits: np.ndarray) -> None:
    """Zero (squeezed out later) the leading ``0`` digits of each row, keeping the last."""
    if digits.shape[1] < 2:
        return
    significant = digits != ord("0")
    significant[:, -1] = True
    first = significant.argmax(axis=1)
    digits[np.arange(digits.shape[1]) < first[:, None]] = 0


def _hex_digits(data: np.ndarray) -> np.ndarray:
    """``0x``-prefixed lowercase hex without leading zeros (``0x0`` for zero): four digits
    per 16-bit word from one table lookup, only as many words as the largest value needs."""
    v = np.ascontiguousarray(data, dtype="<u8")
    n = v.shape[0]
    ndig = max(1, (int(v.max()).bit_length() + 3) // 4) if n else 1
    groups = -(-ndig // 4)
    words = v.view("<u2").reshape(n, 4)[:, groups - 1 :: -1]  # most significant first
    chars = _hex4()[words.astype(np.intp)].reshape(n, 4 * groups)
    out = np.empty((n, ndig + 2), np.uint8)
    out[:, 0], out[:, 1] = ord("0"), ord("x")
    out[:, 2:] = chars[:, 4 * groups - ndig :]
    _blank_leading_zeros(out[:, 2:])
    return out


def _dec_digits(data: np.ndarray) -> np.ndarray:
    """Decimal without leading zeros (one division per digit place, not per row)."""
    v = data.astype(np.uint64)
    width = max(1, len(str(int(v.max())))) if len(v) else 1
    digits = np.empty((len(v), width), np.uint8)
    ten = np.uint64(10)
    for place in range(width - 1, -1, -1):
        digits[:, place] = v % ten
        v //= ten
    digits += ord("0")
    _blank_leading_zeros(digits)
    return digits
