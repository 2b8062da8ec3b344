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

import os
import sys
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    import pandas as pd

from s2trace.errors import InputError

__all__ = ["register", "run_diff"]


def _kind(target: str) -> str:
    """``capture`` (a capture folder), ``dump`` (a dump file) or ``trace`` (anything else
    that exists: a trace file)."""
    from s2trace.cli.decode_cmd import _looks_like_dump
    from s2trace.jobs.capture import is_capture

    if is_capture(target):
        return "capture"
    if "@" in target or _looks_like_dump((target,)):
        return "dump"
    if not os.path.exists(target):  # False also for a name too long to look up
        raise InputError(f"{target}: no such file or capture folder")
    return "trace"


def _walk_side(target: str, kw: dict[str, Any], suffix: str = "") -> Any:
    """Walk one dump (file or capture folder) with vmemmap states when possible."""
    from s2trace.cli.walk_cmd import open_walk

    side = dict(kw)
    if suffix:
        for key in ("vttbr", "vtcr"):
            side[key] = kw.get(key + suffix) or kw.get(key)
    side["coalesce"] = True
    result = open_walk((target,), side)
    if len(result.problems):
        kinds = result.problems.by_kind()
        click.echo(f"s2trace: warning: {target}: problems in the dump ({kinds})", err=True)
    return result


def _trace_side(target: str, kw: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    from s2trace.jobs.analyze import analyze, parse_linear_map, parse_time
    from s2trace.trace.queries import snapshot

    analysis = analyze(
        target,
        recipes=kw.get("recipes") or (),
        kernel=kw.get("kernel"),
        linear_map=parse_linear_map(kw.get("linear_map")),
        progress=None if sys.stderr.isatty() else False,
        grounds=False,  # the dump is what the trace is compared with, not its ground
    )
    at = parse_time(kw.get("at"))
    meta = {f"trace_{k}": v for k, v in analysis.meta.items()}
    meta["at"] = "end of trace" if at is None else f"{at:.6f}"
    return snapshot(analysis.timeline, at), meta


def run_diff(targets: tuple[str, ...], kw: dict[str, Any]) -> int:
    """Compare; print the disagreements; return 1 when there are any."""
    import numpy as np

    from s2trace.render import write_frame
    from s2trace.trace.queries import diff_maps
    from s2trace.walk.ranges import clip_map

    kinds = [_kind(t) for t in targets]
    meta: dict[str, Any] = {}
    trace: str | None
    dump: str | None
    labels: tuple[str, str]
    if len(targets) == 1:
        from s2trace.jobs.capture import load_capture

        if kinds[0] != "capture":
            raise InputError(f"{targets[0]}: diff with one input needs a capture folder")
        if load_capture(targets[0]).trace is None:
            raise InputError(f"{targets[0]}: the capture names no trace (diff TRACE DUMP)")
        trace, dump = targets[0], targets[0]
    elif len(targets) == 2:
        trace = dump = None
        if "trace" in kinds:
            if kinds.count("trace") == 2:
                raise InputError("diff: two traces; give a trace and a dump, or two dumps")
            t = kinds.index("trace")
            trace, dump = targets[t], targets[1 - t]
    else:
        raise InputError("diff takes CAPTURE, TRACE DUMP or DUMP_A DUMP_B")

    if trace is not None and dump is not None:
        expected, meta = _trace_side(trace, kw)
        # a kernel the trace's files state picks the dump's profile; one inferred from the
        # events only bounds the version, so the dump's profile is detected from the dump
        if kw.get("kernel") is None and meta.get("trace_kernel_source") != "trace events":
            kw = {**kw, "kernel": meta.get("trace_kernel")}
        result = _walk_side(dump, kw)
        actual = clip_map(result.map, expected)
        labels = ("trace", "dump")
        meta.update({f"dump_{k}": v for k, v in result.meta.items()})
    else:
        a, b = _walk_side(targets[0], kw), _walk_side(targets[-1], kw, suffix="_b")
        expected, actual = a.map, b.map
        labels = ("A", "B")
        meta.update({f"a_{k}": v for k, v in a.meta.items()})
        meta.update({f"b_{k}": v for k, v in b.meta.items()})
    diff = diff_maps(expected, actual)
    covered = int(expected["size"].to_numpy(np.uint64).sum())
    if diff.empty:
        verdict = f"agree: {labels[0]} and {labels[1]} match over {covered:#x} bytes"
    else:
        n = int(diff["size"].to_numpy(np.uint64).sum())
        verdict = f"DIFFER: {len(diff)} range(s), {n:#x} bytes ({labels[0]} vs {labels[1]})"
    meta["verdict"] = verdict
    if kw["fmt"] == "table" and not kw.get("output"):
        click.echo(verdict)
        if not diff.empty:
            write_frame(diff, "table", out=sys.stdout)
    else:
        click.echo(f"s2trace: {verdict}", err=True)
        write_frame(diff, kw["fmt"], out=sys.stdout, path=kw.get("output"), meta=meta)
    return 0 if diff.empty else 1


def register(cli: click.Group) -> None:
    from s2trace.cli.options import output_options
    from s2trace.cli.walk_cmd import walk_options

    @cli.command("diff")
    @click.argument("targets", nargs=-1, required=True)
    @walk_options
    @click.option("--vttbr-b", help="VTTBR_EL2 of the second dump (default: --vttbr).")
    @click.option("--vtcr-b", help="VTCR_EL2 of the second dump (default: --vtcr).")
    @click.option("--ttbr0-el2", help="TTBR0_EL2: read the dump's page states from the vmemmap.")
    @click.option("--tcr-el2", help="TCR_EL2 (with --ttbr0-el2).")
    @click.option("--hcr-el2", help="HCR_EL2 (E2H, FWB).")
    @click.option("--vmemmap", "vmemmap_va", help="Hyp VA of hyp_vmemmap.")
    @click.option("--at", help="Compare with the trace's state at this time (default: end).")
    @click.option(
        "--recipes",
        multiple=True,
        type=click.Path(dir_okay=False),
        help="Extra recipe TOML file(s) for the trace.",
    )
    @click.option("--kernel", help="Kernel version (default: the capture's; trace rules, profile).")
    @click.option("--linear-map", help="Kernel linear map VA=PA of the trace's addresses.")
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


def __getattr__(name: str) -> Any:
    """``clip_map`` moved to :mod:`s2trace.walk.ranges`; still importable from here, lazily
    (importing the CLI must not import pandas)."""
    if name == "clip_map":
        from s2trace.walk.ranges import clip_map

        return clip_map
    raise AttributeError(name)
