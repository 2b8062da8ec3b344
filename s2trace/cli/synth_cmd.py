"""``s2trace synth SCENARIO -o DIR``: synthetic capture folders (trace + dump) for tests,
demos and the fleet benchmark."""

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
