"""The ownership timeline as a Chrome JSON trace (the trace-event format Perfetto opens).

ui.perfetto.dev and chrome://tracing read a JSON object ``{"traceEvents": [...]}`` whose events
have a phase ``ph``, a timestamp ``ts`` in microseconds, a process ``pid`` and a thread
``tid``.  The trace written here holds:

* one process per owner (``s2trace owner hyp`` ...), with a **counter** (``"C"``) of the bytes
  that owner holds among the pages the trace touches, and one **thread per page range** whose
  **complete slices** (``"X"``, ``ts`` + ``dur``) are the intervals during which that owner
  held the range, named by state (``host, shared with hyp`` ...);
* one process ``s2trace checks`` with **instant events** (``"i"``, thread scope) for
  violations, access faults and lost-events markers;
* **metadata** (``"M"``) naming and ordering the processes and threads.

Page ranges are the elementary segments of the timeline: the union of every interval's
boundaries cuts the address space so that each track is one fixed range and its slices never
overlap (an interval spanning several segments is a slice on each).  Times stay the trace's
own clock (seconds since boot for ftrace, as in Android system traces) converted to
microseconds, so the tracks line up with other timelines of the same boot.  ``-inf`` starts
and ``+inf`` ends are clipped to the exported window.

Process ids start at :data:`PERFETTO_PID_BASE`, above Linux's largest ``pid_max`` (2^22), so
they cannot collide with real processes of a trace they are shown beside.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from s2trace.intervals import distinct, sweep
from s2trace.outputs import open_output
from s2trace.plots import state_labels

__all__ = ["PERFETTO_PID_BASE", "perfetto_trace", "write_perfetto"]

PERFETTO_PID_BASE = 1 << 23
_CHECKS_PID = PERFETTO_PID_BASE
_OWNER_ORDER = ("host", "hyp", "guest", "ffa")
_CHECK_THREADS = {"violation": 1, "access fault": 2, "lost events": 3}
_FIRST_TRACK_TID = 16  # page-range threads: 16, 17, ... (below: the checks' threads)
_CHECK_THREAD_NAMES = {
    "violation": "violations",
    "access fault": "access faults",
    "lost events": "lost events",
}


def _us(seconds: np.ndarray) -> np.ndarray:
    """Seconds -> microseconds, rounded to the nanosecond (JSON stays short and exact)."""
    return np.round(np.asarray(seconds, dtype=np.float64) * 1e6, 3)


def _str(col: pd.Series) -> list[Any]:
    """A column as plain Python values, <NA> as None (JSON null)."""
    values = col.astype("object").to_numpy(dtype=object)
    return [None if v is None or v is pd.NA or v != v else v for v in values.tolist()]


def _records(columns: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Column lists -> one dict per row (plain Python values, ready for ``json``)."""
    keys = list(columns)
    return [dict(zip(keys, row, strict=True)) for row in zip(*columns.values(), strict=True)]


def _size_text(n: int) -> str:
    for shift, unit in ((30, "GiB"), (20, "MiB"), (10, "KiB")):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n:#x} bytes"


def _window(
    intervals: pd.DataFrame, extra: list[np.ndarray], t_from: float | None, t_to: float | None
) -> tuple[float, float]:
    times = np.concatenate(
        [
            intervals["t_start"].to_numpy(dtype=np.float64),
            intervals["t_end"].to_numpy(dtype=np.float64),
            *extra,
        ]
    )
    finite = times[np.isfinite(times)]
    lo = t_from if t_from is not None else (float(finite.min()) if len(finite) else 0.0)
    if t_to is not None:
        hi = t_to
    else:  # 1% past the last change, so the current states show as slices, not points
        last = float(finite.max()) if len(finite) else lo
        hi = last + max((last - lo) * 0.01, 1e-6)
    if hi < lo:
        raise ValueError(f"empty time window: from {lo} to {hi}")
    return lo, max(hi, lo + 1e-6)  # a window of at least one microsecond


def _owners(intervals: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """(owner code per row, owner names): host, hyp, guest, ffa first, then the others."""
    names = np.asarray([str(o) for o in _str(intervals["owner"])], dtype=object)
    present = set(names.tolist())
    order = [o for o in _OWNER_ORDER if o in present] + sorted(present - set(_OWNER_ORDER))
    return pd.Categorical(names, categories=order).codes.astype(np.int64), order


def _meta(pid: int, tid: int | None, kind: str, value: Any) -> dict[str, Any]:
    """A metadata event: ``process_name``/``thread_name`` (args.name) or
    ``process_sort_index``/``thread_sort_index`` (args.sort_index)."""
    args = {"name": value} if kind.endswith("_name") else {"sort_index": value}
    return {"name": kind, "ph": "M", "pid": pid, "tid": 0 if tid is None else tid, "args": args}


def _slices(
    iv: pd.DataFrame, owner_code: np.ndarray, lo: float, hi: float
) -> tuple[list[dict[str, Any]], list[tuple[int, int, str, int]]]:
    """Complete events, one per (interval, elementary segment), and the threads they use as
    (pid, tid, name, sort index)."""

    start = iv["addr_start"].to_numpy(dtype=np.uint64)
    end = start + iv["size"].to_numpy(dtype=np.uint64)
    bounds = distinct(np.concatenate([start, end]))
    first = np.searchsorted(bounds, start)
    count = np.searchsorted(bounds, end) - first
    row = np.repeat(np.arange(len(iv)), count)
    offset = np.arange(len(row)) - np.repeat(np.cumsum(count) - count, count)
    seg = first[row] + offset
    pid = PERFETTO_PID_BASE + 1 + owner_code[row]
    # thread ids unique across the whole trace (Perfetto keys threads by tid, as Linux does)
    key = owner_code[row] * len(bounds) + seg
    track, inverse = np.unique(key, return_inverse=True)
    tid = _FIRST_TRACK_TID + inverse
    t0 = np.maximum(iv["t_start"].to_numpy(dtype=np.float64), lo)
    t1 = np.minimum(iv["t_end"].to_numpy(dtype=np.float64), hi)
    ts = _us(t0)
    dur = np.maximum(_us(t1) - ts, 0.0)
    codes, labels, _ = state_labels(iv)
    label = np.asarray(labels, dtype=object)[codes] if len(labels) else np.array([], object)
    cause = iv["cause"].astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)
    args = _records(
        {
            "owner": _str(iv["owner"]),
            "host_state": _str(iv["host_state"]),
            "peer": _str(iv["peer"]),
            "peer_state": _str(iv["peer_state"]),
            "range": [
                f"{int(a):#x}+{_size_text(int(b - a))}" for a, b in zip(start, end, strict=True)
            ],
            "cause_event": [None if np.isnan(c) else int(c) for c in cause],
            "incomplete": iv["incomplete"].fillna(False).astype(bool).tolist(),
        }
    )
    events = [
        {
            "name": label[r],
            "cat": "s2trace.ownership",
            "ph": "X",
            "ts": float(ts[r]),
            "dur": float(dur[r]),
            "pid": int(p),
            "tid": int(t),
            "args": args[r],
        }
        for r, p, t in zip(row.tolist(), pid.tolist(), tid.tolist(), strict=True)
    ]
    threads = [
        (
            PERFETTO_PID_BASE + 1 + k // len(bounds),
            _FIRST_TRACK_TID + i,
            f"{int(bounds[k % len(bounds)]):#x} "
            f"+{_size_text(int(bounds[k % len(bounds) + 1] - bounds[k % len(bounds)]))}",
            k % len(bounds),
        )
        for i, k in enumerate(track.tolist())
    ]
    return events, threads


def _counters(
    iv: pd.DataFrame, owner_code: np.ndarray, owners: list[str], lo: float, hi: float
) -> list[dict[str, Any]]:
    """Bytes per owner over time: a sweep of +size at interval starts and -size at ends
    inside the window; one counter event per owner where its value changes (and at ``lo``)."""
    size = iv["size"].to_numpy(dtype=np.float64)
    t_start = np.maximum(iv["t_start"].to_numpy(dtype=np.float64), lo)
    t_end = iv["t_end"].to_numpy(dtype=np.float64)
    t_end = np.where(t_end < hi, t_end, np.inf)  # an end at or after the window never comes
    times, level = sweep(t_start, t_end, owner_code, size, len(owners), also=(lo,))
    changed = np.vstack([np.ones((1, len(owners)), bool), level[1:] != level[:-1]])
    ti, oi = np.nonzero(changed)
    ts = _us(times)
    return [
        {
            "name": owners[o],
            "cat": "s2trace.ownership",
            "ph": "C",
            "ts": float(ts[t]),
            "pid": PERFETTO_PID_BASE + 1 + o,
            "tid": 0,
            "args": {"bytes": int(level[t, o])},
        }
        for t, o in zip(ti.tolist(), oi.tolist(), strict=True)
    ]


def _instants(frame: pd.DataFrame | None, kind: str, lo: float, hi: float) -> list[dict]:
    if frame is None or not len(frame):
        return []
    ts_s = frame["ts"].to_numpy(dtype=np.float64)
    sub = frame[(ts_s >= lo) & (ts_s <= hi)]
    ts = _us(sub["ts"].to_numpy(dtype=np.float64))
    if kind == "violation":
        names = [f"violation: {c}" for c in _str(sub["check"])]
        extra = {"check": _str(sub["check"]), "detail": _str(sub["detail"])}
    else:
        names = [kind] * len(sub)
        extra = {}
    args = _records(
        {
            "line": sub["line"].to_numpy(dtype=np.int64).tolist(),
            "event_index": sub["event_index"].to_numpy(dtype=np.int64).tolist(),
            "op": _str(sub["op"]),
            "initiator": _str(sub["initiator"]),
            "completer": _str(sub["completer"]),
            "addr": [f"{int(a):#x}" for a in sub["addr"].to_numpy(dtype=np.uint64)],
            "size": sub["size"].to_numpy(dtype=np.int64).tolist(),
            **extra,
        }
    )
    return [
        {
            "name": n,
            "cat": "s2trace.checks",
            "ph": "i",
            "s": "t",
            "ts": float(t),
            "pid": _CHECKS_PID,
            "tid": _CHECK_THREADS[kind],
            "args": a,
        }
        for n, t, a in zip(names, ts.tolist(), args, strict=True)
    ]


def perfetto_trace(
    intervals: pd.DataFrame,
    violations: pd.DataFrame | None = None,
    transitions: pd.DataFrame | None = None,
    *,
    t_from: float | None = None,
    t_to: float | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The timeline (INTERVALS, VIOLATIONS and, for access faults and lost events,
    TRANSITIONS) as a JSON-ready Chrome trace-event object; see the module docstring.

    ``t_from``/``t_to`` (seconds) limit the export; by default it spans every finite time of
    the inputs, plus 1% after the last one (the CLI passes the span of the trace's events).
    ``meta`` goes to ``otherData`` (strings and numbers only).
    """
    ops = (
        transitions["op"].astype("object").to_numpy()
        if transitions is not None
        else np.array([], dtype=object)
    )
    faults = transitions[ops == "access_fault"] if transitions is not None else None
    lost = transitions[ops == "lost"] if transitions is not None else None
    extra = [
        f["ts"].to_numpy(dtype=np.float64) for f in (violations, faults, lost) if f is not None
    ]
    lo, hi = _window(intervals, extra, t_from, t_to)
    t_start = intervals["t_start"].to_numpy(dtype=np.float64)
    t_end = intervals["t_end"].to_numpy(dtype=np.float64)
    iv = intervals[(t_start <= hi) & (t_end > lo)]
    owner_code, owners = _owners(iv)
    slices, threads = _slices(iv, owner_code, lo, hi)
    events: list[dict[str, Any]] = [
        _meta(_CHECKS_PID, None, "process_name", "s2trace checks"),
        _meta(_CHECKS_PID, None, "process_sort_index", 0),
    ]
    for name, tid in _CHECK_THREADS.items():
        events.append(_meta(_CHECKS_PID, tid, "thread_name", _CHECK_THREAD_NAMES[name]))
        events.append(_meta(_CHECKS_PID, tid, "thread_sort_index", tid))
    for i, owner in enumerate(owners):
        events.append(
            _meta(PERFETTO_PID_BASE + 1 + i, None, "process_name", f"s2trace owner {owner}")
        )
        events.append(_meta(PERFETTO_PID_BASE + 1 + i, None, "process_sort_index", i + 1))
    for pid, tid, name, order in threads:
        events.append(_meta(pid, tid, "thread_name", name))
        events.append(_meta(pid, tid, "thread_sort_index", order))
    events += _counters(iv, owner_code, owners, lo, hi)
    events += slices
    events += _instants(violations, "violation", lo, hi)
    events += _instants(faults, "access fault", lo, hi)
    events += _instants(lost, "lost events", lo, hi)
    other: dict[str, object] = {"generator": "s2trace", "window_s": [lo, hi]}
    other.update({k: v for k, v in (meta or {}).items() if isinstance(v, str | int | float)})
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": other}


def write_perfetto(path: str | Path, trace: dict[str, Any]) -> Path:
    """Write ``trace`` (from :func:`perfetto_trace`) as compact JSON; returns the path."""
    out = Path(path)
    with open_output(out, "w", "Perfetto trace", encoding="utf-8") as fh:
        json.dump(trace, fh, separators=(",", ":"), allow_nan=False)
        fh.write("\n")
    return out
