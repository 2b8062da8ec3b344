"""``s2trace batch``: many captures at once on Dask, into one Parquet dataset."""

from __future__ import annotations

import sys
from typing import Any

import click

__all__ = ["register"]


def register(cli: click.Group) -> None:
    @cli.command("batch")
    @click.argument("inputs", nargs=-1, required=True)
    @click.option(
        "-o",
        "--output",
        required=True,
        type=click.Path(file_okay=False),
        help="Dataset directory to write (summary.parquet and one partition per capture).",
    )
    @click.option(
        "--scheduler",
        help="An existing Dask scheduler, tcp://HOST:PORT (default: a local cluster).",
    )
    @click.option(
        "--workers", type=int, help="Worker processes of the local cluster (default: CPUs)."
    )
    @click.option("--no-check", is_flag=True, help="Skip the hyp consistency check.")
    @click.option(
        "--stages",
        help="Stages per capture, comma-separated, of summary,replay,diff,check (default: "
        "all).  A stage not run leaves its columns out (null where another capture has them) "
        "and its tables without a partition; the summary's stages column names those run.",
    )
    @click.option(
        "--per-task",
        type=int,
        help="Captures per Dask task (default: up to 32, at least 4 tasks per worker).",
    )
    @click.option("--kernel", help="Kernel version of traces given alone (e.g. 6.12).")
    @click.option("--overwrite", is_flag=True, help="Replace an existing dataset.")
    def batch_cmd(inputs: tuple[str, ...], **kw: Any) -> None:
        """Run the per-capture jobs over INPUTS on Dask and write a dataset.

        INPUTS are capture folders, dumps, traces, glob patterns, or a text file listing
        them one per line.  Per capture: walk summary, replay and violations, trace-to-dump
        diff, consistency check (--stages chooses; check + summary never reads the traces).
        A capture that fails is a summary row with its error.

        \b
        s2trace batch 'fleet/*/' -o fleet.dataset
        s2trace batch 'fleet/*/' -o fleet.dataset --stages check,summary
        s2trace batch captures.txt -o fleet.dataset --scheduler tcp://10.0.0.5:8786
        """
        from s2trace.jobs.batch import batch
        from s2trace.render import write_frame

        summary = batch(
            inputs,
            kw["output"],
            scheduler=kw["scheduler"],
            workers=kw["workers"],
            check=not kw["no_check"],
            stages=kw["stages"],
            per_task=kw["per_task"],
            kernel=kw["kernel"],
            overwrite=kw["overwrite"],
            progress=sys.stderr.isatty(),
        )
        shown = [
            c
            for c in (
                "capture",
                "kind",
                "status",
                "stages",
                "violations",
                "breaches",
                "diff_traced",
            )
            if c in summary.columns
        ]
        write_frame(summary[shown], "table", out=sys.stdout)
        failed = int((summary["status"] == "error").sum())
        click.echo(
            f"{len(summary)} captures, {failed} failed; dataset {kw['output']} "
            f"(scheduler {summary.attrs.get('scheduler')})",
            err=True,
        )
