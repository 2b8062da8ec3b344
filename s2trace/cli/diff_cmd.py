"""``s2trace diff``: where two ownership maps disagree, with exit status 1 when they do.

Inputs are told apart by what they are:

* ``diff CAPTURE`` -- a capture folder holding both a trace and a dump: its trace against
  its dump;
* ``diff TRACE DUMP`` (either order; TRACE a trace file or a capture folder with a trace,
  DUMP a dump file or a capture folder) -- the replayed ownership at ``--at`` (default: the
  end of the trace, :func:`s2trace.trace.queries.snapshot`) against the walked dump, over the
  ranges the trace covers (pages the trace never touches say nothing about the dump);
* ``diff DUMP_A DUMP_B`` -- two dumps (two capture folders, or files sharing the register
  options, or B with ``--vttbr-b/--vtcr-b``): every ownership change.

Dumps are walked with their page states from hyp_vmemmap when the hyp stage-1 registers and
kallsyms (or ``--vmemmap``) are known (6.14+ keeps the host state there, mem_protect.c v5.13-7.1;
docs/kernel-facts.md §KF-2.6); without them their page states read ``unknown``, which agrees with
anything (:func:`s2trace.trace.queries.diff_maps`).
"""

from __future__ import annotations

import sys
from typing import Any

import click

from s2trace.cli.options import DUMP, HYP, TRACE, inputs_from, output_options, use
from s2trace.cli.output import emit_frame, warn_problems
from s2trace.errors import InputError
from s2trace.jobs.analyze import parse_time
from s2trace.jobs.diff import Diff, diff_dumps, diff_trace_dump
from s2trace.jobs.inputs import classify, with_registers
from s2trace.numbers import parse_u64

__all__ = ["register", "run_diff"]


def _sides(targets: tuple[str, ...]) -> tuple[str | None, str | None]:
    """(trace, dump) of a trace-vs-dump diff; (None, None) for two dumps."""
    kinds = [classify(t) for t in targets]
    if len(targets) == 1:
        if kinds[0] != "capture":
            raise InputError(f"{targets[0]}: diff with one input needs a capture folder")
        return targets[0], targets[0]
    if len(targets) != 2:
        raise InputError("diff takes CAPTURE, TRACE DUMP or DUMP_A DUMP_B")
    if "trace" not in kinds:
        return None, None
    if kinds.count("trace") == 2:
        raise InputError("diff: two traces; give a trace and a dump, or two dumps")
    t = kinds.index("trace")
    return targets[t], targets[1 - t]


def _vmemmap(kw: dict[str, Any]) -> int | None:
    va = kw.get("vmemmap_va")
    return parse_u64(va, "--vmemmap") if va is not None else None


def run_diff(targets: tuple[str, ...], kw: dict[str, Any]) -> int:
    """Compare; print the disagreements; return 1 when there are any."""
    trace, dump = _sides(targets)
    out: Diff
    if trace is not None and dump is not None:
        trace_inputs = inputs_from((trace,), kw, role="trace")
        if trace_inputs.trace is None:
            raise InputError(f"{trace}: the capture names no trace (diff TRACE DUMP)")
        out = diff_trace_dump(
            trace_inputs,
            inputs_from((dump,), kw, role="dump"),
            at=parse_time(kw.get("at")),
            vmemmap_va=_vmemmap(kw),
            recipes=kw.get("recipes") or (),
            page_size=int(kw.get("page_size") or 4096),
            progress=None if sys.stderr.isatty() else False,
            use_cache=not kw.get("no_cache"),
        )
        sides: tuple[str, ...] = (dump,)
    else:
        b = inputs_from((targets[1],), kw, role="dump")
        b = with_registers(
            b,
            vttbr_el2=parse_u64(kw["vttbr_b"], "--vttbr-b") if kw.get("vttbr_b") else None,
            vtcr_el2=parse_u64(kw["vtcr_b"], "--vtcr-b") if kw.get("vtcr_b") else None,
        )
        out = diff_dumps(inputs_from((targets[0],), kw, role="dump"), b, vmemmap_va=_vmemmap(kw))
        sides = (targets[0], targets[1])
    for side, walked in zip(sides, out.walks, strict=True):
        warn_problems(walked.problems, f"the dump {side}")
    if kw["fmt"] == "table" and not kw.get("output"):
        click.echo(out.verdict)
        if not out.diff.empty:
            emit_frame(out.diff, kw)
    else:
        click.echo(f"s2trace: {out.verdict}", err=True)
        emit_frame(out.diff, kw, meta=out.meta)
    return 0 if out.agree else 1


def register(cli: click.Group) -> None:
    @cli.command("diff")
    @click.argument("targets", nargs=-1, required=True)
    @use(*DUMP, *HYP, *TRACE)
    @click.option("--vttbr-b", help="VTTBR_EL2 of the second dump (default: --vttbr).")
    @click.option("--vtcr-b", help="VTCR_EL2 of the second dump (default: --vtcr).")
    @click.option("--at", help="Compare with the trace's state at this time (default: end).")
    @output_options
    def diff_cmd(targets: tuple[str, ...], **kw: Any) -> None:
        """Compare a trace with a dump, or two dumps; exit status 1 when they disagree.

        \b
        s2trace diff sample-traces/qemu-pkvm-7.3            # its trace vs its dump
        s2trace diff ftrace.txt host-s2.elf --vttbr 0x7f709001 --vtcr 0x802d3590
        s2trace diff before/ after/                         # two capture folders
        """
        status = run_diff(targets, kw)
        if status:
            raise click.exceptions.Exit(status)
