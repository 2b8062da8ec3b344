"""The transition rows of one recipe, as positional arrays, before they become TRANSITIONS.

The engine (:mod:`s2trace.trace.recipes.engine`) builds one :class:`RowSet` per recipe; the
timing passes (:mod:`.runs`, :mod:`.memcache`, :mod:`.pin`) narrow the window of each row:
``early`` is the event before which the transition cannot have happened (its time becomes
``t_earliest``), ``done`` the event by which it certainly has (its time becomes ``ts``).
``basis`` is -1 where the recipe's own basis holds, else an index into the texts the passes
add (:class:`BasisTexts`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

__all__ = ["BasisTexts", "RowSet"]


@dataclass
class RowSet:
    """Transition rows of one recipe (positional arrays, one entry per row)."""

    anchor: np.ndarray  # the event the recipe reads
    done: np.ndarray  # the event by which the transition has certainly happened
    early: np.ndarray  # the event before which it cannot have happened
    key: np.ndarray  # the task (pid; -1 - cpu for hypervisor traces)
    start: np.ndarray
    stop: np.ndarray
    op: np.ndarray  # index in OPS
    initiator: np.ndarray
    completer: np.ndarray
    vm: np.ndarray
    vm_ok: np.ndarray
    gfn: np.ndarray
    gfn_ok: np.ndarray
    counted: np.ndarray
    pair: np.ndarray  # the paired entry/return event (-1: none)
    basis: np.ndarray  # -1: the recipe's basis; else an index into BasisTexts

    def take(self, sel: np.ndarray) -> RowSet:
        return RowSet(*(getattr(self, f.name)[sel] for f in fields(self)))

    @staticmethod
    def concat(parts: list[RowSet]) -> RowSet:
        if len(parts) == 1:
            return parts[0]
        names = [f.name for f in fields(RowSet)]
        return RowSet(*(np.concatenate([getattr(p, n) for p in parts]) for n in names))

    @staticmethod
    def empty() -> RowSet:
        i64, u64, i8, b = (np.zeros(0, t) for t in (np.int64, np.uint64, np.int8, bool))
        return RowSet(
            i64, i64, i64, i64, u64, u64, i8, i8, i8, i64, b, u64, b, b, i64,
            np.zeros(0, np.int32),
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.anchor)


@dataclass
class BasisTexts:
    """Basis texts the timing passes give single rows (a row's ``basis`` indexes them)."""

    texts: list[str] = field(default_factory=list)

    def code(self, text: str) -> int:
        if text not in self.texts:
            self.texts.append(text)
        return self.texts.index(text)
