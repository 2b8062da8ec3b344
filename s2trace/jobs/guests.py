"""The guests job: the VMs the hypervisor holds, their stage-2 tables, and the reverse map of
their pages (gfn -> host page), read through the hyp stage 1.

With the host stage-2 registers too, pages donated to guests are added from the host's
annotations and the guests' table pages are checked against the host's ownership.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from s2trace.arch.registers import config_from_registers
from s2trace.hyp.guests import GuestsResult, find_guests
from s2trace.hyp.vmemmap import kernel_layout
from s2trace.io import open_memory
from s2trace.jobs.check import need_registers
from s2trace.jobs.inputs import Inputs
from s2trace.pkvm.profiles import profile_for_kernel
from s2trace.walk.walker import AUTO, walk

__all__ = ["Guests", "guests"]


@dataclass(frozen=True)
class Guests:
    """What :func:`guests` found, and what it could not show (``notes``)."""

    result: GuestsResult
    notes: list[str] = field(default_factory=list)


def guests(inputs: Inputs, *, vm_table: int | None = None, e2h: bool | None = None) -> Guests:
    """Find the guests in the dump (the VM table from ``vm_table`` or the kallsyms)."""
    inputs.need_dump("guests")
    need_registers(inputs, host=False, what="guests")
    regs, ev = inputs.registers, inputs.evidence
    assert regs.ttbr0_el2 is not None and regs.tcr_el2 is not None
    kernel = kernel_layout(inputs.kernel).version if inputs.kernel else None
    notes = []
    with open_memory(list(inputs.dumps), base=inputs.base) as memory:
        host_map = None
        if regs.vttbr_el2 is not None and regs.vtcr_el2 is not None:
            profile = profile_for_kernel(inputs.kernel) if inputs.kernel else AUTO
            cfg = config_from_registers(regs.vttbr_el2, regs.vtcr_el2)
            host_map = walk(memory, cfg, profile, fwb=regs.fwb, coalesce=True).map
        else:
            notes.append(
                "no --vttbr/--vtcr: pages donated to guests (host annotations) and the "
                "ownership of the guests' tables are not shown"
            )
        result = find_guests(
            memory,
            regs.ttbr0_el2,
            regs.tcr_el2,
            kallsyms=ev.kallsyms,
            iomem=ev.iomem,
            vm_table_va=vm_table,
            host_map=host_map,
            kernel=kernel,
            hcr=regs.hcr_el2,
            e2h=e2h,
            strict=inputs.strict,
        )
    return Guests(result, notes)
