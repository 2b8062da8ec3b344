"""Event columns of one chunk of a text trace, and the EVENTS frame made from all chunks.

The scanners (:mod:`.templates`, :mod:`.textscan`) turn the lines of
a chunk into :class:`EventCols`: numpy arrays for the numbers and Arrow arrays for the text (the
event names dictionary-encoded), never a Python object per line.  :func:`events_frame` joins
the columns of every chunk into the EVENTS DataFrame (``s2trace.columns.EVENTS``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from s2trace.columns import EVENTS
from s2trace.trace.parse import cache

__all__ = ["STR", "EventCols", "empty_cols", "events_frame", "unify"]

STR = pa.large_string()  # every text column: pandas' ArrowStringArray keeps large_string


@dataclass
class EventCols:
    """Columns of some event rows of one chunk (numpy + Arrow, no per-row objects)."""

    line: np.ndarray
    ts: np.ndarray
    cpu: np.ndarray
    cpu_ok: np.ndarray
    pid: np.ndarray
    pid_ok: np.ndarray
    lost: np.ndarray
    lost_ok: np.ndarray
    task: pa.Array
    flags: pa.Array
    event: pa.Array
    fields: pa.Array

    def __len__(self) -> int:
        return len(self.line)

    def keep(self, mask: np.ndarray) -> EventCols:
        """Only the rows where ``mask`` is true."""
        sel = pa.array(mask)
        num = {
            k: getattr(self, k)[mask]
            for k in ("line", "ts", "cpu", "cpu_ok", "pid", "pid_ok", "lost", "lost_ok")
        }
        text = {k: getattr(self, k).filter(sel) for k in ("task", "flags", "event", "fields")}
        return EventCols(**num, **text)

    @staticmethod
    def concat(parts: Sequence[EventCols]) -> EventCols:
        """Rows of ``parts`` together, ordered by line number."""
        parts = [p for p in parts if len(p)] or list(parts[:1])
        if len(parts) == 1:
            return parts[0]
        line = np.concatenate([p.line for p in parts])
        order = np.argsort(line, kind="stable")
        take_np = {
            k: np.concatenate([getattr(p, k) for p in parts])[order]
            for k in ("ts", "cpu", "cpu_ok", "pid", "pid_ok", "lost", "lost_ok")
        }
        idx = pa.array(order)
        take_pa = {
            k: pa.concat_arrays([getattr(p, k) for p in parts]).take(idx)
            for k in ("task", "flags", "fields")
        }
        codes, names = unify([p.event for p in parts])
        event = pa.DictionaryArray.from_arrays(pa.array(codes[order]), pa.array(names, pa.string()))
        return EventCols(line=line[order], **take_np, **take_pa, event=event)


def unify(arrays: Sequence[pa.DictionaryArray]) -> tuple[np.ndarray, list[str]]:
    """One set of codes over the union of the arrays' dictionaries (order of first use)."""
    names: dict[str, int] = {}
    codes = []
    for arr in arrays:
        local = arr.dictionary.to_pylist()
        remap = np.array([names.setdefault(v, len(names)) for v in local], dtype=np.int32)
        idx = arr.indices.to_numpy(zero_copy_only=False)
        codes.append(remap[idx] if len(remap) else idx.astype(np.int32))
    return (np.concatenate(codes) if codes else np.zeros(0, np.int32)), list(names)


def empty_cols() -> EventCols:
    z = np.zeros(0, np.int64)
    b = np.zeros(0, bool)
    s = pa.array([], STR)
    e = pa.DictionaryArray.from_arrays(pa.array([], pa.int32()), pa.array([], pa.string()))
    return EventCols(
        z, z.astype(float), z.astype(np.int16), b, z.astype(np.int32), b, z, b, s, s, e, s
    )


def events_frame(parts: Sequence[EventCols]) -> pd.DataFrame:
    """The EVENTS DataFrame from the chunks' columns (Arrow-backed strings, no copies of
    the numbers beyond the concatenation)."""
    parts = [p for p in parts if len(p)] or [empty_cols()]

    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(p, name) for p in parts])

    rows = sum(len(p) for p in parts)

    def absent(name: str) -> np.ndarray:
        """pandas' mask (true: missing) from the ``*_ok`` columns; built, not concatenated
        and inverted, when every row has a value."""
        if all(getattr(p, name).all() for p in parts):
            return np.zeros(rows, bool)
        return ~cat(name)

    def strings(name: str) -> pd.arrays.ArrowStringArray:
        return pd.arrays.ArrowStringArray(pa.chunked_array([getattr(p, name) for p in parts]))

    codes, names = unify([p.event for p in parts])
    event = cache.sorted_categorical(codes, names)
    if any(p.lost_ok.any() for p in parts):
        lost = pd.arrays.IntegerArray(cat("lost"), ~cat("lost_ok"))
    else:  # no lost-events marker: all missing
        lost = pd.arrays.IntegerArray(np.zeros(rows, np.int64), np.ones(rows, bool))
    df = pd.DataFrame(
        {
            "ts": cat("ts"),
            "cpu": pd.arrays.IntegerArray(cat("cpu"), absent("cpu_ok")),
            "task": strings("task"),
            "pid": pd.arrays.IntegerArray(cat("pid"), absent("pid_ok")),
            "flags": strings("flags"),
            "event": event,
            "fields": strings("fields"),
            "line": cat("line").astype(np.int64, copy=False),
            "lost": lost,
        },
        copy=False,
    )
    EVENTS.check(df)
    return df
