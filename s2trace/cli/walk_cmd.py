"""Walking dumps from the command line: ``s2trace decode DUMP ...``, ``trim``, ``scan``.

Each command: options -> :func:`~s2trace.cli.options.inputs_from` -> a job in
:mod:`s2trace.jobs` -> a renderer.  A capture folder is accepted wherever a dump is.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from s2trace.arch.registers import config_explicit
from s2trace.cli.options import DUMP, OUTPUT, StrictInt, inputs_from, parse_u64, use
from s2trace.cli.output import emit_frame, emit_text, notes, warn, warn_problems
from s2trace.errors import InputError
from s2trace.jobs.labels import labelled
from s2trace.jobs.memory import scan_roots, trim_dump
from s2trace.jobs.walk import DumpRequest, can_stream, dump_request, state_notes, walk_dump
from s2trace.jobs.walk import write_map as write_map_streamed
from s2trace.render import HEX_COLUMNS, write_frame
from s2trace.walk.ownership import summarize
from s2trace.walk.ptdump import ptdump_lines

__all__ = ["GEOMETRY", "geometry_options", "register", "run_walk", "walk_request"]

#: Options that describe the table format when no registers are given.
GEOMETRY = ("root", "start_level", "ipa_bits", "granule", "ds", "lpa", "fwb")


def progress_bar() -> Callable[[int, int], None] | None:
    """A tqdm callback for long walks, on a terminal only."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    bar = tqdm(total=0, unit="level", desc="walk", leave=False, file=sys.stderr)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()
        if done == total:
            bar.close()

    return update


def walk_request(targets: tuple[str, ...], kw: dict[str, Any]) -> DumpRequest:
    """The walk request a command line asks for (dumps or one capture folder + options)."""
    inputs = inputs_from(targets, kw, role="dump")
    config = None
    if kw.get("root") is not None:
        if kw.get("start_level") is None or kw.get("ipa_bits") is None:
            raise InputError("--root needs --start-level and --ipa-bits")
        config = config_explicit(
            parse_u64(kw["root"], "--root"),
            kw["start_level"],
            kw["ipa_bits"],
            kw.get("granule") or "4k",
            bool(kw.get("ds")),
            bool(kw.get("lpa")),
        )
    vmemmap = kw.get("vmemmap_va")
    return dump_request(
        inputs,
        config=config,
        fwb=True if kw.get("fwb") else None,
        vmemmap_va=parse_u64(vmemmap, "--vmemmap") if vmemmap is not None else None,
        include_zero=bool(kw.get("include_zero")),
        coalesce=bool(kw.get("coalesce") or kw.get("summary")),
    )


def run_walk(targets: tuple[str, ...], kw: dict[str, Any]) -> None:
    """``s2trace decode DUMP --vttbr X --vtcr Y [...]`` (or a capture folder)."""
    if kw.get("explain"):
        raise InputError("--explain takes descriptor values, not a dump")
    req = walk_request(targets, kw)
    fmt = kw.get("fmt", "table")
    with_labels = kw.get("labels")
    if with_labels is None:
        with_labels = req.inputs.capture is not None and fmt != "ptdump"
    streamed = fmt in ("parquet", "csv") and kw.get("output") and not kw.get("summary")
    if streamed and not with_labels and can_stream(req):
        # the map straight from the walk: written while walking, in bounded memory
        result = write_map_streamed(req, kw["output"], fmt, HEX_COLUMNS, progress_bar())
        notes(result.notes)
        warn_problems(result.problems, "the dump")
        return
    result = walk_dump(req, progress_bar())
    notes(result.notes)
    warn_problems(result.problems, "the dump")
    if kw.get("summary"):
        summary = summarize(result)
        if "page_states" in result.meta:
            summary.notes = state_notes(result.map)
        emit_text(summary.text(), kw.get("output"))
        return
    frame = labelled(result.map, req.inputs) if with_labels else result.map
    if fmt == "ptdump":
        emit_text("\n".join(ptdump_lines(frame)) + "\n", kw.get("output"))
        return
    if fmt in ("csv", "json") and not kw.get("output"):
        click.echo("s2trace: " + ", ".join(f"{k}={v}" for k, v in result.meta.items()), err=True)
    write_frame(frame, fmt, out=sys.stdout, path=kw.get("output"), meta=result.meta)


def geometry_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--root/--start-level/--ipa-bits/--granule/--ds/--lpa/--fwb`` (walks without VTCR)."""
    for opt in reversed(
        [
            click.option("--root", help="Explicit root table PA (with --start-level, --ipa-bits)."),
            click.option("--start-level", type=StrictInt(-1, 3), help="Start level for --root."),
            click.option("--ipa-bits", type=StrictInt(1, 64), help="IPA size in bits for --root."),
            click.option("--granule", default="4k", show_default=True, help="4k, 16k or 64k."),
            click.option("--ds", is_flag=True, help="VTCR_EL2.DS=1: 52-bit (FEAT_LPA2) format."),
            click.option("--lpa", is_flag=True, help="64k granule with 52-bit OA (FEAT_LPA)."),
            click.option("--fwb", is_flag=True, help="HCR_EL2.FWB=1: MemAttr with FWB meaning."),
        ]
    ):
        f = opt(f)
    return f


def _spans(ranges: tuple[str, ...]) -> list[tuple[int, int]]:
    spans = []
    for r in ranges:
        pa, sep, size = r.partition(":")
        if not sep:
            raise InputError(f"--range {r!r}: expected PA:SIZE")
        spans.append((parse_u64(pa, "--range PA"), parse_u64(size, "--range SIZE")))
    return spans


def register(cli: click.Group) -> None:
    @cli.command("trim")
    @click.argument("targets", nargs=-1, required=True)
    @use(*DUMP)
    @click.option(
        "--range",
        "ranges",
        multiple=True,
        help="Also keep PA:SIZE (e.g. the hyp carve-out 0x7f200000:0xa00000).",
    )
    @click.option("-o", "--output", required=True, type=OUTPUT)
    def trim_cmd(targets: tuple[str, ...], ranges: tuple[str, ...], output: str, **kw: Any) -> None:
        """Write an ELF core with only the table pages of the walk (and --range ranges).

        \b
        s2trace trim host-s2.elf --vttbr 0x7f709001 --vtcr 0x802d3590 -o small.elf
        s2trace trim sample-traces/qemu-pkvm-7.3 -o small.elf
        """
        path, log = trim_dump(inputs_from(targets, kw, role="dump"), output, _spans(ranges))
        for p in log:
            warn(str(p))
        click.echo(f"{path}: {path.stat().st_size} bytes")

    @cli.command("scan")
    @click.argument("targets", nargs=-1, required=True)
    @use("base", "profile", "profiles_file", "strict")
    @click.option("--top", type=StrictInt(1, 10000), default=5, show_default=True)
    @click.option(
        "--format",
        "fmt",
        type=click.Choice(["table", "csv", "json"]),
        default="table",
        show_default=True,
    )
    def scan_cmd(targets: tuple[str, ...], top: int, **kw: Any) -> None:
        """Find candidate stage-2 roots in a DUMP (or a capture folder's) without registers.

        \b
        s2trace scan host-s2.elf
        s2trace scan sample-traces/qemu-pkvm-6.12
        """
        inputs = inputs_from(targets, kw, role="dump")
        found = scan_roots(inputs, top=top)
        if kw["fmt"] == "table":
            click.echo(found.to_string(index=False))
        else:
            emit_frame(found, kw)
        best = found.iloc[0]
        vttbr, vtcr = (v if isinstance(v, str) else f"{int(v):#x}" for v in best[["vttbr", "vtcr"]])
        click.echo(
            f"s2trace: best: s2trace decode {' '.join(inputs.dumps)} --vttbr {vttbr} "
            f"--vtcr {vtcr} --summary",
            err=True,
        )
