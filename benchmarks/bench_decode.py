"""Decode throughput: the Construct engine, the numpy engine (all fields), and the numpy fast
path (kind, output address, owner, page state), on random 64-bit descriptors.

Prints descriptors/s and peak memory for each, and checks that the numpy results are
bit-identical to the Construct path on the Construct sample.  Usage::

    python benchmarks/bench_decode.py [--n 1000000] [--construct-n 50000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import resource
import time
import tracemalloc
from collections.abc import Callable

import numpy as np

from s2trace.arch.geometry import Geometry
from s2trace.decode import decode, decode_array, decode_ownership
from s2trace.render import json_records


def _best(fn: Callable[[], object], repeat: int) -> tuple[float, int]:
    """Best wall time of ``repeat`` runs and the peak traced allocation of one run."""
    fn()  # warm up (profile tables are compiled once per profile)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return min(times), peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--construct-n", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--profile", default="linux-5.15")
    ap.add_argument("--level", type=int, default=3)
    ap.add_argument(
        "--default-allocator",
        action="store_true",
        help="do not call s2trace.allocator.keep_freed_memory() (the CLI does)",
    )
    args = ap.parse_args()
    if not args.default_allocator:
        from s2trace.allocator import keep_freed_memory

        print(f"allocator: freed memory kept for reuse ({keep_freed_memory()}), as in the CLI")
    else:
        print("allocator: glibc defaults")

    rng = np.random.default_rng(2026)
    raw = rng.integers(0, 2**64, args.n, dtype=np.uint64)
    g = Geometry()
    results = []

    t, peak = _best(lambda: raw.copy(), args.repeat)
    results.append(("memory read (copy of the array)", args.n / t, peak))
    t, peak = _best(lambda: decode_ownership(raw, g, args.level, args.profile), args.repeat)
    results.append(("numpy, ownership fields only", args.n / t, peak))
    t, peak = _best(lambda: decode_array(raw, g, args.level, args.profile), args.repeat)
    results.append(("numpy, all fields (DataFrame)", args.n / t, peak))

    sample = raw[: args.construct_n]
    t0 = time.perf_counter()
    ref = [decode(int(v), g, args.level, args.profile).to_dict() for v in sample]
    t = time.perf_counter() - t0
    results.append(("construct, all fields (records)", len(sample) / t, 0))

    got = list(json_records(decode_array(sample, g, args.level, args.profile)))
    identical = got == ref
    codes = decode_ownership(sample, g, args.level, args.profile)
    fast_ok = all(
        int(codes.addr[i]) == (r["oa"] if r["oa"] is not None else r["next_table"] or 0)
        for i, r in enumerate(ref)
    )

    print(f"{'path':36s} {'descriptors/s':>16s} {'peak traced MiB':>16s}")
    for name, rate, pk in results:
        shown = f"{rate / 1e6:13.1f} M" if rate >= 1e6 else f"{rate / 1e3:13.1f} k"
        traced = f"{pk / 2**20:14.1f}" if pk else f"{'-':>14s}"
        print(f"{name:36s} {shown}  {traced}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of the process: {rss:.0f} MiB")
    print(
        f"numpy == construct on {len(sample)} descriptors: all fields {identical}, "
        f"fast path addresses {fast_ok}"
    )
    if not (identical and fast_ok):
        raise SystemExit("engines disagree")


if __name__ == "__main__":
    main()
