"""The check job: pKVM's own bookkeeping in a dump — host stage 2, hyp stage 1 and
``hyp_vmemmap`` — checked against the kernel's invariants, breaches labelled by the evidence.

Needs both register pairs (VTTBR_EL2/VTCR_EL2 and TTBR0_EL2/TCR_EL2), from the command line or
a capture folder.  See :func:`s2trace.hyp.check.check_dump` for the invariants.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from s2trace.errors import InputError, ProblemLog
from s2trace.hyp.check import CheckResult, check_dump
from s2trace.hyp.evidence import read_iomem, read_kallsyms
from s2trace.hyp.symbols import label_map
from s2trace.io import open_memory
from s2trace.jobs.inputs import Inputs
from s2trace.jobs.labels import input_labels

__all__ = ["CheckReport", "check", "need_registers"]


@dataclass(frozen=True)
class CheckReport:
    """The check's result and its breaches with a ``label`` column (what each page is)."""

    result: CheckResult
    breaches: pd.DataFrame
    trace_problems: ProblemLog | None = None

    @property
    def consistent(self) -> bool:
        return self.result.consistent


def need_registers(inputs: Inputs, *, host: bool, what: str) -> None:
    """InputError naming the missing register options, unless the inputs have them."""
    regs = inputs.registers
    missing = [] if regs.hyp_stage1 else ["--ttbr0-el2", "--tcr-el2"]
    if host and not regs.host_stage2:
        missing = ["--vttbr", "--vtcr", *missing]
    if missing:
        raise InputError(
            f"{inputs.label}: {what} needs {', '.join(missing)} (or a capture folder with them)"
        )


def check(inputs: Inputs, *, e2h: bool | None = None, vmemmap_va: int | None = None) -> CheckReport:
    """Run every invariant over the dump's pages; label the breaches."""
    inputs.need_dump("check")
    need_registers(inputs, host=True, what="check")
    regs, ev = inputs.registers, inputs.evidence
    assert regs.vttbr_el2 is not None and regs.vtcr_el2 is not None
    assert regs.ttbr0_el2 is not None and regs.tcr_el2 is not None
    with open_memory(list(inputs.dumps), base=inputs.base) as memory:
        result = check_dump(
            memory,
            regs.vttbr_el2,
            regs.vtcr_el2,
            regs.ttbr0_el2,
            regs.tcr_el2,
            kernel=inputs.kernel,
            hcr=regs.hcr_el2,
            mair=regs.mair_el2,
            e2h=e2h,
            vmemmap_va=vmemmap_va,
            kallsyms=read_kallsyms(ev.kallsyms) if ev.kallsyms else None,
            iomem=read_iomem(ev.iomem) if ev.iomem else None,
            strict=inputs.strict,
        )
        labels, trace_problems = input_labels(
            inputs, memory=memory, image=result.view.image, hyp_map=result.view.hyp.map
        )
    breaches = result.breaches
    if len(labels):
        breaches = label_map(breaches, labels, start="pa")
    return CheckReport(result, breaches, trace_problems)
