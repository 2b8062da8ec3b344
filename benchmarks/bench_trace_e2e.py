"""A 10 M-line trace end to end: parse, recipes, replay; wall time, rates and peak RSS.

The trace is host ftrace text of s2trace's own tracepoint (docs/trace-format.md): for each of
``--pages`` pages in turn, a legal cycle of share / unshare / donate / reclaim between the host
and the hypervisor, repeated until ``--lines`` transitions; about 1 % more lines are other
events (kept, not transitions).  The analysis runs in a fresh process (``s2trace.trace.analyze``,
no cache) whose wall time, CPU time (user + system), minor page faults and peak resident set
(VmHWM) are reported, once as a library call leaves the allocator (glibc's defaults) and once
with the command line's start-up setting (:func:`s2trace.allocator.keep_freed_memory`);
``--path`` runs one of them only.
A trace of 256 MiB or more is read in bounded memory (``analyze(stream=None)``,
:mod:`s2trace.trace.stream`); ``--whole`` reads it whole (``stream=False``) to compare.
``--trace PATH`` analyses a trace written before (``--keep PATH`` keeps the one written).

    python benchmarks/bench_trace_e2e.py [--lines 10000000] [--pages 1000000] [--whole]
                                         [--keep PATH | --trace PATH] [--path library|cli]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HEADER = "# tracer: nop\n#\n#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION\n"
CYCLE = (
    ("share", "host", "hyp"),
    ("unshare", "host", "hyp"),
    ("donate", "host", "hyp"),
    ("reclaim", "hyp", "host"),
)


def write_trace(path: Path, lines: int, pages: int, seed: int = 1) -> None:
    """Write the synthetic trace in chunks (vectorised string building per chunk)."""
    rng = np.random.default_rng(seed)
    chunk = 1_000_000
    with open(path, "w") as fh:
        fh.write(HEADER)
        for lo in range(0, lines, chunk):
            n = min(chunk, lines - lo)
            i = np.arange(lo, lo + n)
            page = 0x40000000 + (i % pages) * 4096
            step = (i // pages) % 4
            ts = 10.0 + i * 1e-6
            other = rng.random(n) < 0.01
            ops = np.array([c[0] for c in CYCLE])[step]
            ini = np.array([c[1] for c in CYCLE])[step]
            com = np.array([c[2] for c in CYCLE])[step]
            out = []
            for k in range(n):
                out.append(
                    f"         kvmpoke-189     [001] d.... {ts[k]:12.6f}: "
                    f"pkvm_mem_transition: op={ops[k]} initiator={ini[k]} "
                    f"completer={com[k]} addr={page[k]:#x} nr_pages=1 vm=0 gfn=0x0\n"
                )
                if other[k]:  # an unrelated event: kept as an event, not a transition
                    out.append(
                        f"         kvmpoke-189     [001] d.... {ts[k]:12.6f}: "
                        f"kvm_timer_update_irq: VCPU: 0, IRQ 27, level 0\n"
                    )
            fh.write("".join(out))


CHILD = r"""
import importlib, re, resource, sys, threading, time
if sys.argv[3] == "cli":  # as the s2trace command starts
    from s2trace.allocator import keep_freed_memory
    keep_freed_memory()
from s2trace.jobs.analyze import analyze
mod = importlib.import_module("s2trace.jobs.analyze")
stage, peaks, done, walls = ["start"], {}, [], {}

def rss():
    return int(re.search(r"VmRSS:\s+(\d+)", open("/proc/self/status").read())[1]) // 1024

def sample():  # the resident set every 20 ms, the peak of each stage
    while not done:
        peaks[stage[0]] = max(peaks.get(stage[0], 0), rss())
        time.sleep(0.02)

def staged(name, f):
    def run(*a, **k):
        stage[0] = name
        t0 = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            stage[0] = "after " + name
            walls[name] = walls.get(name, 0.0) + time.perf_counter() - t0
    return run

for name in ("stream_trace", "transitions_of_table", "transition_store", "replay"):
    if hasattr(mod, name):
        setattr(mod, name, staged(name, getattr(mod, name)))
threading.Thread(target=sample, daemon=True).start()
t = time.perf_counter()
stream = None if sys.argv[2] == "auto" else False
r = analyze(sys.argv[1], kernel="6.12", use_cache=False, progress=False, stream=stream)
wall = time.perf_counter() - t  # (the trace states no kernel)
done.append(1)
ru = resource.getrusage(resource.RUSAGE_SELF)
hwm = int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read())[1]) // 1024
m = r.meta  # counts without loading the tables (a streamed analysis keeps them on disk)
ni = m["intervals"] if "intervals" in m else len(r.intervals)  # (meta before it counted them)
print(wall, m["events"], m["transitions"], ni, m["violations"], hwm,
      ru.ru_utime, ru.ru_stime, ru.ru_minflt)
print(";".join(f"{k}={v}" for k, v in peaks.items()))
print(";".join(f"{k}={v:.1f}" for k, v in walls.items()))
"""

#: The allocator of each path: what a library caller gets, what the s2trace command sets.
PATHS = {"library": "glibc defaults", "cli": "keep_freed_memory(), as the CLI"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lines", type=int, default=10_000_000)
    ap.add_argument("--pages", type=int, default=1_000_000)
    ap.add_argument("--whole", action="store_true", help="read the trace whole (stream=False)")
    ap.add_argument("--keep", type=Path, help="write the trace here and keep it")
    ap.add_argument("--trace", type=Path, help="analyse this trace (written before)")
    ap.add_argument("--path", choices=sorted(PATHS), help="run one allocator setting only")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.trace or args.keep or Path(tmp) / "trace.txt"
        if args.trace is None:
            t = time.perf_counter()
            write_trace(path, args.lines, args.pages)
            print(
                f"wrote {args.lines} lines ({path.stat().st_size >> 20} MiB) in "
                f"{time.perf_counter() - t:.0f} s"
            )
        mode = "whole" if args.whole else "auto"
        for name in [args.path] if args.path else list(PATHS):
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(path), mode, name],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.splitlines()
            _report(out, f"{mode}, {name}: {PATHS[name]}")


def _report(lines: list[str], what: str) -> None:
    stages, walls, out = lines[1], lines[2], lines[0].split()
    wall, user, system = float(out[0]), float(out[6]), float(out[7])
    events, trans, intervals, violations, hwm, faults = map(int, [*out[1:6], out[8]])
    print(
        f"analyze (parse + recipes + replay, {what}): {wall:.1f} s wall, CPU {user:.1f} s "
        f"user + {system:.1f} s sys, {faults / 1e6:.2f} M minor faults, "
        f"{events / wall / 1e6:.2f} M events/s end to end ({_load()})"
    )
    print(
        f"  events {events}, transitions {trans} ({trans / wall / 1e6:.2f} M/s end to end), "
        f"intervals {intervals}, violations {violations}"
    )
    print(f"  peak RSS (fresh process): {hwm} MiB")
    print("  peak RSS by stage (MiB, sampled every 20 ms):", stages.replace(";", ", "))
    print("  wall by stage (s):", walls.replace(";", ", "))
    if violations:
        raise SystemExit("the synthetic cycle is legal: violations mean a replay bug")


def _load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
