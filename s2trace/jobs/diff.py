"""The diff job: where two ownership maps disagree — a trace's replayed ownership against a
dump, or two dumps.

* trace vs dump: the replay's ownership at ``at`` (default: the end of the trace,
  :func:`s2trace.trace.queries.snapshot`) against the walked dump, over the ranges the trace
  covers (pages the trace never touches say nothing about the dump);
* dump vs dump: every ownership change between the two walks.

Dumps are walked with their page states from ``hyp_vmemmap`` when the hyp stage-1 registers and
kallsyms (or ``--vmemmap``) are known (6.14+ keeps the host state there, docs/kernel-facts.md
KF-2.6); without them their page states read ``unknown``, which agrees with anything
(:func:`s2trace.trace.queries.diff_maps`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from s2trace.errors import InputError
from s2trace.jobs.analyze import analyze
from s2trace.jobs.inputs import Inputs
from s2trace.jobs.walk import dump_request, walk_dump
from s2trace.trace.queries import diff_maps, snapshot
from s2trace.walk.ranges import clip_map
from s2trace.walk.result import WalkResult

__all__ = ["Diff", "diff_dumps", "diff_trace_dump"]


@dataclass(frozen=True)
class Diff:
    """The disagreeing ranges (MAP_DIFF columns) and the verdict line."""

    diff: pd.DataFrame
    verdict: str
    meta: dict[str, Any] = field(default_factory=dict)
    walks: tuple[WalkResult, ...] = ()

    @property
    def agree(self) -> bool:
        return self.diff.empty


def _verdict(diff: pd.DataFrame, covered: int, labels: tuple[str, str]) -> str:
    if diff.empty:
        return f"agree: {labels[0]} and {labels[1]} match over {covered:#x} bytes"
    n = int(diff["size"].to_numpy(np.uint64).sum())
    return f"DIFFER: {len(diff)} range(s), {n:#x} bytes ({labels[0]} vs {labels[1]})"


def _walk(inputs: Inputs, **options: Any) -> WalkResult:
    return walk_dump(dump_request(inputs, coalesce=True, **options))


def diff_trace_dump(
    trace: Inputs,
    dump: Inputs,
    *,
    at: float | None = None,
    vmemmap_va: int | None = None,
    **analyze_options: Any,
) -> Diff:
    """The trace's replayed ownership at ``at`` against the dump, over the trace's ranges
    (``analyze_options`` go to :func:`~s2trace.jobs.analyze.analyze`: recipes, page size...)."""
    analysis = analyze(
        trace, grounds=False, **analyze_options
    )  # the dump is compared, not a ground
    expected = snapshot(analysis.timeline, at)
    meta = {f"trace_{k}": v for k, v in analysis.meta.items()}
    meta["at"] = "end of trace" if at is None else f"{at:.6f}"
    # a kernel the trace's files state picks the dump's profile; one inferred from the events
    # only bounds the version, so the dump's profile is then detected from the dump itself
    if dump.kernel is None and analysis.meta.get("kernel_source") != "trace events":
        dump = replace(dump, kernel=analysis.kernel)
    result = _walk(dump, vmemmap_va=vmemmap_va)
    actual = clip_map(result.map, expected)
    diff = diff_maps(expected, actual)
    meta.update({f"dump_{k}": v for k, v in result.meta.items()})
    covered = int(expected["size"].to_numpy(np.uint64).sum())
    verdict = _verdict(diff, covered, ("trace", "dump"))
    return Diff(diff, verdict, {**meta, "verdict": verdict}, (result,))


def diff_dumps(a: Inputs, b: Inputs, *, vmemmap_va: int | None = None) -> Diff:
    """Every ownership change from dump ``a`` to dump ``b``."""
    if not a.dumps or not b.dumps:
        raise InputError("diff of two dumps needs two dumps (files or capture folders)")
    wa, wb = _walk(a, vmemmap_va=vmemmap_va), _walk(b, vmemmap_va=vmemmap_va)
    diff = diff_maps(wa.map, wb.map)
    meta = {f"a_{k}": v for k, v in wa.meta.items()} | {f"b_{k}": v for k, v in wb.meta.items()}
    covered = int(wa.map["size"].to_numpy(np.uint64).sum())
    verdict = _verdict(diff, covered, ("A", "B"))
    return Diff(diff, verdict, {**meta, "verdict": verdict}, (wa, wb))
