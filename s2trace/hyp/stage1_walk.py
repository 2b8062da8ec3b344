"""Walk the hypervisor's own EL2 stage-1 table (TTBR0_EL2) in a dump into the hyp map.

The traversal is the generic :class:`s2trace.walk.tables.TableWalk` (one gather and one decode
per level) with the stage-1 decode of :mod:`s2trace.arch.stage1`; rows are the leaves (blocks
and pages), one per descriptor, sorted by VA.  The pKVM reading is the ``hyp_state`` column:
up to v6.15 the hypervisor keeps its page state in SW0/SW1 (bits 55/56) of its stage-1 leaves
(nvhe/mem_protect.h, docs/kernel-facts.md §KF-2.4: neither = OWNED, SW0 = SHARED_OWNED, SW1 =
SHARED_BORROWED, both = reserved); from v6.16 the state lives in ``hyp_vmemmap`` and the bits are 0
everywhere (§KF-2.8, checked on the 7.3 capture), so ``hyp_states="vmemmap"`` reports ``unknown``
instead.

Problems recorded besides the traversal's: ``reserved_encoding``, ``res0_set``,
``res1_clear`` (E2H=0 leaf with AP[1] clear) and ``table_attributes`` (a table descriptor with
hierarchical attributes while TCR_EL2.HPD is 0: the leaf permissions shown do not include
them; pKVM never sets them).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from s2trace.arch.attributes import KINDS, SH
from s2trace.arch.stage1 import (
    Stage1Config,
    ap_names,
    decode_stage1,
    leaf_fields,
    mair_names,
    stage1_res0,
    table_attributes,
)
from s2trace.columns import HYP_MAP
from s2trace.errors import Problem, ProblemLog
from s2trace.walk.tables import LevelChunk, Memory, TableWalk

__all__ = ["HYP_MAP", "HYP_STATES", "HypWalkResult", "category_dtype", "translate", "walk_hyp"]

_TABLE, _BLOCK, _PAGE, _INVALID, _RESERVED = range(len(KINDS))

#: pKVM page states of the hyp stage-1 SW bits 56:55, indexed by their value (§KF-2.4).
HYP_STATES: tuple[str, ...] = ("owned", "shared_owned", "shared_borrowed", "reserved")


@dataclass
class HypWalkResult:
    """The hyp map, the tables visited, the problems and provenance of one stage-1 walk."""

    map: pd.DataFrame
    tables: pd.DataFrame
    problems: ProblemLog
    config: Stage1Config
    hyp_states: str = "pte"
    meta: dict[str, Any] = field(default_factory=dict)

    def translate(self, va: object) -> tuple[np.ndarray, np.ndarray]:
        """Physical addresses of hyp VAs ``va``: ``(pa, ok)``; see :func:`translate`."""
        return translate(self.map, va)


def translate(hyp_map: pd.DataFrame, va: object) -> tuple[np.ndarray, np.ndarray]:
    """Translate hyp virtual addresses through a hyp map (vectorised).

    Returns ``(pa, ok)``: ``ok`` is False where no leaf maps the VA (``pa`` is 0 there).
    One ``searchsorted`` over the leaves, which do not overlap.
    """
    v = np.atleast_1d(np.asarray(va, dtype=np.uint64))
    starts = hyp_map["va_start"].to_numpy(dtype=np.uint64)
    order = np.argsort(starts, kind="stable")
    starts = starts[order]
    sizes = hyp_map["size"].to_numpy(dtype=np.uint64)[order]
    pas = hyp_map["pa"].to_numpy(dtype=np.uint64)[order]
    pos = np.searchsorted(starts, v, side="right").astype(np.int64) - 1
    safe = np.maximum(pos, 0)
    ok = (pos >= 0) & (v - starts[safe] < sizes[safe]) if starts.size else np.zeros(v.size, bool)
    out = np.where(ok, pas[safe] + (v - starts[safe]), np.uint64(0)) if starts.size else v * 0
    return out.astype(np.uint64), ok


def _problem(log: ProblemLog, kind: str, where: int, detail: str, level: int) -> None:
    log.add(Problem(kind, int(where), detail, level))


def walk_hyp(
    memory: Memory,
    config: Stage1Config,
    *,
    hyp_states: str = "pte",
    strict: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> HypWalkResult:
    """Walk the EL2 stage 1 described by ``config`` in ``memory``.

    ``hyp_states`` says where the kernel keeps the hyp page states: ``"pte"`` (up to v6.15,
    read from SW bits 56:55) or ``"vmemmap"`` (v6.16+, reported as ``unknown`` here).
    """
    if hyp_states not in ("pte", "vmemmap"):
        raise ValueError(f"hyp_states must be 'pte' or 'vmemmap', not {hyp_states!r}")
    g = config.geometry
    log = ProblemLog(strict=strict)
    traversal = TableWalk.of(
        memory, config, lambda raw, level: decode_stage1(raw, g, level), log, progress=progress
    )
    pieces: list[dict[str, Any]] = []
    for chunk in traversal:
        kind = chunk.decoded.kind
        sel = np.flatnonzero((kind == _BLOCK) | (kind == _PAGE))
        if sel.size:
            pieces.append(_rows(chunk, sel, config, hyp_states))
        _check(log, chunk, config)
    meta = {"hyp_states": hyp_states, **config.describe()}
    frame = _finish(pieces, config, hyp_states)
    return HypWalkResult(frame, traversal.tables(), log, config, hyp_states, meta)


def _categories(config: Stage1Config, hyp_states: str) -> dict[str, list[str]]:
    mem = list(dict.fromkeys(mair_names(config.mair))) if config.mair is not None else []
    states = list(HYP_STATES) if hyp_states == "pte" else ["unknown"]
    return {
        "kind": ["block", "page"],
        "memattr": mem,
        "ap": list(dict.fromkeys(ap_names(config.e2h))),
        "sh": list(SH),
        "hyp_state": states,
    }


def _cat(codes: np.ndarray, names: list[str]) -> pd.Categorical[Any]:
    return pd.Categorical.from_codes(codes, dtype=category_dtype(tuple(names)), validate=False)


@functools.lru_cache(maxsize=64)
def category_dtype(names: tuple[str, ...]) -> pd.CategoricalDtype:
    """The categorical dtype of ``names``, made once (pandas validates the categories of every
    new dtype: a few hundred microseconds each, per column and per walk otherwise)."""
    return pd.CategoricalDtype(list(names))


#: Categorical columns of the hyp map (their codes are gathered per chunk, the frame built once).
_CATEGORICAL = ("kind", "memattr", "ap", "sh", "hyp_state")


def _rows(chunk: LevelChunk, sel: np.ndarray, config: Stage1Config, states: str) -> dict[str, Any]:
    """The map columns of one chunk's leaves as arrays (categoricals as codes)."""
    raw = chunk.raw[sel]
    f = leaf_fields(raw, config)
    cats = _categories(config, states)
    n = raw.size
    kind = chunk.decoded.kind[sel]
    ap_table = np.array([cats["ap"].index(a) for a in ap_names(config.e2h)], dtype=np.int8)
    if config.mair is not None:
        mem_lut = np.array([cats["memattr"].index(m) for m in mair_names(config.mair)], np.int8)
        memattr = np.take(mem_lut, f["attrindx"])
    else:
        memattr = np.full(n, -1, dtype=np.int8)
    sh = f["sh"].astype(np.int8) if not config.geometry.ds else np.full(n, -1, np.int8)
    hyp_state = (f["sw"] & 3).astype(np.int8) if states == "pte" else np.zeros(n, dtype=np.int8)
    return {
        "va_start": chunk.ipa[sel],
        "size": np.full(n, config.geometry.span(chunk.level), dtype=np.uint64),
        "pa": chunk.decoded.addr[sel],
        "level": np.full(n, chunk.level, dtype=np.int8),
        "kind": np.where(kind == _BLOCK, 0, 1).astype(np.int8),
        "attrindx": f["attrindx"],
        "memattr": memattr,
        "ap": np.take(ap_table, f["ap"]),
        "sh": sh,
        "af": f["af"],
        "pxn": f["pxn"],
        "uxn": f["uxn"],
        "sw": f["sw"],
        "hyp_state": hyp_state,
        "table_pa": chunk.table_pa[sel],
        "index": chunk.index[sel],
        "raw": raw,
    }


def _finish(pieces: list[dict[str, Any]], config: Stage1Config, states: str) -> pd.DataFrame:
    """One frame from the chunks' columns, sorted by VA (stable): each column concatenated
    and reordered once, categoricals built from their codes once."""
    if not pieces:
        out = HYP_MAP.empty()
        for col, names in _categories(config, states).items():
            out[col] = pd.Categorical([], categories=names)
        HYP_MAP.check(out)
        return out
    joined = {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}
    order = np.argsort(joined["va_start"], kind="stable")
    cols: dict[str, Any] = {k: v[order] for k, v in joined.items()}
    cats = _categories(config, states)
    for k in _CATEGORICAL:
        cols[k] = _cat(cols[k], cats[k])
    cols["uxn"] = pd.arrays.BooleanArray(cols["uxn"], np.full(len(order), not config.e2h))
    out = pd.DataFrame(cols)
    HYP_MAP.check(out)
    return out


def _check(log: ProblemLog, chunk: LevelChunk, config: Stage1Config) -> None:
    """Reserved encodings, RES0/RES1 violations and hierarchical table attributes (a Python
    loop per *problem* only)."""
    raw, kind, level = chunk.raw, chunk.decoded.kind, chunk.level
    where = chunk.table_pa + np.uint64(8) * chunk.index.astype(np.uint64)
    for pos in np.flatnonzero(kind == _RESERVED):
        _problem(
            log,
            "reserved_encoding",
            where[pos],
            f"stage-1 descriptor {int(raw[pos]):#x} (va {int(chunk.ipa[pos]):#x}): "
            f"bits[1:0]=0b01 is not a block at level {level}",
            level,
        )
    masks = stage1_res0(config.geometry, level, config.e2h)
    res0 = raw & np.take(np.array([masks[k] for k in KINDS], dtype=np.uint64), kind)
    for pos in np.flatnonzero(res0):
        _problem(
            log,
            "res0_set",
            where[pos],
            f"stage-1 descriptor {int(raw[pos]):#x} sets RES0 bits {int(res0[pos]):#x}",
            level,
        )
    leaf = (kind == _BLOCK) | (kind == _PAGE)
    if not config.e2h:
        clear = leaf & (((raw >> np.uint64(6)) & np.uint64(1)) == 0)
        for pos in np.flatnonzero(clear):
            _problem(
                log,
                "res1_clear",
                where[pos],
                f"E2H=0 leaf {int(raw[pos]):#x} has AP[1] (bit 6, RES1) clear",
                level,
            )
    if not config.hpd:
        hier = (kind == _TABLE) & (table_attributes(raw) != 0)
        for pos in np.flatnonzero(hier):
            _problem(
                log,
                "table_attributes",
                where[pos],
                f"table descriptor {int(raw[pos]):#x} sets hierarchical attributes "
                f"(bits 63:59 = {int(table_attributes(raw[pos : pos + 1])[0]):#x}); "
                "they restrict the leaves below and are not shown in their columns",
                level,
            )
