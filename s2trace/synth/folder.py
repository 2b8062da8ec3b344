"""Write a plan as a capture folder (``capture.toml``, ``trace.txt``, ``host-s2.elf``).

The folder is what ``s2trace report``, ``s2trace decode`` and ``analyze`` read
(:mod:`s2trace.jobs.capture`).  ``capture.toml`` also records, under ``[synth]``, the scenario,
its parameters and the planted faults (line, time, address, check), so a test or a notebook
knows the right answer without replaying.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from s2trace.synth.dump import PROFILE, write_dump
from s2trace.synth.ftrace import HEADER_LINES, write_ftrace
from s2trace.synth.layout import RAM
from s2trace.synth.plan import Plan

__all__ = ["TRACE", "write_capture"]

TRACE = "trace.txt"
DUMP = "host-s2.elf"


def _planted_toml(planted: pd.DataFrame) -> str:
    out = []
    for r in planted.to_dict("records"):
        t_us = int(r["t_us"])
        out.append(
            "\n[[synth.planted]]\n"
            f"line = {HEADER_LINES + int(r['row']) + 1}\n"
            f'ts = "{t_us // 1_000_000}.{t_us % 1_000_000:06d}"\n'
            f'addr = "{int(r["addr"]):#x}"\n'
            f'op = "{r["op"]}"\n'
            f'check = "{r["check"]}"\n'
            f'what = "{r["what"]}"\n'
        )
    return "".join(out)


def write_capture(
    plan: Plan,
    out_dir: str | Path,
    *,
    scenario: str,
    doc: str,
    kernel: str,
    size: int,
    seed: int,
    duration: float,
    compress: bool = False,
) -> Path:
    """Write the folder; ``compress`` stores the dump as ``host-s2.elf.zst``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_ftrace(plan, out / TRACE)
    dump_name = DUMP
    builder = write_dump(plan.final, out / DUMP)
    if compress:
        import zstandard

        raw = (out / DUMP).read_bytes()
        (out / (DUMP + ".zst")).write_bytes(zstandard.ZstdCompressor(level=19).compress(raw))
        (out / DUMP).unlink()
        dump_name = DUMP + ".zst"
    (out / "capture.toml").write_text(
        f"# Synthetic capture written by `s2trace synth {scenario}` (s2trace.synth).\n"
        f"# {doc}\n"
        f'kernel = "{kernel}"\n'
        f'dump = ["{dump_name}"]\n'
        f'trace = "{TRACE}"\n'
        f'linear_map = "0xffff000000000000={RAM.base:#x}"\n'
        "\n[registers]   # the host stage 2 the builder wrote (no hyp stage 1 in this dump)\n"
        f'vttbr_el2 = "{builder.vttbr:#x}"\n'
        f'vtcr_el2 = "{builder.vtcr:#x}"\n'
        "\n[synth]\n"
        f'scenario = "{scenario}"\n'
        f"size = {size}\nseed = {seed}\nduration = {duration}\n"
        f"events = {len(plan)}\n"
        f'profile = "{PROFILE}"\n' + _planted_toml(plan.planted)
    )
    return out
