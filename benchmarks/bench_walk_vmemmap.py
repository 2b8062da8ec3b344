"""The whole 7.3 walk with vmemmap page states on the real 1 GiB sample (target <= 2 s).

Times, on the decompressed core of ``../shared/samples/qemu-pkvm-7.3``: the host walk with
the profile detected from the dump, ``enrich_with_vmemmap`` (hyp stage-1 walk, vmemmap read
for every page of the map, blocks split), ``find_guests``, and the whole CLI command
``s2trace decode FOLDER --summary`` in a fresh process (cold imports).  Usage::

    python benchmarks/bench_walk_vmemmap.py [--sample ../shared/samples/qemu-pkvm-7.3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from s2trace.arch.registers import config_from_registers
from s2trace.hyp.enrich import enrich_with_vmemmap
from s2trace.hyp.guests import find_guests
from s2trace.io import open_memory
from s2trace.io.compressed import decompressed
from s2trace.walk.walker import walk

REPO = Path(__file__).resolve().parents[1]
VTTBR, VTCR = 0x7F609001, 0x802D3590
TTBR0, TCR, HCR = 0x7F201001, 0x5500075B5903510, 0x430480080001


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sample", default=str(REPO.parent / "shared/samples/qemu-pkvm-7.3"))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    sample = Path(args.sample)
    core = Path(decompressed(sample / "host-s2.elf.zst"))
    ks, io = sample / "kallsyms-subset.txt", sample / "iomem.txt"
    best: dict[str, float] = {}
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        with open_memory([str(core)]) as m:
            r = walk(m, config_from_registers(VTTBR, VTCR), "auto", fwb=True, coalesce=True)
            t1 = time.perf_counter()
            states = enrich_with_vmemmap(r, m, TTBR0, TCR, kallsyms=ks, iomem=io, hcr=HCR)
            t2 = time.perf_counter()
            g = find_guests(m, TTBR0, TCR, kallsyms=ks, iomem=io, host_map=r.map, hcr=HCR)
            t3 = time.perf_counter()
        for k, v in (("walk", t1 - t0), ("vmemmap", t2 - t1), ("guests", t3 - t2)):
            best[k] = min(best.get(k, v), v)
        best["walk+vmemmap"] = min(best.get("walk+vmemmap", t2 - t0), t2 - t0)
    print(
        f"core {core} ({core.stat().st_size >> 20} MiB): {len(states)} map rows, "
        f"{len(g.vms)} VM(s), profile {r.meta['profile']}"
    )
    for k, v in best.items():
        print(f"{k:>14}: {v:.3f} s (best of {args.repeat})")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "cap"
        folder.mkdir()
        (folder / "host-s2.elf").symlink_to(core)
        for name in ("kallsyms-subset.txt", "iomem.txt", "gdb-regs.txt", "README.md"):
            if (sample / name).exists():
                (folder / name).symlink_to(sample / name)
        t = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "s2trace.cli.main", "decode", str(folder), "--summary"],
            check=True,
            capture_output=True,
        )
        print(f"{'CLI --summary':>14}: {time.perf_counter() - t:.3f} s (fresh process)")


if __name__ == "__main__":
    main()
