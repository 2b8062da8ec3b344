"""Walk a stage-2 page table in a memory dump into the ownership map.

The traversal (:class:`s2trace.walk.tables.TableWalk`) reads every table page of one level
with one ``gather`` and decodes it with one numpy pass (``decode_ownership``); Python loops
run per level and per *problem*, never per descriptor.  Damage is recorded and the walk goes
on (nothing is dropped silently):

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
from typing import Any

import numpy as np
import pandas as pd

from s2trace.arch.attributes import KINDS
from s2trace.arch.registers import Stage2Config
from s2trace.columns import MAP
from s2trace.decode.numpy_engine import decode_array, decode_ownership, res0_masks
from s2trace.errors import Problem, ProblemLog
from s2trace.pkvm.profiles import Profile, get_profile
from s2trace.walk.tables import LevelChunk, Memory, TableWalk

__all__ = ["Memory", "WalkResult", "walk"]

_TABLE, _BLOCK, _PAGE, _INVALID, _RESERVED = range(len(KINDS))


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
    ``identity`` reports valid leaves whose output address differs from the input address
    (the pKVM host stage 2 is an identity map).  ``progress(done, levels)`` is called after
    each level.
    """
    prof = get_profile(profile) if profile is not None else get_profile()
    g = config.geometry
    log = ProblemLog(strict=strict)
    traversal = TableWalk(
        memory,
        g,
        start_level=config.start_level,
        start_entries=config.start_entries,
        root=config.root,
        decode=lambda raw, level: decode_ownership(raw, g, level, prof),
        log=log,
        progress=progress,
    )
    pieces: list[pd.DataFrame] = []
    for chunk in traversal:
        kind = chunk.decoded.kind
        keep = (kind == _BLOCK) | (kind == _PAGE) | (kind == _RESERVED)
        keep |= (kind == _INVALID) & ((chunk.raw != 0) | include_zero)
        sel = np.flatnonzero(keep)
        if sel.size:
            pieces.append(
                _rows(
                    chunk.raw[sel],
                    chunk.ipa[sel],
                    chunk.table_pa[sel],
                    chunk.index[sel],
                    chunk.level,
                    config,
                    prof,
                    fwb,
                )
            )
        _check_entries(log, chunk, config, identity)
    meta = {"profile": prof.name, "fwb": fwb, **config.describe()}
    return WalkResult(_finish(pieces), traversal.tables(), log, config, prof, fwb, meta)


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
    log: ProblemLog, chunk: LevelChunk, config: Stage2Config, identity: bool
) -> None:
    """Record reserved encodings, RES0 bits set and identity-map breaks (loop per hit only)."""
    raw, kind, addr, ipa = chunk.raw, chunk.decoded.kind, chunk.decoded.addr, chunk.ipa
    level = chunk.level
    where = chunk.table_pa + np.uint64(8) * chunk.index.astype(np.uint64)
    for pos in np.flatnonzero(kind == _RESERVED):
        _problem(
            log,
            "reserved_encoding",
            int(where[pos]),
            f"descriptor {int(raw[pos]):#x} (ipa {int(ipa[pos]):#x}): bits[1:0]=0b01 "
            f"is not a block at level {level}",
            level,
        )
    masks = res0_masks(config.geometry, level)
    res0 = raw & np.take(np.array([masks[k] for k in KINDS], dtype=np.uint64), kind)
    for pos in np.flatnonzero(res0):
        _problem(
            log,
            "res0_set",
            int(where[pos]),
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
