"""Replay, initial state: an ownership map or explicit ranges -> page ranges with a state id.

Internal to :mod:`s2trace.trace.replay`.  Each distinct (owner, page_state, kind, peer) of the
input is read once into a :class:`~s2trace.pkvm.rules.PageState` name; owners outside the
rule table's base states (``id:N``, ``ffa`` ...) become extra "owned" states.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from s2trace.errors import InputError
from s2trace.intervals import distinct
from s2trace.pkvm.rules import PageState, owned_by
from s2trace.trace.replay.rows import _HOST_OWNED, _STATE_INDEX

InitialRange = tuple[int, int, str, str] | tuple[int, int, str, str, str]
"""An explicit initial range: (addr, size, owner, host_state[, peer])."""


@dataclass
class _Initial:
    start: np.ndarray  # first page of each range (int64, sorted)
    stop: np.ndarray  # page after the range
    state: np.ndarray  # state id (BASE_STATES + extras)
    extras: tuple[PageState, ...]
    source: str
    unknown: list[tuple[int, int]]
    skipped: int
    basis: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    texts: tuple[str, ...] = ()  # what each range's state rests on, in words
    unk: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    # basis: per range, an index into ``texts``; unk: the map did not know the host state

    def __post_init__(self) -> None:
        n = len(self.start)
        if len(self.basis) != n:
            self.basis = np.zeros(n, dtype=np.int64)
        if len(self.unk) != n:
            self.unk = np.zeros(n, dtype=bool)


_SHARED_WITH = {"hyp": "shared_hyp", "ffa": "shared_ffa", "guest": "shared_guest"}
_BORROWED_FROM = {"hyp": "hyp_shared_host", "guest": "guest_shared_host"}


def _initial_state_name(owner: Any, state: Any, kind: Any, peer: Any) -> tuple[str | None, bool]:
    """(state name or None to skip, whether the page state was not known) for one map row kind.

    MAP semantics (nvhe/memory.h v5.15-7.1; docs/kernel-facts.md §KF-2.4, §KF-2.6): a valid leaf is
    host-reachable (the profile names its owner ``host``); SW-bit states give shared_owned (host
    lends it; the peer is the hypervisor unless said otherwise) or shared_borrowed (the hypervisor
    owns it and lends it to the host, the boot fix-up case of §KF-3.3); an annotated invalid entry
    belongs to its owner.  ``unknown`` (6.14+, state in the vmemmap) and other states are replayed
    as owned and flagged.
    """
    owner = None if pd.isna(owner) else str(owner)
    state = None if pd.isna(state) else str(state)
    peer = None if pd.isna(peer) else str(peer)
    if owner is None:
        if str(kind) not in ("block", "page"):
            return None, False
        owner = "host"
    if owner == "host":
        if state in (None, "owned"):
            return "host_owned", False
        if state == "shared_owned":
            return _SHARED_WITH.get(peer or "hyp", "shared_hyp"), False
        if state == "shared_borrowed":
            return _BORROWED_FROM.get(peer or "hyp", "hyp_shared_host"), False
        return "host_owned", True
    if owner in ("hyp", "guest") and state == "shared_borrowed":
        return _BORROWED_FROM[owner], False
    return f"{owner}_owned", False


def _initial(
    initial: pd.DataFrame | Sequence[InitialRange] | None, page_size: int, basis: str = "initial"
) -> _Initial:
    """Page ranges with a state id from a map or explicit ranges; ``basis`` says what they
    rest on (a map's own ``basis`` column, when it has one, gives it per row)."""
    empty = np.zeros(0, dtype=np.int64)
    if initial is None:
        return _Initial(empty, empty, empty, (), "default", [], 0)
    if isinstance(initial, pd.DataFrame):
        frame, source = initial, "map"
        missing = [c for c in ("ipa_start", "size", "owner", "page_state") if c not in frame]
        if missing:
            raise InputError(f"initial map: missing columns {', '.join(missing)} (MAP schema)")
    else:
        rows = [tuple(r) for r in initial]
        bad = [r for r in rows if len(r) not in (4, 5)]
        if bad:
            raise InputError(
                f"initial range {bad[0]!r}: expected (addr, size, owner, host_state[, peer])"
            )
        frame = pd.DataFrame(
            {
                "ipa_start": np.array([r[0] for r in rows], dtype=np.uint64),
                "size": np.array([r[1] for r in rows], dtype=np.uint64),
                "owner": [r[2] for r in rows],
                "page_state": [r[3] for r in rows],
                "peer": [r[4] if len(r) == 5 else None for r in rows],
            }
        )
        source = "ranges"
    n = len(frame)
    start = frame["ipa_start"].to_numpy(dtype=np.uint64)
    size = frame["size"].to_numpy(dtype=np.uint64)
    misaligned = np.flatnonzero((start % page_size != 0) | (size % page_size != 0))
    if len(misaligned):
        i = int(misaligned[0])
        raise InputError(
            f"initial {source} row {i} (address {int(start[i]):#x}, size {int(size[i]):#x}): "
            f"not aligned to the {page_size}-byte page size"
        )
    cols = [frame[c] if c in frame else pd.Series([pd.NA] * n) for c in ("owner", "page_state")]
    kind = frame["kind"] if "kind" in frame else pd.Series(["page"] * n)
    peer = frame["peer"] if "peer" in frame else pd.Series([pd.NA] * n)
    keys = pd.DataFrame(
        {
            "o": cols[0].astype("object").to_numpy(),
            "s": cols[1].astype("object").to_numpy(),
            "k": kind.astype("object").to_numpy(),
            "p": peer.astype("object").to_numpy(),
        }
    )
    codes, uniques = pd.MultiIndex.from_frame(keys.fillna("\0")).factorize()
    names: list[str | None] = []
    unknown_u: list[bool] = []
    for o, s, k, p in uniques:
        name, unk = _initial_state_name(*(None if v == "\0" else v for v in (o, s, k, p)))
        names.append(name)
        unknown_u.append(unk)
    extras: list[PageState] = []
    index = dict(_STATE_INDEX)
    for name in names:
        if name is not None and name not in index:
            extras.append(owned_by(name.removesuffix("_owned")))
            index[name] = len(index)
    state_u = np.array([-1 if nm is None else index[nm] for nm in names], dtype=np.int64)
    state = state_u[codes] if n else np.zeros(0, dtype=np.int64)
    keep = (state >= 0) & (size > 0)
    unknown_rows = np.array(unknown_u, dtype=bool)[codes] & keep if n else np.zeros(0, bool)
    pstart = (start // np.uint64(page_size)).astype(np.int64)
    pstop = pstart + (size // np.uint64(page_size)).astype(np.int64)
    order = np.argsort(pstart[keep], kind="stable")
    s0, s1, st = pstart[keep][order], pstop[keep][order], state[keep][order]
    overlap = np.flatnonzero(s0[1:] < s1[:-1])
    if len(overlap):
        raise InputError(
            f"initial {source}: ranges overlap at address {int(s0[overlap[0] + 1]) * page_size:#x}"
        )
    unknown = [
        (int(a), int(b)) for a, b in zip(start[unknown_rows], size[unknown_rows], strict=True)
    ]
    if isinstance(initial, pd.DataFrame) and "basis" in frame:
        bcodes, texts = pd.factorize(frame["basis"].astype("object").fillna(basis))
        bas, text_t = bcodes[keep][order].astype(np.int64), tuple(str(t) for t in texts)
    else:
        bas, text_t = np.zeros(len(s0), dtype=np.int64), (basis,)
    return _Initial(
        s0, s1, st, tuple(extras), source, unknown, int((~keep).sum()), bas, text_t,
        unknown_rows[keep][order] if n else np.zeros(0, dtype=bool),
    )  # fmt: skip


def _unify(a: _Initial, b: _Initial) -> tuple[_Initial, _Initial, tuple[PageState, ...]]:
    """Both range sets over one state list (``a``'s extras, then ``b``'s new ones)."""
    extras = list(a.extras)
    remap = np.arange(len(_STATE_INDEX) + len(b.extras), dtype=np.int64)
    for i, ps in enumerate(b.extras):
        if ps not in extras:
            extras.append(ps)
        remap[len(_STATE_INDEX) + i] = len(_STATE_INDEX) + extras.index(ps)
    b2 = replace(b, state=remap[b.state] if len(b.state) else b.state, extras=tuple(extras))
    return replace(a, extras=tuple(extras)), b2, tuple(extras)


def _overlay(top: _Initial, under: _Initial, *, vague_under: bool = False) -> _Initial:
    """One range set: ``top`` where it has a range, else ``under`` (states already unified);
    basis indices refer to ``top.texts + under.texts``.  ``vague_under``: where ``top`` does
    not know the host state (``unk``), ``under`` wins."""
    if len(under.start) == 0:
        return top
    if vague_under and top.unk.any():
        sure, vague = (_subset(top, ~top.unk), _subset(top, top.unk))
        return _overlay(sure, _overlay(under, vague))
    if len(top.start) == 0:
        return replace(under, basis=under.basis + len(top.texts), texts=top.texts + under.texts)
    bounds = distinct(np.concatenate([top.start, top.stop, under.start, under.stop]))
    lo, hi = bounds[:-1], bounds[1:]
    picks = []
    for layer, shift in ((top, 0), (under, len(top.texts))):
        i = np.maximum(np.searchsorted(layer.start, lo, "right") - 1, 0)
        inside = (layer.start[i] <= lo) & (lo < layer.stop[i])
        picks.append((inside, i, shift))
    (t_in, ti, _), (u_in, ui, shift) = picks
    use = t_in | u_in
    state = np.where(t_in, top.state[ti], under.state[ui])[use]
    basis = np.where(t_in, top.basis[ti], under.basis[ui] + shift)[use]
    unk = np.where(t_in, top.unk[ti], under.unk[ui])[use]
    return replace(
        top, start=lo[use], stop=hi[use], state=state, basis=basis, unk=unk,
        texts=top.texts + under.texts, unknown=top.unknown + under.unknown,
    )  # fmt: skip


def _subset(init: _Initial, keep: np.ndarray) -> _Initial:
    """The ranges of ``init`` where ``keep`` holds (same texts and states)."""
    return replace(
        init, start=init.start[keep], stop=init.stop[keep], state=init.state[keep],
        basis=init.basis[keep], unk=init.unk[keep],
    )  # fmt: skip


def _initial_of(pages: np.ndarray, init: _Initial) -> np.ndarray:
    """Initial state id of each (sorted) page: its initial range's, else host owned."""
    return _lookup(pages, init)[0]


def _lookup(pages: np.ndarray, init: _Initial) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(state id, basis index, covered) of each page in ``init`` (host owned, -1, False where
    no range covers it)."""
    if len(init.start) == 0:
        n = len(pages)
        return (np.full(n, _HOST_OWNED, dtype=np.int64), np.full(n, -1, dtype=np.int64),
                np.zeros(n, dtype=bool))  # fmt: skip
    i = np.maximum(np.searchsorted(init.start, pages, "right") - 1, 0)
    inside = (init.start[i] <= pages) & (pages < init.stop[i])
    state = np.where(inside, init.state[i], _HOST_OWNED).astype(np.int64)
    return state, np.where(inside, init.basis[i], -1), inside
