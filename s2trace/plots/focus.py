"""What the map plot gives its area to: the address ranges that change in the window.

The intervals alive in the window are cut at every interval edge into *pieces* (elementary
address ranges).  For each piece, a difference array over the pieces counts the intervals that
start inside the window (its changes) and records the owner/state code alive at the window's
end.  Pieces that never change in the window and that no violation or fault names are left out
(cut, like untouched memory).  A piece is *quiet* when it changes at most once, no violation
or fault names it and it does not end in the ``plain`` state (host owned); neighbouring quiet
pieces with the same end state and (nearly) the same change time form a run, and runs of at
least ``min_bytes`` (the ``max_bands`` largest) are *folded* into a band of fixed height ("10
MiB hyp owned since 0.300 s, unchanged").  The other pieces that change, and every marked
page, are *active* and share the rest of the axis.
Vectorised: sorts, ``searchsorted`` and cumulative sums, no loop per interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FOLD_MIN_BYTES", "Focus", "focus"]

#: Quiet runs at least this large are folded into a band.
FOLD_MIN_BYTES = 1 << 20


@dataclass(frozen=True)
class Focus:
    """Active address ranges (sorted, disjoint) and folded bands with their end-state code
    and change time (NaN: no change in the window)."""

    active_start: np.ndarray
    active_end: np.ndarray
    active_busy: np.ndarray  # bool per active range (all: every active range changes)
    band_start: np.ndarray
    band_end: np.ndarray
    band_code: np.ndarray
    band_t: np.ndarray


def _cover(bp: np.ndarray, s: np.ndarray, e: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Sum of ``w`` over the intervals ``[s, e)`` covering each piece ``[bp[i], bp[i+1])``."""
    diff = np.zeros(len(bp))
    np.add.at(diff, np.searchsorted(bp, s), w)
    np.add.at(diff, np.searchsorted(bp, e), -w)
    return np.cumsum(diff)[:-1]


def focus(
    a_start: np.ndarray,
    a_end: np.ndarray,
    t_start: np.ndarray,
    t_end: np.ndarray,
    code: np.ndarray,
    lo: float,
    hi: float,
    mark_start: np.ndarray,
    mark_end: np.ndarray,
    *,
    min_bytes: float = FOLD_MIN_BYTES,
    max_bands: int = 6,
    plain: int = -1,
) -> Focus:
    """Split the alive intervals' address space into active ranges and folded bands
    (module docstring).  Addresses as float64 (exact below 2^53)."""
    bp = np.unique(np.concatenate([a_start, a_end]))
    if len(bp) < 2:
        empty = np.zeros(0)
        busy = np.ones(len(mark_start), dtype=bool)
        return Focus(mark_start, mark_end, busy, empty, empty, empty.astype(np.int64), empty)
    one = np.ones(len(a_start))
    touched = _cover(bp, a_start, a_end, one) > 0
    inside = (t_start >= lo) & (t_start < hi)
    changes = _cover(bp, a_start, a_end, inside.astype(np.float64))
    at_end = t_end >= hi
    end_code = np.rint(_cover(bp, a_start[at_end], a_end[at_end], code[at_end] + 1.0)) - 1
    t_change = _cover(bp, a_start[inside], a_end[inside], t_start[inside])
    t_change = np.where(changes >= 1, t_change, np.nan)
    p_start, p_end = bp[:-1], bp[1:]
    ms = np.sort(mark_start)
    me = np.sort(mark_end)
    marked = (np.searchsorted(ms, p_end, side="left") - np.searchsorted(me, p_start, "right")) > 0
    quiet = touched & (changes <= 1) & ~marked & (end_code >= 0) & (end_code != plain)
    # runs of neighbouring quiet pieces with the same end state and change time
    near = 0.02 * (hi - lo)
    same = (
        quiet[1:]
        & quiet[:-1]
        & (p_start[1:] == p_end[:-1])
        & (end_code[1:] == end_code[:-1])
        & (
            (np.abs(t_change[1:] - t_change[:-1]) <= near)
            | (np.isnan(t_change[1:]) & np.isnan(t_change[:-1]))
        )
    )
    head = quiet & ~np.r_[False, same]
    run = np.cumsum(head) - 1
    idx = np.flatnonzero(quiet)
    heads = np.flatnonzero(head)
    run_end = np.zeros(len(heads))
    np.maximum.at(run_end, run[idx], p_end[idx])
    size = run_end - p_start[heads]
    big = size >= min_bytes
    if big.sum() > max_bands:  # only the largest quiet runs are folded; the rest stay active
        big &= size >= np.sort(size[big])[-max_bands]
        big[np.flatnonzero(big)[max_bands:]] = False
    band_start, band_end = p_start[heads][big], run_end[big]
    folded = np.zeros(len(p_start), dtype=bool)
    folded[idx] = big[run[idx]]
    keep = touched & ~folded & ((changes >= 1) | marked)
    active_start = np.concatenate([p_start[keep], mark_start])
    active_end = np.concatenate([p_end[keep], mark_end])
    busy = np.ones(len(active_start), dtype=bool)
    order = np.argsort(active_start, kind="stable")
    return Focus(
        active_start[order],
        active_end[order],
        busy[order],
        band_start,
        band_end,
        end_code[heads][big].astype(np.int64),
        t_change[heads][big],
    )
