"""Rasterisation of rectangles: the area of every cell covered by each code, through a 2-D
difference array (``np.bincount`` at four corners, two cumulative sums) -- no loop per
rectangle or per cell."""

from __future__ import annotations

import numpy as np

__all__ = ["rasterize"]


def _pieces(a0: np.ndarray, a1: np.ndarray, n: int) -> list[tuple[np.ndarray, ...]]:
    """Split each span ``[a0, a1)`` (cell units) into first, middle and last cell runs:
    (first cell, end cell, weight per cell, valid) for each of the three."""
    f0 = np.floor(a0).astype(np.int64)
    f1 = np.floor(a1).astype(np.int64)
    same = f0 == f1
    first = (
        f0,
        f0 + 1,
        np.where(same, a1 - a0, f0 + 1 - a0),
        np.ones(len(a0), dtype=bool),
    )
    middle = (f0 + 1, f1, np.ones(len(a0)), f1 > f0 + 1)
    last = (f1, f1 + 1, a1 - f1, ~same & (a1 > f1))
    return [
        (np.clip(i0, 0, n), np.clip(i1, 0, n), w, ok & (w > 0))
        for i0, i1, w, ok in (first, middle, last)
    ]


def rasterize(
    y0: np.ndarray,
    y1: np.ndarray,
    x0: np.ndarray,
    x1: np.ndarray,
    code: np.ndarray,
    k: int,
    shape: tuple[int, int],
    chunk: int = 200_000,
) -> np.ndarray:
    """Area of every cell covered by each of ``k`` codes: array ``(k, rows, cols)``.

    Each rectangle ``[y0, y1) × [x0, x1)`` (fractional cell units) is cut into at most 3 × 3
    runs of cells with a uniform covered fraction; each run adds its fraction to the four
    corners of a 2-D difference array (``np.bincount``), and two cumulative sums give the
    covered area of every cell.  Memory: one float64 per code and cell.
    """
    rows, cols = shape
    stride_k = (rows + 1) * (cols + 1)
    diff = np.zeros(k * stride_k)
    for lo in range(0, len(y0), chunk):
        sl = slice(lo, lo + chunk)
        ys = _pieces(y0[sl], y1[sl], rows)
        xs = _pieces(x0[sl], x1[sl], cols)
        base = code[sl] * stride_k
        for r0, r1, wy, oky in ys:
            for c0, c1, wx, okx in xs:
                ok = oky & okx
                if not ok.any():
                    continue
                w = (wy * wx)[ok]
                b, a0, a1, b0, b1 = base[ok], r0[ok], r1[ok], c0[ok], c1[ok]
                idx = np.concatenate(
                    [
                        b + a0 * (cols + 1) + b0,
                        b + a1 * (cols + 1) + b0,
                        b + a0 * (cols + 1) + b1,
                        b + a1 * (cols + 1) + b1,
                    ]
                )
                diff += np.bincount(
                    idx, weights=np.concatenate([w, -w, -w, w]), minlength=len(diff)
                )
    area = diff.reshape(k, rows + 1, cols + 1).cumsum(axis=1).cumsum(axis=2)
    return area[:, :rows, :cols]
