"""Tables on disk: long traces' transitions and intervals in bounded memory (issue 18, part 2).

A trace of 100 M lines has 100 M transitions and more intervals; held as frames they need tens
of GiB.  A :class:`Spill` is one Arrow IPC file in a temporary directory (removed when the
spill is garbage collected): frames are appended as record batches, optionally grouped into
*runs*, and read back batch by batch with ordinary file reads (no memory map: mapped pages
would count in the resident set).  Categorical columns keep one category list per column for
the whole file (the IPC file format allows no dictionary replacement), so every caller builds
its frames with fixed categories.

:func:`merge_runs` merges runs that are each sorted by a key into one sorted stream, a window
at a time: it takes from every run the rows up to the smallest of the runs' buffered last keys
(every row at or below that key is buffered), sorts that window (stable: equal keys keep run
order, then their order in the run) and emits it, so memory holds one buffer per run.
:class:`SortedRuns` is a spill whose runs are merged when it is read (the INTERVALS: one run
per replay chunk, merged into page order).

:class:`TransitionStore` is the TRANSITIONS of an analysis: runs of compact rows (categoricals
as codes), each in the recipe engine's order, given back as TRANSITIONS frames in that order
(whole: what :func:`~s2trace.trace.recipes.to_transitions` returns) or in replay order (``ts``,
then ``event_index``, then the engine's order), a chunk at a time, by merging the runs.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc as ipc

from s2trace.columns import TRANSITIONS
from s2trace.errors import InputError
from s2trace.pkvm.rules import COMPONENTS, OPS

__all__ = ["BATCH", "SortedRuns", "Spill", "TransitionStore", "merge_runs"]

#: Rows per record batch written (read back one batch at a time).
BATCH = 1 << 16

Columns = dict[str, np.ndarray]


@contextlib.contextmanager
def _on_disk(where: str) -> Iterator[None]:
    """A failure of the temporary directory (full disk, quota, no write permission) as one
    error line that names it and says what to do, not as an error of the command's output."""
    try:
        yield
    except OSError as exc:
        raise InputError(
            f"temporary spill file in {where}: cannot write ({exc.strerror or exc}); a long "
            "trace keeps its transitions and intervals on disk, about 150 bytes per "
            "transition: set TMPDIR to a directory with room"
        ) from None


class Spill:
    """Frames appended to an Arrow IPC file in a temporary directory (module docstring)."""

    def __init__(self, name: str = "spill", batch: int | None = None) -> None:
        """``batch``: rows per record batch (default :data:`BATCH`): what one read brings in."""
        self.batch = batch
        with _on_disk(tempfile.gettempdir()):
            self._dir = tempfile.TemporaryDirectory(prefix=f"s2trace-{name}-")
        self.path = os.path.join(self._dir.name, f"{name}.arrow")
        self._writer: Any = None
        self._sink: Any = None
        self._reader: Any = None
        self.sizes: list[int] = []  # rows per batch
        self.runs: list[tuple[int, int]] = []  # batch ranges
        self._run_from = 0
        self.schema: pa.Schema | None = None

    def __len__(self) -> int:
        return sum(self.sizes)

    def append(self, frame: pd.DataFrame | pa.Table) -> None:
        if not len(frame):
            return
        table: pa.Table = (
            frame
            if isinstance(frame, pa.Table)
            else pa.Table.from_pandas(frame, preserve_index=False)
        )
        if self._writer is None:
            if self._reader is not None:
                raise ValueError("spill: appended to after it was read")
            self.schema = table.schema
            with _on_disk(self._dir.name):
                self._sink = pa.OSFile(self.path, "wb")
                self._writer = ipc.new_file(self._sink, table.schema)
        with _on_disk(self._dir.name):
            for b in table.to_batches(max_chunksize=self.batch or BATCH):
                self._writer.write_batch(b)
                self.sizes.append(b.num_rows)

    def end_run(self) -> None:
        """What was appended since the last run ended is one run."""
        if len(self.sizes) > self._run_from:
            self.runs.append((self._run_from, len(self.sizes)))
        self._run_from = len(self.sizes)

    def _open(self) -> Any:
        if self._writer is not None:
            with _on_disk(self._dir.name):  # the last batch and the footer are written here
                self._writer.close()
                self._sink.close()
            self._writer = None
        if self._reader is None and self.sizes:
            self._reader = ipc.open_file(pa.OSFile(self.path, "rb"))
        return self._reader

    def batches(self, lo: int = 0, hi: int | None = None) -> Iterator[pa.RecordBatch]:
        reader = self._open()
        for i in range(lo, len(self.sizes) if hi is None else hi):
            yield reader.get_batch(i)

    def frame(self) -> pd.DataFrame | None:
        """Everything, as one frame (None when nothing was written)."""
        if not self.sizes:
            return None
        return pa.Table.from_batches(list(self.batches())).to_pandas()

    def run(self, run: int) -> Iterator[pa.RecordBatch]:
        """The batches of run ``run``."""
        lo, hi = self.runs[run]
        yield from self.batches(lo, hi)

    def close(self) -> None:
        self._reader = None
        if self._writer is not None:
            with contextlib.suppress(OSError):  # discarded: a failed write has been reported
                self._writer.close()
            with contextlib.suppress(OSError):
                self._sink.close()
            self._writer = None
        self._dir.cleanup()


def _columns(b: pa.RecordBatch) -> Columns:
    """Numpy columns of a batch of plain (non-null numeric) columns."""
    return {n: b.column(i).to_numpy(zero_copy_only=False) for i, n in enumerate(b.schema.names)}


def batch_of(c: Columns) -> pa.RecordBatch:
    """A record batch of numpy columns."""
    return pa.RecordBatch.from_arrays([pa.array(a) for a in c.values()], names=list(c))


def _le_count(keys: Sequence[np.ndarray], bound: tuple[Any, ...]) -> int:
    """Rows of the sorted ``keys`` (most significant first) at or below ``bound``."""
    lo, hi, count = 0, len(keys[0]), 0
    for k, b in zip(keys, bound, strict=True):
        seg = k[lo:hi]
        left = lo + int(np.searchsorted(seg, b, "left"))
        right = lo + int(np.searchsorted(seg, b, "right"))
        count += left - lo
        lo, hi = left, right
        if lo == hi:
            return count
    return count + hi - lo


def merge_runs(
    runs: Sequence[Iterator[pa.RecordBatch]],
    key: Callable[[pa.RecordBatch], list[np.ndarray]],
) -> Iterator[pa.Table]:
    """Merge runs of record batches, each sorted by ``key`` (numpy arrays, most significant
    first), into windows in key order (module docstring).  Equal keys keep run order."""
    bufs: list[pa.RecordBatch | None] = [None] * len(runs)
    keys: list[list[np.ndarray]] = [[] for _ in runs]

    def fill(i: int) -> None:
        for nxt in runs[i]:
            if nxt.num_rows:
                bufs[i], keys[i] = nxt, key(nxt)
                return
        bufs[i] = None

    for i in range(len(runs)):
        fill(i)
    while True:
        live = [i for i, b in enumerate(bufs) if b is not None]
        if not live:
            return
        if len(live) == 1:
            i = live[0]
            only = bufs[i]
            assert only is not None
            fill(i)
            yield pa.Table.from_batches([only])
            continue
        bound = min(tuple(k[-1].item() for k in keys[i]) for i in live)
        parts, pkeys = [], []
        for i in live:
            buf = bufs[i]
            assert buf is not None
            n = _le_count(keys[i], bound)
            if not n:
                continue
            parts.append(buf.slice(0, n))
            pkeys.append([k[:n] for k in keys[i]])
            if n == buf.num_rows:
                fill(i)
            else:
                bufs[i] = buf.slice(n)
                keys[i] = [k[n:] for k in keys[i]]
        ks = [np.concatenate([p[j] for p in pkeys]) for j in range(len(pkeys[0]))]
        order = np.lexsort(ks[::-1])
        yield pa.Table.from_batches(parts).take(pa.array(order))


class SortedRuns:
    """The runs of a spill, each sorted by ``key``, merged when they are read (a share of
    ``rows`` rows buffered per run), without the key columns ``drop``: a table that is read
    rarely and whole (INTERVALS) is never written a second time in merged order."""

    def __init__(
        self,
        spill: Spill,
        key: Callable[[pa.RecordBatch], list[np.ndarray]],
        drop: Sequence[str],
        rows: int = 1 << 20,
    ) -> None:
        self.spill, self.key, self.drop, self.rows = spill, key, list(drop), rows

    def __len__(self) -> int:
        return len(self.spill)

    def tables(self) -> Iterator[pa.Table]:
        """The rows in key order, a window at a time."""
        width = max(1 << 9, self.rows // max(1, len(self.spill.runs)))
        runs = [_rebatched(self.spill.run(i), width) for i in range(len(self.spill.runs))]
        for t in merge_runs(runs, self.key):
            yield t.drop_columns(self.drop)

    def frame(self) -> pd.DataFrame:
        """Every row in key order (loads the whole table)."""
        return pa.concat_tables(list(self.tables())).to_pandas()

    def frames(self) -> Iterator[pd.DataFrame]:
        """Every row in key order, a window at a time, as frames (the whole table's dtypes;
        categorical columns hold each window's own categories)."""
        for t in self.tables():
            yield t.to_pandas()

    def close(self) -> None:
        self.spill.close()


def _rebatched(batches: Iterator[pa.RecordBatch], width: int) -> Iterator[pa.RecordBatch]:
    for b in batches:
        for lo in range(0, b.num_rows, width):
            yield b.slice(lo, width)


# -- transitions ------------------------------------------------------------------------------

_OPS = pd.CategoricalDtype(list(OPS))
_COMPONENTS = pd.CategoricalDtype(list(COMPONENTS))
#: The compact columns of a transition (categoricals as codes), in TRANSITIONS order.
COMPACT = ("ts", "line", "event_index", "op", "initiator", "completer", "addr", "size", "vm",
           "vm_ok", "gfn", "gfn_ok", "counted", "recipe", "t_earliest", "basis")  # fmt: skip


def replay_key(c: Columns | pa.RecordBatch) -> list[np.ndarray]:
    """The replay order's key: ``ts`` (NaN last), ``event_index``, recipe (the whole frame's
    order within one event: recipe order)."""
    if isinstance(c, pa.RecordBatch):
        c = _columns(c.select(["ts", "event_index", "recipe"]))
    ts = c["ts"]
    nan = np.isnan(ts)
    return [nan.astype(np.int8), np.where(nan, 0.0, ts), c["event_index"], c["recipe"]]


def is_sorted(keys: list[np.ndarray], before: tuple[Any, ...] | None = None) -> bool:
    """Whether rows (``keys``, most significant first) are in order, after row ``before``."""
    if before is not None:
        keys = [np.r_[np.asarray([b], dtype=k.dtype), k] for b, k in zip(before, keys, strict=True)]
    n = len(keys[0])
    if n < 2:
        return True
    less = np.zeros(n - 1, bool)
    equal = np.ones(n - 1, bool)
    for k in keys:
        less |= equal & (k[:-1] < k[1:])
        equal &= k[:-1] == k[1:]
    return bool((less | equal).all())


def compact(df: pd.DataFrame, recipes: Sequence[str], basis: Sequence[str]) -> Columns:
    """Compact columns of a TRANSITIONS frame whose ``recipe`` and ``basis`` are among
    ``recipes`` and ``basis`` (codes index them)."""

    def codes(col: str, cats: Sequence[str]) -> np.ndarray:
        return pd.Categorical(df[col], categories=list(cats)).codes.astype(np.int16)

    vm = df["vm"].array
    gfn = df["gfn"].array
    return {
        "ts": df["ts"].to_numpy(np.float64),
        "line": df["line"].to_numpy(np.int64),
        "event_index": df["event_index"].to_numpy(np.int64),
        "op": codes("op", OPS).astype(np.int8),
        "initiator": codes("initiator", COMPONENTS).astype(np.int8),
        "completer": codes("completer", COMPONENTS).astype(np.int8),
        "addr": df["addr"].to_numpy(np.uint64),
        "size": df["size"].to_numpy(np.uint64),
        "vm": vm.to_numpy(dtype=np.int64, na_value=0),
        "vm_ok": ~np.asarray(vm.isna()),
        "gfn": gfn.to_numpy(dtype=np.uint64, na_value=0),
        "gfn_ok": ~np.asarray(gfn.isna()),
        "counted": df["counted"].to_numpy(dtype=bool, na_value=False),
        "recipe": codes("recipe", recipes),
        "t_earliest": df["t_earliest"].to_numpy(np.float64),
        "basis": codes("basis", basis),
    }


def transitions_frame(c: Columns, recipes: Sequence[str], basis: Sequence[str]) -> pd.DataFrame:
    """The TRANSITIONS frame of compact columns (as the recipe engine builds it)."""
    df = pd.DataFrame(
        {
            "ts": c["ts"],
            "line": c["line"],
            "event_index": c["event_index"],
            "op": pd.Categorical.from_codes(c["op"], dtype=_OPS),
            "initiator": pd.Categorical.from_codes(c["initiator"], dtype=_COMPONENTS),
            "completer": pd.Categorical.from_codes(c["completer"], dtype=_COMPONENTS),
            "addr": c["addr"],
            "size": c["size"],
            "vm": pd.arrays.IntegerArray(c["vm"], ~c["vm_ok"]),
            "gfn": pd.arrays.IntegerArray(c["gfn"], ~c["gfn_ok"]),
            "counted": pd.arrays.BooleanArray(c["counted"], np.zeros(len(c["ts"]), bool)),
            "recipe": pd.Categorical.from_codes(
                c["recipe"], dtype=pd.CategoricalDtype(list(recipes))
            ),
            "t_earliest": c["t_earliest"],
            "basis": pd.Categorical.from_codes(c["basis"], dtype=pd.CategoricalDtype(list(basis))),
        }
    )
    TRANSITIONS.check(df)
    return df


#: A run of compact transitions: makes a fresh iterator of its batches each time it is called.
Run = Callable[[], Iterator[pa.RecordBatch]]


def assembly_key(c: pa.RecordBatch) -> list[np.ndarray]:
    """The recipe engine's order: event, then recipe (ties keep their order)."""
    b = _columns(c.select(["event_index", "recipe"]))
    return [b["event_index"], b["recipe"]]


class TransitionStore:
    """TRANSITIONS on disk (module docstring): runs of compact rows, each in the recipe
    engine's order (event, recipe), given back in that order (:meth:`frame`, what
    :func:`~s2trace.trace.recipes.to_transitions` returns) or in replay order
    (:meth:`chunks`, :meth:`replay_frame`) by merging the runs.  ``recipes`` and ``basis`` are
    the categories of those columns; ``n`` the rows.  A run not in replay order too (time
    going back in the trace) is sorted whole once, into a spill of its own (not bounded)."""

    def __init__(
        self,
        runs: Sequence[Run],
        n: int,
        recipes: Sequence[str],
        basis: Sequence[str],
        in_order: Sequence[bool | None] | None = None,
    ) -> None:
        """``in_order``: whether each run is in replay order too, when known (None: read
        through to see)."""
        self.recipes = list(recipes)
        self.basis = list(basis)
        self.runs = list(runs)
        self.n = n
        self._sorted: list[Run] = []
        self._spills: list[Spill] = []
        for run, known in zip(self.runs, in_order or [None] * len(self.runs), strict=True):
            if known is None:
                known = all(is_sorted(*_keyed(b)) for b in _paired(run()))
            if known:
                self._sorted.append(run)
                continue
            whole = pa.Table.from_batches(list(run()))
            if whole.num_rows:
                whole = whole.combine_chunks()
                order = np.lexsort(replay_key(whole.to_batches()[0])[::-1])
                whole = whole.take(pa.array(order))
            sp = Spill("sorted")
            sp.append(whole)
            self._spills.append(sp)
            self._sorted.append(sp.batches)

    def __len__(self) -> int:
        return self.n

    def _frames(self, runs: list[Run], key: Callable[[pa.RecordBatch], list[np.ndarray]],
                size: int) -> Iterator[pd.DataFrame]:  # fmt: skip
        held: list[pa.Table] = []
        count = 0
        for t in merge_runs([r() for r in runs], key):
            held.append(t)
            count += t.num_rows
            while count >= size:
                whole = pa.concat_tables(held)
                yield self._frame(whole.slice(0, size))
                rest = whole.slice(size)
                held, count = [rest], rest.num_rows
        if count or not self.n:
            yield self._frame(pa.concat_tables(held) if held else None)

    def _frame(self, t: pa.Table | None) -> pd.DataFrame:
        if t is None or not t.num_rows:
            cols = {c: np.zeros(0, dtype=d) for c, d in _EMPTY.items()}
        else:
            cols = {c: t.column(c).to_numpy() for c in COMPACT}
        return transitions_frame(cols, self.recipes, self.basis)

    def chunks(self, size: int) -> Iterator[pd.DataFrame]:
        """TRANSITIONS frames of ``size`` rows (the last may be shorter), in replay order."""
        if not self.n:
            return
        yield from self._frames(self._sorted, replay_key, size)

    def frame(self) -> pd.DataFrame:
        """Every transition in the recipe engine's order (loads the whole table)."""
        return next(self._frames(self.runs, assembly_key, max(self.n, 1)))

    def replay_frame(self) -> pd.DataFrame:
        """Every transition in replay order (loads the whole table)."""
        return next(self._frames(self._sorted, replay_key, max(self.n, 1)))

    def combos(self) -> set[tuple[str, str | None, str | None]]:
        """The distinct (op, initiator, completer) of the transitions."""
        seen: set[tuple[int, int, int]] = set()
        for run in self.runs:
            for b in run():
                c = _columns(b.select(["op", "initiator", "completer"]))
                k = np.unique(np.stack([c["op"], c["initiator"], c["completer"]], axis=1), axis=0)
                seen.update(map(tuple, k.tolist()))
        name = (None, *COMPONENTS)
        return {(OPS[o], name[i + 1], name[c + 1]) for o, i, c in seen}


def _paired(batches: Iterator[pa.RecordBatch]) -> Iterator[tuple[pa.RecordBatch, tuple | None]]:
    """Each batch with the last replay key of the batch before it."""
    before = None
    for b in batches:
        if b.num_rows:
            yield b, before
            before = tuple(k[-1].item() for k in replay_key(b))


def _keyed(pair: tuple[pa.RecordBatch, tuple | None]) -> tuple[list[np.ndarray], tuple | None]:
    return replay_key(pair[0]), pair[1]


_EMPTY = {"ts": np.float64, "line": np.int64, "event_index": np.int64, "op": np.int8,
          "initiator": np.int8, "completer": np.int8, "addr": np.uint64, "size": np.uint64,
          "vm": np.int64, "vm_ok": bool, "gfn": np.uint64, "gfn_ok": bool, "counted": bool,
          "recipe": np.int16, "t_earliest": np.float64, "basis": np.int16}  # fmt: skip
