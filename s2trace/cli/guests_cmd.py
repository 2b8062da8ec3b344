"""``s2trace guests``: the VMs the hypervisor holds and the reverse map of their pages.

Takes dump files with register options, or one capture folder (as ``check``).  The VM table
and the guest stage 2s are read through the hyp stage 1 (TTBR0_EL2/TCR_EL2); with the host
stage-2 registers too (VTTBR/VTCR), pages donated to guests are added from the host entries
and the guests' table pages are checked against the host's ownership.
"""

from __future__ import annotations

from typing import Any

import click

from s2trace.cli.options import parse_u64

__all__ = ["register", "run_guests"]


def run_guests(targets: tuple[str, ...], kw: dict[str, Any]) -> None:
    """Find the guests and print the VMs and (or) their pages."""
    from s2trace.arch.registers import config_from_registers, hcr_fwb
    from s2trace.cli.hyp_cmd import _resolve, _warn_problems
    from s2trace.hyp.guests import find_guests
    from s2trace.hyp.vmemmap import kernel_layout
    from s2trace.io import open_memory
    from s2trace.walk.walker import AUTO, walk

    r = _resolve(targets, kw, need_host=False)
    regs, files = r["regs"], r["files"]
    kernel = kernel_layout(r["kernel"]).version if r["kernel"] else None
    table = parse_u64(kw["vm_table"], "--vm-table") if kw.get("vm_table") else None
    fwb = hcr_fwb(regs.get("hcr_el2"))
    memory = open_memory(r["specs"], base=r["base"])
    try:
        host_map = None
        if "vttbr_el2" in regs and "vtcr_el2" in regs:
            from s2trace.pkvm.profiles import profile_for_kernel

            profile = profile_for_kernel(r["kernel"]) if r["kernel"] else AUTO
            cfg = config_from_registers(regs["vttbr_el2"], regs["vtcr_el2"])
            host_map = walk(memory, cfg, profile, fwb=fwb, coalesce=True).map
        result = find_guests(
            memory,
            regs["ttbr0_el2"],
            regs["tcr_el2"],
            kallsyms=files.get("kallsyms"),
            iomem=files.get("iomem"),
            vm_table_va=table,
            host_map=host_map,
            kernel=kernel,
            hcr=regs.get("hcr_el2"),
            e2h=kw.get("e2h"),
            strict=bool(kw.get("strict")),
        )
    finally:
        memory.close()
    _warn_problems(result.problems)
    if host_map is None:
        click.echo(
            "s2trace: note: no --vttbr/--vtcr: pages donated to guests (host annotations) "
            "and the ownership of the guests' tables are not shown",
            err=True,
        )
    show = kw.get("show") or "both"
    if kw["fmt"] == "table" and not kw.get("output") and show == "both":
        click.echo(f"# VMs ({len(result.vms)}), vm_table at hyp VA {result.meta['vm_table']}")
        _emit(result.vms, kw)
        click.echo(f"\n# guest pages ({len(result.pages)})")
        _emit(result.pages, kw)
        return
    frame = result.pages if show == "pages" else result.vms
    _emit(frame, kw, meta=result.meta)


#: Address-like columns of the guests' frames, shown in hex.
HEX = frozenset(
    {"handle", "hyp_va", "hyp_pa", "host_kvm", "pgd_va", "pgd_pa", "vtcr", "ipa", "gfn", "pa"}
)


def _emit(frame: Any, kw: dict[str, Any], meta: dict[str, Any] | None = None) -> None:
    import sys

    from s2trace.cli.hyp_cmd import HEX as HYP_HEX
    from s2trace.render import HEX_COLUMNS, write_frame

    write_frame(
        frame,
        kw["fmt"],
        out=sys.stdout,
        path=kw.get("output"),
        hex_columns=HEX_COLUMNS | HYP_HEX | HEX,
        meta=meta,
    )


def register(cli: click.Group) -> None:
    from s2trace.cli.hyp_cmd import _evidence_options

    @cli.command("guests")
    @click.argument("targets", nargs=-1, required=True)
    @click.option("--vttbr", help="VTTBR_EL2 (host stage 2): adds pages donated to guests.")
    @click.option("--vtcr", help="VTCR_EL2 (with --vttbr).")
    @click.option("--vm-table", help="Hyp VA of the VM table (the value of vm_table).")
    @click.option(
        "--show",
        type=click.Choice(["both", "vms", "pages"]),
        default=None,
        help="What to print (default both; csv/json/parquet print one: vms unless 'pages').",
    )
    @_evidence_options
    def guests_cmd(targets: tuple[str, ...], **kw: Any) -> None:
        """List the VMs the hypervisor holds, their stage-2 tables and their pages.

        \b
        s2trace guests sample-traces/qemu-pkvm-7.3
        s2trace guests host-s2.elf --ttbr0-el2 0x7f201001 --tcr-el2 0x5500075b5903510 \\
            --kallsyms kallsyms.txt --iomem iomem.txt --show pages --format csv
        """
        run_guests(targets, kw)
