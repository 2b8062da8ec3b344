"""Jobs on a dump's raw memory, before any walk: recovering the EL2 registers
(``s2trace regs``), finding the host stage-2 root without them (``scan``), and cutting a dump
down to a reproducer (``trim``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from s2trace.arch.registers import config_from_registers
from s2trace.errors import InputError, ProblemLog
from s2trace.hyp.init_params import RecoveredRegisters, consistent_registers, recover_registers
from s2trace.io import open_memory
from s2trace.jobs.inputs import Inputs
from s2trace.walk.scan import scan
from s2trace.walk.trim import trim

__all__ = ["Recovered", "recover", "scan_roots", "trim_dump"]


@dataclass(frozen=True)
class Recovered:
    """Every copy of ``kvm_nvhe_init_params`` found, and the set they agree on (None when
    they do not: ``problem`` says why)."""

    found: list[RecoveredRegisters]
    chosen: RecoveredRegisters | None
    problem: str | None = None


def recover(inputs: Inputs) -> Recovered:
    """The EL2 registers the dump holds (through kallsyms when given, else a scan of RAM)."""
    inputs.need_dump("regs")
    ev = inputs.evidence
    with open_memory(list(inputs.dumps), base=inputs.base) as memory:
        found = recover_registers(memory, ev.kallsyms, ev.iomem)
    try:
        chosen: RecoveredRegisters | None = consistent_registers(found, inputs.dumps[0])
        problem = None
    except InputError as exc:
        chosen, problem = None, str(exc)
    return Recovered(found, chosen, problem)


def scan_roots(inputs: Inputs, *, top: int = 5) -> pd.DataFrame:
    """Candidate host stage-2 roots, best first (InputError when nothing looks like one)."""
    inputs.need_dump("scan")
    with open_memory(list(inputs.dumps), base=inputs.base) as memory:
        found = scan(memory, profile=inputs.profile, top=top)
    if found.empty:
        raise InputError(f"{inputs.dumps[0]}: no page in the dump looks like a stage-2 root")
    return found


def trim_dump(
    inputs: Inputs, output: str | Path, ranges: Sequence[tuple[int, int]] = ()
) -> tuple[Path, ProblemLog]:
    """Write an ELF core with only the walk's table pages and ``ranges`` ((pa, size))."""
    inputs.need_dump("trim")
    regs = inputs.registers
    if regs.vttbr_el2 is None or regs.vtcr_el2 is None:
        raise InputError("trim needs --vttbr and --vtcr (or a capture folder with them)")
    config = config_from_registers(regs.vttbr_el2, regs.vtcr_el2)
    with open_memory(list(inputs.dumps), base=inputs.base) as memory:
        return trim(memory, [config], output, ranges)
