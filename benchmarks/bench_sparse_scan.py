"""Scans without registers on a big sparse core: ``scan``, ``regs`` and a register-less walk.

Builds a sparse ELF core of ``--gib`` GiB of RAM at PA 0x40000000 whose first GiB is a real
1 GiB sample core's RAM (same PAs; the rest is a hole of the file, reading as zeros) and runs
each command as a fresh process, printing wall time and peak RSS (the child's own VmHWM).
Issue 16 asks that these look only where roots and ``kvm_nvhe_init_params`` can be -- never in
the zeros of a hole -- with memory that does not grow with the dump.  Usage::

    python benchmarks/bench_sparse_scan.py [--gib 64] [--sample ../shared/samples/qemu-pkvm-6.12]

Needs a file system with hole information (``SEEK_DATA``: ext4, xfs, btrfs, tmpfs); the core
takes the sample's data (~80 MiB on disk) whatever ``--gib`` is.
"""

from __future__ import annotations

import argparse
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zstandard

RAM_BASE = 0x40000000
_BLOCK = 1 << 20


def _sparse_copy(src: Path, dst: Path) -> None:
    """Decompress a ``.zst`` core (or copy a plain one) leaving all-zero MiBs as holes."""
    zero = bytes(_BLOCK)
    with open(src, "rb") as raw, open(dst, "wb") as out:
        stream = zstandard.ZstdDecompressor().stream_reader(raw) if src.suffix == ".zst" else raw
        size = 0
        while block := stream.read(_BLOCK):
            if block == zero[: len(block)]:
                out.seek(len(block), os.SEEK_CUR)
            else:
                out.write(block)
            size += len(block)
        out.truncate(size)


def build_core(sample: Path, gib: int, dst: Path) -> None:
    """The sample core with its one PT_LOAD stretched to ``gib`` GiB (a hole past its data)."""
    _sparse_copy(sample, dst)
    with open(dst, "r+b") as f:
        head = f.read(64)
        (phoff,) = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            ph = bytearray(f.read(phentsize))
            kind, flags, offset, vaddr, paddr, _, _, align = struct.unpack_from("<IIQQQQQQ", ph)
            if kind == 1:  # PT_LOAD
                if paddr != RAM_BASE:
                    raise SystemExit(f"{sample}: expected RAM at {RAM_BASE:#x}, got {paddr:#x}")
                size = gib << 30
                struct.pack_into(
                    "<IIQQQQQQ", ph, 0, kind, flags, offset, vaddr, paddr, size, size, align
                )
                f.seek(phoff + i * phentsize)
                f.write(ph)
                f.truncate(offset + size)
                return
    raise SystemExit(f"{sample}: no PT_LOAD segment")


def _cli(argv: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MiB) and standard output of one ``s2trace`` process."""
    code = (
        "import re,sys;from s2trace.cli.main import main;rc=main(sys.argv[1:]);"
        "hwm=int(re.search(r'VmHWM:\\s+(\\d+)',open('/proc/self/status').read())[1]);"
        "print(f'@@ {hwm/1024:.0f}',file=sys.stderr);sys.exit(rc)"
    )
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True
    )
    wall = time.perf_counter() - t
    return wall, float(proc.stderr.strip().split("@@ ")[-1]), proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=int, default=64)
    ap.add_argument("--sample", type=Path, default=Path("../shared/samples/qemu-pkvm-6.12"))
    ap.add_argument("--tmp", type=Path, default=None, help="Folder for the sparse core.")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        core = Path(tmp) / "sparse.elf"
        build_core(args.sample / "host-s2.elf.zst", args.gib, core)
        st = core.stat()
        print(f"core: {st.st_size / 2**30:.1f} GiB, {st.st_blocks * 512 / 2**20:.0f} MiB on disk")
        runs = {
            "scan": ["scan", str(core)],
            "regs (scan of RAM)": ["regs", str(core)],
            "decode --summary, no registers": ["decode", str(core), "--summary"],
        }
        for name, argv in runs.items():
            wall, rss, out = _cli(argv)
            first = out.strip().splitlines()[0] if out.strip() else ""
            print(f"{name:<32} {wall:6.2f} s  {rss:6.0f} MiB  | {first[:60]}")


if __name__ == "__main__":
    main()
