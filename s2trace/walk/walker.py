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
from typing import Any

import numpy as np
import pandas as pd
from pandas.api.types import union_categoricals

from s2trace.allocator import release_memory
from s2trace.arch.attributes import KINDS
from s2trace.arch.registers import Stage2Config
from s2trace.columns import MAP
from s2trace.decode.numpy_engine import (
    decode_fields,
    decode_kinds,
    decode_ownership,
    res0_masks,
)
from s2trace.errors import Problem, ProblemLog
from s2trace.pkvm.profiles import Profile, get_profile
from s2trace.walk.ownership import ATTRIBUTES
from s2trace.walk.ownership import coalesce as merge
from s2trace.walk.pieces import IpaOrder, Piece
from s2trace.walk.result import WalkResult
from s2trace.walk.tables import LevelChunk, Memory, TableWalk

__all__ = ["AUTO", "Memory", "WalkResult", "detect_profile", "walk"]

_TABLE, _BLOCK, _PAGE, _INVALID, _RESERVED = range(len(KINDS))

#: Entries per chunk when the map goes to a sink: pieces of a quarter million rows keep the
#: pieces in flight (made, queued, being written) within a few tens of MiB, so memory freed by
#: one piece is reused by the next instead of new pages being faulted in.
_SINK_BATCH = 1 << 18

#: ``walk(..., profile=AUTO)``: choose the annotation profile from the dump (detect_profile).
AUTO = "auto"
#: Profiles :func:`detect_profile` chooses between (mem_protect.c v5.13-7.1;
#: docs/kernel-facts.md §KF-2.1, §KF-2.2).
_AUTO_7X, _AUTO_6X = "linux-7.1", "linux-5.15"


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
    coalesce: bool = False,
    sink: Callable[[Piece], None] | None = None,
) -> WalkResult:
    """Walk the stage 2 described by ``config`` in ``memory``.

    Returns the ownership map (``MAP`` schema; one row per leaf and per non-zero invalid
    entry, and per zero entry too with ``include_zero``), sorted by ``ipa_start``.
    ``identity`` reports valid leaves whose output address differs from the input address
    (the pKVM host stage 2 is an identity map).  ``profile="auto"`` chooses the profile from
    the dump (:func:`detect_profile`: 7.1+ entries -> ``linux-7.1``, else ``linux-5.15``; the
    reason is in ``meta["profile_reason"]``).  ``progress(done, levels)`` is called after
    each level.  ``coalesce`` merges equal neighbours into ranges while walking (the same
    result as :func:`s2trace.walk.ownership.coalesce` on the full map, without building it).
    ``sink`` receives the map piece by piece (dicts of columns, in the map's row order:
    :class:`~s2trace.walk.pieces.IpaOrder`) instead of the map being built; the result's
    map is then empty.  Memory stays bounded by a few pieces (a quarter million rows each).
    """
    if sink is not None and coalesce:
        raise ValueError("walk: coalesce builds the map; it cannot stream to a sink")
    if isinstance(profile, str) and profile == AUTO:
        return _walk_auto(
            memory,
            config,
            fwb=fwb,
            include_zero=include_zero,
            identity=identity,
            strict=strict,
            progress=progress,
            coalesce=coalesce,
            sink=sink,
        )
    prof = get_profile(profile) if profile is not None else get_profile()
    g = config.geometry
    log = ProblemLog(strict=strict)
    traversal = TableWalk.of(
        memory,
        config,
        lambda raw, level: decode_ownership(raw, g, level, prof, ids=True),
        log,
        progress=progress,
        **({"batch_entries": _SINK_BATCH} if sink is not None else {}),
    )
    pieces: list[Piece] = []
    order = IpaOrder(sink, g.levels[-1], MAP.names) if sink is not None else None
    counts = np.zeros(len(KINDS) + 1, dtype=np.int64)  # by kind, then zero entries
    for chunk in traversal:
        kind = chunk.decoded.kind
        for code in range(len(KINDS)):  # narrow compares: cheaper than a bincount
            counts[code] += int(np.count_nonzero(kind == code))
        counts[-1] += int(np.count_nonzero(chunk.raw == 0))
        keep = (kind == _BLOCK) | (kind == _PAGE) | (kind == _RESERVED)
        keep |= (kind == _INVALID) & ((chunk.raw != 0) | include_zero)
        if keep.any():
            sel = slice(None) if keep.all() else np.flatnonzero(keep)
            span = g.span(chunk.level)
            sizes = None
            if coalesce:
                sel, sizes = _runs(chunk, sel, span, prof)
            cols = _rows(chunk, sel, config, prof, fwb)
            if sizes is not None:
                cols["size"] = sizes
            if order is not None:
                order.add(chunk.level, {name: cols[name] for name in MAP.names})
            else:
                pieces.append(cols)
        _check_entries(log, chunk, config, identity)
    meta = {"profile": prof.name, "fwb": fwb, **config.describe()}
    entry_counts = dict(zip([*KINDS, "zero"], (int(c) for c in counts), strict=True))
    entry_counts["invalid"] -= entry_counts["zero"]
    if order is not None:
        order.finish()
        meta["streamed"] = True
    result_map = _finish(pieces)
    if coalesce:
        result_map = merge(result_map, g.granule.value)
        meta["coalesced"] = True
    return WalkResult(result_map, traversal.tables(), log, config, prof, fwb, meta, entry_counts)


def detect_profile(map_df: pd.DataFrame) -> tuple[str, str]:
    """The annotation profile a walked host map was written with, and why.

    7.1 (hyp/pgtable.c, mem_protect.c v5.13-7.1; docs/kernel-facts.md §KF-2.2) puts a type in bits
    63:60 of every annotated invalid entry (1 locked, 2 donation, 3 poisoned); no 5.13-7.0 encoding
    sets those bits in an invalid entry (5.13 and 5.14 keep the owner in 63:56, but only ever write
    owner 1 = ``0x01...``, whose top nibble is 0).  So one invalid entry with a non-zero type means
    7.1+ and the map must be read with ``linux-7.1``; otherwise the 6.x owner field (bits 9:2)
    applies.  The profile only changes how entries are *named*, so the walk itself never depends on
    the guess.
    """
    raw = map_df["raw"].to_numpy(np.uint64)
    inv = (map_df["kind"] == "invalid").to_numpy(bool)
    typed = raw[inv] >> np.uint64(60)
    hits = np.flatnonzero(typed != 0)
    if hits.size:
        first = map_df["ipa_start"].to_numpy(np.uint64)[inv][hits[0]]
        return _AUTO_7X, (
            f"auto: 7.1+ ({hits.size} invalid entr{'y' if hits.size == 1 else 'ies'} with a "
            f"type in bits 63:60, first {int(raw[inv][hits[0]]):#x} at ipa {int(first):#x})"
        )
    return _AUTO_6X, "auto: no 7.1-style invalid entry (bits 63:60 all 0): 6.x encoding"


def _walk_auto(memory: Memory, config: Stage2Config, **kw: Any) -> WalkResult:
    """Walk with the 7.1 profile, then re-read with the 6.x one when the dump shows no
    7.1 entry (:func:`detect_profile`); the choice is in ``meta['profile_reason']``.
    With a ``sink``, a light traversal (:func:`_probe_profile`) chooses the profile before
    the map is streamed once."""
    if kw.get("sink") is not None:
        name, reason = _probe_profile(memory, config)
        result = walk(memory, config, name, **kw)
        result.meta["profile_reason"] = reason
        return result
    result = walk(memory, config, _AUTO_7X, **kw)
    name, reason = detect_profile(result.map)
    if name != _AUTO_7X:
        result = walk(memory, config, name, **kw)
    result.meta["profile_reason"] = reason
    return result


def _probe_profile(memory: Memory, config: Stage2Config) -> tuple[str, str]:
    """:func:`detect_profile`'s answer from a traversal that decodes kinds only, and stops
    at the first typed invalid entry.  Its problems are not kept: the real walk finds them.
    The last level (most of the entries) holds no table entries, so its kinds are decoded
    only for the entries with bits 63:60 set."""
    g = config.geometry
    last = g.levels[-1]

    def kinds(raw: np.ndarray, level: int) -> Any:
        return None if level == last else decode_kinds(raw, g, level)

    for chunk in TableWalk.of(memory, config, kinds, ProblemLog()):
        high = np.flatnonzero(chunk.raw >= np.uint64(1 << 60))  # bits 63:60 not all 0
        if not high.size:
            continue
        if chunk.decoded is None:
            kind = decode_kinds(chunk.raw[high], g, chunk.level).kind
        else:
            kind = chunk.decoded.kind[high]
        rows = high[kind == _INVALID]
        if rows.size:
            return _AUTO_7X, (
                f"auto: 7.1+ (invalid entr{'y' if rows.size == 1 else 'ies'} with a type in "
                f"bits 63:60, first {int(chunk.raw[rows[0]]):#x} at ipa "
                f"{int(chunk.ipa[rows[0]]):#x})"
            )
    return _AUTO_6X, "auto: no 7.1-style invalid entry (bits 63:60 all 0): 6.x encoding"


def _runs(chunk: LevelChunk, sel: Any, span: int, prof: Profile) -> tuple[np.ndarray, np.ndarray]:
    """Heads and sizes of the runs of kept entries that certainly coalesce.

    A run continues when the input address continues, the kind, owner and state codes are
    equal, and the raw descriptor differs from its predecessor only by the span in the output
    address (leaves), not at all (annotations), or by one guest frame (7.1 guest donations).
    These rules are stricter than :func:`s2trace.walk.ownership.coalesce`, which the walk
    applies afterwards to the (much shorter) list of runs, so the result is the same as
    coalescing the full map, without building it.
    """
    c = chunk.decoded
    raw, ipa = chunk.raw[sel], chunk.ipa[sel]
    kind, addr, owner, state = c.kind[sel], c.addr[sel], c.owner[sel], c.state[sel]
    n = raw.shape[0]
    if n == 0:
        return np.empty(0, np.intp), np.empty(0, np.uint64)
    step = np.uint64(span)
    same = (ipa[1:] == ipa[:-1] + step) & (kind[1:] == kind[:-1]) & (owner[1:] == owner[:-1])
    same &= state[1:] == state[:-1]
    leaf = (kind[1:] == _BLOCK) | (kind[1:] == _PAGE)
    leaf_ok = (raw[1:] == raw[:-1] + step) & (addr[1:] == addr[:-1] + step)
    inv_ok = raw[1:] == raw[:-1]
    if prof.gfn_bits:
        gstep = np.uint64(1 << prof.gfn_bits[1])
        inv_ok |= (raw[1:] == raw[:-1] + gstep) & ((raw[1:] ^ raw[:-1]) >> np.uint64(60) == 0)
    same &= np.where(leaf, leaf_ok, (kind[1:] == _INVALID) & inv_ok)
    heads = np.flatnonzero(np.concatenate(([True], ~same)))
    lengths = np.diff(np.append(heads, n)).astype(np.uint64)
    return (sel[heads] if isinstance(sel, np.ndarray) else heads), lengths * step


#: Rows from which :func:`_finish` returns each column's freed pieces to the system.
_RELEASE_ROWS = 1 << 20


def _finish(pieces: list[dict[str, Any]]) -> pd.DataFrame:
    """Concatenate the pieces column by column (peak memory: one column more than the map),
    restore the declared dtypes, and sort by IPA only when levels interleave."""
    if not pieces:
        return MAP.empty()
    cols: dict[str, Any] = {}
    # Handing memory back costs a heap scan: worth it only when the pieces are big.
    release = len(pieces) > 1 and sum(len(p["raw"]) for p in pieces) >= _RELEASE_ROWS
    for name, dtype in MAP.dtypes().items():
        parts = [p[name] for p in pieces]
        if dtype == "category":
            cols[name] = union_categoricals(parts) if len(parts) > 1 else parts[0]
        elif isinstance(parts[0], np.ndarray):
            cols[name] = np.concatenate(parts) if len(parts) > 1 else parts[0]
        else:
            cols[name] = type(parts[0])._concat_same_type(parts) if len(parts) > 1 else parts[0]
        for p in pieces:
            del p[name]
        del parts
        if release:
            release_memory()  # freed pieces would stay resident and double the peak
    out = pd.DataFrame(cols, copy=False)
    ipa = out["ipa_start"].to_numpy()
    if ipa.size > 1 and not bool(np.all(ipa[1:] > ipa[:-1])):
        out = out.take(np.argsort(ipa, kind="stable")).reset_index(drop=True)
    MAP.check(out)
    return out


#: Decoded columns a walk keeps: geometry, the attributes rows merge on, and the guest frame.
_DECODED = ("size", "oa", "level", *ATTRIBUTES, "gfn")


def _rows(
    chunk: LevelChunk, sel: Any, config: Stage2Config, prof: Profile, fwb: bool
) -> dict[str, Any]:
    """Map columns for the kept entries ``sel`` of one chunk: the fields the traversal's
    decode (kinds, addresses, owners, states) did not give are decoded for these only."""
    raw = chunk.raw[sel]
    codes = chunk.decoded.take(sel)  # views when ``sel`` is a slice
    cols = decode_fields(raw, codes, config.geometry, chunk.level, prof, fwb, columns=_DECODED)
    cols.update(ipa_start=chunk.ipa[sel], table_pa=chunk.table_pa[sel], index=chunk.index[sel])
    cols["raw"] = raw
    return cols


def _check_entries(
    log: ProblemLog, chunk: LevelChunk, config: Stage2Config, identity: bool
) -> None:
    """Record reserved encodings, RES0 bits set and identity-map breaks (loop per hit only)."""
    raw, kind, addr, ipa = chunk.raw, chunk.decoded.kind, chunk.decoded.addr, chunk.ipa
    level = chunk.level

    def where(pos: int | np.integer) -> int:
        return int(chunk.table_pa[pos]) + 8 * int(chunk.index[pos])

    reserved = kind == _RESERVED
    for pos in np.flatnonzero(reserved) if reserved.any() else ():
        _problem(
            log,
            "reserved_encoding",
            where(pos),
            f"descriptor {int(raw[pos]):#x} (ipa {int(ipa[pos]):#x}): bits[1:0]=0b01 "
            f"is not a block at level {level}",
            level,
        )
    masks = res0_masks(config.geometry, level)
    per_kind = np.array([masks[k] for k in KINDS], dtype=np.uint64)
    # Only entries with a bit of some kind's RES0 mask set can break their own kind's.
    union = np.bitwise_or.reduce(per_kind)
    hits = raw & union
    cand = np.flatnonzero(hits) if union and hits.any() else np.empty(0, np.intp)
    res0 = raw[cand] & per_kind[kind[cand]]
    for i in np.flatnonzero(res0):
        pos = cand[i]
        _problem(
            log,
            "res0_set",
            where(pos),
            f"descriptor {int(raw[pos]):#x} sets RES0 bits {int(res0[i]):#x}",
            level,
        )
    if identity:
        moved = addr != ipa
        if moved.any():
            moved &= (kind == _BLOCK) | (kind == _PAGE)
        for pos in np.flatnonzero(moved) if moved.any() else ():
            _problem(
                log,
                "not_identity",
                int(ipa[pos]),
                f"leaf maps ipa {int(ipa[pos]):#x} to oa {int(addr[pos]):#x} "
                "(the host stage 2 is an identity map)",
                level,
            )
