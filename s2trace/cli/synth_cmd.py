"""``s2trace synth SCENARIO -o DIR`` (synthetic capture folders) and ``s2trace report
CAPTURE [-o OUT_DIR]`` (the whole job on one capture folder)."""

from __future__ import annotations

from typing import Any

import click

from s2trace.cli.options import StrictInt

__all__ = ["register"]


def register(cli: click.Group) -> None:
    from s2trace.synth.scenarios import SCENARIOS

    names = "\n\n".join(f"{name}: {sc.doc}" for name, sc in SCENARIOS.items())

    help_text = (
        "Write a synthetic capture folder for SCENARIO.\n\n"
        "The folder (capture.toml, trace.txt, host-s2.elf) holds a Linux 6.12 ftrace trace "
        "using s2trace's pkvm_mem_transition tracepoint and the host stage-2 dump the trace "
        f"ends in; `s2trace report DIR` reads it.  Scenarios:\n\n{names}"
    )

    @cli.command("synth", help=help_text)
    @click.argument("scenario", type=click.Choice(list(SCENARIOS)))
    @click.option(
        "-o",
        "--output",
        "out",
        required=True,
        type=click.Path(file_okay=False),
        help="Folder to write (created).",
    )
    @click.option("--size", type=StrictInt(0, 10**8), help="About this many trace events.")
    @click.option("--seed", type=StrictInt(0, 2**63 - 1), default=0, show_default=True)
    @click.option(
        "--duration",
        type=click.FloatRange(min=0, min_open=True),
        help="Seconds the workload spans.",
    )
    @click.option("--compress", is_flag=True, help="Store the dump as host-s2.elf.zst.")
    def synth_cmd(scenario: str, out: str, **kw: Any) -> None:
        from s2trace.synth import generate

        folder = generate(
            scenario,
            out,
            size=kw["size"],
            seed=kw["seed"],
            duration=kw["duration"],
            compress=kw["compress"],
        )
        click.echo(f"wrote {folder} ({', '.join(sorted(p.name for p in folder.iterdir()))})")

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
    @click.option("--strict", is_flag=True, help="Damage in the dump or trace is fatal.")
    @click.option("--no-cache", is_flag=True, help="Do not use the parsed-trace cache.")
    def report_cmd(capture: str, out: str | None, **kw: Any) -> None:
        """Walk, replay, diff trace against dump, list violations, plot: one screen.

        CAPTURE is a capture folder (capture.toml naming a dump, its registers, the kernel
        version, a trace and symbols; see docs/capture.md).  Exit status 1 when the trace
        holds violations or contradicts the dump, 2 when the input is unusable.
        """
        from s2trace.jobs.report import build_report, render_text

        report = build_report(
            capture,
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
