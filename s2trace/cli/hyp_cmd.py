"""``s2trace check`` and ``s2trace hyp-map``: the hypervisor's own view of a dump.

Both take dump files with register options, or one capture folder (registers from its
``capture.toml`` or ``gdb-regs.txt``, kernel version, evidence files); options given on the
command line win over the folder's.  ``check`` exits with status 1 when an invariant is
broken (2 for unusable input, as every command).
"""

from __future__ import annotations

from typing import Any

import click

from s2trace.cli.options import DUMP, HYP, StrictInt, inputs_from, output_options, parse_u64, use
from s2trace.cli.output import emit_frame, notes, warn_problems
from s2trace.jobs.check import check
from s2trace.jobs.hyp_map import hyp_map

__all__ = ["register", "run_check", "run_hyp_map", "vmemmap_option"]


def vmemmap_option(kw: dict[str, Any]) -> int | None:
    """The ``--vmemmap`` hyp VA, when given."""
    va = kw.get("vmemmap_va")
    return parse_u64(va, "--vmemmap") if va is not None else None


def run_check(targets: tuple[str, ...], kw: dict[str, Any]) -> int:
    """``s2trace check``: print the verdict and the breaches; 1 when any invariant breaks."""
    report = check(
        inputs_from(targets, kw, role="dump"), e2h=kw.get("e2h"), vmemmap_va=vmemmap_option(kw)
    )
    result, breaches = report.result, report.breaches
    warn_problems(report.trace_problems, "the trace")
    warn_problems(result.problems, "the dump")
    if kw["fmt"] == "table" and not kw.get("output"):
        click.echo(result.verdict())
        emit_frame(result.counts(), kw)
        if len(breaches):
            limit = kw.get("limit") or len(breaches)
            click.echo(f"\nbreaches (first {min(limit, len(breaches))} of {len(breaches)}):")
            emit_frame(breaches.head(limit), kw)
        for line in result.notes:
            click.echo(f"note: {line}")
    else:
        click.echo(f"s2trace: {result.verdict()}", err=True)
        emit_frame(breaches, kw, meta={"verdict": result.verdict()})
    return 0 if report.consistent else 1


def run_hyp_map(targets: tuple[str, ...], kw: dict[str, Any]) -> None:
    """``s2trace hyp-map``: the hyp stage-1 leaves, labelled by physical address."""
    out = hyp_map(
        inputs_from(targets, kw, role="dump"),
        e2h=kw.get("e2h"),
        vmemmap_va=vmemmap_option(kw),
        coalesce=bool(kw.get("coalesce")),
    )
    warn_problems(out.trace_problems, "the trace")
    warn_problems(out.result.problems, "the dump")
    notes(out.notes)
    emit_frame(out.map, kw, meta=out.result.meta if kw["fmt"] == "table" else None)


def register(cli: click.Group) -> None:
    @cli.command("check")
    @click.argument("targets", nargs=-1, required=True)
    @use(*DUMP, *HYP, "trace", "linear_map")
    @output_options
    @click.option(
        "--limit", type=StrictInt(0), default=50, show_default=True, help="Breaches shown."
    )
    def check_cmd(targets: tuple[str, ...], **kw: Any) -> None:
        """Check pKVM's bookkeeping in a DUMP (or a capture folder) for consistency.

        \b
        s2trace check host-s2.elf --vttbr 0x7f709001 --vtcr 0x802d3590 \\
            --ttbr0-el2 0x7f301001 --tcr-el2 0x15001f5b5d53510 --kallsyms kallsyms.txt
        s2trace check sample-traces/qemu-pkvm-7.3
        """
        status = run_check(targets, kw)
        if status:
            raise click.exceptions.Exit(status)

    @cli.command("hyp-map")
    @click.argument("targets", nargs=-1, required=True)
    @use(*DUMP, *HYP, "trace", "linear_map")
    @output_options
    @click.option(
        "--coalesce", is_flag=True, help="Merge leaves that continue each other with equal fields."
    )
    def hyp_map_cmd(targets: tuple[str, ...], **kw: Any) -> None:
        """List the hypervisor's EL2 stage-1 mappings (TTBR0_EL2) in a DUMP.

        \b
        s2trace hyp-map host-s2.elf --ttbr0-el2 0x7f201001 --tcr-el2 0x5500075b5903510
        s2trace hyp-map sample-traces/qemu-pkvm-6.12 --format csv
        """
        run_hyp_map(targets, kw)
