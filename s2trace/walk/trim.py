"""Reduce a dump to what a walk needs: ``s2trace trim DUMP ... -o small.elf``.

The result is an ELF core holding the table pages of the stage-2 walk (and of any other
roots given, e.g. the hyp stage 1) plus named physical ranges (e.g. the hyp carve-out, where
the vmemmap lives), so a 1 GiB dump becomes a reproducer of a few hundred KiB that walks to
the same ownership map.  Adjacent pages share one PT_LOAD segment.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from s2trace.arch.registers import Stage2Config
from s2trace.decode.numpy_engine import decode_ownership
from s2trace.errors import Problem, ProblemLog
from s2trace.intervals import distinct
from s2trace.io.elfcore import write_elf_core
from s2trace.walk.tables import TableWalk

__all__ = ["table_pages", "trim"]


def table_pages(memory: Any, config: Stage2Config, log: ProblemLog | None = None) -> np.ndarray:
    """Physical addresses of every table page a stage-2 walk visits (sorted, unique)."""
    g = config.geometry
    log = log if log is not None else ProblemLog()
    walker = TableWalk.of(memory, config, lambda raw, level: decode_ownership(raw, g, level), log)
    for _ in walker:
        pass
    pas = walker.tables()["pa"].to_numpy(dtype=np.uint64)
    page = np.uint64(g.granule.value)
    return distinct(pas - pas % page)


def _runs(starts: Sequence[int], size: int) -> list[tuple[int, int]]:
    """Merge equal-sized blocks at ``starts`` into (start, length) runs."""
    runs: list[tuple[int, int]] = []
    for s in sorted(set(starts)):
        if runs and runs[-1][0] + runs[-1][1] >= s:
            lo, ln = runs[-1]
            runs[-1] = (lo, max(ln, s + size - lo))
        else:
            runs.append((s, size))
    return runs


def trim(
    memory: Any,
    configs: Iterable[Stage2Config],
    path: str | Path,
    ranges: Iterable[tuple[int, int]] = (),
    extra_pages: Iterable[int] = (),
    page_size: int = 4096,
) -> tuple[Path, ProblemLog]:
    """Write the table pages of every walk in ``configs``, ``extra_pages`` (page addresses of
    other tables, e.g. a hyp stage 1) and ``ranges`` (``(pa, size)``) as an ELF core.

    Parts of ranges that the dump does not hold are left out and recorded as problems.
    """
    log = ProblemLog()
    pages: list[int] = []
    for config in configs:
        pages += [int(p) for p in table_pages(memory, config, log)]
    pages += [int(p) - int(p) % page_size for p in extra_pages]
    blocks = [(lo, ln) for lo, ln in _runs(pages, page_size)]
    for pa, size in ranges:
        lo, hi = pa - pa % page_size, -(-(pa + size) // page_size) * page_size
        blocks.append((lo, hi - lo))
    merged = _merge(blocks)
    segments = []
    for lo, ln in merged:
        held = [(p, page_size) for p in range(lo, lo + ln, page_size) if memory.holds(p, page_size)]
        for run_lo, run_ln in _merge(held):
            segments.append((run_lo, memory.read(run_lo, run_ln)))
        if len(held) * page_size < ln:
            log.add(
                Problem(
                    "range_outside_dump",
                    lo,
                    f"{ln - len(held) * page_size:#x} bytes of {lo:#x}+{ln:#x} are "
                    "not in the dump and were left out",
                )
            )
    return write_elf_core(path, segments), log


def _merge(blocks: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, ln in sorted(blocks):
        if out and out[-1][0] + out[-1][1] >= lo:
            plo, pln = out[-1]
            out[-1] = (plo, max(pln, lo + ln - plo))
        else:
            out.append((lo, ln))
    return out
