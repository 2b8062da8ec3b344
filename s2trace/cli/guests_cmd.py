"""``s2trace guests``: the VMs the hypervisor holds and the reverse map of their pages.

Takes dump files with register options, or one capture folder (as ``check``); the work is
the guests job's (:mod:`s2trace.jobs.guests`).
"""

from __future__ import annotations

from typing import Any

import click

from s2trace.cli.options import DUMP, HYP, inputs_from, output_options, parse_u64, use
from s2trace.cli.output import emit_frame, notes, warn_problems
from s2trace.jobs.guests import guests

__all__ = ["register", "run_guests"]


def run_guests(targets: tuple[str, ...], kw: dict[str, Any]) -> None:
    """Find the guests and print the VMs and (or) their pages."""
    table = parse_u64(kw["vm_table"], "--vm-table") if kw.get("vm_table") else None
    found = guests(inputs_from(targets, kw, role="dump"), vm_table=table, e2h=kw.get("e2h"))
    result = found.result
    warn_problems(result.problems, "the dump")
    notes(found.notes)
    show = kw.get("show") or "both"
    if kw["fmt"] == "table" and not kw.get("output") and show == "both":
        click.echo(f"# VMs ({len(result.vms)}), vm_table at hyp VA {result.meta['vm_table']}")
        emit_frame(result.vms, kw)
        click.echo(f"\n# guest pages ({len(result.pages)})")
        emit_frame(result.pages, kw)
        return
    frame = result.pages if show == "pages" else result.vms
    emit_frame(frame, kw, meta=result.meta)


def register(cli: click.Group) -> None:
    @cli.command("guests")
    @click.argument("targets", nargs=-1, required=True)
    @use(*DUMP, *HYP)
    @output_options
    @click.option("--vm-table", help="Hyp VA of the VM table (the value of vm_table).")
    @click.option(
        "--show",
        type=click.Choice(["both", "vms", "pages"]),
        default=None,
        help="What to print (default both; csv/json/parquet print one: vms unless 'pages').",
    )
    def guests_cmd(targets: tuple[str, ...], **kw: Any) -> None:
        """List the VMs the hypervisor holds, their stage-2 tables and their pages.

        \b
        s2trace guests sample-traces/qemu-pkvm-7.3
        s2trace guests host-s2.elf --ttbr0-el2 0x7f201001 --tcr-el2 0x5500075b5903510 \\
            --kallsyms kallsyms.txt --iomem iomem.txt --show pages --format csv
        """
        run_guests(targets, kw)
