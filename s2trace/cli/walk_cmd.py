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
    profile = _choose_profile(kw)
    memory = open_memory(list(targets), base=base)
    fwb = bool(kw.get("fwb")) or _hcr_fwb(kw)
    hyp_regs = _hyp_registers(kw)
    best_effort = hyp_regs is None  # registers recovered from memory: states if possible
    try:
        if config is None:
            from s2trace.pkvm.init_params import registers_from_memory

            regs, note = registers_from_memory(
                memory, kw.get("kallsyms"), kw.get("iomem"), label=targets[0]
            )
            click.echo(f"s2trace: no --vttbr/--vtcr given; {note}", err=True)
            config = regs.config()
            fwb = fwb or regs.fwb
            if hyp_regs is None and _wants_vmemmap(kw):
                hyp_regs = (regs.ttbr0_el2, regs.tcr_el2, regs.hcr_el2)
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
        _warn_profile_mismatch(result)
        if hyp_regs is not None and _wants_vmemmap(kw):
            try:
                _enrich(result, memory, hyp_regs, kw)
            except InputError as exc:
                if not best_effort:
                    raise
                click.echo(f"s2trace: note: page states not read from the vmemmap: {exc}", err=True)
    finally:
        memory.close()
    for p in getattr(memory, "problems", []):
        result.problems.add(p)
    return result


def _warn_profile_mismatch(result: Any) -> None:
    """A profile without the 7.1 type field, chosen by hand, on a dump with 7.1 entries."""
    from s2trace.walk.walker import detect_profile

    if result.profile.type_bits is None and "profile_reason" not in result.meta:
        name, reason = detect_profile(result.map)
        if name == "linux-7.1":
            click.echo(
                f"s2trace: warning: profile {result.profile.name} reads 6.x owner fields, but "
                f"the dump holds 7.1+ entries ({reason.removeprefix('auto: ')}); "
                "try --profile linux-7.1",
                err=True,
            )


def _choose_profile(kw: dict[str, Any]) -> Any:
    """--profile, else the kernel version's profile (--kernel or the capture's), else
    ``"auto"`` (detected from the dump: :func:`s2trace.walk.walker.detect_profile`)."""
    from s2trace.capture import profile_for_kernel
    from s2trace.pkvm.profiles import get_profile
    from s2trace.walk.walker import AUTO

    spec = kw.get("profile")
    if not spec and kw.get("kernel"):
        spec = profile_for_kernel(str(kw["kernel"]))
    if not spec or spec == AUTO:
        return AUTO
    return get_profile(spec, kw.get("profiles_file"))


def _hcr_fwb(kw: dict[str, Any]) -> bool:
    """HCR_EL2.FWB (bit 46) from --hcr-el2."""
    hcr = kw.get("hcr_el2")
    return hcr is not None and bool(parse_u64(str(hcr), "--hcr-el2") >> 46 & 1)


def _hyp_registers(kw: dict[str, Any]) -> tuple[int, int, int | None] | None:
    """(TTBR0_EL2, TCR_EL2, HCR_EL2 or None) when both hyp stage-1 registers are given."""
    ttbr0, tcr = kw.get("ttbr0_el2"), kw.get("tcr_el2")
    if ttbr0 is None and tcr is None:
        return None
    if ttbr0 is None or tcr is None:
        raise InputError("--ttbr0-el2 and --tcr-el2 go together")
    hcr = kw.get("hcr_el2")
    return (
        parse_u64(str(ttbr0), "--ttbr0-el2"),
        parse_u64(str(tcr), "--tcr-el2"),
        parse_u64(str(hcr), "--hcr-el2") if hcr is not None else None,
    )


def _wants_vmemmap(kw: dict[str, Any]) -> bool:
    """The vmemmap can be found: its VA is given, or kallsyms names ``__hyp_vmemmap``."""
    return kw.get("vmemmap_va") is not None or kw.get("kallsyms") is not None


def _enrich(
    result: Any, memory: Any, hyp_regs: tuple[int, int, int | None], kw: dict[str, Any]
) -> None:
    """Replace the map by the map with vmemmap page states (HOST_STATE_MAP columns).

    ``enrich_with_vmemmap`` reads ``struct hyp_page`` of every page the map covers through
    the hyp stage 1 and splits blocks where states differ; the kernel layout comes from
    --kernel (or the capture), else it is guessed from the dump.  Provenance goes to
    ``result.meta``.
    """
    from s2trace.hyp.check import enrich_with_vmemmap

    ttbr0, tcr, hcr = hyp_regs
    va = parse_u64(str(kw["vmemmap_va"]), "--vmemmap") if kw.get("vmemmap_va") else None
    result.map = enrich_with_vmemmap(
        result,
        memory,
        ttbr0,
        tcr,
        vmemmap_va=va,
        kallsyms=kw.get("kallsyms"),
        kernel=kw.get("kernel"),
        iomem=kw.get("iomem"),
        hcr=hcr,
    )
    result.meta["page_states"] = "hyp_vmemmap" + (f" at {va:#x}" if va is not None else "")
    if kw.get("kernel"):
        result.meta["kernel"] = str(kw["kernel"])


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
    if not kw.get("kernel") and cap.kernel:
        kw["kernel"] = cap.kernel
    if kw.get("ttbr0_el2") is None and kw.get("tcr_el2") is None:
        for key in ("ttbr0_el2", "tcr_el2"):
            if cap.reg(key) is not None:
                kw[key] = hex(cap.reg(key))
    if kw.get("hcr_el2") is None and cap.reg("hcr_el2") is not None:
        kw["hcr_el2"] = hex(cap.reg("hcr_el2"))
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
        summary = summarize(result)
        if "page_states" in result.meta:
            summary.notes = _state_notes(result.map)
        text = summary.text()
        _emit(text, kw.get("output"))
        return
    frame = result.map
    fmt = kw.get("fmt", "table")
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
    from s2trace.hyp.symbols import (
        KernelImage,
        collect_labels,
        label_map,
        read_iomem,
        read_kallsyms,
    )

    cap = kw.get("capture")
    paths = {
        k: kw.get(k) or (getattr(cap, k, None) if cap else None)
        for k in ("kallsyms", "iomem", "dmesg", "trace")
    }
    ks = read_kallsyms(paths["kallsyms"]) if paths["kallsyms"] else None
    io = read_iomem(paths["iomem"]) if paths["iomem"] else None
    image = KernelImage.from_evidence(ks, io) if ks is not None and io is not None else None
    transitions = None
    if paths["trace"]:
        from s2trace.trace.pipeline import analyze

        analysis = analyze(
            paths["trace"],
            kernel=kw.get("kernel") or getattr(cap, "kernel", None),
            linear_map=getattr(cap, "linear_map", None),
        )
        transitions = analysis.transitions
    labels = collect_labels(None, ks, image, io, paths["dmesg"], transitions)
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
