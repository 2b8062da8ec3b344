"""Replay throughput: transitions per second and peak RSS.

Cases:
* ``wide``: 1 M transitions over 1 M distinct pages (share, donate, counted share) in random
  time order -- the shape of a long trace of many short-lived objects;
* ``churn``: 4 pages see 100 k transitions each (virtio-style share/unshare with the hypervisor,
  counted shares, np-guest shares), 400 k transitions in all;
* ``multi``: 200 k legal 8-page transitions (donate then reclaim, share then unshare of
  8-page objects in disjoint slots, interleaved in time);
* ``conflict``: 100 k random 8-page transitions over a 64 k-page window: most are refused in
  part, which is the slow exact path (row by row) -- a worst case, not a target.

Run: ``python benchmarks/bench_replay.py [--case wide|churn|multi|conflict|all]``.  Each case
runs in a fresh process so that peak RSS is per case; times are the best of three runs after a
one-time warm-up (pandas initialises lazily on first use).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

import numpy as np

from s2trace.trace.replay import replay
from s2trace.trace.synth_helpers import transitions_frame

PAGE = 4096
BASE = 0x4000_0000


def wide(n: int = 1_000_000, seed: int = 1) -> tuple[object, str]:
    rng = np.random.default_rng(seed)
    page = rng.permutation(n).astype(np.uint64)
    kind = rng.integers(0, 3, n)
    op = np.array(["share", "donate", "share"], dtype=object)[kind]
    return (
        transitions_frame(
            op=op, addr=BASE + page * PAGE, ts=rng.random(n) * 100.0, counted=kind == 2
        ),
        "6.12",
    )


def churn(pages: int = 4, per_page: int = 100_000, seed: int = 2) -> tuple[object, str]:
    rng = np.random.default_rng(seed)
    n = pages * per_page
    page = np.repeat(np.arange(pages, dtype=np.uint64), per_page)
    step = np.tile(np.arange(per_page), pages)
    # page 0: hyp share/unshare pairs; page 1: counted share twice, unshare twice;
    # page 2: np-guest share/unshare (count up to 3); page 3: donate/reclaim with the hypervisor
    op = np.empty(n, dtype=object)
    comp = np.empty(n, dtype=object)
    ini = np.full(n, "host", dtype=object)
    counted = np.zeros(n, dtype=bool)
    p0 = page == 0
    op[p0] = np.where(step[p0] % 2 == 0, "share", "unshare")
    comp[p0] = "hyp"
    p1 = page == 1
    op[p1] = np.where(step[p1] % 4 < 2, "share", "unshare")
    comp[p1] = "hyp"
    counted[p1] = True
    p2 = page == 2
    op[p2] = np.where(step[p2] % 6 < 3, "share", "unshare")
    comp[p2] = "guest"
    p3 = page == 3
    op[p3] = np.where(step[p3] % 2 == 0, "donate", "reclaim")
    comp[p3] = np.where(step[p3] % 2 == 0, "hyp", "host")
    ini[p3] = np.where(step[p3] % 2 == 0, "host", "hyp")
    ts = np.arange(n, dtype=np.float64) + rng.random(n) * 0.5
    return (
        transitions_frame(
            op=op, addr=BASE + page * PAGE, ts=ts, initiator=ini, completer=comp, counted=counted
        ),
        "6.14",
    )


def multi(objects: int = 50_000, seed: int = 3) -> tuple[object, str]:
    rng = np.random.default_rng(seed)
    slot = rng.permutation(objects).astype(np.uint64)  # 8-page slot of each object
    t0 = rng.random(objects) * 100.0
    life = rng.random(objects) * 10.0
    donated = rng.random(objects) < 0.5
    # two transitions per object and lifetime, and each slot is used twice (second life later)
    addr = np.tile(BASE + slot * 8 * PAGE, 4)
    ts = np.r_[t0, t0 + life, t0 + 200.0, t0 + 200.0 + life]
    first = np.where(donated, "donate", "share")
    second = np.where(donated, "reclaim", "unshare")
    op = np.r_[first, second, first, second].astype(object)
    ini = np.where(op == "reclaim", "hyp", "host")
    comp = np.where(op == "reclaim", "host", "hyp")
    return (
        transitions_frame(op=op, addr=addr, size=8 * PAGE, ts=ts, initiator=ini, completer=comp),
        "6.14",
    )


def conflict(n: int = 100_000, window: int = 65_536, seed: int = 4) -> tuple[object, str]:
    rng = np.random.default_rng(seed)
    start = rng.integers(0, window - 8, n).astype(np.uint64)
    op = np.array(["share", "unshare", "donate", "reclaim"], dtype=object)[rng.integers(0, 4, n)]
    ini = np.where(op == "reclaim", "hyp", "host")
    comp = np.where(op == "reclaim", "host", "hyp")
    return (
        transitions_frame(
            op=op,
            addr=BASE + start * PAGE,
            size=8 * PAGE,
            ts=rng.random(n) * 10.0,
            initiator=ini,
            completer=comp,
        ),
        "6.14",
    )


CASES = {"wide": wide, "churn": churn, "multi": multi, "conflict": conflict}


def run(case: str, repeat: int = 3) -> None:
    replay(transitions_frame(op=["share"], addr=[BASE]))  # one-time pandas/numpy warm-up
    frame, kernel = CASES[case]()
    input_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        tl = replay(frame, kernel=kernel)
        times.append(time.perf_counter() - t0)
    dt = min(times)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{case:8s} {len(frame):>9,} transitions  best {dt:6.3f} s (of {repeat})  "
        f"{len(frame) / dt:>11,.0f} /s  intervals {len(tl.intervals):>9,}  "
        f"violations {len(tl.violations):>7,}  row-by-row {tl.meta['sequential_rows']:>6,}  "
        f"peak RSS {rss_mib:,.0f} MiB (input built: {input_mib:,.0f} MiB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="all", choices=[*CASES, "all"])
    args = parser.parse_args()
    if args.case != "all":
        run(args.case)
        return
    for case in CASES:
        subprocess.run([sys.executable, __file__, "--case", case], check=True)


if __name__ == "__main__":
    main()
