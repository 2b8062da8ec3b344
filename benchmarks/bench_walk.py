"""Walk throughput: a 4K-granule identity map of RAM mapped entirely with pages, in an ELF core.

Default: 64 GiB of RAM = 16 M leaf entries in 32 K level-3 tables (128 MiB of tables).
Prints wall time and entries/s for the walk (ownership map of every leaf), for the walk plus
``coalesce``, and for the whole CLI command (a fresh process, cold imports) with
``--coalesce``, and writing the full map as Parquet (streamed while walking; its data checked
equal, column by column and null by null, to the API walk's map); and the peak RSS of each.
The Parquet run is repeated (``--repeat``; best wall time shown, with the CPU time, user +
system, of that run) and the load average printed, since the machine may be shared.
``--csv`` also streams the map as CSV (slow: minutes).  Optionally times the real 1 GiB
sample through the CLI.  Usage::

    python benchmarks/bench_walk.py [--gib 64] [--repeat 3] [--csv] \
        [--real ../shared/samples/qemu-pkvm-6.12]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from s2trace.io import open_memory
from s2trace.walk.build import write_identity_elf
from s2trace.walk.ownership import coalesce
from s2trace.walk.walker import walk

RAM_BASE = 0x40000000


def _cli(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one ``s2trace`` process."""
    wall, rss, _ = _cli_cpu(argv)
    return wall, rss


def _cli_cpu(argv: list[str]) -> tuple[float, float, float]:
    """Wall seconds, peak RSS (MiB) and CPU seconds (user + system, every thread) of one
    ``s2trace`` process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    # ru_maxrss survives exec on Linux, so read the child's own high-water mark (VmHWM).
    code = (
        "import re,sys,time;t=time.perf_counter();"
        "from s2trace.cli.main import main;rc=main(sys.argv[1:]);"
        "hwm=int(re.search(r'VmHWM:\\s+(\\d+)',open('/proc/self/status').read())[1]);"
        "print(f'@@ {time.perf_counter()-t:.3f} {hwm/1024:.0f}',file=sys.stderr);"
        "sys.exit(rc)"
    )
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True
    )
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    rss = float(proc.stderr.strip().split("@@ ")[-1].split()[1])
    return wall, rss, cpu


def _best(argv: list[str], repeat: int) -> tuple[float, float, float, list[float]]:
    """The fastest of ``repeat`` runs (wall, RSS, CPU) and every run's wall time."""
    runs = [_cli_cpu(argv) for _ in range(repeat)]
    best = min(runs)
    return (*best, [r[0] for r in runs])


def _load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def _check_same(path: Path, frame) -> None:
    """The file's columns equal the frame's: values (dictionaries decoded) and nulls."""
    table = pq.read_table(path)
    assert table.column_names == list(frame.columns)
    for name in frame.columns:
        got = table[name].combine_chunks()
        if hasattr(got, "dictionary_decode"):
            got = got.dictionary_decode()
        col = frame[name]
        nulls = col.isna().to_numpy()
        assert np.array_equal(got.is_null().to_numpy(zero_copy_only=False), nulls), name
        want = col.astype(object).to_numpy()[~nulls]
        have = got.to_numpy(zero_copy_only=False)[~nulls]
        if want.size and not isinstance(col.dtype, pd.CategoricalDtype):
            want = want.astype(have.dtype)
        assert bool(np.all(want == have)), name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gib", type=int, default=64)
    ap.add_argument("--real", type=Path, help="a capture folder with host-s2.elf(.zst)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of the streamed Parquet case")
    ap.add_argument("--csv", action="store_true", help="also stream the map as CSV (minutes)")
    ap.add_argument(
        "--default-allocator",
        action="store_true",
        help="do not call s2trace.allocator.keep_freed_memory() (the CLI does)",
    )
    args = ap.parse_args()
    if not args.default_allocator:
        from s2trace.allocator import keep_freed_memory

        keep_freed_memory()
    print(
        "allocator:",
        "glibc defaults"
        if args.default_allocator
        else "freed memory kept for reuse, as in the CLI",
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "identity.elf"
        t = time.perf_counter()
        b = write_identity_elf(path, RAM_BASE, args.gib << 30)
        print(
            f"built {args.gib} GiB identity map: {path.stat().st_size >> 20} MiB core in "
            f"{time.perf_counter() - t:.1f} s"
        )
        entries = (args.gib << 30) // 4096
        with open_memory([str(path)]) as memory:
            runs = []
            for _ in range(3):
                result = None
                t = time.perf_counter()
                result = walk(memory, b.config)
                runs.append(time.perf_counter() - t)
            t_walk = min(runs)
            t = time.perf_counter()
            merged = walk(memory, b.config, coalesce=True).map
            t_coal = time.perf_counter() - t
            assert merged.equals(coalesce(result.map))
        assert len(result.map) == entries and len(merged) == 1, (len(result.map), len(merged))
        print(
            f"walk (API), best of 3: {t_walk:6.2f} s  {entries / t_walk / 1e6:6.1f} M entries/s"
            f"  (first {runs[0]:.2f} s)"
        )
        print(f"walk, coalesced:      {t_coal:6.2f} s")
        regs = ["--vttbr", hex(b.vttbr), "--vtcr", hex(b.vtcr)]
        wall, rss = _cli(
            ["decode", str(path), *regs, "--coalesce", "-o", str(Path(tmp) / "out.txt")]
        )
        print(f"CLI decode --coalesce: {wall:6.2f} s wall (fresh process), peak RSS {rss:.0f} MiB")
        wall, rss = _cli(
            ["decode", str(path), *regs, "--summary", "-o", str(Path(tmp) / "sum.txt")]
        )
        print(f"CLI decode --summary:  {wall:6.2f} s wall (fresh process), peak RSS {rss:.0f} MiB")
        out = Path(tmp) / "map.parquet"
        print(f"CLI decode --format parquet, {args.repeat} runs ({_load()})")
        wall, rss, cpu, walls = _best(
            ["decode", str(path), *regs, "--format", "parquet", "-o", str(out)], args.repeat
        )
        print(
            f"CLI decode --format parquet (full map, {entries} rows): {wall:6.2f} s wall "
            f"(best; fresh process), {cpu:.2f} s CPU, peak RSS {rss:.0f} MiB, "
            f"{os.path.getsize(out) / 2**20:.1f} MiB file; runs "
            + " ".join(f"{w:.2f}" for w in walls)
            + f" ({_load()})"
        )
        _check_same(out, result.map)
        print("  parquet data equal to the API walk's map (every column, nulls included)")
        if args.csv:
            out = Path(tmp) / "map.csv"
            wall, rss, cpu = _cli_cpu(
                ["decode", str(path), *regs, "--format", "csv", "-o", str(out)]
            )
            print(
                f"CLI decode --format csv: {wall:6.2f} s wall, {cpu:.2f} s CPU, peak RSS "
                f"{rss:.0f} MiB, {os.path.getsize(out) / 1e9:.2f} GB file ({_load()})"
            )
    if args.real:
        core = args.real / "host-s2.elf"
        if not core.exists():
            from s2trace.io import decompressed

            core = decompressed(args.real / "host-s2.elf.zst")
        wall, rss = _cli(
            [
                "decode",
                str(core),
                "--vttbr",
                "0x7f709001",
                "--vtcr",
                "0x802d3590",
                "-o",
                "/dev/null",
            ]
        )
        print(f"real 1 GiB sample, CLI decode: {wall:6.2f} s wall, peak RSS {rss:.0f} MiB")


if __name__ == "__main__":
    main()
