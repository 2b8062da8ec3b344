"""Finding the events a recipe relates, and reading their fields.

The engine (:mod:`s2trace.trace.recipes.engine`) sees EVENTS through an :class:`EventTable`:
positional rows, the code of each event name, and the key of the task that made each call (its
pid; the CPU for hypervisor traces, which have none).  Related events are found with
vectorised joins by task, never a loop per event: the matching entry/return probe
(:func:`pair_rows`, by nesting depth), the latest earlier context event (:func:`context_rows`),
and, generally, the latest earlier row with the same key (:func:`latest_before_keyed`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from s2trace.columns import EVENTS
from s2trace.trace.parse.field_access import FieldValues, extract_values, parse_uint
from s2trace.trace.recipes.model import Complete, Context, Pair, Ref

__all__ = [
    "EventTable",
    "Value",
    "complete_rows",
    "context_rows",
    "field_values",
    "latest_before_keyed",
    "pair_rows",
]


@dataclass
class EventTable:
    """The columns of EVENTS the engine needs, as numpy/Arrow (positional rows)."""

    frame: pd.DataFrame
    codes: np.ndarray
    code_of: dict[str, int]
    key: np.ndarray
    line: np.ndarray
    ts: np.ndarray
    text: pa.ChunkedArray
    #: when ``frame`` holds some of a trace's events only: the row of each in the whole
    #: events table (becomes ``event_index``), and when each lost-events gap began
    index: np.ndarray | None = None
    lost_ts: np.ndarray | None = None

    @staticmethod
    def of(
        events: pd.DataFrame, index: np.ndarray | None = None, lost_ts: np.ndarray | None = None
    ) -> EventTable:
        """The table of ``events``; ``index``/``lost_ts`` when they are a subset of a trace's
        events (see the attributes)."""
        EVENTS.check(events)
        cat = events["event"].astype("category")
        pid = events["pid"].to_numpy(dtype="float64", na_value=np.nan)
        cpu = events["cpu"].to_numpy(dtype="float64", na_value=np.nan)
        # the task that made the call: its pid; for hypervisor traces (no pid) the CPU
        key = np.where(np.isnan(pid), -1 - cpu, pid)
        key = np.where(np.isnan(key), -(1 << 40), key).astype(np.int64)
        return EventTable(
            frame=events,
            codes=cat.cat.codes.to_numpy(),
            code_of={str(c): i for i, c in enumerate(cat.cat.categories)},
            key=key,
            line=events["line"].to_numpy(np.int64),
            ts=events["ts"].to_numpy(np.float64),
            text=_chunked(events["fields"]),
            index=index,
            lost_ts=lost_ts,
        )

    def rows(self, event: str) -> np.ndarray:
        code = self.code_of.get(event)
        return np.zeros(0, np.int64) if code is None else np.flatnonzero(self.codes == code)

    def values(self, rows: np.ndarray, names: Sequence[str]) -> dict[str, pa.Array]:
        """The fields ``names`` of ``rows`` as text (null where absent)."""
        return self.read(rows, names, ()).text

    def read(
        self, rows: np.ndarray, names: Sequence[str], uint_names: Sequence[str]
    ) -> FieldValues:
        """The fields ``names`` of ``rows`` as text and ``uint_names`` as unsigned integers,
        each field read once (:func:`.field_access.extract_values`)."""
        if not len(rows) or not (names or uint_names):
            k = len(rows)
            return FieldValues(
                {n: pa.nulls(k, pa.string()) for n in names},
                {n: (np.zeros(k, np.uint64), np.zeros(k, bool)) for n in uint_names},
            )
        if len(rows) * _FEW < len(self.text):  # the reader's cost follows the whole column:
            few = self.text.take(pa.array(rows))  # copy a few first
            return extract_values(few, None, names, uint_names)
        return extract_values(self.text, rows, names, uint_names)


#: Below one row in this many, the rows' text is copied before fields are read from it.
_FEW = 64


def _chunked(values: pd.Series) -> pa.ChunkedArray:
    """The Arrow data of a string Series without copying it (take() works on chunks)."""
    arr = pa.array(values.astype("string"), from_pandas=True)
    return arr if isinstance(arr, pa.ChunkedArray) else pa.chunked_array([arr])


@dataclass(frozen=True)
class Value:
    """One field of a batch of rows as read for a recipe: its text (an Arrow string array,
    null where absent) when the recipe compares or labels with it, and its unsigned integer
    value (values, valid) when the recipe computes with it."""

    text_or_none: pa.Array | None
    uint_or_none: tuple[np.ndarray, np.ndarray] | None

    @property
    def text(self) -> pa.Array:
        if self.text_or_none is None:
            raise RuntimeError("field read as an integer only")  # a recipe-needs bug, not input
        return self.text_or_none

    def uint(self) -> tuple[np.ndarray, np.ndarray]:
        """(values, valid) as :func:`.field_access.parse_uint` gives them."""
        if self.uint_or_none is not None:
            return self.uint_or_none
        return parse_uint(self.text)


def field_values(
    ev: EventTable,
    refs: Sequence[Ref],
    anchor: np.ndarray,
    partner: np.ndarray,
    ctx: np.ndarray,
    uint_refs: Collection[Ref] = (),
) -> dict[Ref, Value]:
    """Every referenced field of the anchor, pair and context rows (absent where there is no
    such row): ``refs`` as text, ``uint_refs`` as unsigned integers (a field in both is read
    once)."""
    out: dict[Ref, Value] = {}
    for source, rows in (("event", anchor), ("pair", partner), ("ctx", ctx)):
        names = sorted({r.name for r in refs if r.source == source})
        uint_names = sorted({r.name for r in uint_refs if r.source == source})
        if not names and not uint_names:
            continue
        found = rows >= 0
        got = ev.read(rows[found], names, uint_names)
        # rows without a related event read as null: take with null indices
        idx = None if found.all() else pa.array(np.cumsum(found) - 1, mask=~found)
        for name in {*names, *uint_names}:
            text = got.text.get(name)
            num = got.uint.get(name)
            if idx is not None:
                text = text.take(idx) if text is not None else None
                if num is not None:
                    value, ok = np.zeros(len(rows), np.uint64), np.zeros(len(rows), bool)
                    value[found], ok[found] = num
                    num = (value, ok)
            out[Ref(source, name)] = Value(text, num)
    return out


def pair_rows(ev: EventTable, event: str, anchor: np.ndarray, pair: Pair) -> np.ndarray:
    """For each anchor row (a subset of the ``event`` rows), the row of its matching
    entry/return probe (-1: none).

    Entries and returns of the same task are a bracket sequence: depth = running count of
    entries minus returns per task; an entry at depth d (after it) matches the first later
    return that brings the depth back from d (before it) -- nested calls match inside out,
    and a lost entry or return leaves only its own partner unmatched.
    """
    other = ev.rows(pair.event)
    if not len(other):
        return np.full(len(anchor), -1, np.int64)
    every = ev.rows(event)  # all of them: filtered-out calls still nest
    entries, returns = (other, every) if pair.side == "before" else (every, other)
    rows = np.concatenate([entries, returns])
    step = np.concatenate([np.ones(len(entries), np.int64), -np.ones(len(returns), np.int64)])
    key = ev.key[rows]
    order = np.lexsort((rows, key))
    rows, step, key = rows[order], step[order], key[order]
    depth = np.cumsum(step)
    first = np.r_[True, key[1:] != key[:-1]]
    base = np.maximum.accumulate(np.where(first, np.arange(len(rows)), 0))
    start_depth = (depth - step)[base]  # depth before each task's first event
    depth = depth - start_depth
    level = np.where(step > 0, depth, depth + 1)
    entry = step > 0
    ent = pd.DataFrame({"row": rows[entry], "key": key[entry], "level": level[entry]})
    ret = pd.DataFrame({"row": rows[~entry], "key": key[~entry], "level": level[~entry]})
    direction: Literal["backward", "forward"]
    if pair.side == "before":  # anchor = return: the latest entry before it at its level
        left, right, direction = ret, ent, "backward"
    else:  # anchor = entry: the first return after it at its level
        left, right, direction = ent, ret, "forward"
    right = right.assign(match=right["row"])
    m = pd.merge_asof(
        left.sort_values("row"),
        right.sort_values("row"),
        on="row",
        by=["key", "level"],
        direction=direction,
        allow_exact_matches=False,
    )
    got_rows = m["row"].to_numpy(np.int64)
    got = m["match"].fillna(-1).to_numpy(np.int64)
    order = np.argsort(got_rows)
    pos = np.searchsorted(got_rows[order], anchor)
    return got[order][pos]


def context_rows(ev: EventTable, anchor: np.ndarray, ctx: Context) -> np.ndarray:
    """For each anchor row, the latest earlier ``ctx.event`` row on the same task (-1: none,
    or an ``until`` event came after it)."""
    found = _latest_before(ev, anchor, ev.rows(ctx.event))
    if ctx.until:
        closers = np.concatenate([ev.rows(u) for u in ctx.until])
        closed = _latest_before(ev, anchor, np.sort(closers))
        found = np.where(closed > found, -1, found)
    return found


def complete_rows(ev: EventTable, anchor: np.ndarray, complete: Complete) -> np.ndarray:
    """For each anchor row, the first later ``complete.events`` row on the same task (-1:
    none, or an ``unless`` event of that task came first)."""
    rows = np.sort(np.concatenate([ev.rows(e) for e in complete.events]))
    found = _first_after(ev, anchor, rows)
    if complete.unless:
        stops = np.sort(np.concatenate([ev.rows(u) for u in complete.unless]))
        stop = _first_after(ev, anchor, stops)
        found = np.where((stop >= 0) & (stop < found), -1, found)
    return found


def _first_after(ev: EventTable, anchor: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """For each anchor row, the first of ``rows`` after it on the same task (-1: none)."""
    pos = nearest_keyed(anchor, ev.key[anchor], rows, ev.key[rows], "forward")
    return np.where(pos >= 0, rows[np.maximum(pos, 0)] if len(rows) else -1, -1)


def _latest_before(ev: EventTable, anchor: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """For each anchor row, the latest of ``rows`` before it on the same task (-1: none)."""
    pos = latest_before_keyed(anchor, ev.key[anchor], rows, ev.key[rows])
    return np.where(pos >= 0, rows[np.maximum(pos, 0)] if len(rows) else -1, -1)


def latest_before_keyed(
    rows: np.ndarray, keys: np.ndarray, others: np.ndarray, other_keys: np.ndarray
) -> np.ndarray:
    """For each of ``rows``, the index into ``others`` of the latest one before it with the
    same key (-1: none) -- a backward as-of join by key."""
    return nearest_keyed(rows, keys, others, other_keys, "backward")


def nearest_keyed(
    rows: np.ndarray,
    keys: np.ndarray,
    others: np.ndarray,
    other_keys: np.ndarray,
    direction: Literal["backward", "forward"],
) -> np.ndarray:
    """For each of ``rows``, the index into ``others`` of the nearest one strictly before
    (``backward``) or after (``forward``) it with the same key (-1: none): one as-of join."""
    if not len(others) or not len(rows):
        return np.full(len(rows), -1, np.int64)
    left = pd.DataFrame({"row": rows, "key": keys, "pos": np.arange(len(rows))})
    right = pd.DataFrame({"row": others, "key": other_keys, "match": np.arange(len(others))})
    m = pd.merge_asof(
        left.sort_values("row"),
        right.sort_values("row"),
        on="row",
        by="key",
        direction=direction,
        allow_exact_matches=False,
    )
    out = np.full(len(rows), -1, np.int64)
    out[m["pos"].to_numpy()] = m["match"].fillna(-1).to_numpy(np.int64)
    return out
