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

from s2trace.cli.options import parse_u64

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
    @click.argument("dump", nargs=-1, required=True)
    @click.option(
        "--kallsyms",
        "kallsyms_file",
        help="/proc/kallsyms of the dumped boot: find the per-CPU structs through symbols "
        "(default: scan RAM).",
    )
    @click.option(
        "--iomem",
        "iomem_file",
        help="/proc/iomem of the dumped boot (places the kernel image; with --kallsyms).",
    )
    @click.option("--base", help="Physical address of raw images (default 0).")
    @click.option(
        "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
    )
    def regs_cmd(
        dump: tuple[str, ...],
        kallsyms_file: str | None,
        iomem_file: str | None,
        base: str | None,
        fmt: str,
    ) -> None:
        """Recover VTTBR_EL2, VTCR_EL2, TTBR0_EL2, TCR_EL2, MAIR_EL2, HCR_EL2 from a DUMP.

        pKVM leaves one struct kvm_nvhe_init_params per CPU in memory; this finds them
        (through --kallsyms, or by a validated scan of RAM) and says where each value
        came from.  Commands that walk a dump do the same when --vttbr/--vtcr are absent.

        \b
        s2trace regs host-s2.elf
        s2trace regs load.cmm --kallsyms kallsyms.txt --iomem iomem.txt
        """
        from s2trace.hyp.init_params import consistent_registers, recover_registers
        from s2trace.io import open_memory

        memory = open_memory(list(dump), base=parse_u64(base, "--base") if base is not None else 0)
        try:
            found = recover_registers(memory, kallsyms_file, iomem_file)
        finally:
            memory.close()
        if fmt == "json":
            click.echo(json.dumps([r.to_dict() for r in found], indent=2))
        elif found:
            click.echo(format_registers(found), nl=False)
        chosen = consistent_registers(found, dump[0])
        if fmt == "text":
            usable = sum(r.problem is None for r in found)
            fwb = " --fwb" if chosen.fwb else ""
            click.echo(
                f"{usable} usable cop{'y' if usable == 1 else 'ies'} agree; walk with: "
                f"s2trace decode {' '.join(dump)} --vttbr {chosen.vttbr_el2:#x} "
                f"--vtcr {chosen.vtcr_el2:#x}{fwb} --summary"
            )
