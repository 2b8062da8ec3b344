"""Walk a stage-2 page table in a memory dump into the ownership map.

Level by level and vectorised: every table page of one level is read with one
``PhysicalMemory.gather`` and decoded with one numpy pass (``decode_ownership``); Python
loops run per level and per *problem*, never per descriptor.  Damage is recorded and the walk
goes on (facts: nothing is dropped silently):

* ``root_misaligned`` -- the root is not aligned to the start table(s) size (aligned down);
* ``table_outside_dump`` -- a table pointer to memory the dump does not hold;
* ``loop`` -- a table that points to itself or one of its ancestors (not followed);
* ``table_reused`` -- a table reached a second time from elsewhere (not walked twice);
* ``reserved_encoding`` -- a valid bit with an encoding the level does not allow;
* ``res0_set`` -- a valid descriptor with RES0 bits set;
* ``not_identity`` -- a valid leaf whose output address differs from its input address
  (the pKVM host stage 2 is an identity map; only checked with ``identity=True``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

from s2trace.arch.attributes import KINDS
from s2trace.arch.registers import Stage2Config
from s2trace.columns import MAP
from s2trace.decode.numpy_engine import (
    KIND_CODE,
    decode_array,
    decode_ownership,
    res0_masks,
)
from s2trace.errors import Problem, ProblemLog
from s2trace.pkvm.profiles import Profile, get_profile

__all__ = ["Memory", "WalkResult", "walk"]

_TABLE, _BLOCK, _PAGE, _INVALID, _RESERVED = (KIND_CODE[k] for k in KINDS)


class Memory(Protocol):
    """What the walker needs from a dump (see :class:`s2trace.io.memory.PhysicalMemory`)."""

    def gather(self, pas: np.ndarray, nbytes: int) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class WalkResult:
    """A walk's outputs: the map, the tables visited, the problems, and provenance."""

    map: pd.DataFrame
    tables: pd.DataFrame
    problems: ProblemLog
    config: Stage2Config
    profile: Profile
    fwb: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Frontier:
    """Table pages to read at one level: address, first IPA, entries to read, parent."""

    pa: np.ndarray
    ipa: np.ndarray
    parent: np.ndarray  # index into the visited-tables arrays (-1 for roots)


def _problem(log: ProblemLog, kind: str, where: int, detail: str, level: int) -> None:
    log.add(Problem(kind, int(where), detail, level))


def walk(
    memory: Memory,
    config: Stage2Config,
    profile: Profile | str | None = None,
    *,
    fwb: bool = False,
    include_zero: bool = False,
    identity: bool = True,
    strict: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> WalkResult:
    """Walk the stage 2 described by ``config`` in ``memory``.

    Returns the ownership map (``MAP`` schema; one row per leaf and per non-zero invalid
    entry, and per zero entry too with ``include_zero``), sorted by ``ipa_start``.
    ``progress(level_index, levels)`` is called after each level.
    """
    prof = get_profile(profile) if profile is not None else get_profile()
    g = config.geometry
    log = ProblemLog(strict=strict)
    entries = g.entries
    start_entries = config.start_entries
    root = config.root
    if root % config.root_bytes:
        aligned = root - root % config.root_bytes
        _problem(
            log,
            "root_misaligned",
            root,
            f"root must be aligned to {config.root_bytes:#x}; using {aligned:#x}",
            config.start_level,
        )
        root = aligned

    tables_pa: list[np.ndarray] = []
    tables_level: list[np.ndarray] = []
    tables_ipa: list[np.ndarray] = []
    tables_parent: list[np.ndarray] = []
    pieces: list[pd.DataFrame] = []
    visited = np.empty(0, dtype=np.uint64)
    parents_all = np.empty(0, dtype=np.int64)

    n_start_tables = -(-start_entries // entries)
    per_table = min(entries, start_entries)
    frontier = _Frontier(
        pa=root + np.arange(n_start_tables, dtype=np.uint64) * np.uint64(g.granule.value),
        ipa=np.arange(n_start_tables, dtype=np.uint64)
        * np.uint64(per_table * g.span(config.start_level)),
        parent=np.full(n_start_tables, -1, dtype=np.int64),
    )
    levels = [lv for lv in g.levels if lv >= config.start_level]
    for step, level in enumerate(levels):
        if frontier.pa.size == 0:
            break
        first_id = visited.size
        visited = np.concatenate([visited, frontier.pa])
        parents_all = np.concatenate([parents_all, frontier.parent])
        tables_pa.append(frontier.pa)
        tables_level.append(np.full(frontier.pa.size, level, dtype=np.int8))
        tables_ipa.append(frontier.ipa)
        tables_parent.append(frontier.parent)
        n_read = per_table if level == config.start_level else entries
        words, ok = memory.gather(frontier.pa, n_read * 8)
        for pa in frontier.pa[~ok]:
            _problem(
                log,
                "table_outside_dump",
                pa,
                f"level {level} table at {int(pa):#x} is not in the dump",
                level,
            )
        span = np.uint64(g.span(level))
        idx = np.arange(n_read, dtype=np.uint64)
        raw = words[ok].reshape(-1)
        ipa = (frontier.ipa[ok][:, None] + idx[None, :] * span).reshape(-1)
        table_pa = np.repeat(frontier.pa[ok], n_read)
        index = np.tile(idx.astype(np.uint16), int(ok.sum()))
        table_id = np.repeat(np.arange(first_id, first_id + frontier.pa.size)[ok], n_read)
        codes = decode_ownership(raw, g, level, prof)

        keep = (codes.kind == _BLOCK) | (codes.kind == _PAGE) | (codes.kind == _RESERVED)
        keep |= (codes.kind == _INVALID) & ((raw != 0) | include_zero)
        sel = np.flatnonzero(keep)
        if sel.size:
            pieces.append(
                _rows(raw[sel], ipa[sel], table_pa[sel], index[sel], level, config, prof, fwb)
            )
        _check_entries(
            log, raw, codes.kind, codes.addr, ipa, table_pa, index, level, config, identity
        )
        frontier = _next_frontier(
            log, codes.kind, codes.addr, ipa, table_id, visited, parents_all, level
        )
        if progress is not None:
            progress(step + 1, len(levels))

    result_map = _finish(pieces)
    tables = pd.DataFrame(
        {
            "pa": np.concatenate(tables_pa) if tables_pa else np.empty(0, np.uint64),
            "level": np.concatenate(tables_level) if tables_level else np.empty(0, np.int8),
            "ipa_start": np.concatenate(tables_ipa) if tables_ipa else np.empty(0, np.uint64),
            "parent": np.concatenate(tables_parent) if tables_parent else np.empty(0, np.int64),
        }
    )
    meta = {"profile": prof.name, "fwb": fwb, **config.describe()}
    return WalkResult(result_map, tables, log, config, prof, fwb, meta)


def _finish(pieces: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate the per-level rows, sort by IPA and restore the declared dtypes."""
    if not pieces:
        return MAP.empty()
    out = pd.concat(pieces, ignore_index=True)
    for col, dtype in MAP.dtypes().items():
        if dtype == "category" and not isinstance(out[col].dtype, pd.CategoricalDtype):
            out[col] = out[col].astype(object).astype("category")
    out = out.sort_values("ipa_start", kind="stable", ignore_index=True)
    MAP.check(out)
    return out


def _rows(
    raw: np.ndarray,
    ipa: np.ndarray,
    table_pa: np.ndarray,
    index: np.ndarray,
    level: int,
    config: Stage2Config,
    prof: Profile,
    fwb: bool,
) -> pd.DataFrame:
    """Map rows for the kept entries of one level (full decode of the subset only)."""
    d = decode_array(raw, config.geometry, level, prof, fwb)
    frame = pd.DataFrame(
        {
            "ipa_start": ipa,
            "size": d["size"].to_numpy(),
            "oa": d["oa"].array,
            "level": d["level"].to_numpy(),
            "kind": d["kind"].array,
            "owner": d["owner"].array,
            "owner_id": d["owner_id"].array,
            "page_state": d["page_state"].array,
            "s2ap": d["s2ap"].array,
            "memattr_name": d["memattr_name"].array,
            "xn": d["xn"].array,
            "contiguous": d["contiguous"].array,
            "table_pa": table_pa,
            "index": index,
            "raw": raw,
            "locked": d["locked"].array,
            "inv_type": d["inv_type"].array,
            "vm_handle": d["vm_handle"].array,
            "gfn": d["gfn"].array,
        }
    )
    return frame


def _check_entries(
    log: ProblemLog,
    raw: np.ndarray,
    kind: np.ndarray,
    addr: np.ndarray,
    ipa: np.ndarray,
    table_pa: np.ndarray,
    index: np.ndarray,
    level: int,
    config: Stage2Config,
    identity: bool,
) -> None:
    """Record reserved encodings, RES0 bits set and identity-map breaks (rare: loop per hit)."""
    masks = res0_masks(config.geometry, level)
    for pos in np.flatnonzero(kind == _RESERVED):
        _problem(
            log,
            "reserved_encoding",
            int(table_pa[pos]) + 8 * int(index[pos]),
            f"descriptor {int(raw[pos]):#x} (ipa {int(ipa[pos]):#x}): bits[1:0]=0b01 "
            f"is not a block at level {level}",
            level,
        )
    res0 = np.zeros(raw.shape[0], dtype=np.uint64)
    for name in ("table", "block", "page"):
        sel = kind == KIND_CODE[name]
        res0[sel] = raw[sel] & np.uint64(masks[name])
    for pos in np.flatnonzero(res0):
        _problem(
            log,
            "res0_set",
            int(table_pa[pos]) + 8 * int(index[pos]),
            f"descriptor {int(raw[pos]):#x} sets RES0 bits {int(res0[pos]):#x}",
            level,
        )
    if identity:
        leaf = (kind == _BLOCK) | (kind == _PAGE)
        for pos in np.flatnonzero(leaf & (addr != ipa)):
            _problem(
                log,
                "not_identity",
                int(ipa[pos]),
                f"leaf maps ipa {int(ipa[pos]):#x} to oa {int(addr[pos]):#x} "
                "(the host stage 2 is an identity map)",
                level,
            )


def _ancestors(start: int, parents: np.ndarray) -> set[int]:
    out: set[int] = set()
    node = start
    while node >= 0 and node not in out:
        out.add(node)
        node = int(parents[node])
    return out


def _next_frontier(
    log: ProblemLog,
    kind: np.ndarray,
    addr: np.ndarray,
    ipa: np.ndarray,
    table_id: np.ndarray,
    visited: np.ndarray,
    parents: np.ndarray,
    level: int,
) -> _Frontier:
    """Tables of the next level, without loops or tables already walked."""
    sel = np.flatnonzero(kind == _TABLE)
    pa, src_ipa, src_table = addr[sel], ipa[sel], table_id[sel]
    # Tables already visited (ancestors = loop; elsewhere = reused).
    order = np.argsort(visited, kind="stable")
    hit = np.searchsorted(visited[order], pa)
    hit = np.minimum(hit, max(visited.size - 1, 0))
    seen = visited.size > 0
    seen_mask = (visited[order][hit] == pa) if seen else np.zeros(pa.size, dtype=bool)
    for pos in np.flatnonzero(seen_mask):
        target = int(order[hit[pos]])
        chain = _ancestors(int(src_table[pos]), parents)
        what = "loop" if target in chain else "table_reused"
        why = "is its own ancestor" if what == "loop" else "was already walked"
        _problem(
            log,
            what,
            int(pa[pos]),
            f"level {level} entry for ipa {int(src_ipa[pos]):#x} points to table "
            f"{int(pa[pos]):#x}, which {why}",
            level,
        )
    fresh = np.flatnonzero(~seen_mask)
    # Two entries of this level pointing at the same new table: walk it once.
    _, first = np.unique(pa[fresh], return_index=True)
    dup = np.setdiff1d(np.arange(fresh.size), first)
    for pos in fresh[dup]:
        _problem(
            log,
            "table_reused",
            int(pa[pos]),
            f"level {level} entry for ipa {int(src_ipa[pos]):#x} points to table "
            f"{int(pa[pos]):#x}, which another entry of the same level also uses",
            level,
        )
    keep = fresh[np.sort(first)]
    return _Frontier(pa=pa[keep], ipa=src_ipa[keep], parent=src_table[keep].astype(np.int64))
