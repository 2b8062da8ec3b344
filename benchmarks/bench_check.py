"""The whole consistency check on a real 1 GiB sample: seconds and peak RSS (target <= 3 s).

"Whole" means what ``s2trace check`` does after argument parsing: open the dump (memory map),
read kallsyms and iomem, walk the host stage 2 and the hyp stage 1, read all 262144
``struct hyp_page`` entries, build the per-page table and check every invariant.

Run: ``python benchmarks/bench_check.py [--sample 6.12|7.3|all]``.  Each sample runs in a
fresh process (so peak RSS is per sample); the time printed is the best of three runs after
a warm-up run (pandas initialises lazily; the page cache then holds the pages read).  The
samples are decompressed from ``../shared/samples`` into the cache on first use.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO.parent / "shared" / "samples"
REGS = {  # the READMEs and gdb-regs.txt of the captures
    "6.12": ("qemu-pkvm-6.12", 0x7F709001, 0x802D3590, 0x7F301001, 0x15001F5B5D53510),
    "7.3": ("qemu-pkvm-7.3", 0x7F609001, 0x802D3590, 0x7F201001, 0x5500075B5903510),
}


def run_once(version: str) -> tuple[float, bool]:
    from s2trace.hyp.check import check_dump
    from s2trace.hyp.evidence import read_iomem, read_kallsyms
    from s2trace.io import decompressed, open_memory

    folder, vttbr, vtcr, ttbr0, tcr = REGS[version]
    d = SAMPLES / folder
    core = decompressed(d / "host-s2.elf.zst")
    t0 = time.perf_counter()
    with open_memory([str(core)]) as memory:
        result = check_dump(
            memory,
            vttbr,
            vtcr,
            ttbr0,
            tcr,
            kallsyms=read_kallsyms(d / "kallsyms-subset.txt"),
            iomem=read_iomem(d / "iomem.txt"),
        )
    return time.perf_counter() - t0, result.consistent


def child(version: str) -> None:
    run_once(version)  # warm-up
    best, ok = min(run_once(version) for _ in range(3))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    verdict = "consistent" if ok else "INCONSISTENT"
    print(f"{version}: {best:.2f} s (target <= 3 s), peak RSS {rss:.0f} MiB, {verdict}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sample", choices=[*REGS, "all"], default="all")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    if not SAMPLES.exists():
        print(f"skipped: {SAMPLES} is not here", file=sys.stderr)
        return
    for version in REGS if args.sample == "all" else [args.sample]:
        subprocess.run([sys.executable, __file__, "--child", version], check=True)


if __name__ == "__main__":
    main()
