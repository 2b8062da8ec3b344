"""A fleet: ``s2trace batch`` over many small captures, wall time with 1 and 2 workers.

The fleet is ``--count`` capture folders: synthetic ones (``s2trace synth``, scenarios in
turn, small ``--size``, a seed each) and copies of the bundled real captures
(sample-traces/qemu-pkvm-*; their dumps are already trimmed to the table pages).  Each run
is a fresh ``s2trace batch`` process with an embedded local cluster (check + summary per
capture); the wall time includes starting the cluster.

    python benchmarks/bench_batch.py [--count 1000] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ("boot", "vm-lifecycle", "virtio-churn", "ffa", "buggy")
REAL = sorted((ROOT / "sample-traces").glob("qemu-pkvm-*"))


def make_fleet(folder: Path, count: int, size: int) -> None:
    """Synthesise a few distinct captures, then copy them (and the real ones) to ``count``."""
    seeds = []
    for k, scenario in enumerate(SCENARIOS):
        out = folder / f"seed-{scenario}"
        subprocess.run(
            [sys.executable, "-m", "s2trace.cli.main", "synth", scenario, "-o", str(out),
             "--size", str(size), "--seed", str(k)],
            check=True, capture_output=True,
        )  # fmt: skip
        seeds.append(out)
    seeds += REAL
    for i in range(count):
        shutil.copytree(seeds[i % len(seeds)], folder / f"cap-{i:05d}")
    for s in seeds:
        if s.parent == folder:
            shutil.rmtree(s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--size", type=int, default=200)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fleet = Path(tmp) / "fleet"
        fleet.mkdir()
        t = time.perf_counter()
        make_fleet(fleet, args.count, args.size)
        print(f"fleet of {args.count} captures built in {time.perf_counter() - t:.0f} s")
        for n in args.workers:
            out = Path(tmp) / f"ds-{n}"
            t = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "s2trace.cli.main", "batch", str(fleet / "cap-*"),
                 "-o", str(out), "--workers", str(n)],
                check=True, capture_output=True,
            )  # fmt: skip
            wall = time.perf_counter() - t
            import pandas as pd

            summary = pd.read_parquet(out / "summary.parquet")
            failed = int((summary["status"] != "ok").sum())
            print(
                f"batch, {n} worker(s): {wall:.1f} s wall for {len(summary)} captures "
                f"({len(summary) / wall:.1f} captures/s), {failed} failed"
            )


if __name__ == "__main__":
    main()
