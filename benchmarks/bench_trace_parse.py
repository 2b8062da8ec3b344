"""Trace parsing speed: lines per second and peak memory of read_trace on a synthetic trace.

The trace repeats the event lines of the real 6.12 capture (../shared/samples/qemu-pkvm-6.12/
ftrace.txt) with increasing timestamps until it has ``--lines`` lines (default 2 million),
behind the sample's header.  ``--format hyp`` writes the same events in the hypervisor
buffer layout instead (``[CPU]\\tSECS.USECS: EVENT FIELDS``).  The parse runs once, in this
process, without the cache (as a first read does); then the per-line regex baseline, the
recipes, and a second, cached read.  The rate is also given as a ratio to a straightforward
per-line Python parser (:func:`regex_baseline`: one ``re`` match per line into Python lists,
then a DataFrame), measured in the same run on the same file (issue 18's goal: at least 8x).
The file is written by a child process; peak RSS is this process's maximum resident
set (resource.getrusage): the parse and the DataFrame.  ``--repeat`` parses again
(the later runs reuse memory the earlier frames gave back, so they show the CPU-bound rate
without first-touch page faults).  Timings vary with the load of the machine: run it idle.

    python benchmarks/bench_trace_parse.py [--lines N] [--format ftrace|hyp] [--keep PATH]
                                           [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from s2trace.trace.parse.readers import read_trace
from s2trace.trace.recipes import to_transitions

SAMPLE = (
    Path(__file__).resolve().parents[2] / "shared" / "samples" / "qemu-pkvm-6.12" / "ftrace.txt"
)
LINEAR = (0xFFFF000000000000, 0x40000000)
_SPLIT = re.compile(r"^(?P<head>.*?\]\s+\S+\s+)\s*(?P<ts>\d+\.\d+): (?P<event>\S+): ?(?P<rest>.*)$")


def write_trace(path: Path, lines: int, fmt: str) -> int:
    """Write the synthetic trace; returns its size in bytes."""
    text = SAMPLE.read_text().splitlines()
    header = [ln for ln in text if ln.startswith("#")] if fmt == "ftrace" else []
    body = [m for ln in text if not ln.startswith("#") and (m := _SPLIT.match(ln))]
    step = 0.000013
    with open(path, "w") as out:
        out.write("".join(h + "\n" for h in header))
        block: list[str] = []
        for i in range(lines - len(header)):
            m = body[i % len(body)]
            ts = 18.0 + (i + 1) * step
            if fmt == "ftrace":
                block.append(f"{m['head']}{ts:12.6f}: {m['event']}: {m['rest']}\n")
            else:
                block.append(f"[{i % 2:03d}]\t{ts:12.6f}: {m['event']} {m['rest']}\n")
            if len(block) == 100_000:
                out.write("".join(block))
                block.clear()
        out.write("".join(block))
    return path.stat().st_size


_BASELINE = {
    "ftrace": re.compile(
        r"^\s*(?P<task>.*?)-(?P<pid>\d+)\s+\[(?P<cpu>\d+)\]\s+(?:(?P<flags>\S+)\s+)?"
        r"(?P<ts>\d+\.\d+):\s+(?P<event>[^:\s]+):\s?(?P<fields>.*)$"
    ),
    "hyp": re.compile(r"^\[(?P<cpu>\d+)\]\s+(?P<ts>\d+\.\d+):\s+(?P<event>\S+)\s?(?P<fields>.*)$"),
}


def regex_baseline(path: Path, fmt: str) -> tuple[int, int]:
    """The straightforward parser: for each line, one regex match, its groups appended to
    Python lists (numbers converted), then a DataFrame.  Returns (events, unmatched lines)."""
    import pandas as pd

    rx = _BASELINE[fmt]
    names = ("task", "pid", "cpu", "flags", "ts", "event", "fields")
    cols: dict[str, list] = {k: [] for k in names}
    bad = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith("#"):
                continue
            m = rx.match(line.rstrip("\n"))
            if m is None:
                bad += 1
                continue
            g = m.groupdict()
            cols["task"].append(g.get("task"))
            cols["pid"].append(int(g["pid"]) if g.get("pid") else None)
            cols["cpu"].append(int(g["cpu"]))
            cols["flags"].append(g.get("flags"))
            cols["ts"].append(float(g["ts"]))
            cols["event"].append(g["event"])
            cols["fields"].append(g["fields"])
    df = pd.DataFrame(cols)
    df["event"] = df["event"].astype("category")
    return len(df), bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--lines", type=int, default=2_000_000)
    ap.add_argument("--format", choices=("ftrace", "hyp"), default="ftrace")
    ap.add_argument("--keep", type=Path, help="write the trace here and keep it")
    ap.add_argument("--repeat", type=int, default=1, help="parse this many times")
    ap.add_argument("--write-only", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.write_only is not None:
        write_trace(args.write_only, args.lines, args.format)
        return 0
    if not SAMPLE.exists():
        print(f"needs the real sample {SAMPLE}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["S2TRACE_CACHE"] = str(Path(tmp) / "cache")
        path = args.keep or Path(tmp) / f"synthetic-{args.format}.txt"
        # written by a child process, so this one parses with a clean heap, as a user's would
        cmd = [
            sys.executable,
            __file__,
            "--write-only",
            str(path),
            "--lines",
            str(args.lines),
            "--format",
            args.format,
        ]
        subprocess.run(cmd, check=True)
        size = path.stat().st_size
        print(f"synthetic {args.format} trace: {args.lines:,} lines, {size / 1e6:.1f} MB ({path})")

        best = best_cpu = float("inf")
        for run in range(max(args.repeat, 1)):
            trace = None
            t0, c0 = time.perf_counter(), time.process_time()
            trace = read_trace(path, use_cache=False)
            parse = time.perf_counter() - t0
            best, best_cpu = min(best, parse), min(best_cpu, time.process_time() - c0)
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(
                f"parse #{run + 1} (no cache): {parse:.3f} s  "
                f"{trace.lines / parse / 1e6:.2f} M lines/s  {size / parse / 1e6:.0f} MB/s  "
                f"({len(trace.events):,} events, {len(trace.problems)} problems)"
            )
            if run == 0:
                print(f"peak RSS after the first parse: {rss:.0f} MB")

        t0, c0 = time.perf_counter(), time.process_time()
        n_base, bad = regex_baseline(path, args.format)
        base, base_cpu = time.perf_counter() - t0, time.process_time() - c0
        print(
            f"regex baseline (per-line Python re): {base:.3f} s ({base_cpu:.3f} s CPU)  "
            f"{trace.lines / base / 1e6:.2f} M lines/s  ({n_base:,} events, {bad} unmatched)"
        )
        print(
            f"read_trace / regex baseline: {base / best:.1f}x faster by wall time, "
            f"{base_cpu / best_cpu:.1f}x by CPU time (best parse: {best:.3f} s, "
            f"{best_cpu:.3f} s CPU)"
        )

        t0 = time.perf_counter()
        transitions, _ = to_transitions(trace.events, linear_map=LINEAR)
        print(f"recipes: {time.perf_counter() - t0:.3f} s  ({len(transitions):,} transitions)")

        read_trace(path)  # fills the cache
        t0 = time.perf_counter()
        read_trace(path)
        print(f"second read (cache hit): {time.perf_counter() - t0:.3f} s")
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS overall: {rss:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
