"""Trace analysis stage by stage: parse, recipes, replay; wall and CPU (user + sys) of each.

Runs the whole-trace path in this process, one stage after the other, on a trace written
before (e.g. ``bench_trace_e2e.py --keep PATH`` or ``bench_trace_parse.py --keep PATH``):
``read_trace`` without the cache, ``to_transitions`` (kernel 6.12, the samples' linear map),
``replay``.  CPU time is the process's user + system time (resource.getrusage) around each
stage, so it is less sensitive than wall time to a machine shared with other work; the load
average is printed with it.  Peak RSS (VmHWM) is the whole run's.

    python benchmarks/bench_trace_stages.py PATH
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import time
from pathlib import Path

from s2trace.trace.parse.readers import read_trace
from s2trace.trace.recipes import to_transitions
from s2trace.trace.replay import replay

LINEAR = (0xFFFF000000000000, 0x40000000)


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("trace", type=Path)
    args = ap.parse_args()
    stages = []
    t, c = time.perf_counter(), _cpu()
    trace = read_trace(args.trace, use_cache=False)
    stages.append(("parse", time.perf_counter() - t, _cpu() - c))
    events = len(trace.events)
    t, c = time.perf_counter(), _cpu()
    transitions, _ = to_transitions(trace.events, kernel="6.12", linear_map=LINEAR)
    stages.append(("recipes", time.perf_counter() - t, _cpu() - c))
    del trace
    t, c = time.perf_counter(), _cpu()
    timeline = replay(transitions, kernel="6.12")
    stages.append(("replay", time.perf_counter() - t, _cpu() - c))
    hwm = int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text())[1]) // 1024
    print(
        f"{args.trace.name}: {events:,} events, {len(transitions):,} transitions, "
        f"{len(timeline.intervals):,} intervals; load average {os.getloadavg()[0]:.1f}; "
        f"peak RSS {hwm} MiB"
    )
    for name, wall, cpu in stages:
        print(f"  {name:8s} {wall:7.2f} s wall  {cpu:7.2f} s CPU (user + sys)")


if __name__ == "__main__":
    main()
