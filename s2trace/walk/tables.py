"""Level-by-level traversal of a VMSAv8-64 translation table in a dump.

Shared by every walk (the host stage 2, the hypervisor's stage 1, guest stage 2s): the
format-specific part is a ``decode(raw, level)`` function that returns an object with
``kind`` (int8 codes into :data:`s2trace.arch.attributes.KINDS`) and ``addr`` (next-table
address of table entries) arrays.  All table pages of one level are read with one
``gather`` and decoded in one call; Python loops run per level and per problem only.

Problems recorded here (see :mod:`s2trace.walk.walker` for the walk-level ones):
``root_misaligned``, ``table_outside_dump``, ``loop`` (a table pointing to an ancestor, not
followed) and ``table_reused`` (a table reached again from elsewhere, walked once).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np
import pandas as pd

from s2trace.arch.attributes import KINDS
from s2trace.arch.geometry import Geometry
from s2trace.errors import Problem, ProblemLog

__all__ = ["LevelChunk", "Memory", "TableWalk"]

_TABLE = KINDS.index("table")


class Memory(Protocol):
    """What a walk needs from a dump (see :class:`s2trace.io.memory.PhysicalMemory`)."""

    def gather(self, pas: np.ndarray, nbytes: int) -> tuple[np.ndarray, np.ndarray]: ...


class LevelChunk:
    """Every entry read from a batch of tables of one level: raw value, its decode, and
    (computed when first asked for) input address, table page and index in the table."""

    __slots__ = ("_index", "_ipa", "_table_pa", "_tables", "decoded", "level", "raw", "span")

    def __init__(
        self,
        level: int,
        raw: np.ndarray,
        decoded: Any,
        tables: np.ndarray,
        tables_ipa: np.ndarray,
        span: int,
    ) -> None:
        self.level, self.raw, self.decoded, self.span = level, raw, decoded, span
        self._tables = (tables, tables_ipa)
        self._ipa: np.ndarray | None = None
        self._table_pa: np.ndarray | None = None
        self._index: np.ndarray | None = None

    @property
    def per_table(self) -> int:
        """Entries read from each table."""
        return self.raw.shape[0] // max(1, self._tables[0].shape[0])

    @property
    def ipa(self) -> np.ndarray:
        """Input address of every entry."""
        if self._ipa is None:
            idx = np.arange(self.per_table, dtype=np.uint64) * np.uint64(self.span)
            self._ipa = (self._tables[1][:, None] + idx[None, :]).reshape(-1)
        return self._ipa

    @property
    def table_pa(self) -> np.ndarray:
        """Physical address of the table page holding each entry."""
        if self._table_pa is None:
            self._table_pa = np.repeat(self._tables[0], self.per_table)
        return self._table_pa

    @property
    def index(self) -> np.ndarray:
        """Index of each entry in its table (uint16)."""
        if self._index is None:
            idx = np.arange(self.per_table, dtype=np.uint16)
            self._index = np.tile(idx, self._tables[0].shape[0])
        return self._index


def _problem(log: ProblemLog, kind: str, where: int, detail: str, level: int) -> None:
    log.add(Problem(kind, int(where), detail, level))


class TableWalk:
    """Iterate the levels of one translation table: ``for chunk in TableWalk(...)``.

        ``start_entries`` is the number of descriptors across the start-level table(s)
        (concatenated stage-2 tables included); the root must be aligned to their size.
        Each level is read in batches of about ``batch_entries`` descriptors (one chunk each), so
    memory stays bounded on huge tables.  After iteration, :meth:`tables` lists every table page
    visited.  ``max_tables`` stops
        the walk (recording ``walk_truncated``) before a level that would exceed it; scans use it
        to bound the cost of walking a page that only looks like a root.  ``decode`` may return
        None for the last level, whose entries are never tables (the chunks then carry the raw
        values only).
    """

    def __init__(
        self,
        memory: Memory,
        geometry: Geometry,
        *,
        start_level: int,
        start_entries: int,
        root: int,
        decode: Callable[[np.ndarray, int], Any],
        log: ProblemLog,
        progress: Callable[[int, int], None] | None = None,
        max_tables: int | None = None,
        batch_entries: int = 1 << 20,
    ) -> None:
        self.memory, self.geometry, self.decode, self.log = memory, geometry, decode, log
        self.max_tables = max_tables
        self.batch_entries = batch_entries
        self.start_level, self.start_entries, self.progress = start_level, start_entries, progress
        root_bytes = max(64, start_entries * 8)
        if root % root_bytes:
            aligned = root - root % root_bytes
            _problem(
                log,
                "root_misaligned",
                root,
                f"root must be aligned to {root_bytes:#x}; using {aligned:#x}",
                start_level,
            )
            root = aligned
        self.root = root
        self._pa: list[np.ndarray] = []
        self._level: list[np.ndarray] = []
        self._ipa: list[np.ndarray] = []
        self._parent: list[np.ndarray] = []

    def __iter__(self) -> Iterator[LevelChunk]:
        g = self.geometry
        entries = g.entries
        n_start = -(-self.start_entries // entries)
        per_table = min(entries, self.start_entries)
        pa = self.root + np.arange(n_start, dtype=np.uint64) * np.uint64(g.granule.value)
        ipa = np.arange(n_start, dtype=np.uint64) * np.uint64(per_table * g.span(self.start_level))
        parent = np.full(n_start, -1, dtype=np.int64)
        visited = np.empty(0, dtype=np.uint64)
        parents = np.empty(0, dtype=np.int64)
        levels = [lv for lv in g.levels if lv >= self.start_level]
        for step, level in enumerate(levels):
            if pa.size == 0:
                break
            if self.max_tables is not None and visited.size + pa.size > self.max_tables:
                _problem(
                    self.log,
                    "walk_truncated",
                    int(pa[0]),
                    f"stopped before level {level}: more than {self.max_tables} tables",
                    level,
                )
                break
            first_id = visited.size
            visited = np.concatenate([visited, pa])
            parents = np.concatenate([parents, parent])
            self._pa.append(pa)
            self._level.append(np.full(pa.size, level, dtype=np.int8))
            self._ipa.append(ipa)
            self._parent.append(parent)
            n_read = per_table if level == self.start_level else entries
            found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
            batch = max(1, self.batch_entries // n_read)
            for lo in range(0, pa.size, batch):
                chunk, tables = self._read(
                    pa[lo : lo + batch], ipa[lo : lo + batch], first_id + lo, n_read, level
                )
                if chunk is not None:
                    found.append(tables)
                    yield chunk
            t_pa, t_ipa, t_src = (
                (np.concatenate(x) for x in zip(*found, strict=True))
                if found
                else (np.empty(0, np.uint64), np.empty(0, np.uint64), np.empty(0, np.int64))
            )
            pa, ipa, parent = self._next(t_pa, t_ipa, t_src, visited, parents, level)
            if self.progress is not None:
                self.progress(step + 1, len(levels))

    def _read(
        self, pa: np.ndarray, ipa: np.ndarray, first_id: int, n_read: int, level: int
    ) -> tuple[LevelChunk | None, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Read and decode one batch of tables; return the chunk and its table entries
        (next-table address, input address, number of the table holding them)."""
        words, ok = self.memory.gather(pa, n_read * 8)
        for bad in pa[~ok]:
            _problem(
                self.log,
                "table_outside_dump",
                int(bad),
                f"level {level} table at {int(bad):#x} is not in the dump",
                level,
            )
        empty = (np.empty(0, np.uint64), np.empty(0, np.uint64), np.empty(0, np.int64))
        if not ok.any():
            return None, empty
        span = self.geometry.span(level)
        every = bool(ok.all())
        raw = (words if every else words[ok]).reshape(-1)
        tables, tables_ipa = (pa, ipa) if every else (pa[ok], ipa[ok])
        ids = np.arange(first_id, first_id + pa.size)[ok]
        decoded = self.decode(raw, level)
        chunk = LevelChunk(level, raw, decoded, tables, tables_ipa, span)
        if decoded is None:  # a decode may skip the last level, where no entry is a table
            if level != self.geometry.levels[-1]:
                raise ValueError(f"level {level} must be decoded: its tables are walked")
            return chunk, empty
        sel = np.flatnonzero(decoded.kind == _TABLE)
        # Input addresses of the table entries only (the chunk's are made when asked for).
        sel_ipa = tables_ipa[sel // n_read] + (sel % n_read).astype(np.uint64) * np.uint64(span)
        return chunk, (decoded.addr[sel], sel_ipa, ids[sel // n_read])

    @classmethod
    def of(
        cls,
        memory: Memory,
        config: Any,
        decode: Callable[[np.ndarray, int], Any],
        log: ProblemLog,
        **kw: Any,
    ) -> TableWalk:
        """The walk of a configuration (anything with ``geometry``, ``start_level``,
        ``start_entries`` and ``root``: a stage-2 or a stage-1 configuration)."""
        return cls(
            memory,
            config.geometry,
            start_level=config.start_level,
            start_entries=config.start_entries,
            root=config.root,
            decode=decode,
            log=log,
            **kw,
        )

    def tables(self) -> pd.DataFrame:
        """Table pages visited: ``pa, level, ipa_start, parent`` (row of the parent table)."""

        def cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
            return np.concatenate(parts) if parts else np.empty(0, dtype)

        return pd.DataFrame(
            {
                "pa": cat(self._pa, np.uint64),
                "level": cat(self._level, np.int8),
                "ipa_start": cat(self._ipa, np.uint64),
                "parent": cat(self._parent, np.int64),
            }
        )

    def _next(
        self,
        pa: np.ndarray,
        src_ipa: np.ndarray,
        src_table: np.ndarray,
        visited: np.ndarray,
        parents: np.ndarray,
        level: int,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tables of the next level from this level's table entries (their next-table
        address, input address and holding table), without loops or tables already walked."""
        order = np.argsort(visited, kind="stable")
        hit = np.minimum(np.searchsorted(visited[order], pa), max(visited.size - 1, 0))
        seen = visited[order][hit] == pa if visited.size else np.zeros(pa.size, dtype=bool)
        for pos in np.flatnonzero(seen):
            target = int(order[hit[pos]])
            loop = target in _ancestors(int(src_table[pos]), parents)
            what = "loop" if loop else "table_reused"
            why = "is its own ancestor" if loop else "was already walked"
            _problem(
                self.log,
                what,
                int(pa[pos]),
                f"level {level} entry for ipa {int(src_ipa[pos]):#x} points to table "
                f"{int(pa[pos]):#x}, which {why}",
                level,
            )
        fresh = np.flatnonzero(~seen)
        _, first = np.unique(pa[fresh], return_index=True)
        for pos in fresh[np.setdiff1d(np.arange(fresh.size), first)]:
            _problem(
                self.log,
                "table_reused",
                int(pa[pos]),
                f"level {level} entry for ipa {int(src_ipa[pos]):#x} points to table "
                f"{int(pa[pos]):#x}, which another entry of the same level also uses",
                level,
            )
        keep = fresh[np.sort(first)]
        return pa[keep], src_ipa[keep], src_table[keep].astype(np.int64)


def _ancestors(start: int, parents: np.ndarray) -> set[int]:
    out: set[int] = set()
    node = start
    while node >= 0 and node not in out:
        out.add(node)
        node = int(parents[node])
    return out
