"""A fleet of captures at once, on Dask: per capture the usual jobs, one Parquet dataset.

:func:`batch` takes inputs as a user names them -- capture folders, dumps, traces, glob
patterns, or a text file listing them one per line -- and runs on each, in a Dask cluster
(:func:`run_capture`):

* a capture folder: the report job (:func:`s2trace.jobs.report.build_report`, without plots):
  walk summary, replay and violations when there is a trace, trace-to-dump diff, and the
  consistency check when the folder gives the hypervisor's registers;
* a dump alone: the walk job (registers recovered from the dump's memory) and its summary;
* a trace alone: the analysis job (parse, recipes, replay) and its violations.

The output is a directory (written beside, renamed into place when complete)::

    DATASET/summary.parquet                      one row per capture (status, error, counts)
    DATASET/totals/capture=ID/part-0.parquet     bytes by owner and page state
    DATASET/violations/capture=ID/part-0.parquet replay violations
    DATASET/findings/capture=ID/part-0.parquet   consistency-check breaches
    DATASET/diff/capture=ID/part-0.parquet       ranges where the replay and the dump differ
    DATASET/timings/capture=ID/part-0.parquet    seconds per capture, and where it ran

Each table is Hive-partitioned by capture (``pd.read_parquet(DATASET / "violations")`` or
``dask.dataframe.read_parquet`` give a ``capture`` column); a capture with no rows of a table
has no partition there.  A capture that fails is a summary row with ``status="error"`` and the
error's one line; the batch goes on.  Results are the same as running the jobs one capture at
a time (the tests compare them).

Dask (the optional extra ``s2trace[fleet]``) is imported lazily, here only: by default an
embedded local cluster of worker processes (one thread each) is started and closed again;
``scheduler="tcp://HOST:PORT"`` uses an existing cluster, whose workers must be able to read
the inputs.  Results come back to the caller, which writes the dataset, so workers need no
access to the output directory.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from s2trace.errors import InputError
from s2trace.jobs.analyze import analyze
from s2trace.jobs.capture import is_capture
from s2trace.jobs.report import build_report
from s2trace.jobs.walk import DumpRequest, walk_dump
from s2trace.walk.ownership import summarize

__all__ = [
    "TABLES",
    "BatchItem",
    "CaptureTables",
    "batch",
    "resolve_batch_inputs",
    "run_capture",
]

#: The partitioned tables of a batch dataset.
TABLES = ("totals", "violations", "findings", "diff", "timings")
_DUMP_SUFFIXES = (".elf", ".core", ".zst", ".gz", ".xz", ".bin", ".cmm")
_LIST_MAX_BYTES = 1 << 20


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


# ---- inputs ----------------------------------------------------------------------------
def _kind(path: Path) -> str:
    if is_capture(path):
        return "capture"
    if path.is_dir():
        raise InputError(f"{path}: a folder that is not a capture (no capture.toml)")
    if path.name.lower().endswith(_DUMP_SUFFIXES):
        return "dump"
    try:
        with open(path, "rb") as fh:
            if fh.read(4) == b"\x7fELF":
                return "dump"
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    return "trace"


def _listed(path: Path) -> list[str] | None:
    """The paths a list file names (every non-blank, non-# line an existing path), else None."""
    if not path.is_file() or path.stat().st_size > _LIST_MAX_BYTES:
        return None
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    names = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    base = path.parent
    full = [n if os.path.isabs(n) else str(base / n) for n in names]
    if names and all(glob.has_magic(f) or os.path.exists(f) for f in full):
        return full
    return None


def resolve_batch_inputs(inputs: Iterable[str | Path]) -> list[BatchItem]:
    """The captures, dumps and traces the inputs name, in order, each once."""
    paths: list[Path] = []
    for raw in inputs:
        text = str(raw)
        if glob.has_magic(text):
            hits = sorted(glob.glob(text))
            if not hits:
                raise InputError(f"{text}: the pattern matches nothing")
            paths += [Path(h) for h in hits]
            continue
        p = Path(text)
        if not p.exists():
            raise InputError(f"{text}: no such capture folder, dump, trace or list file")
        listed = _listed(p) if p.is_file() else None
        if listed is not None:
            paths += [Path(x) for x in resolve_paths(listed)]
        else:
            paths.append(p)
    seen: set[str] = set()
    items: list[BatchItem] = []
    for p in paths:
        key = str(p.resolve())
        if key in seen:
            continue
        seen.add(key)
        items.append(BatchItem(f"{len(items):05d}-{_slug(p)}", str(p), _kind(p)))
    if not items:
        raise InputError("batch: no inputs")
    return items


def resolve_paths(names: Sequence[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        if glob.has_magic(n):
            out += sorted(glob.glob(n))
        else:
            out.append(n)
    return out


def _slug(path: Path) -> str:
    name = path.name or path.resolve().name
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return keep[:60] or "capture"


# ---- one capture ---------------------------------------------------------------------------
def run_capture(item: BatchItem, check: bool = True, kernel: str | None = None) -> CaptureTables:
    """The jobs for one input (module docstring); an error becomes the summary's ``error``.
    ``kernel``: the kernel version of traces given alone (capture folders name their own)."""
    t0 = time.perf_counter()
    row: dict[str, Any] = {
        "capture": item.capture,
        "path": item.path,
        "kind": item.kind,
        "status": "ok",
        "error": None,
    }
    out = CaptureTables(row)
    try:
        if item.kind == "capture":
            _from_report(item, check, out)
        elif item.kind == "dump":
            walked = walk_dump(DumpRequest(specs=(item.path,), coalesce=True))
            _totals(summarize(walked).by_state, out)
            row["problems"] = len(walked.problems.problems)
        else:
            a = analyze(item.path, kernel=kernel, progress=False, use_cache=False)
            _trace(a, out)
    except Exception as exc:  # one failing capture is a row, never a stopped batch
        row["status"] = "error"
        row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    seconds = time.perf_counter() - t0
    row["seconds"] = seconds
    out.tables["timings"] = pd.DataFrame(
        {"seconds": [seconds], "host": [socket.gethostname()], "pid": [os.getpid()]}
    )
    return out


def _from_report(item: BatchItem, check: bool, out: CaptureTables) -> None:
    report = build_report(item.path, plots=False, check=check, use_cache=False)
    row = out.summary
    row["kernel"] = report.capture.kernel
    row["problems"] = len(report.walk.problems.problems)
    _totals(report.summary.by_state, out)
    if report.analysis is not None:
        _trace(report.analysis, out)
    if report.diff is not None:
        out.tables["diff"] = report.diff
        traced = report.diff["traced"].to_numpy(dtype=bool)
        row["diff_traced"] = int(traced.sum())
        row["diff_untraced"] = int((~traced).sum())
    if report.check is not None:
        out.tables["findings"] = report.check.breaches
        row["breaches"] = len(report.check.breaches)


def _trace(analysis: Any, out: CaptureTables) -> None:
    out.tables["violations"] = analysis.violations
    out.summary["violations"] = len(analysis.violations)
    out.summary["transitions"] = len(analysis.transitions)
    out.summary.setdefault("kernel", analysis.kernel)


def _totals(by_state: pd.DataFrame, out: CaptureTables) -> None:
    out.tables["totals"] = by_state
    bytes_col = next(c for c in by_state.columns if c.startswith("bytes"))
    owners = by_state.groupby("owner", observed=True)[bytes_col].sum()
    for owner, n in owners.items():
        out.summary[f"bytes_{owner}"] = int(n)


# ---- the fleet -------------------------------------------------------------------------
def batch(
    inputs: Iterable[str | Path],
    output: str | Path | None = None,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    check: bool = True,
    kernel: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> pd.DataFrame:
    """Run every input on Dask and write the dataset to ``output`` (module docstring).

    Returns the summary table (one row per capture, sorted by capture id); its ``attrs``
    name the ``dataset`` written (or None) and the ``scheduler`` used.  ``workers``:
    processes of the embedded cluster (default: the CPU count); ignored with ``scheduler``.
    ``kernel``: the kernel version of traces given alone.
    """
    items = resolve_batch_inputs(inputs)
    target = Path(output) if output is not None else None
    if target is not None and target.exists() and not overwrite:
        raise InputError(f"{target}: exists (give --overwrite to replace it)")
    from dask.distributed import Client, LocalCluster, as_completed  # lazy: optional extra

    cluster = None
    if scheduler is None:
        cluster = LocalCluster(
            n_workers=workers or os.cpu_count() or 1,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            host="127.0.0.1",
        )
        client = Client(cluster)
    else:
        client = Client(scheduler, timeout="30s")
    address = str(client.scheduler.address) if client.scheduler else str(scheduler)
    stage = _stage(target)
    rows: list[dict[str, Any]] = []
    try:
        futures = client.map(run_capture, items, check=check, kernel=kernel, pure=False)
        bar = _bar(len(items), progress)
        for future in as_completed(futures):
            result: CaptureTables = future.result()
            future.release()
            rows.append(result.summary)
            if stage is not None:
                _write_tables(stage, result)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
    except BaseException:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        raise
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    summary = _summary(rows)
    if stage is not None and target is not None:
        summary.to_parquet(stage / "summary.parquet", index=False)
        if target.exists():
            shutil.rmtree(target)
        os.replace(stage, target)
    summary.attrs.update(dataset=str(target) if target else None, scheduler=address)
    return summary


def _summary(rows: list[dict[str, Any]]) -> pd.DataFrame:
    summary = pd.DataFrame(rows).sort_values("capture", kind="stable").reset_index(drop=True)
    counts = [c for c in summary.columns if c.startswith("bytes_")]
    counts += [
        c
        for c in ("problems", "transitions", "violations", "diff_traced", "diff_untraced")
        if c in summary.columns
    ]
    if "breaches" in summary.columns:
        counts.append("breaches")
    for c in counts:
        summary[c] = summary[c].astype("Int64")
    front = ["capture", "path", "kind", "status", "error", "kernel", "seconds"]
    cols = [c for c in front if c in summary.columns]
    return summary[cols + [c for c in summary.columns if c not in cols]]


def _stage(target: Path | None) -> Path | None:
    if target is None:
        return None
    parent = target.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=parent))


def _write_tables(stage: Path, result: CaptureTables) -> None:
    capture = result.summary["capture"]
    for name, frame in result.tables.items():
        if frame is None or frame.empty:
            continue
        part = stage / name / f"capture={capture}"
        part.mkdir(parents=True, exist_ok=True)
        _plain(frame).to_parquet(part / "part-0.parquet", index=False)


def _plain(frame: pd.DataFrame) -> pd.DataFrame:
    """Categoricals as strings, so that every partition of a table has one schema."""
    out = frame.copy()
    for c in out.columns:
        if isinstance(out[c].dtype, pd.CategoricalDtype) or out[c].dtype == object:
            out[c] = out[c].astype("string")
    return out


def _bar(total: int, progress: bool) -> Any:
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="capture", desc="batch", leave=False)
