"""Replay, step 4 (rare part): a segment whose pages stop replaying alike is split.

Internal to :mod:`s2trace.trace.replay`.  A segment's pages replay alike as long as every row
treats them alike.  One row does not: a counted share (``kvm_share_hyp``) stops at the first
page whose hypercall fails, so when that page is the first of a segment of several pages, the
page is executed (its count rises, the violation is its own) and the rest of the segment is
not.  :class:`_Slots` then peels that first page off into its own segment during the row by
row pass (:func:`~s2trace.trace.replay.coupled._sequential`), and :func:`_grown` rebuilds the
entries with the new segments once the pass is over.  A segment only ever loses its first
page, so the pieces of one original segment form a chain in page order; splits are bounded by
the counted shares replayed row by row, not by pages.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from s2trace.trace.replay.engines import _Outcome
from s2trace.trace.replay.rows import _Rows
from s2trace.trace.replay.segments import _Entries

_PER_ENTRY = ("rid", "before", "after", "code", "share_count", "guest_count", "skip")


@dataclass
class _Slots:
    """Segments of the row-by-row pass: the original ones, then those split off.

    ``base``, ``gcount`` and ``hcount`` are the current state of every slot; a split-off
    slot has no entries in ``ent``: its per-row outcomes are recorded (:meth:`record`) and
    turned into entries by :func:`_grown`.
    """

    lo: np.ndarray  # first page of each slot
    length: np.ndarray  # pages of each slot
    root: np.ndarray  # the original segment each slot is a piece of
    base: np.ndarray
    gcount: np.ndarray
    hcount: np.ndarray
    chain: dict[int, list[int]] = field(default_factory=dict)  # segment -> its slots, in order
    made: list[tuple[int, int, int, int]] = field(default_factory=list)  # (slot, seg, pred, row)
    recs: list[tuple[np.ndarray, ...]] = field(default_factory=list)

    def expand(self, s: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The row's slots in page order and their entries (-1: a split-off slot)."""
        if not self.chain:
            return s, e
        roots = np.fromiter(self.chain, dtype=np.int64, count=len(self.chain))
        hit = np.flatnonzero(np.isin(s, roots))
        if len(hit) == 0:
            return s, e
        cnt = np.ones(len(s), dtype=np.int64)
        cnt[hit] = [len(self.chain[int(s[i])]) for i in hit]
        at = np.cumsum(cnt) - cnt
        slots = np.repeat(s, cnt)
        ents = np.repeat(e, cnt)
        for i in hit:  # one per split segment in the row (bounded by the splits)
            members = self.chain[int(s[i])]
            slots[at[i] : at[i] + len(members)] = members
            ents[at[i] + 1 : at[i] + len(members)] = -1
        return slots, ents

    def split(self, slot: int, row: int) -> int:
        """Peel the first page off ``slot`` at ``row``; the rest becomes a new slot right
        after it in page order, in the same state."""
        new = len(self.lo)
        seg = int(self.root[slot])
        self.root = np.r_[self.root, seg]
        self.lo = np.r_[self.lo, self.lo[slot] + 1]
        self.length = np.r_[self.length, self.length[slot] - 1]
        self.length[slot] = 1
        for name in ("base", "gcount", "hcount"):
            arr = getattr(self, name)
            setattr(self, name, np.r_[arr, arr[slot]])
        members = self.chain.setdefault(seg, [seg])
        members.insert(members.index(slot) + 1, new)
        self.made.append((new, seg, slot, row))
        return new

    def record(self, slots: np.ndarray, row: int, values: dict[str, np.ndarray]) -> None:
        """Keep the outcomes of split-off slots at ``row`` (entries ``ent`` does not have)."""
        self.recs.append(
            (slots, np.full(len(slots), row, dtype=np.int64), *(values[n] for n in _PER_ENTRY))
        )


def _grown(
    slots: _Slots, ent: _Entries, rows: _Rows, out: _Outcome, start: tuple[np.ndarray, ...]
) -> tuple[_Entries, _Outcome, tuple[np.ndarray, ...]]:
    """Entries, outcomes and per-segment starting arrays with the split-off slots as segments.

    A split-off slot has its segment's rows: before its split the outcomes of the slot it was
    split from (the same pages until then), from its split on its own recorded ones.
    """
    nseg = len(ent.seg_page)
    rec = [np.concatenate(parts) for parts in zip(*slots.recs, strict=True)]
    by_slot = np.argsort(rec[0], kind="stable")  # rows already in time order per slot
    rec = [a[by_slot] for a in rec]
    rec_start = np.searchsorted(rec[0], np.arange(nseg, len(slots.lo) + 1))
    values: dict[int, dict[str, np.ndarray]] = {}
    seqs_of: dict[int, np.ndarray] = {}
    for new, seg, pred, _row in slots.made:  # in creation order: ``pred`` is built first
        idx = np.arange(ent.seg_start[seg], ent.seg_start[seg + 1])
        seqs = ent.seq[idx]
        src = {n: getattr(out, n)[idx] for n in _PER_ENTRY} if pred < nseg else values[pred]
        mine = {n: v.copy() for n, v in src.items()}
        a, b = rec_start[new - nseg], rec_start[new - nseg + 1]
        at = np.searchsorted(seqs, rec[1][a:b])
        for i, n in enumerate(_PER_ENTRY):
            mine[n][at] = rec[2 + i][a:b]
        values[new] = mine
        seqs_of[new] = seqs
    made = [m[0] for m in slots.made]
    slot_of = np.concatenate([ent.seg, np.repeat(made, [len(seqs_of[m]) for m in made])])
    seq = np.concatenate([ent.seq, *(seqs_of[m] for m in made)])
    order = np.lexsort((seq, slots.lo[slot_of]))
    rank = np.empty(len(slots.lo), dtype=np.int64)
    slot_order = np.argsort(slots.lo, kind="stable")
    rank[slot_order] = np.arange(len(slots.lo))
    seg = rank[slot_of[order]]
    seq = seq[order]
    counts = np.bincount(seg, minlength=len(slots.lo))
    seg_page = slots.lo[slot_order]
    new_ent = _Entries(
        seq, seg_page[seg] - rows.first[seq], seg, seg_page, np.r_[0, np.cumsum(counts)],
        slots.length[slot_order],
    )  # fmt: skip
    kept = {}
    for f in fields(out):
        v = getattr(out, f.name)
        if f.name in _PER_ENTRY:
            v = np.concatenate([v, *(values[m][f.name] for m in made)]).astype(v.dtype)[order]
        kept[f.name] = v
    root = np.concatenate([np.arange(nseg), [m[1] for m in slots.made]]).astype(np.int64)
    new_start = tuple(a[root[slot_order]] for a in start)
    return new_ent, _Outcome(**kept), new_start
