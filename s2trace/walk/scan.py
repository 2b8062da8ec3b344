"""Find candidate stage-2 roots in a dump without register values (``s2trace scan``).

Three passes, each cheaper than the next is precise:

1. every page of the dump is read as a table (vectorised, in chunks of the mmap, each unmapped
   after use; chunks in a hole of a sparse dump file are skipped unread, since zeros hold no
   table descriptor): a root candidate holds only zero entries and table descriptors whose
   next-level address is inside the dump, and at least one table descriptor;
2. for the candidates, the next-level tables are gathered together and must look like a
   stage-2 level of an identity map: no block whose output address differs from its input
   address, and at least one table or block;
3. the survivors (at most ``deep``) are walked (up to ``max_tables`` table pages each) and
   ranked by how much of the walk is an identity map, how many pKVM owner annotations it
   holds, and how many problems it produces.

The printed VTTBR/VTCR guesses assume the usual host stage 2 for the granule: 4K with a
48-bit IPA starting at level 0 (the pKVM host uses IPA size = PA size;
mem_protect.c ``prepare_host_vtcr``; docs/kernel-facts.md §KF-1.7).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from s2trace.arch.geometry import Geometry, Granule
from s2trace.arch.registers import config_from_registers, encode_vtcr
from s2trace.decode.numpy_engine import decode_ownership
from s2trace.errors import InputError, ProblemLog
from s2trace.walk.tables import TableWalk

__all__ = ["scan"]

_CHUNK_PAGES = 16384


def _inside(memory: Any, addrs: np.ndarray) -> np.ndarray:
    starts = np.array([r.pa for r in memory.regions], dtype=np.uint64)
    ends = np.array([r.pa + r.size for r in memory.regions], dtype=np.uint64)
    idx = np.searchsorted(starts, addrs, side="right") - 1
    ok = idx >= 0
    idx = np.maximum(idx, 0)
    return ok & (addrs < ends[idx])


def _root_candidates(memory: Any, geometry: Geometry) -> np.ndarray:
    """Pass 1: pages made only of zeros and in-dump table pointers."""
    page = geometry.granule.value
    found: list[np.ndarray] = []
    mask = np.uint64(geometry.address_mask(0, leaf=False))
    sparse = hasattr(memory, "data_from")
    for region in memory.regions:
        first = -(-region.pa // page) * page
        npages = (region.pa + region.size - first) // page
        start = 0
        while start < npages:
            count = min(_CHUNK_PAGES, npages - start)
            base = first + start * page
            data = memory.data_from(base) if sparse else base
            if data >= base + count * page:  # a hole of a sparse file: zeros, no root
                skip = (data - first) // page // _CHUNK_PAGES * _CHUNK_PAGES
                start = max(start + _CHUNK_PAGES, skip)
                continue
            start += _CHUNK_PAGES
            try:
                found.append(_candidates_in(memory, base, count, page, mask))
            finally:
                if hasattr(memory, "release"):  # every chunk: RSS must not grow with the dump
                    memory.release()
    return np.concatenate(found) if found else np.empty(0, dtype=np.uint64)


def _candidates_in(memory: Any, base: int, count: int, page: int, mask: np.uint64) -> np.ndarray:
    """Root candidates among the ``count`` pages at ``base`` (pass 1 on one chunk)."""
    words = memory.u64(base, count * page // 8).reshape(count, page // 8)
    low = words & np.uint64(3)
    table = low == 3
    zero = words == 0
    shape_ok = np.all(table | zero, axis=1) & table.any(axis=1)
    rows = np.flatnonzero(shape_ok)
    if rows.size == 0:
        return np.empty(0, dtype=np.uint64)
    targets = words[rows] & mask
    inside = _inside(memory, targets.reshape(-1)).reshape(targets.shape)
    good = np.all(inside | ~table[rows], axis=1)
    return base + rows[good].astype(np.uint64) * np.uint64(page)


def _identity_next_level(memory: Any, geometry: Geometry, roots: np.ndarray) -> np.ndarray:
    """Pass 2: the level-1 tables under each candidate look like an identity map.

    Returns the survivors, those with the most identity blocks at level 1 first.
    """
    if roots.size == 0:
        return roots
    page = geometry.granule.value
    words, ok = memory.gather(roots, page)
    codes = decode_ownership(words.reshape(-1), geometry, 0, "linux-5.15")
    kind = codes.kind.reshape(words.shape)
    addr = codes.addr.reshape(words.shape)
    # First table entry of each root, and the IPA it covers.
    first = np.argmax(kind == 0, axis=1)
    child = addr[np.arange(roots.size), first]
    ipa0 = first.astype(np.uint64) << np.uint64(geometry.shift(0))
    cw, cok = memory.gather(child, page)
    ccodes = decode_ownership(cw.reshape(-1), geometry, 1, "linux-5.15")
    ck = ccodes.kind.reshape(cw.shape)
    ca = ccodes.addr.reshape(cw.shape)
    span = np.uint64(geometry.span(1))
    ipa = ipa0[:, None] + np.arange(cw.shape[1], dtype=np.uint64)[None, :] * span
    block = ck == 1
    identity = np.all(~block | (ca == ipa), axis=1)
    some = ((ck == 0) | block).any(axis=1)
    keep = ok & cok & identity & some
    hint = (block & (ca == ipa)).sum(axis=1)
    order = np.argsort(-hint[keep], kind="stable")
    return roots[keep][order]


def _score(memory: Any, config: Any, profile: str | None, max_tables: int) -> dict[str, int]:
    """Walk one candidate with the fast decode only and count what makes a host stage 2."""
    log = ProblemLog()
    stats = dict(leaves=0, identity=0, annotated=0, mapped_bytes=0)
    geometry = config.geometry
    traversal = TableWalk.of(
        memory,
        config,
        lambda raw, level: decode_ownership(raw, geometry, level, profile),
        log,
        max_tables=max_tables,
    )
    for chunk in traversal:
        codes = chunk.decoded
        leaf = (codes.kind == 1) | (codes.kind == 2)
        host = codes.owner_names.index("host") if "host" in codes.owner_names else -2
        stats["leaves"] += int(leaf.sum())
        stats["identity"] += int((leaf & (codes.addr == chunk.ipa)).sum())
        stats["annotated"] += int(
            ((codes.kind == 3) & (codes.owner >= 0) & (codes.owner != host)).sum()
        )
        stats["mapped_bytes"] += int(leaf.sum()) * geometry.span(chunk.level)
    stats["problems"] = len(log)
    return stats


def scan(
    memory: Any,
    profile: str | None = None,
    *,
    granule: str = "4k",
    top: int = 5,
    deep: int = 64,
    max_tables: int = 2048,
) -> pd.DataFrame:
    """Rank candidate host stage-2 roots: ``root, vttbr, vtcr, score, leaves, identity,
    annotated, mapped_bytes, problems`` (best first)."""
    g = Granule.parse(granule)
    if g is not Granule.K4:
        raise InputError("scan knows the 4k host stage-2 layout only (48-bit IPA, level 0)")
    geometry = Geometry(g)

    vtcr = encode_vtcr(geometry, 48, 0)
    roots = _identity_next_level(memory, geometry, _root_candidates(memory, geometry))
    rows = []
    for root in roots[:deep]:
        st = _score(memory, config_from_registers(int(root), vtcr), profile, max_tables)
        score = (
            (st["identity"] / max(st["leaves"], 1)) * math.log2(2 + st["identity"])
            + math.log2(1 + st["annotated"])
            - math.log2(1 + st["problems"])
        )
        rows.append(
            dict(
                root=f"{int(root):#x}",
                vttbr=f"{int(root) | 1:#x}",
                vtcr=f"{vtcr:#x}",
                score=round(score, 2),
                **st,
            )
        )
    frame = pd.DataFrame(
        rows,
        columns=[
            "root",
            "vttbr",
            "vtcr",
            "score",
            "leaves",
            "identity",
            "annotated",
            "mapped_bytes",
            "problems",
        ],
    )
    frame["mapped_bytes"] = [f"{b:#x}" for b in frame["mapped_bytes"]]
    return frame.sort_values("score", ascending=False, ignore_index=True).head(top)
