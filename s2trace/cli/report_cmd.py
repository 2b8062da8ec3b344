"""``s2trace report CAPTURE [-o OUT_DIR]``: the whole job on one capture folder (walk, replay,
trace-vs-dump diff, violations, hyp check, plots), as text and, with ``-o``, files."""

from __future__ import annotations

from typing import Any

import click

from s2trace.cli.options import inputs_from, use
from s2trace.jobs.report import build_report, render_text

__all__ = ["register"]


def register(cli: click.Group) -> None:
    @cli.command("report")
    @click.argument("capture", type=click.Path(exists=True, file_okay=False))
    @click.option(
        "-o",
        "--output",
        "out",
        type=click.Path(file_okay=False),
        help="Write CSV tables, PNG plots and report.txt here.",
    )
    @click.option("--no-plots", is_flag=True, help="With -o: tables only.")
    @click.option("--no-check", is_flag=True, help="Skip the hyp bookkeeping check.")
    @use("strict", "no_cache")
    def report_cmd(capture: str, out: str | None, **kw: Any) -> None:
        """Walk, replay, diff trace against dump, list violations, plot: one screen.

        CAPTURE is a capture folder (capture.toml naming a dump, its registers, the kernel
        version, a trace and symbols; see docs/capture.md).  Exit status 1 when the trace
        holds violations or contradicts the dump, 2 when the input is unusable.
        """
        report = build_report(
            inputs_from((capture,), kw, role="any"),
            out_dir=out,
            plots=not kw["no_plots"],
            check=not kw["no_check"],
            strict=kw["strict"],
            use_cache=not kw["no_cache"],
        )
        click.echo(render_text(report), nl=False)
        bad = report.violations is not None and len(report.violations)
        bad = bad or len(report.disagreements)
        bad = bad or (report.check is not None and not report.check.consistent)
        if bad:
            raise click.exceptions.Exit(1)
