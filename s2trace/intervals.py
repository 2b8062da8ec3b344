"""Interval lookups shared by maps, timelines and guests: which range holds each point.

Ranges are half-open ``[start, end)``, sorted by start and not overlapping; the lookup is one
``searchsorted`` over all points (no loop per point or per range).
"""

from __future__ import annotations

import numpy as np

__all__ = ["covering"]


def covering(starts: np.ndarray, ends: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Index (int64) of the range ``[starts[i], ends[i])`` holding each point, -1 where none."""
    points = np.asarray(points)
    if not starts.size:
        return np.full(points.shape, -1, np.int64)
    i = np.searchsorted(starts, points, side="right").astype(np.int64) - 1
    hit = (i >= 0) & (points < ends[np.maximum(i, 0)])
    return np.where(hit, i, -1)
