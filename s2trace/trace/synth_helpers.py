"""Build TRANSITIONS frames by hand (tests, benchmarks, notebooks).

:func:`make_transitions` takes a few dicts and fills every other column with a sensible
default; :func:`transitions_frame` does the same from whole numpy arrays (no per-row Python),
for benchmarks and generated workloads.  Both return exactly the TRANSITIONS columns and dtypes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from s2trace.columns import TRANSITIONS

__all__ = ["DEFAULT_PARTIES", "make_transitions", "transitions_frame"]

# (initiator, completer) when a row does not say
DEFAULT_PARTIES: dict[str, tuple[str | None, str | None]] = {
    "share": ("host", "hyp"),
    "unshare": ("host", "hyp"),
    "donate": ("host", "hyp"),
    "reclaim": ("hyp", "host"),
    "access_fault": ("host", None),
    "lost": (None, None),
}


def make_transitions(rows: list[dict[str, Any]], *, page_size: int = 4096) -> pd.DataFrame:
    """A TRANSITIONS frame from dicts; only ``op`` and ``addr`` (not for ``lost``) are needed.

    Defaults: ``ts`` = row number, ``line`` = row number + 1, ``event_index`` = row number,
    initiator/completer from :data:`DEFAULT_PARTIES`, ``size`` = one page (0 for ``lost``:
    every page), ``vm``/``gfn`` <NA>, ``counted`` False, ``recipe`` ``"synthetic"``.
    """
    n = len(rows)
    ops = [r["op"] for r in rows]
    col: dict[str, Any] = {}
    col["ts"] = [r.get("ts", float(i)) for i, r in enumerate(rows)]
    col["line"] = [r.get("line", i + 1) for i, r in enumerate(rows)]
    col["event_index"] = [r.get("event_index", i) for i, r in enumerate(rows)]
    col["op"] = ops
    col["initiator"] = [
        r.get("initiator", DEFAULT_PARTIES.get(o, (None, None))[0])
        for r, o in zip(rows, ops, strict=True)
    ]
    col["completer"] = [
        r.get("completer", DEFAULT_PARTIES.get(o, (None, None))[1])
        for r, o in zip(rows, ops, strict=True)
    ]
    col["addr"] = [r.get("addr", 0) for r in rows]
    col["size"] = [
        r.get("size", 0 if o == "lost" else page_size) for r, o in zip(rows, ops, strict=True)
    ]
    col["vm"] = [r.get("vm") for r in rows]
    col["gfn"] = [r.get("gfn") for r in rows]
    col["counted"] = [r.get("counted", False) for r in rows]
    col["recipe"] = [r.get("recipe", "synthetic") for r in rows]
    col["t_earliest"] = [r.get("t_earliest", ts) for r, ts in zip(rows, col["ts"], strict=True)]
    col["basis"] = [r.get("basis", "trace") for r in rows]
    unknown = {k for r in rows for k in r} - set(TRANSITIONS.names)
    if unknown:
        raise ValueError(f"make_transitions: unknown keys {sorted(unknown)}")
    return _typed(col, n)


def transitions_frame(
    *,
    op: np.ndarray | list[str],
    addr: np.ndarray,
    size: np.ndarray | int = 4096,
    ts: np.ndarray | None = None,
    initiator: np.ndarray | list[str | None] | None = None,
    completer: np.ndarray | list[str | None] | None = None,
    counted: np.ndarray | bool = False,
    event_index: np.ndarray | None = None,
    line: np.ndarray | None = None,
    recipe: str = "synthetic",
) -> pd.DataFrame:
    """A TRANSITIONS frame from whole arrays; missing columns get the same defaults."""
    op_cat = pd.Categorical(np.asarray(op, dtype=object))
    n = len(op_cat)
    idx = np.arange(n, dtype=np.int64)

    def parties(given: Any, which: int) -> pd.Categorical:
        if given is not None:
            return pd.Categorical(np.asarray(given, dtype=object))
        cats = list(op_cat.categories)
        default = [DEFAULT_PARTIES.get(c, (None, None))[which] for c in cats]
        return pd.Categorical(np.asarray(default, dtype=object)[op_cat.codes])

    col: dict[str, Any] = {
        "ts": idx.astype(np.float64) if ts is None else np.asarray(ts, dtype=np.float64),
        "line": idx + 1 if line is None else np.asarray(line, dtype=np.int64),
        "event_index": idx if event_index is None else np.asarray(event_index, dtype=np.int64),
        "op": op_cat,
        "initiator": parties(initiator, 0),
        "completer": parties(completer, 1),
        "addr": np.asarray(addr, dtype=np.uint64),
        "size": np.broadcast_to(np.asarray(size, dtype=np.uint64), (n,)).copy(),
        "vm": pd.array(np.zeros(n, dtype=np.int64), dtype="Int64").copy(),
        "gfn": pd.array(np.zeros(n, dtype=np.uint64), dtype="UInt64").copy(),
        "counted": np.broadcast_to(np.asarray(counted, dtype=bool), (n,)).copy(),
        "recipe": pd.Categorical.from_codes(
            np.zeros(n, dtype=np.int8), dtype=pd.CategoricalDtype([recipe])
        ),
        "basis": pd.Categorical.from_codes(
            np.zeros(n, dtype=np.int8), dtype=pd.CategoricalDtype(["trace"])
        ),
    }
    col["t_earliest"] = col["ts"]
    col["vm"][:] = pd.NA
    col["gfn"][:] = pd.NA
    return _typed(col, n)


def _typed(col: dict[str, Any], n: int) -> pd.DataFrame:
    frame = pd.DataFrame({name: pd.Series(col[name], index=range(n)) for name in TRANSITIONS.names})
    return frame.astype(TRANSITIONS.dtypes())
