"""Walking dumps from the command line: ``s2trace decode DUMP ...``, ``diff``, ``scan``."""

from __future__ import annotations

import sys
from typing import Any

import click

from s2trace.cli.options import parse_int, parse_u64, profile_options
from s2trace.errors import InputError

__all__ = ["open_walk", "register", "run_walk", "walk_options"]


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


def open_walk(targets: tuple[str, ...] | list[str], kw: dict[str, Any]) -> Any:
    """Open the dump, build the configuration and walk; return the WalkResult."""
    from s2trace.arch.registers import config_explicit, config_from_registers
    from s2trace.io import open_memory
    from s2trace.pkvm.profiles import DEFAULT_PROFILE, get_profile
    from s2trace.walk.walker import walk

    base = parse_int(kw["base"], "--base") if kw.get("base") else 0
    if kw.get("vttbr") is not None or kw.get("vtcr") is not None:
        if kw.get("vttbr") is None or kw.get("vtcr") is None:
            raise InputError("--vttbr and --vtcr go together")
        config = config_from_registers(
            parse_u64(kw["vttbr"], "--vttbr"), parse_u64(kw["vtcr"], "--vtcr")
        )
    elif kw.get("root") is not None:
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
    else:
        config = None  # recovered from the dump's memory below
    profile = get_profile(kw.get("profile") or DEFAULT_PROFILE, kw.get("profiles_file"))
    memory = open_memory(list(targets), base=base)
    fwb = bool(kw.get("fwb"))
    try:
        if config is None:
            from s2trace.pkvm.init_params import registers_from_memory

            regs, note = registers_from_memory(
                memory, kw.get("kallsyms"), kw.get("iomem"), label=targets[0]
            )
            click.echo(f"s2trace: no --vttbr/--vtcr given; {note}", err=True)
            config = regs.config()
            fwb = fwb or regs.fwb
        result = walk(
            memory,
            config,
            profile,
            fwb=fwb,
            include_zero=bool(kw.get("include_zero")),
            coalesce=bool(kw.get("coalesce") or kw.get("summary")),
            strict=bool(kw.get("strict")),
            progress=_progress(),
        )
    finally:
        memory.close()
    for p in getattr(memory, "problems", []):
        result.problems.add(p)
    return result


def _report_problems(result: Any) -> None:
    counts = result.problems.counts()
    if not counts:
        return
    total = sum(counts.values())
    kinds = ", ".join(f"{k}: {n}" for k, n in sorted(counts.items()))
    click.echo(
        f"s2trace: warning: {total} problem(s) in the dump ({kinds}); first: "
        f"{next(iter(result.problems))}",
        err=True,
    )


def expand_capture(
    targets: tuple[str, ...] | list[str], kw: dict[str, Any]
) -> tuple[tuple[str, ...], dict[str, Any]]:
    """A capture folder as the only target: its dump files, and its registers, profile
    (from the kernel version) and FWB (from HCR_EL2) where the command line gives none."""
    from s2trace.capture import is_capture, load_capture

    if len(targets) != 1 or not is_capture(targets[0]):
        return tuple(targets), kw
    cap = load_capture(targets[0])
    kw = dict(kw)
    for key, reg in (("vttbr", "vttbr_el2"), ("vtcr", "vtcr_el2")):
        if kw.get(key) is None and kw.get("root") is None and cap.reg(reg) is not None:
            kw[key] = hex(cap.reg(reg))
    if not kw.get("profile") and cap.profile:
        kw["profile"] = cap.profile
    if not kw.get("fwb"):
        kw["fwb"] = cap.fwb
    for key in ("kallsyms", "iomem"):
        if kw.get(key) is None and getattr(cap, key) is not None:
            kw[key] = str(getattr(cap, key))
    kw["capture"] = cap
    return cap.dump, kw


def run_walk(targets: tuple[str, ...], kw: dict[str, Any]) -> None:
    """``s2trace decode DUMP --vttbr X --vtcr Y [...]`` (or a capture folder)."""
    targets, kw = expand_capture(targets, kw)
    from s2trace.render import write_frame
    from s2trace.walk.ownership import summarize
    from s2trace.walk.ptdump import ptdump_lines

    if kw.get("explain"):
        raise InputError("--explain takes descriptor values, not a dump")
    result = open_walk(targets, kw)
    _report_problems(result)
    if kw.get("summary"):
        text = summarize(result).text()
        _emit(text, kw.get("output"))
        return
    frame = result.map
    fmt = kw.get("fmt", "table")
    if fmt == "ptdump":
        _emit("\n".join(ptdump_lines(frame)) + "\n", kw.get("output"))
        return
    if fmt in ("csv", "json") and not kw.get("output"):
        meta = ", ".join(f"{k}={v}" for k, v in result.meta.items())
        click.echo(f"s2trace: {meta}", err=True)
    write_frame(frame, fmt, out=sys.stdout, path=kw.get("output"), meta=result.meta)


def _emit(text: str, path: str | None) -> None:
    if path:
        with open(path, "w") as fh:
            fh.write(text)
    else:
        click.echo(text, nl=False)


def walk_options(f: Any) -> Any:
    """Options that say how to walk a dump (registers or explicit geometry)."""
    for opt in reversed(
        [
            click.option("--vttbr", help="VTTBR_EL2 value."),
            click.option("--vtcr", help="VTCR_EL2 value."),
            click.option("--root", help="Explicit root table PA."),
            click.option("--start-level", type=int),
            click.option("--ipa-bits", type=int),
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
    @click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
    def trim_cmd(dump: tuple[str, ...], ranges: tuple[str, ...], output: str, **kw: Any) -> None:
        """Write an ELF core with only the table pages of the walk (and --range ranges)."""
        from s2trace.arch.registers import config_from_registers
        from s2trace.io import open_memory
        from s2trace.walk.trim import trim

        dump, kw = expand_capture(dump, kw)
        if kw.get("vttbr") is None or kw.get("vtcr") is None:
            raise InputError("trim needs --vttbr and --vtcr (or a capture folder)")
        config = config_from_registers(
            parse_u64(kw["vttbr"], "--vttbr"), parse_u64(kw["vtcr"], "--vtcr")
        )
        spans = []
        for r in ranges:
            pa, sep, size = r.partition(":")
            if not sep:
                raise InputError(f"--range {r!r}: expected PA:SIZE")
            spans.append((parse_u64(pa, "--range PA"), parse_u64(size, "--range SIZE")))
        with open_memory(
            list(dump), base=parse_int(kw["base"], "--base") if kw.get("base") else 0
        ) as memory:
            path, log = trim(memory, [config], output, spans)
        for p in log:
            click.echo(f"s2trace: warning: {p}", err=True)
        click.echo(f"{path}: {path.stat().st_size} bytes")

    @cli.command("scan")
    @click.argument("dump", nargs=-1, required=True)
    @click.option("--base", help="Physical address of raw images (default 0).")
    @click.option("--top", type=int, default=5, show_default=True)
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

        memory = open_memory(list(dump), base=parse_int(base, "--base") if base else 0)
        try:
            found = scan(memory, profile=profile, top=top)
        finally:
            memory.close()
        if found.empty:
            raise InputError(f"{dump[0]}: no page in the dump looks like a stage-2 root")
        click.echo(found.to_string(index=False))
