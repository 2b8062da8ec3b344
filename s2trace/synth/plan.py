"""A generated workload as whole arrays: events to write, final ownership, planted faults.

A :class:`Part` is what one pattern (boot, VM lifecycle, sharing churn, fault injection)
produces: one row per trace event in numpy arrays (no Python object per event), the
ownership every range it touched has at the end (by construction, not by replay), and the
violations it planted on purpose.  :func:`merge` concatenates parts and puts the events in
time order; ties keep generation order, so a page's own events never swap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "ABORT",
    "COMPONENTS",
    "EVENT_KINDS",
    "FINAL_STATES",
    "OPS",
    "TRANSITION",
    "Part",
    "Plan",
    "merge",
]

#: Event kinds: the s2trace tracepoint (docs/trace-format.md) and ACK's host_mem_abort.
EVENT_KINDS = ("pkvm_mem_transition", "host_mem_abort")
TRANSITION, ABORT = 0, 1
#: The tracepoint's ``op`` and component names (docs/trace-format.md).
OPS = ("share", "unshare", "donate", "reclaim")
COMPONENTS = ("host", "hyp", "guest", "ffa")
#: Final page states a pattern can leave (replay state names, s2trace.pkvm.rules).
FINAL_STATES = ("host_owned", "shared_hyp", "shared_ffa", "hyp_owned")

_COLUMNS = {
    "t_us": np.int64,  # timestamp, microseconds
    "kind": np.int8,  # index into EVENT_KINDS
    "op": np.int8,  # index into OPS (transitions)
    "initiator": np.int8,  # index into COMPONENTS
    "completer": np.int8,
    "addr": np.uint64,  # physical address (page aligned)
    "pages": np.uint64,  # nr_pages
    "vm": np.uint32,  # pKVM VM handle (0: none)
    "task": np.int16,  # index into Part.tasks / Plan.tasks
    "cpu": np.int16,
}


@dataclass
class Part:
    """Events of one pattern (equal-length arrays, see ``_COLUMNS``) and what they leave.

    ``final``: (addr, pages, state) ranges, ``state`` in :data:`FINAL_STATES`, for every
    range the events touch (host_owned included).  ``planted``: one row per violation the
    part contains on purpose -- ``row`` (index into these arrays), ``check`` (the VIOLATIONS
    check the replay must report), ``what`` (a sentence).  ``tasks``: (comm, pid) pairs.
    """

    cols: dict[str, Any]  # arrays, or scalars broadcast to arrays by __post_init__
    tasks: list[tuple[str, int]]
    final: list[tuple[int, int, str]] = field(default_factory=list)
    planted: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.cols["t_us"])
        for name, dtype in _COLUMNS.items():
            value = self.cols.get(name, 0)
            self.cols[name] = np.broadcast_to(np.asarray(value, dtype=dtype), (n,)).copy()
        extra = set(self.cols) - set(_COLUMNS)
        if extra:
            raise ValueError(f"Part: unknown columns {sorted(extra)}")

    def __len__(self) -> int:
        return len(self.cols["t_us"])


@dataclass
class Plan:
    """All parts merged and sorted by time: what the writers turn into files."""

    cols: dict[str, np.ndarray]
    tasks: list[tuple[str, int]]
    final: pd.DataFrame  # addr, pages, state (sorted, non-overlapping)
    planted: pd.DataFrame  # row (in time order), t_us, addr, op, check, what

    def __len__(self) -> int:
        return len(self.cols["t_us"])


def merge(parts: list[Part]) -> Plan:
    """Concatenate ``parts``, renumber tasks, sort events by time (stable)."""
    tasks: list[tuple[str, int]] = []
    cols: dict[str, list[np.ndarray]] = {name: [] for name in _COLUMNS}
    planted = []
    offset = 0
    for part in parts:
        remap = []
        for t in part.tasks:
            if t not in tasks:
                tasks.append(t)
            remap.append(tasks.index(t))
        for name in _COLUMNS:
            value = np.asarray(part.cols[name])
            cols[name].append(np.asarray(remap, np.int16)[value] if name == "task" else value)
        for p in part.planted:
            planted.append({**p, "row": int(p["row"]) + offset})
        offset += len(part)
    merged = {
        name: np.concatenate(v) if v else np.zeros(0, _COLUMNS[name]) for name, v in cols.items()
    }
    order = np.argsort(merged["t_us"], kind="stable")
    merged = {name: v[order] for name, v in merged.items()}
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    final = _final(parts)
    plant = pd.DataFrame(planted, columns=["row", "check", "what"])
    plant["row"] = rank[plant["row"].to_numpy(dtype=np.int64)] if len(plant) else []
    plant = plant.sort_values("row", ignore_index=True)
    rows = plant["row"].to_numpy(dtype=np.int64)
    plant["t_us"] = merged["t_us"][rows]
    plant["addr"] = merged["addr"][rows]
    plant["op"] = [
        "access_fault" if merged["kind"][r] == ABORT else OPS[merged["op"][r]] for r in rows
    ]
    return Plan(merged, tasks, final, plant[["row", "t_us", "addr", "op", "check", "what"]])


def _final(parts: list[Part]) -> pd.DataFrame:
    rows = [r for part in parts for r in part.final]
    frame = pd.DataFrame(rows, columns=["addr", "pages", "state"])
    frame = frame.astype({"addr": np.uint64, "pages": np.uint64})
    frame = frame.sort_values("addr", ignore_index=True)
    start = frame["addr"].to_numpy(dtype=np.uint64)
    end = start + frame["pages"].to_numpy(dtype=np.uint64) * np.uint64(4096)
    clash = np.flatnonzero(start[1:] < end[:-1])
    if len(clash):
        raise ValueError(f"synth: two patterns claim the page at {int(start[clash[0] + 1]):#x}")
    return frame
