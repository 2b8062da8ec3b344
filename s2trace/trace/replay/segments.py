"""Replay, step 1 (continued): rows -> one entry per (segment, row).

Internal to :mod:`s2trace.trace.replay`.  Page space is cut at every row's first and stop page
and at the boundaries of the initial-state ranges; between two cuts lies a segment, whose pages
every row and every initial range covers whole or misses, so they all replay alike.  One entry
stands for a segment and a row that covers it: memory and time follow the rows and the cuts,
never the pages a row names (one line over 2^26 pages is one entry).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from s2trace.errors import InputError
from s2trace.intervals import distinct
from s2trace.trace.replay.rows import _MAX_ENTRIES, _Rows


@dataclass
class _Entries:
    """One entry per (segment, row), sorted by segment then row."""

    seq: np.ndarray  # row (replay order) of each entry
    k: np.ndarray  # offset of the segment's first page within its row
    seg: np.ndarray  # segment index, non-decreasing
    seg_page: np.ndarray  # first page of each segment (increasing)
    seg_start: np.ndarray  # first entry of each segment (len = nseg + 1)
    seg_len: np.ndarray  # pages in each segment

    @property
    def pages(self) -> int:
        """Pages the segments cover (the pages some row names)."""
        return int(self.seg_len.sum())


def _explode(rows: _Rows, cuts: np.ndarray | None = None) -> _Entries:
    """One entry per (segment, row), stably sorted by segment; ``cuts``: more page numbers to
    cut at (the boundaries of the initial ranges).

    A one-page row is its own segment; only the rows of several pages are cut (at
    :func:`_bounds`), so a trace of one-page rows costs one stable sort, as a per-page
    expansion did.
    """
    live = rows.npages > 0
    multi = rows.npages > 1
    count = live.astype(np.int64)
    bounds = None
    if multi.any():
        bounds = _bounds(rows, multi, cuts)
        j0 = _search(bounds, rows.first[multi])
        count[multi] = _search(bounds, rows.first[multi] + rows.npages[multi]) - j0
    total = int(count.sum())
    if total > _MAX_ENTRIES:
        raise InputError(
            f"transitions cut into {total} (range, transition) pieces: more than "
            f"{_MAX_ENTRIES}; wrong sizes?"
        )
    seq = np.repeat(np.arange(len(count), dtype=np.int64), count)
    lo = rows.first[seq]  # a one-page row's segment starts at its page
    length = None
    if bounds is not None:
        at = np.flatnonzero(multi[seq])  # by row, then by piece
        mcount = count[multi]
        piece = np.arange(len(at), dtype=np.int64) - np.repeat(np.cumsum(mcount) - mcount, mcount)
        piece += np.repeat(j0, mcount)
        lo[at] = bounds[piece]
        length = np.ones(total, dtype=np.int64)
        length[at] = bounds[piece + 1] - bounds[piece]
        del at, piece
    order = np.argsort(lo, kind="stable")  # (segment, seq) order: seq was already ascending
    seq = seq[order]  # one at a time: each old array is freed before the next copy
    lo = lo[order]
    if length is not None:
        length = length[order]
    del order
    new = np.r_[True, lo[1:] != lo[:-1]] if total else np.zeros(0, dtype=bool)
    first_idx = np.flatnonzero(new)
    seg_len = np.ones(len(first_idx), dtype=np.int64) if length is None else length[first_idx]
    return _Entries(
        seq, lo - rows.first[seq], np.cumsum(new) - 1, lo[first_idx], np.r_[first_idx, total],
        seg_len,
    )  # fmt: skip


def _bounds(rows: _Rows, multi: np.ndarray, cuts: np.ndarray | None) -> np.ndarray:
    """Sorted cut points inside the rows of several pages: their first and stop pages, the
    ``cuts``, and every one-page row's page (and the next) that falls inside one of them."""
    first = np.sort(rows.first[multi])
    stop = np.sort(rows.first[multi] + rows.npages[multi])
    extra = np.zeros(0, dtype=np.int64) if cuts is None else np.asarray(cuts, dtype=np.int64)
    bounds = distinct(np.concatenate([first, stop, extra]))
    n = len(bounds)
    rise = np.bincount(np.searchsorted(bounds, first), minlength=n)  # sorted keys: fast
    covered = np.cumsum(rise - np.bincount(np.searchsorted(bounds, stop), minlength=n)) > 0
    single = np.sort(rows.first[rows.npages == 1])
    piece = np.searchsorted(bounds, single, "right") - 1
    inside = single[(piece >= 0) & covered[np.maximum(piece, 0)]]
    if len(inside):
        bounds = distinct(np.concatenate([bounds, inside, inside + 1]))
    return bounds


def _search(bounds: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """``np.searchsorted(bounds, keys)`` with the keys searched in sorted order (random keys
    into a large array are several times slower: every search misses the cache)."""
    order = np.argsort(keys)
    out = np.empty(len(keys), dtype=np.int64)
    out[order] = np.searchsorted(bounds, keys[order])
    return out
