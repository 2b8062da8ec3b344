"""Pieces of an ownership map (dicts of column arrays) and their delivery in IPA order.

The walk reads a table level by level, so its rows arrive level by level: every level's rows
are in IPA order, but a block at level 2 sorts between pages of level 3.  The full map is
all pieces concatenated (upper levels first) and stably sorted by ``ipa_start``.
:class:`IpaOrder` delivers the same rows in the same order piece by piece, so a map can be
written while it is walked: rows above the last level (few: at most one per upper-level
entry) are held, and merged into the stream of last-level pieces as those go by.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from pandas.api.types import union_categoricals

__all__ = ["IpaOrder", "Piece", "concat_pieces", "take_piece"]

#: One piece of a map: column name -> numpy array or pandas extension array.
Piece = dict[str, Any]


def concat_pieces(pieces: list[Piece], names: list[str]) -> Piece:
    """The pieces end to end, column by column (categoricals: union of the categories)."""
    if len(pieces) == 1:
        return dict(pieces[0])
    out: Piece = {}
    for name in names:
        parts = [p[name] for p in pieces]
        if hasattr(parts[0], "categories"):
            out[name] = union_categoricals(parts)
        elif isinstance(parts[0], np.ndarray):
            out[name] = np.concatenate(parts)
        else:
            out[name] = type(parts[0])._concat_same_type(parts)
    return out


def take_piece(piece: Piece, rows: np.ndarray) -> Piece:
    """The rows ``rows`` (positions) of a piece."""
    return {k: v[rows] if isinstance(v, np.ndarray) else v.take(rows) for k, v in piece.items()}


def _length(piece: Piece) -> int:
    return len(piece["ipa_start"])


class IpaOrder:
    """Hand pieces to ``sink`` in IPA order (the order of the sorted full map).

    ``add(level, piece)`` in walk order; ``finish()`` at the end.  Pieces of ``last_level``
    stream through; pieces of upper levels are held until the last level reaches their IPA.
    The last level's pieces must follow each other in IPA order, as the walk makes them
    (a level's tables are visited in the order of the entries that point to them, each
    once); anything else raises ``RuntimeError``, since rows already delivered cannot be
    moved.
    """

    def __init__(self, sink: Callable[[Piece], None], last_level: int, names: list[str]) -> None:
        self.sink, self.last_level, self.names = sink, last_level, names
        self._upper: list[Piece] = []
        self._held: Piece | None = None  # upper rows, sorted, not yet delivered
        self._held_ipa = np.empty(0, np.uint64)
        self._pos = 0
        self._last_ipa: int | None = None

    def add(self, level: int, piece: Piece) -> None:
        if _length(piece) == 0:
            return
        if level != self.last_level:
            self._upper.append(piece)
            return
        ipa = piece["ipa_start"]
        first, last = int(ipa[0]), int(ipa[-1])
        in_order = bool(np.all(ipa[1:] > ipa[:-1]))
        if not in_order or (self._last_ipa is not None and first <= self._last_ipa):
            raise RuntimeError(f"level {level} rows out of IPA order at {first:#x}")
        self._last_ipa = last
        self._sort_upper()
        before = int(np.searchsorted(self._held_ipa, first, side="left"))
        self._deliver_held(before)
        inside = int(np.searchsorted(self._held_ipa, last, side="right"))
        if inside > self._pos:
            assert self._held is not None
            held = take_piece(self._held, np.arange(self._pos, inside))
            self._pos = inside
            merged = concat_pieces([held, piece], self.names)
            order = np.argsort(merged["ipa_start"], kind="stable")
            piece = take_piece(merged, order)
        self.sink(piece)

    def finish(self) -> None:
        """Deliver what is still held."""
        self._sort_upper()
        self._deliver_held(len(self._held_ipa))

    def _sort_upper(self) -> None:
        """Fold the upper-level pieces received so far into the sorted held rows."""
        if not self._upper:
            return
        parts = [*self._rest(), *self._upper]
        self._upper = []
        merged = concat_pieces(parts, self.names)
        self._held = take_piece(merged, np.argsort(merged["ipa_start"], kind="stable"))
        self._held_ipa = self._held["ipa_start"]
        self._pos = 0

    def _rest(self) -> list[Piece]:
        if self._held is None or self._pos >= len(self._held_ipa):
            return []
        return [take_piece(self._held, np.arange(self._pos, len(self._held_ipa)))]

    def _deliver_held(self, upto: int) -> None:
        if self._held is not None and upto > self._pos:
            self.sink(take_piece(self._held, np.arange(self._pos, upto)))
            self._pos = upto
