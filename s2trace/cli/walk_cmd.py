"""Walking dumps from the command line: ``s2trace decode DUMP ...``, ``diff``, ``scan``."""

from __future__ import annotations

import sys
from typing import Any

import click

from s2trace.cli.options import OUTPUT, StrictInt, parse_u64, profile_options
from s2trace.errors import InputError
from s2trace.outputs import write_text

__all__ = ["open_walk", "register", "request_from_kw", "run_walk", "walk_options"]


def _progress() -> Any:
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


def request_from_kw(targets: tuple[str, ...] | list[str], kw: dict[str, Any]) -> Any:
    """The :class:`~s2trace.jobs.walk.DumpRequest` the command line asks for (a capture
    folder as the only target supplies what the options leave out)."""
    from s2trace.arch.registers import config_explicit
    from s2trace.jobs.capture import is_capture
    from s2trace.jobs.walk import DumpRequest, request_from_capture

    def num(key: str, flag: str) -> int | None:
        return parse_u64(str(kw[key]), flag) if kw.get(key) is not None else None

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
    given: dict[str, Any] = dict(
        base=parse_u64(kw["base"], "--base") if kw.get("base") is not None else None,
        vttbr=num("vttbr", "--vttbr"),
        vtcr=num("vtcr", "--vtcr"),
        config=config,
        profile=kw.get("profile"),
        profiles_file=kw.get("profiles_file"),
        kernel=kw.get("kernel"),
        fwb=True if kw.get("fwb") else None,
        ttbr0_el2=num("ttbr0_el2", "--ttbr0-el2"),
        tcr_el2=num("tcr_el2", "--tcr-el2"),
        hcr_el2=num("hcr_el2", "--hcr-el2"),
        vmemmap_va=num("vmemmap_va", "--vmemmap"),
        kallsyms=kw.get("kallsyms"),
        iomem=kw.get("iomem"),
        include_zero=bool(kw.get("include_zero")),
        coalesce=bool(kw.get("coalesce") or kw.get("summary")),
        strict=bool(kw.get("strict")),
    )
    if (given["vttbr"] is None) != (given["vtcr"] is None):
        raise InputError("--vttbr and --vtcr go together")
    if (given["ttbr0_el2"] is None) != (given["tcr_el2"] is None):
        raise InputError("--ttbr0-el2 and --tcr-el2 go together")
    if len(targets) == 1 and is_capture(targets[0]):
        return request_from_capture(targets[0], **given)
    return DumpRequest(specs=tuple(targets), **{k: v for k, v in given.items() if v is not None})


def open_walk(targets: tuple[str, ...] | list[str], kw: dict[str, Any]) -> Any:
    """Walk what the command line names; print the walk's notes on stderr."""
    from s2trace.jobs.walk import walk_dump

    result = walk_dump(request_from_kw(targets, kw), _progress())
    _print_notes(result)
    return result


def _print_notes(result: Any) -> None:
    for note in result.notes:
        prefix = "" if note.startswith("warning:") else "note: "
        click.echo(f"s2trace: {prefix}{note}", err=True)


def _report_problems(result: Any) -> None:
    if not len(result.problems):
        return
    click.echo(
        f"s2trace: warning: {len(result.problems)} problem(s) in the dump "
        f"({result.problems.by_kind()}); first: "
        f"{next(iter(result.problems))}",
        err=True,
    )


def run_walk(targets: tuple[str, ...], kw: dict[str, Any]) -> None:
    """``s2trace decode DUMP --vttbr X --vtcr Y [...]`` (or a capture folder)."""
    from s2trace.jobs.capture import is_capture, load_capture

    if len(targets) == 1 and is_capture(targets[0]):
        kw = {**kw, "capture": load_capture(targets[0])}
    from s2trace.render import write_frame
    from s2trace.walk.ownership import summarize
    from s2trace.walk.ptdump import ptdump_lines

    if kw.get("explain"):
        raise InputError("--explain takes descriptor values, not a dump")
    fmt = kw.get("fmt", "table")
    labels = kw.get("labels") or (kw.get("labels") is None and kw.get("capture") is not None)
    if fmt in ("parquet", "csv") and kw.get("output") and not labels and not kw.get("summary"):
        from s2trace.jobs.walk import can_stream

        req = request_from_kw(targets, kw)
        if can_stream(req):  # the map straight from the walk: written while walking
            from s2trace.jobs.walk import write_map
            from s2trace.render import HEX_COLUMNS

            result = write_map(req, kw["output"], fmt, HEX_COLUMNS, _progress())
            _print_notes(result)
            _report_problems(result)
            return
    result = open_walk(targets, kw)
    _report_problems(result)
    if kw.get("summary"):
        summary = summarize(result)
        if "page_states" in result.meta:
            summary.notes = _state_notes(result.map)
        text = summary.text()
        _emit(text, kw.get("output"))
        return
    frame = result.map
    if kw.get("labels") or (
        kw.get("labels") is None and kw.get("capture") is not None and fmt != "ptdump"
    ):
        frame = _labelled(frame, kw)
    if fmt == "ptdump":
        _emit("\n".join(ptdump_lines(frame)) + "\n", kw.get("output"))
        return
    if fmt in ("csv", "json") and not kw.get("output"):
        meta = ", ".join(f"{k}={v}" for k, v in result.meta.items())
        click.echo(f"s2trace: {meta}", err=True)
    write_frame(frame, fmt, out=sys.stdout, path=kw.get("output"), meta=result.meta)


def _labelled(frame: Any, kw: dict[str, Any]) -> Any:
    """The map with a ``label`` column: what each range is, from the evidence files
    (kallsyms, iomem, dmesg) and the trace's ownership transitions (issue: symbolised map)."""
    from s2trace.hyp.symbols import label_map
    from s2trace.jobs.labels import evidence_labels

    cap = kw.get("capture")
    paths = {
        k: kw.get(k) or (getattr(cap, k, None) if cap else None)
        for k in ("kallsyms", "iomem", "dmesg", "trace")
    }
    labels, _ = evidence_labels(
        **paths,
        kernel=kw.get("kernel") or getattr(cap, "kernel", None),
        linear_map=getattr(cap, "linear_map", None),
    )
    return label_map(frame, labels)


def _state_notes(frame: Any) -> list[str]:
    """Summary notes of a map with vmemmap states: what is still unknown and why."""
    unknown = frame["page_state"].astype("string").eq("unknown").fillna(False).to_numpy()
    notes = ["page states read from the hypervisor's hyp_vmemmap (struct hyp_page per page)"]
    if unknown.any():
        n = int(frame["size"].to_numpy()[unknown].sum())
        notes.append(
            f"{n:#x} bytes still read 'unknown': pages outside the vmemmap (MMIO, memory the "
            "hypervisor does not track) or whose struct hyp_page is not in the dump"
        )
    return notes


def _emit(text: str, path: str | None) -> None:
    if path:
        write_text(path, text)
    else:
        click.echo(text, nl=False)


def walk_options(f: Any) -> Any:
    """Options that say how to walk a dump (registers or explicit geometry)."""
    for opt in reversed(
        [
            click.option("--vttbr", help="VTTBR_EL2 value."),
            click.option("--vtcr", help="VTCR_EL2 value."),
            click.option("--root", help="Explicit root table PA."),
            click.option("--start-level", type=StrictInt(-1, 3)),
            click.option("--ipa-bits", type=StrictInt(1, 64)),
            click.option("--granule", default="4k", show_default=True),
            click.option("--ds", is_flag=True),
            click.option("--lpa", is_flag=True),
            click.option("--fwb", is_flag=True),
            click.option("--base", help="Physical address of raw images (default 0)."),
            click.option("--strict", is_flag=True, help="Any problem is fatal."),
            click.option("--kallsyms", help="/proc/kallsyms of the dump's boot (find registers)."),
            click.option("--iomem", help="/proc/iomem of the dump's boot (with --kallsyms)."),
        ]
    ):
        f = opt(f)
    return profile_options(f)


def register(cli: click.Group) -> None:
    @cli.command("trim")
    @click.argument("dump", nargs=-1, required=True)
    @walk_options
    @click.option(
        "--range",
        "ranges",
        multiple=True,
        help="Also keep PA:SIZE (e.g. the hyp carve-out 0x7f200000:0xa00000).",
    )
    @click.option("-o", "--output", required=True, type=OUTPUT)
    def trim_cmd(dump: tuple[str, ...], ranges: tuple[str, ...], output: str, **kw: Any) -> None:
        """Write an ELF core with only the table pages of the walk (and --range ranges)."""
        from s2trace.arch.registers import config_from_registers
        from s2trace.io import open_memory
        from s2trace.walk.trim import trim

        req = request_from_kw(dump, kw)
        if req.vttbr is None:
            raise InputError("trim needs --vttbr and --vtcr (or a capture folder)")
        config = config_from_registers(req.vttbr, req.vtcr)
        dump = req.specs
        spans = []
        for r in ranges:
            pa, sep, size = r.partition(":")
            if not sep:
                raise InputError(f"--range {r!r}: expected PA:SIZE")
            spans.append((parse_u64(pa, "--range PA"), parse_u64(size, "--range SIZE")))
        with open_memory(
            list(dump), base=parse_u64(kw["base"], "--base") if kw.get("base") is not None else 0
        ) as memory:
            path, log = trim(memory, [config], output, spans)
        for p in log:
            click.echo(f"s2trace: warning: {p}", err=True)
        click.echo(f"{path}: {path.stat().st_size} bytes")

    @cli.command("scan")
    @click.argument("dump", nargs=-1, required=True)
    @click.option("--base", help="Physical address of raw images (default 0).")
    @click.option("--top", type=StrictInt(1, 10000), default=5, show_default=True)
    @profile_options
    def scan_cmd(
        dump: tuple[str, ...],
        base: str | None,
        top: int,
        profile: str | None,
        profiles_file: str | None,
    ) -> None:
        """Find candidate stage-2 roots in a dump without register values."""
        from s2trace.io import open_memory
        from s2trace.walk.scan import scan

        memory = open_memory(list(dump), base=parse_u64(base, "--base") if base is not None else 0)
        try:
            found = scan(memory, profile=profile, top=top)
        finally:
            memory.close()
        if found.empty:
            raise InputError(f"{dump[0]}: no page in the dump looks like a stage-2 root")
        click.echo(found.to_string(index=False))
