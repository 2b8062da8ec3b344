"""``s2trace check`` and ``s2trace hyp-map``: the hypervisor's own view of a dump.

Both take dump files with register options, or one capture folder (registers from its
``gdb-regs.txt``, kernel version from its README, evidence files by name); options given on
the command line win over the folder's.  ``check`` exits with status 1 when an invariant is
broken (2 for unusable input, as every command).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    import pandas as pd

from s2trace.cli.options import OUTPUT, StrictInt, parse_u64
from s2trace.errors import InputError, ProblemLog

__all__ = ["register"]

#: Address-like columns of the frames these commands print, shown in hex.
HEX = frozenset(
    {
        "va_start",
        "pa",
        "size",
        "raw",
        "table_pa",
        "host_raw",
        "hyp_va",
        "hyp_raw",
        "vmemmap_raw",
    }
)


def _evidence_options(f: Any) -> Any:
    for opt in reversed(
        [
            click.option("--ttbr0-el2", help="TTBR0_EL2 value (hyp stage-1 root)."),
            click.option("--tcr-el2", help="TCR_EL2 value."),
            click.option("--hcr-el2", help="HCR_EL2 value (E2H selects the format, FWB)."),
            click.option("--mair-el2", help="MAIR_EL2 value (names AttrIndx memory types)."),
            click.option(
                "--hvhe/--nvhe",
                "e2h",
                default=None,
                help="Force the E2H=1 / E2H=0 table format (default: HCR_EL2, else guessed).",
            ),
            click.option("--kernel", help="Kernel version (6.12, 7.3 ...): where states live."),
            click.option("--vmemmap", "vmemmap_va", help="Hyp VA of hyp_vmemmap."),
            click.option(
                "--kallsyms",
                "--symbols",
                "kallsyms",
                type=click.Path(dir_okay=False),
                help="kallsyms file (/proc/kallsyms format).",
            ),
            click.option("--iomem", type=click.Path(dir_okay=False), help="/proc/iomem copy."),
            click.option("--dmesg", type=click.Path(dir_okay=False), help="dmesg (carve-out)."),
            click.option("--trace", type=click.Path(dir_okay=False), help="Host ftrace file."),
            click.option("--base", help="Physical address of raw images (default 0)."),
            click.option("--strict", is_flag=True, help="Any problem in the dump is fatal."),
            click.option(
                "--format",
                "fmt",
                type=click.Choice(["table", "csv", "json", "parquet"]),
                default="table",
                show_default=True,
            ),
            click.option("-o", "--output", type=OUTPUT),
        ]
    ):
        f = opt(f)
    return f


def _resolve(targets: tuple[str, ...], kw: dict[str, Any], need_host: bool) -> dict[str, Any]:
    """Dump specs, register values and evidence paths from the targets and the options."""
    from s2trace.jobs.capture import load_capture

    out: dict[str, Any] = {"specs": list(targets), "kernel": kw.get("kernel"), "linear_map": None}
    regs: dict[str, int] = {}
    files = {k: kw.get(k) for k in ("kallsyms", "iomem", "dmesg", "trace")}
    if len(targets) == 1 and os.path.isdir(targets[0]):
        cap = load_capture(targets[0])
        out["specs"] = list(cap.dump)
        regs.update(cap.registers)
        out["kernel"] = out["kernel"] or cap.kernel
        out["linear_map"] = cap.linear_map
        for k in files:
            files[k] = files[k] or getattr(cap, k)
    names = {
        "vttbr": "vttbr_el2",
        "vtcr": "vtcr_el2",
        "ttbr0_el2": "ttbr0_el2",
        "tcr_el2": "tcr_el2",
        "hcr_el2": "hcr_el2",
        "mair_el2": "mair_el2",
    }
    for opt, reg in names.items():
        if kw.get(opt) is not None:
            regs[reg] = parse_u64(kw[opt], f"--{opt.replace('_', '-')}")
    required = ["ttbr0_el2", "tcr_el2"] + (["vttbr_el2", "vtcr_el2"] if need_host else [])
    missing = [r for r in required if r not in regs]
    if missing:
        flags = ", ".join("--" + r.replace("_el2", "").replace("_", "-") for r in missing)
        flags = flags.replace("--ttbr0", "--ttbr0-el2").replace("--tcr", "--tcr-el2")
        raise InputError(f"{targets[0]}: missing {flags} (or give a capture folder)")
    out["regs"] = regs
    out["files"] = files
    out["vmemmap_va"] = parse_u64(kw["vmemmap_va"], "--vmemmap") if kw.get("vmemmap_va") else None
    out["base"] = parse_u64(kw["base"], "--base") if kw.get("base") is not None else 0
    return out


def _labels(memory: Any, r: dict[str, Any], image: Any, hyp_map: Any) -> pd.DataFrame:
    """Labels from the evidence files; the trace's through its ownership transitions."""
    from s2trace.jobs.labels import evidence_labels

    files = r["files"]
    labels, problems = evidence_labels(
        kallsyms=files.get("kallsyms"),
        iomem=files.get("iomem"),
        dmesg=files.get("dmesg"),
        trace=files.get("trace"),
        kernel=r.get("kernel"),
        linear_map=r.get("linear_map"),
        memory=memory,
        image=image,
        hyp_map=hyp_map,
    )
    if problems is not None:
        _warn_problems(problems)
    return labels


def _emit(frame: pd.DataFrame, kw: dict[str, Any], meta: dict[str, Any] | None = None) -> None:
    from s2trace.render import HEX_COLUMNS, write_frame

    write_frame(
        frame,
        kw["fmt"],
        out=sys.stdout,
        path=kw.get("output"),
        hex_columns=HEX_COLUMNS | HEX,
        meta=meta,
    )


def _warn_problems(problems: ProblemLog) -> None:
    if len(problems):
        click.echo(f"s2trace: warning: {len(problems)} problem(s) ({problems.by_kind()})", err=True)


def run_check(targets: tuple[str, ...], kw: dict[str, Any]) -> int:
    """``s2trace check``: print the verdict and the breaches; 1 when any invariant breaks."""
    from s2trace.hyp.check import check_dump
    from s2trace.hyp.evidence import read_iomem, read_kallsyms
    from s2trace.hyp.symbols import label_map
    from s2trace.io import open_memory

    r = _resolve(targets, kw, need_host=True)
    regs, files = r["regs"], r["files"]
    memory = open_memory(r["specs"], base=r["base"])
    try:
        result = check_dump(
            memory,
            regs["vttbr_el2"],
            regs["vtcr_el2"],
            regs["ttbr0_el2"],
            regs["tcr_el2"],
            kernel=r["kernel"],
            hcr=regs.get("hcr_el2"),
            mair=regs.get("mair_el2"),
            e2h=kw.get("e2h"),
            vmemmap_va=r["vmemmap_va"],
            kallsyms=read_kallsyms(files["kallsyms"]) if files["kallsyms"] else None,
            iomem=read_iomem(files["iomem"]) if files["iomem"] else None,
            strict=bool(kw.get("strict")),
        )
        labels = _labels(memory, r, result.view.image, result.view.hyp.map)
    finally:
        memory.close()
    _warn_problems(result.problems)
    breaches = label_map(result.breaches, labels, start="pa") if len(labels) else result.breaches
    if kw["fmt"] == "table" and not kw.get("output"):
        click.echo(result.verdict())
        _emit(result.counts(), kw)
        if len(breaches):
            limit = kw.get("limit") or len(breaches)
            click.echo(f"\nbreaches (first {min(limit, len(breaches))} of {len(breaches)}):")
            _emit(breaches.head(limit), kw)
        for note in result.notes:
            click.echo(f"note: {note}")
    else:
        click.echo(f"s2trace: {result.verdict()}", err=True)
        _emit(breaches, kw, meta={"verdict": result.verdict()})
    return 0 if result.consistent else 1


def run_hyp_map(targets: tuple[str, ...], kw: dict[str, Any]) -> None:
    """``s2trace hyp-map``: the hyp stage-1 leaves, labelled by physical address."""
    from s2trace.arch.stage1 import config_from_el2
    from s2trace.hyp.evidence import KernelImage, read_iomem, read_kallsyms
    from s2trace.hyp.hyp_map import coalesce_hyp, vmemmap_states
    from s2trace.hyp.hyp_view import load_hyp_view
    from s2trace.hyp.stage1_walk import walk_hyp
    from s2trace.hyp.symbols import label_map
    from s2trace.hyp.vmemmap import kernel_layout
    from s2trace.io import open_memory

    r = _resolve(targets, kw, need_host=False)
    regs, files = r["regs"], r["files"]
    states = kernel_layout(r["kernel"]).hyp_states if r["kernel"] else "pte"
    cfg = config_from_el2(
        regs["ttbr0_el2"],
        regs["tcr_el2"],
        e2h=kw.get("e2h"),
        hcr=regs.get("hcr_el2"),
        mair=regs.get("mair_el2"),
    )
    memory = open_memory(r["specs"], base=r["base"])
    vmemmap = None
    try:
        if states == "vmemmap" and files["kallsyms"]:
            # v6.16+: the hyp page states live in the hyp_vmemmap, not in the PTEs
            view = load_hyp_view(
                memory,
                regs["ttbr0_el2"],
                regs["tcr_el2"],
                kernel_layout(r["kernel"]),
                hcr=regs.get("hcr_el2"),
                mair=regs.get("mair_el2"),
                e2h=kw.get("e2h"),
                vmemmap_va=r["vmemmap_va"],
                kallsyms=read_kallsyms(files["kallsyms"]),
                iomem=read_iomem(files["iomem"]) if files["iomem"] else None,
                strict=bool(kw.get("strict")),
            )
            result, vmemmap = view.hyp, view.vmemmap
            for note in view.notes:
                click.echo(f"s2trace: note: {note}", err=True)
        else:
            result = walk_hyp(memory, cfg, hyp_states=states, strict=bool(kw.get("strict")))
        image = None
        if files["kallsyms"] and files["iomem"]:
            image = KernelImage.from_evidence(
                read_kallsyms(files["kallsyms"]), read_iomem(files["iomem"])
            )
        labels = _labels(memory, r, image, result.map)
    finally:
        memory.close()
    _warn_problems(result.problems)
    for note in cfg.notes:
        click.echo(f"s2trace: note: {note}", err=True)
    if states == "pte" and not r["kernel"]:
        click.echo(
            "s2trace: note: hyp_state read from SW bits 56:55 (kernels up to 6.15); "
            "give --kernel for 6.16+, where they are unused",
            err=True,
        )
    hyp_map = result.map
    if vmemmap is not None:
        hyp_map = vmemmap_states(hyp_map, vmemmap.frame, cfg.geometry.granule.value)
        result.meta["hyp_states"] = "vmemmap (read)"
    frame = label_map(hyp_map, labels, start="pa") if len(labels) else hyp_map
    if kw.get("coalesce"):
        frame = coalesce_hyp(frame)
    _emit(frame, kw, meta=result.meta if kw["fmt"] == "table" else None)


def register(cli: click.Group) -> None:
    @cli.command("check")
    @click.argument("targets", nargs=-1, required=True)
    @click.option("--vttbr", help="VTTBR_EL2 value (host stage-2 root).")
    @click.option("--vtcr", help="VTCR_EL2 value.")
    @_evidence_options
    @click.option(
        "--limit", type=StrictInt(0), default=50, show_default=True, help="Breaches shown."
    )
    def check_cmd(targets: tuple[str, ...], **kw: Any) -> None:
        """Check pKVM's bookkeeping in a DUMP (or a capture folder) for consistency.

        \b
        s2trace check host-s2.elf --vttbr 0x7f709001 --vtcr 0x802d3590 \\
            --ttbr0-el2 0x7f301001 --tcr-el2 0x15001f5b5d53510 --kallsyms kallsyms.txt
        s2trace check ../shared/samples/qemu-pkvm-7.3
        """
        status = run_check(targets, kw)
        if status:
            raise click.exceptions.Exit(status)

    @cli.command("hyp-map")
    @click.argument("targets", nargs=-1, required=True)
    @_evidence_options
    @click.option(
        "--coalesce", is_flag=True, help="Merge leaves that continue each other with equal fields."
    )
    def hyp_map_cmd(targets: tuple[str, ...], **kw: Any) -> None:
        """List the hypervisor's EL2 stage-1 mappings (TTBR0_EL2) in a DUMP.

        \b
        s2trace hyp-map host-s2.elf --ttbr0-el2 0x7f201001 --tcr-el2 0x5500075b5903510
        s2trace hyp-map ../shared/samples/qemu-pkvm-6.12 --format csv
        """
        run_hyp_map(targets, kw)
