"""Write a :class:`~s2trace.synth.plan.Plan` as host ftrace text, vectorised.

Each line is the kernel's layout (``trace_print_context`` and ``lat_print_generic`` in
kernel/trace/trace_output.c; docs/kernel-facts.md §KF-4.4, docs/trace-format.md): ``%16s-%-7d``
comm and pid, ``[%03d]`` CPU, five latency flags, ``%5lu.%06lu`` seconds, then
``EVENT: FIELDS``.  Transitions use s2trace's tracepoint
(``pkvm_mem_transition: op=.. initiator=.. completer=.. addr=0x.. nr_pages=N vm=N gfn=0x..``,
its ``TP_printk`` in docs/trace-format.md); host aborts use ACK's ``host_mem_abort`` print
format ``esr=0x%llx addr=0x%llx`` (§KF-4.2).

How it stays vectorised: every line is assembled as a row of a uint8 matrix, one fixed-width
block per column, where bytes that a variable-width number or name does not use are 0;
ravelling the matrix and dropping the zeros gives the text.  Numbers become digits with
``(value // base**k) % base`` over whole arrays.  Lines are written in chunks to bound memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np

from s2trace.synth.patterns import ESR_DABT_L3_WRITE
from s2trace.synth.plan import ABORT, COMPONENTS, EVENT_KINDS, OPS, TRANSITION, Plan

__all__ = ["HEADER_LINES", "header", "write_ftrace"]

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_CHUNK = 200_000


def header(entries: int, cpus: int) -> str:
    """The ``trace`` file header of a kernel with the irq-info option on."""
    return (
        "# tracer: nop\n#\n"
        f"# entries-in-buffer/entries-written: {entries}/{entries}   #P:{cpus}\n#\n"
        "#                                _-----=> irqs-off/BH-disabled\n"
        "#                               / _----=> need-resched\n"
        "#                              | / _---=> hardirq/softirq\n"
        "#                              || / _--=> preempt-depth\n"
        "#                              ||| / _-=> migrate-disable\n"
        "#                              |||| /     delay\n"
        "#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION\n"
        "#              | |         |   |||||     |         |\n"
    )


HEADER_LINES = header(0, 1).count("\n")


def _text(values: list[str]) -> np.ndarray:
    """Strings as rows of a zero-padded uint8 matrix."""
    width = max(len(v) for v in values)
    return (
        np.array([v.encode().ljust(width, b"\0") for v in values], dtype=f"S{width}")
        .view(np.uint8)
        .reshape(len(values), width)
    )


def _const(text: str, n: int) -> np.ndarray:
    return np.broadcast_to(np.frombuffer(text.encode(), np.uint8), (n, len(text)))


def _digits(
    values: np.ndarray, base: int, width: int, pad: int = 0, keep: int = 1, field: int = 0
) -> np.ndarray:
    """Right-aligned digits of ``values`` in ``width`` columns.  Leading zeros (all but the
    last ``keep`` columns) become ``pad`` within the last ``field`` columns (printf's
    ``%5lu``: ``pad`` 32, a space) and are dropped (0) before them."""
    v = values.astype(np.uint64)[:, None]
    powers = np.uint64(base) ** np.arange(width - 1, -1, -1, dtype=np.uint64)
    d = (v // powers) % np.uint64(base)
    out = _HEX[d.astype(np.intp)]
    significant = np.cumsum(d != 0, axis=1) > 0
    significant[:, width - keep :] = True
    fill = np.where(np.arange(width) >= width - field, pad, 0).astype(np.uint8)
    return np.where(significant, out, fill[None, :]).astype(np.uint8)


def _width(values: np.ndarray, base: int, least: int = 1) -> int:
    top = int(values.max(initial=0))
    n = 1
    while base**n <= top:
        n += 1
    return max(n, least)


def _lines(plan: Plan, lo: int, hi: int) -> bytes:
    c = {k: v[lo:hi] for k, v in plan.cols.items()}
    n = hi - lo
    tasks = _text([f"{comm:>16}-{pid:<7}" for comm, pid in plan.tasks])[c["task"]]
    secs = c["t_us"] // 1_000_000
    usec = c["t_us"] % 1_000_000
    prefix = [
        tasks,
        _const(" [", n),
        _digits(c["cpu"], 10, 3, keep=3),
        _const("] d.... ", n),
        _digits(secs, 10, _width(secs, 10, 5), pad=32, field=5),
        _const(".", n),
        _digits(usec, 10, 6, keep=6),
        _const(": ", n),
    ]
    is_tr = c["kind"] == TRANSITION
    parts = []
    for kind, sel in ((TRANSITION, is_tr), (ABORT, c["kind"] == ABORT)):
        idx = np.flatnonzero(sel)
        if not len(idx):
            continue
        m = len(idx)
        addr = c["addr"][idx]
        if kind == TRANSITION:
            cols = [
                _const(f"{EVENT_KINDS[TRANSITION]}: op=", m),
                _text(list(OPS))[c["op"][idx]],
                _const(" initiator=", m),
                _text(list(COMPONENTS))[c["initiator"][idx]],
                _const(" completer=", m),
                _text(list(COMPONENTS))[c["completer"][idx]],
                _const(" addr=0x", m),
                _digits(addr, 16, 16),
                _const(" nr_pages=", m),
                _digits(c["pages"][idx], 10, _width(c["pages"][idx], 10)),
                _const(" vm=", m),
                _digits(c["vm"][idx], 10, 5),
                _const(" gfn=0x0\n", m),
            ]
        else:
            cols = [
                _const(f"{EVENT_KINDS[ABORT]}: esr=0x{ESR_DABT_L3_WRITE:x} addr=0x", m),
                _digits(addr, 16, 16),
                _const("\n", m),
            ]
        parts.append((idx, np.hstack(cols)))
    width = max(p[1].shape[1] for p in parts)
    fields = np.zeros((n, width), np.uint8)
    for idx, block in parts:
        fields[idx, : block.shape[1]] = block
    rows = np.hstack([*prefix, fields])
    flat = rows.ravel()
    return flat[flat != 0].tobytes()


def write_ftrace(plan: Plan, path: str | Path, *, cpus: int = 2) -> Path:
    """Write ``plan`` as an ftrace text file; event ``i`` is on line ``HEADER_LINES + i + 1``."""
    path = Path(path)
    with path.open("wb") as f:
        _write(f, plan, cpus)
    return path


def _write(f: BinaryIO, plan: Plan, cpus: int) -> None:
    f.write(header(len(plan), cpus).encode())
    for lo in range(0, len(plan), _CHUNK):
        f.write(_lines(plan, lo, min(len(plan), lo + _CHUNK)))
