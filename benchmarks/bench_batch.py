"""A fleet: ``s2trace batch`` over many small captures, wall time with 1 and 2 workers.

The fleet is ``--count`` capture folders: synthetic ones (``s2trace synth``, scenarios in
turn, small ``--size``, a seed each) and copies of the bundled real captures
(sample-traces/qemu-pkvm-*; their dumps are already trimmed to the table pages), taken in
turn.  Each run is a fresh ``s2trace batch`` process with an embedded local cluster (by
default ``--stages check,summary``, the issue's case; ``--stages all`` for every stage); the
wall time includes starting the process, the cluster and its workers.  CPU time is the batch
process and its workers together.  Each run gets a fresh, empty ``S2TRACE_CACHE``.

The peak RSS printed is the largest single process (batch or worker).  ``--fleet DIR``
keeps the fleet there and reuses it on the next run (building it takes a few seconds).

    python benchmarks/bench_batch.py [--count 1000] [--workers 1 2] [--stages check,summary]
        [--repeat 2] [--fleet /tmp/fleet]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ("boot", "vm-lifecycle", "virtio-churn", "ffa", "buggy")
REAL = sorted((ROOT / "sample-traces").glob("qemu-pkvm-*"))
_ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def make_fleet(folder: Path, count: int, size: int) -> list[str]:
    """Synthesise a few distinct captures, then copy them (and the real ones) to ``count``;
    the seeds' names, in the order they are taken."""
    seeds = []
    for k, scenario in enumerate(SCENARIOS):
        out = folder / f"seed-{scenario}"
        subprocess.run(
            [sys.executable, "-m", "s2trace.cli.main", "synth", scenario, "-o", str(out),
             "--size", str(size), "--seed", str(k)],
            check=True, capture_output=True, env=_ENV,
        )  # fmt: skip
        seeds.append(out)
    seeds += REAL
    for i in range(count):
        shutil.copytree(seeds[i % len(seeds)], folder / f"cap-{i:05d}")
    for s in seeds:
        if s.parent == folder:
            shutil.rmtree(s)
    return [s.name for s in seeds]


def _children() -> tuple[float, float]:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime, ru.ru_stime


def run_batch(fleet: Path, out: Path, workers: int, stages: str, cache: Path) -> dict:
    """One fresh ``s2trace batch`` process; wall and CPU seconds, the summary read back."""
    cmd = [sys.executable, "-m", "s2trace.cli.main", "batch", str(fleet / "cap-*"),
           "-o", str(out), "--workers", str(workers)]  # fmt: skip
    if stages != "all":
        cmd += ["--stages", stages]
    (user0, sys0), load0 = _children(), os.getloadavg()[0]
    # /usr/bin/time-style peak: the largest resident set of the batch process or a worker
    # (workers are the batch's descendants, reaped before it exits).
    wrap = [sys.executable, "-c", _PEAK, *cmd]
    t = time.perf_counter()
    done = subprocess.run(
        wrap, check=True, capture_output=True, text=True,
        env={**_ENV, "S2TRACE_CACHE": str(cache)},
    )  # fmt: skip
    wall = time.perf_counter() - t
    user1, sys1 = _children()
    summary = pd.read_parquet(out / "summary.parquet")
    return {
        "wall": wall,
        "user": user1 - user0,
        "sys": sys1 - sys0,
        "peak_mib": int(done.stdout.strip().splitlines()[-1]) / 1024,
        "load": (load0, os.getloadavg()[0]),
        "summary": summary,
    }


#: Runs the command, then prints the largest peak RSS (KiB) of it and its descendants.
_PEAK = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--size", type=int, default=200)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--stages", default="check,summary", help="comma-separated, or 'all'")
    ap.add_argument("--repeat", type=int, default=1, help="runs per worker count (best kept)")
    ap.add_argument(
        "--fleet",
        type=Path,
        help="keep the fleet in this folder and reuse it when it already holds --count captures",
    )
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}; {time.strftime('%Y-%m-%d %H:%M %Z')}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        fleet = args.fleet or Path(tmp) / "fleet"
        fleet.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        seeds_file = fleet / "seeds.txt"
        if seeds_file.exists() and len(list(fleet.glob("cap-*"))) == args.count:
            seeds = seeds_file.read_text().split()
            print(f"fleet of {args.count} captures reused from {fleet}")
        else:
            for old in fleet.glob("cap-*"):
                shutil.rmtree(old)
            seeds = make_fleet(fleet, args.count, args.size)
            seeds_file.write_text("\n".join(seeds) + "\n")
            print(f"fleet of {args.count} captures built in {time.perf_counter() - t:.0f} s")
        print(f"  in turn: {', '.join(seeds)}")
        for n in args.workers:
            best = None
            for r in range(args.repeat):
                out = Path(tmp) / f"ds-{n}-{r}"
                res = run_batch(fleet, out, n, args.stages, Path(tmp) / f"cache-{n}-{r}")
                s = res["summary"]
                failed = int((s["status"] == "error").sum())
                per = s.groupby(s.index % len(seeds))["seconds"]
                print(
                    f"batch --stages {args.stages}, {n} worker(s): {res['wall']:.1f} s wall, "
                    f"{res['user'] + res['sys']:.1f} s CPU ({res['user']:.1f} user + "
                    f"{res['sys']:.1f} sys) for {len(s)} captures "
                    f"({len(s) / res['wall']:.1f} captures/s), {failed} failed, "
                    f"peak RSS {res['peak_mib']:.0f} MiB (largest process), "
                    f"load {res['load'][0]:.2f} -> {res['load'][1]:.2f}"
                )
                if r == 0:
                    means = per.mean()
                    print("  mean seconds per capture, by seed: " + ", ".join(
                        f"{seeds[i]} {means[i]:.3f}" for i in means.index))  # fmt: skip
                shutil.rmtree(out)
                best = res["wall"] if best is None else min(best, res["wall"])
            if args.repeat > 1:
                print(f"  best of {args.repeat}: {best:.1f} s")


if __name__ == "__main__":
    main()
