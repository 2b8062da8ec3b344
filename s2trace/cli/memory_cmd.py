"""``s2trace regs``: the EL2 registers a dump holds, recovered from memory.

Prints, per CPU (or per copy found by the scan), VTTBR_EL2, VTCR_EL2, TTBR0_EL2, TCR_EL2,
MAIR_EL2, HCR_EL2 and TPIDR_EL2 with where each value came from, then the walk command to
run.  Exit status 2 (one line on stderr) when no usable copy is found or the CPUs disagree,
after printing what was found.  See :mod:`s2trace.hyp.init_params`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click

from s2trace.cli.options import inputs_from, use
from s2trace.errors import InputError
from s2trace.jobs.memory import recover

__all__ = ["format_registers", "register"]


def format_registers(found: Sequence[Any]) -> str:
    """The text report of :func:`s2trace.hyp.init_params.recover_registers` results."""
    lines: list[str] = []
    for r in found:
        method = "kallsyms" if r.method == "kallsyms" else "scan of RAM"
        lines.append(f"{r.label}: struct kvm_nvhe_init_params at PA {r.params_pa:#x} ({method})")
        if "located" in r.sources:
            lines.append(f"  located: {r.sources['located']}")
        for name, value in r.values().items():
            lines.append(f"  {name:<10} {value:#018x}  {r.sources.get(name, '')}")
        lines.extend(f"  note: {n}" for n in r.notes)
        if r.problem:
            lines.append(f"  unusable: {r.problem}")
    return "\n".join(lines) + "\n"


def register(cli: click.Group) -> None:
    @cli.command("regs")
    @click.argument("targets", nargs=-1, required=True)
    @use("kallsyms", "iomem", "base")
    @click.option(
        "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
    )
    def regs_cmd(targets: tuple[str, ...], fmt: str, **kw: Any) -> None:
        """Recover VTTBR_EL2, VTCR_EL2, TTBR0_EL2, TCR_EL2, MAIR_EL2, HCR_EL2 from a DUMP
        (or a capture folder's dump).

        pKVM leaves one struct kvm_nvhe_init_params per CPU in memory; this finds them
        (through --kallsyms, or by a validated scan of RAM) and says where each value
        came from.  Commands that walk a dump do the same when --vttbr/--vtcr are absent.

        \b
        s2trace regs host-s2.elf
        s2trace regs sample-traces/qemu-pkvm-6.12
        s2trace regs load.cmm --kallsyms kallsyms.txt --iomem iomem.txt
        """
        inputs = inputs_from(targets, kw, role="dump")
        out = recover(inputs)
        if fmt == "json":
            click.echo(json.dumps([r.to_dict() for r in out.found], indent=2))
        elif out.found:
            click.echo(format_registers(out.found), nl=False)
        if out.chosen is None:
            raise InputError(out.problem or f"{inputs.label}: no usable register copy")
        if fmt == "text":
            usable = sum(r.problem is None for r in out.found)
            fwb = " --fwb" if out.chosen.fwb else ""
            click.echo(
                f"{usable} usable cop{'y' if usable == 1 else 'ies'} agree; walk with: "
                f"s2trace decode {' '.join(inputs.dumps)} --vttbr {out.chosen.vttbr_el2:#x} "
                f"--vtcr {out.chosen.vtcr_el2:#x}{fwb} --summary"
            )
