"""The hyp-map job: the hypervisor's own EL2 stage-1 mappings (TTBR0_EL2) in a dump, each leaf
labelled by what its physical page is (kallsyms sections, per-CPU areas, iomem, dmesg, the
trace's transitions)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from s2trace.arch.stage1 import config_from_el2
from s2trace.errors import ProblemLog
from s2trace.hyp.evidence import KernelImage, read_iomem, read_kallsyms
from s2trace.hyp.hyp_map import coalesce_hyp, vmemmap_states
from s2trace.hyp.hyp_view import load_hyp_view
from s2trace.hyp.stage1_walk import HypWalkResult, walk_hyp
from s2trace.hyp.symbols import label_map
from s2trace.hyp.vmemmap import kernel_layout
from s2trace.io import open_memory
from s2trace.jobs.check import need_registers
from s2trace.jobs.inputs import Inputs
from s2trace.jobs.labels import input_labels

__all__ = ["HypMap", "hyp_map"]


@dataclass(frozen=True)
class HypMap:
    """The hyp stage-1 walk, its labelled map, and what was decided on the way."""

    result: HypWalkResult
    map: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    trace_problems: ProblemLog | None = None


def hyp_map(
    inputs: Inputs,
    *,
    e2h: bool | None = None,
    vmemmap_va: int | None = None,
    coalesce: bool = False,
) -> HypMap:
    """Walk the hyp stage 1 of the dump; label its leaves by physical address.  On kernels
    that keep the hyp page states in ``hyp_vmemmap`` (v6.16+, see docs/kernel-facts.md) they
    are read from there when kallsyms can place it; ``coalesce`` merges leaves that continue
    each other with equal fields."""
    inputs.need_dump("hyp-map")
    need_registers(inputs, host=False, what="hyp-map")
    regs, ev = inputs.registers, inputs.evidence
    assert regs.ttbr0_el2 is not None and regs.tcr_el2 is not None
    layout = kernel_layout(inputs.kernel) if inputs.kernel else None
    states = layout.hyp_states if layout is not None else "pte"
    cfg = config_from_el2(
        regs.ttbr0_el2, regs.tcr_el2, e2h=e2h, hcr=regs.hcr_el2, mair=regs.mair_el2
    )
    notes = list(cfg.notes)
    if states == "pte" and not inputs.kernel:
        notes.append(
            "hyp_state read from SW bits 56:55 (kernels up to 6.15); give --kernel for 6.16+, "
            "where they are unused"
        )
    kallsyms = read_kallsyms(ev.kallsyms) if ev.kallsyms else None
    iomem = read_iomem(ev.iomem) if ev.iomem else None
    vmemmap = None
    with open_memory(list(inputs.dumps), base=inputs.base) as memory:
        if states == "vmemmap" and layout is not None and kallsyms is not None:
            view = load_hyp_view(
                memory,
                regs.ttbr0_el2,
                regs.tcr_el2,
                layout,
                hcr=regs.hcr_el2,
                mair=regs.mair_el2,
                e2h=e2h,
                vmemmap_va=vmemmap_va,
                kallsyms=kallsyms,
                iomem=iomem,
                strict=inputs.strict,
            )
            result, vmemmap = view.hyp, view.vmemmap
            notes += view.notes
        else:
            result = walk_hyp(memory, cfg, hyp_states=states, strict=inputs.strict)
        image = None
        if kallsyms is not None and iomem is not None:
            image = KernelImage.from_evidence(kallsyms, iomem)
        labels, trace_problems = input_labels(
            inputs, memory=memory, image=image, hyp_map=result.map
        )
    frame = result.map
    if vmemmap is not None:
        frame = vmemmap_states(frame, vmemmap.frame, cfg.geometry.granule.value)
        result.meta["hyp_states"] = "vmemmap (read)"
    if len(labels):
        frame = label_map(frame, labels, start="pa")
    if coalesce:
        frame = coalesce_hyp(frame)
    return HypMap(result, frame, notes, trace_problems)
