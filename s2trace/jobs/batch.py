"""A fleet of captures at once, on Dask: per capture the usual jobs, one Parquet dataset.

:func:`batch` takes inputs as a user names them -- capture folders, dumps, traces, glob
patterns, or a text file listing them one per line (:func:`resolve_batch_inputs`) -- and runs
the chosen stages on each in a Dask cluster (:mod:`s2trace.jobs.batch_capture`: ``summary``,
``replay``, ``diff``, ``check``; all by default), several captures per task.

The output is a directory (written beside, renamed into place when complete;
:mod:`s2trace.jobs.batch_dataset`)::

    DATASET/summary.parquet                      one row per capture (status, stages, counts)
    DATASET/totals/capture=ID/part-0.parquet     bytes by owner and page state
    DATASET/violations/capture=ID/part-0.parquet replay violations
    DATASET/findings/capture=ID/part-0.parquet   consistency-check breaches
    DATASET/diff/capture=ID/part-0.parquet       ranges where the replay and the dump differ
    DATASET/timings/capture=ID/part-0.parquet    seconds per capture, and where it ran

Each table is Hive-partitioned by capture (``pd.read_parquet(DATASET / "violations")`` or
``dask.dataframe.read_parquet`` give a ``capture`` column); a capture with no rows of a table
has no partition there.  The summary's ``stages`` names the stages each row holds results of;
a stage not run (not chosen, or not applicable: then ``note`` says why) has null or absent
columns and no partitions, never zeros.  A capture that fails is a summary row with
``status="error"`` and the error's one line, and nothing else (so is every capture of a task
whose worker died); the batch goes on.
Results are the same as running :func:`~s2trace.jobs.batch_capture.run_capture` one capture
at a time (the tests compare them).

Dask (the optional extra ``s2trace[fleet]``) is imported lazily, here only: by default an
embedded local cluster of worker processes (one thread each, keeping freed memory for reuse:
:func:`s2trace.allocator.keep_freed_memory`) is started and closed again;
``scheduler="tcp://HOST:PORT"`` uses an existing cluster, whose workers must be able to read
the inputs.  Results come back to the caller, which writes the dataset, so workers need no
access to the output directory.
"""

from __future__ import annotations

import glob
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from s2trace.allocator import keep_freed_memory
from s2trace.errors import InputError
from s2trace.files import is_regular, read_text
from s2trace.io.compressed import is_compressed, plain_name
from s2trace.io.elfcore import ELF_MAGIC
from s2trace.jobs.batch_capture import (
    STAGES,
    TABLES,
    BatchItem,
    CaptureTables,
    parse_stages,
    run_capture,
    run_group,
)
from s2trace.jobs.batch_dataset import publish, stage_dir, summary_table, write_group
from s2trace.jobs.capture import is_capture

__all__ = [
    "STAGES",
    "TABLES",
    "BatchItem",
    "CaptureTables",
    "batch",
    "resolve_batch_inputs",
    "run_capture",
]

#: Names of dump files by convention (judged without a compression suffix: a zstd-compressed
#: ``host-s2.elf.zst`` is a dump, ``ftrace.txt.zst`` a trace).
_DUMP_NAMES = (".elf", ".core", ".vmcore", ".bin", ".img", ".raw", ".mem", ".dump", ".dmp", ".cmm")
_LIST_MAX_BYTES = 1 << 20
#: Captures per Dask task at most, and tasks per worker at least (load balance at the end).
_GROUP_MAX = 32
_TASKS_PER_WORKER = 4


# ---- inputs ----------------------------------------------------------------------------
# Kept small on purpose: the paths a user names become (id, path, kind) items.  The kind rule
# is the one the other commands use for a file: a capture folder, a dump (ELF magic or a dump
# name, compressed files by their inner name), else a trace.
def _kind(path: Path) -> str:
    if is_capture(path):
        return "capture"
    if os.path.isdir(path):
        raise InputError(f"{path}: a folder that is not a capture (no capture.toml)")
    name = plain_name(path).lower()
    if name.endswith(_DUMP_NAMES) or name == "dump_info.txt":
        return "dump"
    if is_compressed(path) or not is_regular(path):
        return "trace"  # read (and refused, if special) by the trace reader
    try:
        with open(path, "rb") as fh:
            return "dump" if fh.read(len(ELF_MAGIC)) == ELF_MAGIC else "trace"
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None


def _listed(path: Path) -> list[str] | None:
    """The paths a list file names (every non-blank, non-# line an existing path), else None."""
    if not is_regular(path) or path.stat().st_size > _LIST_MAX_BYTES:
        return None
    try:
        lines = read_text(path, "a list of inputs", limit=_LIST_MAX_BYTES).splitlines()
    except InputError:
        return None
    names = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    full = [n if os.path.isabs(n) else str(path.parent / n) for n in names]
    if names and all(glob.has_magic(f) or os.path.exists(f) for f in full):
        return [hit for f in full for hit in (sorted(glob.glob(f)) if glob.has_magic(f) else [f])]
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
        if not os.path.exists(p):
            raise InputError(f"{text}: no such capture folder, dump, trace or list file")
        listed = _listed(p) if os.path.isfile(p) else None
        paths += [Path(x) for x in listed] if listed is not None else [p]
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


def _slug(path: Path) -> str:
    name = path.name or path.resolve().name
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return keep[:60] or "capture"


# ---- the fleet -------------------------------------------------------------------------
def batch(
    inputs: Iterable[str | Path],
    output: str | Path | None = None,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    check: bool = True,
    stages: str | Iterable[str] | None = None,
    per_task: int | None = None,
    kernel: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> pd.DataFrame:
    """Run every input on Dask and write the dataset to ``output`` (module docstring).

    Returns the summary table (one row per capture, sorted by capture id); its ``attrs``
    name the ``dataset`` written (or None), the ``scheduler`` used, the ``stages`` run and
    the captures ``per_task``.  ``workers``: processes of the embedded cluster (default: the
    CPU count); ignored with ``scheduler``.  ``stages``: names or comma-separated text (None:
    all of :data:`STAGES`); ``check=False`` drops ``check``.  ``per_task``: captures per
    Dask task (None: up to 32, at least 4 tasks per worker).  ``kernel``: the kernel version
    of traces given alone.
    """
    chosen = tuple(s for s in parse_stages(stages) if check or s != "check")
    if not chosen:
        raise InputError("--stages: only check was named, and --no-check drops it")
    if per_task is not None and per_task < 1:
        raise InputError(f"--per-task {per_task}: expected a count of at least 1")
    items = resolve_batch_inputs(inputs)
    target = Path(output) if output is not None else None
    if target is not None and target.exists() and not overwrite:
        raise InputError(f"{target}: exists (give --overwrite to replace it)")
    from dask.distributed import Client, LocalCluster  # lazy: the optional extra

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
        # Our own worker processes: Dask starts them with MALLOC_TRIM_THRESHOLD_=65536, so
        # every freed array goes back to the kernel and is faulted in afresh (~15 % of a
        # capture's time, measured); they keep freed memory as the s2trace command does.
        client.run(keep_freed_memory)
    else:
        client = Client(scheduler, timeout="30s")
    address = str(client.scheduler.address) if client.scheduler else str(scheduler)
    stage = stage_dir(target) if target is not None else None
    try:
        size = per_task or _group_size(len(items), len(client.scheduler_info()["workers"]))
        rows = _run_all(client, items, chosen, kernel, size, stage, progress)
    except BaseException:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        raise
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    summary = summary_table(rows)
    if stage is not None and target is not None:
        publish(stage, target, summary)
    summary.attrs.update(
        dataset=str(target) if target else None,
        scheduler=address,
        stages=",".join(chosen),
        per_task=size,
    )
    return summary


def _group_size(n: int, workers: int) -> int:
    """Captures per task: few tasks (each costs the scheduler a few ms), yet enough of them
    that no worker idles long at the end."""
    return max(1, min(_GROUP_MAX, n // (max(workers, 1) * _TASKS_PER_WORKER)))


def _run_all(
    client: Any,
    items: Sequence[BatchItem],
    stages: tuple[str, ...],
    kernel: str | None,
    size: int,
    stage: Path | None,
    progress: bool,
) -> list[dict[str, Any]]:
    """Submit the groups, collect rows, write each group's tables as it arrives."""
    from dask.distributed import as_completed  # lazy: the optional extra

    groups = [list(items[i : i + size]) for i in range(0, len(items), size)]
    futures = client.map(run_group, groups, stages=stages, kernel=kernel, pure=False)
    which = {f.key: g for f, g in zip(futures, groups, strict=True)}
    rows: list[dict[str, Any]] = []
    bar = _bar(len(items), progress)
    for future in as_completed(futures):
        group = which[future.key]
        try:
            results: list[CaptureTables] = future.result()
        except Exception as exc:  # the worker died or the task was lost: rows, not a stop
            results = [_lost(item, exc) for item in group]
        future.release()
        rows += [r.summary for r in results]
        if stage is not None:
            write_group(stage, results)
        if bar is not None:
            bar.update(len(group))
    if bar is not None:
        bar.close()
    return rows


def _lost(item: BatchItem, exc: Exception) -> CaptureTables:
    line = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return CaptureTables(
        {
            "capture": item.capture,
            "path": item.path,
            "kind": item.kind,
            "status": "error",
            "stages": None,
            "error": f"task lost ({line})",
        }
    )


def _bar(total: int, progress: bool) -> Any:
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="capture", desc="batch", leave=False)
