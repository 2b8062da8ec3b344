"""One capture of a batch, on a worker: the stages asked for, as a summary row and tables.

:func:`run_capture` runs the stages (:data:`STAGES`) that apply to one input
(:class:`BatchItem`):

* a capture folder: the report job (:func:`s2trace.jobs.report.build_report`, without plots
  or memcache naming).  Its walk always runs (every row counts the walk's problems);
  ``summary`` keeps its totals by owner and page state, ``replay`` reads the trace and keeps
  the violations, ``diff`` compares the replay with the dump (it needs the replay, so it runs
  it), ``check`` checks the hyp bookkeeping when the folder gives TTBR0_EL2 and TCR_EL2;
* a dump alone: ``summary`` (the walk job, registers recovered from the dump's memory);
* a trace alone: ``replay`` (the analysis job: parse, recipes, replay).

Every row says which stages it holds results of (``stages``, comma-separated, in
:data:`STAGES` order): a stage that was not asked for, or does not apply (a capture without
a trace has no replay, one without TTBR0_EL2/TCR_EL2 no check), leaves its columns null or
absent and its tables without a partition -- never a zero -- and a chosen stage that does not
apply is named in ``note`` with the reason.  An input none of the chosen stages applies to is
a row with ``status="skipped"``, empty ``stages`` and a ``note`` saying why.  An exception is a
row with ``status="error"``, its one line, and nothing else (no stages, no tables but its
timing).

:func:`run_group` runs several inputs in one Dask task, so that the scheduler's cost per task
(a few ms) and the per-call set-up are paid once per group; what every capture shares
(profiles, rule and recipe tables, the C library handle) is loaded once per worker process by
the modules that own it.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from s2trace.errors import InputError
from s2trace.jobs.analyze import analyze
from s2trace.jobs.report import build_report
from s2trace.jobs.walk import walk_dump, walk_request
from s2trace.walk.ownership import summarize

__all__ = [
    "STAGES",
    "TABLES",
    "BatchItem",
    "CaptureTables",
    "parse_stages",
    "run_capture",
    "run_group",
]

#: The per-capture stages, in the order they run.
STAGES = ("summary", "replay", "diff", "check")
#: The partitioned tables of a batch dataset.
TABLES = ("totals", "violations", "findings", "diff", "timings")


@dataclass(frozen=True)
class BatchItem:
    """One input of a batch: its dataset id, path and kind (capture, dump or trace)."""

    capture: str
    path: str
    kind: str


@dataclass
class CaptureTables:
    """What one capture gave: a summary row and its rows of each table."""

    summary: dict[str, Any]
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)


def parse_stages(stages: str | Iterable[str] | None) -> tuple[str, ...]:
    """The stages named (comma-separated text or names), in :data:`STAGES` order; None: all."""
    if stages is None:
        return STAGES
    names = stages.split(",") if isinstance(stages, str) else list(stages)
    chosen = {n.strip() for n in names if n.strip()}
    unknown = sorted(chosen - set(STAGES))
    if unknown or not chosen:
        what = f"unknown stage(s) {', '.join(unknown)}" if unknown else "no stage named"
        raise InputError(f"--stages: {what}; choose from {','.join(STAGES)}")
    return tuple(s for s in STAGES if s in chosen)


def run_group(
    items: Sequence[BatchItem], stages: Sequence[str] = STAGES, kernel: str | None = None
) -> list[CaptureTables]:
    """:func:`run_capture` for each item, in order (one Dask task)."""
    return [run_capture(item, stages=stages, kernel=kernel) for item in items]


def run_capture(
    item: BatchItem,
    check: bool = True,
    kernel: str | None = None,
    stages: Sequence[str] = STAGES,
) -> CaptureTables:
    """The ``stages`` for one input (module docstring); ``check=False`` drops ``check``.
    ``kernel``: the kernel version of traces given alone (capture folders name their own)."""
    t0 = time.perf_counter()
    chosen = {s for s in stages if check or s != "check"}
    row: dict[str, Any] = {
        "capture": item.capture,
        "path": item.path,
        "kind": item.kind,
        "status": "ok",
        "error": None,
    }
    out = CaptureTables(row)
    try:
        skipped = _run(item, chosen, kernel, out)
        row.setdefault("stages", "")
        if skipped:
            row["status"] = "skipped"
            row["note"] = skipped
    except Exception as exc:  # one failing capture is a row, never a stopped batch
        # Nothing of a failed capture is kept but its error: no partial counts or tables.
        row = {k: row[k] for k in ("capture", "path", "kind")}
        row.update(status="error", stages=None, error=f"{type(exc).__name__}: {exc}")
        row["error"] = row["error"].splitlines()[0]
        out = CaptureTables(row)
    seconds = time.perf_counter() - t0
    row["seconds"] = seconds
    out.tables["timings"] = pd.DataFrame(
        {"seconds": [seconds], "host": [socket.gethostname()], "pid": [os.getpid()]}
    )
    return out


def _run(item: BatchItem, chosen: set[str], kernel: str | None, out: CaptureTables) -> str:
    """Run what applies; the reason when nothing does."""
    if item.kind == "capture":
        _from_report(item, chosen, out)
    elif item.kind == "dump":
        if "summary" not in chosen:
            return "a dump alone has only the summary stage"
        walked = walk_dump(walk_request(item.path, coalesce=True))
        _totals(summarize(walked).by_state, out)
        out.summary["problems"] = len(walked.problems.problems)
        _ran(out, {"summary"}, chosen, "a dump alone has only the summary stage")
    else:
        if "replay" not in chosen:
            return "a trace alone has only the replay stage"
        _trace(analyze(item.path, kernel=kernel, progress=False, use_cache=False), out)
        _ran(out, {"replay"}, chosen, "a trace alone has only the replay stage")
    return ""


def _ran(out: CaptureTables, ran: set[str], chosen: set[str], why: str | dict[str, str]) -> None:
    """Record the stages that ran, and a note naming the chosen ones that did not and why."""
    out.summary["stages"] = ",".join(s for s in STAGES if s in ran)
    missed = [s for s in STAGES if s in chosen - ran]
    if not missed:
        return
    if isinstance(why, str):
        out.summary["note"] = f"no {', '.join(missed)}: {why}"
    else:
        out.summary["note"] = "; ".join(f"no {s}: {why[s]}" for s in missed)


def _from_report(item: BatchItem, chosen: set[str], out: CaptureTables) -> None:
    report = build_report(
        item.path,
        plots=False,
        check="check" in chosen,
        trace=bool(chosen & {"replay", "diff"}),
        memcache=False,
        use_cache=False,
    )
    row = out.summary
    row["kernel"] = report.capture.kernel
    row["problems"] = len(report.walk.problems.problems)
    if "summary" in chosen:
        _totals(report.summary.by_state, out)
    if report.analysis is not None and "replay" in chosen:
        _trace(report.analysis, out)
    if report.diff is not None and "diff" in chosen:
        out.tables["diff"] = report.diff
        traced = report.diff["traced"].to_numpy(dtype=bool)
        row["diff_traced"] = int(traced.sum())
        row["diff_untraced"] = int((~traced).sum())
    if report.check is not None:
        out.tables["findings"] = report.check.breaches
        row["breaches"] = len(report.check.breaches)
    ran = {"summary"} & chosen
    ran |= {"replay"} if report.analysis is not None and "replay" in chosen else set()
    ran |= {"diff"} if report.diff is not None and "diff" in chosen else set()
    ran |= {"check"} if report.check is not None else set()
    no_trace = "the capture has no trace"
    _ran(
        out,
        ran,
        chosen,
        {
            "replay": no_trace,
            "diff": no_trace,
            "check": "capture.toml lacks one of VTTBR_EL2, VTCR_EL2, TTBR0_EL2, TCR_EL2",
        },
    )


def _trace(analysis: Any, out: CaptureTables) -> None:
    out.tables["violations"] = analysis.violations
    out.summary["violations"] = len(analysis.violations)
    out.summary["transitions"] = analysis.meta["transitions"]  # counted: not loaded
    out.summary.setdefault("kernel", analysis.kernel)


def _totals(by_state: pd.DataFrame, out: CaptureTables) -> None:
    out.tables["totals"] = by_state
    bytes_col = next(c for c in by_state.columns if c.startswith("bytes"))
    owners = by_state.groupby("owner", observed=True)[bytes_col].sum()
    for owner, n in owners.items():
        out.summary[f"bytes_{owner}"] = int(n)
