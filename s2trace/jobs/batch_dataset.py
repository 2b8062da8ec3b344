"""The dataset a batch writes: one Hive partition per capture and table, and the summary.

The client writes it (workers need no access to the output): into a staging directory beside
the target (:func:`stage_dir`), renamed into place when complete (:func:`publish`).  Results
arrive a group of captures at a time; :func:`write_group` writes each table of a group in
one pass (pyarrow's dataset writer, one ``capture=ID/part-0.parquet`` per capture), which
costs far less than a Parquet write per capture and table.  Every partition keeps the
schema the capture's own frame had, as if written alone: frames are written together only
when their columns and dtypes agree.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads

from s2trace.jobs.batch_capture import CaptureTables

__all__ = ["publish", "stage_dir", "summary_table", "write_group"]

_COUNTS = ("problems", "violations", "transitions", "diff_traced", "diff_untraced", "breaches")
_FRONT = ("capture", "path", "kind", "status", "stages", "error", "note", "kernel", "seconds")


def stage_dir(target: Path) -> Path:
    """A fresh staging directory beside ``target`` (same file system, so the rename is atomic)."""
    parent = target.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=parent))


def write_group(stage: Path, results: Sequence[CaptureTables]) -> None:
    """The non-empty tables of ``results``, one partition per capture and table."""
    by_table: dict[str, dict[tuple[tuple[str, str], ...], list[tuple[str, pd.DataFrame]]]] = {}
    for result in results:
        capture = result.summary["capture"]
        for name, frame in result.tables.items():
            if frame is None or frame.empty:
                continue
            key = tuple((str(c), _plain_dtype(t)) for c, t in frame.dtypes.items())
            by_table.setdefault(name, {}).setdefault(key, []).append((capture, frame))
    for name, kinds in by_table.items():
        for key, pairs in kinds.items():
            frames = [f for _, f in pairs]
            # One conversion per group, of the columns the frames had as categoricals or
            # objects (concatenated, categoricals of different categories become str or object).
            joined = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].copy()
            for column, dtype in key:
                if dtype == "string":
                    joined[column] = joined[column].astype("string")
            joined["capture"] = np.repeat([c for c, _ in pairs], [len(f) for f in frames])
            pads.write_dataset(
                pa.Table.from_pandas(joined, preserve_index=False),
                stage / name,
                format="parquet",
                partitioning=["capture"],
                partitioning_flavor="hive",
                basename_template="part-{i}.parquet",
                existing_data_behavior="overwrite_or_ignore",
                preserve_order=True,
                max_partitions=len(pairs) + 1,
                use_threads=False,
            )


def _stringlike(dtype: Any) -> bool:
    return isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_object_dtype(dtype)


def _plain_dtype(dtype: Any) -> str:
    """The dtype a column is written with: categoricals and objects as strings, so that every
    partition of a table has one schema."""
    return "string" if _stringlike(dtype) else str(dtype)


def summary_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per capture, sorted by capture id; counts as nullable integers.  The columns
    come in one order whatever order the rows arrived in: :data:`_FRONT`, ``problems``, the
    ``bytes_OWNER`` columns by name, the other counts, anything else by name."""
    summary = pd.DataFrame(rows).sort_values("capture", kind="stable").reset_index(drop=True)
    owners = sorted(c for c in summary.columns if c.startswith("bytes_"))
    counts = [c for c in _COUNTS if c in summary.columns]
    for c in owners + counts:
        summary[c] = summary[c].astype("Int64")
    cols = [c for c in _FRONT if c in summary.columns]
    cols += counts[:1] if counts[:1] == ["problems"] else []
    cols += owners + [c for c in counts if c not in cols]
    return summary[cols + sorted(c for c in summary.columns if c not in cols)]


def publish(stage: Path, target: Path, summary: pd.DataFrame) -> None:
    """Write the summary into the staging directory and move it to ``target``."""
    summary.to_parquet(stage / "summary.parquet", index=False)
    if target.exists():
        shutil.rmtree(target)
    os.replace(stage, target)
