"""Walk a dump the way a user names it: files or a capture folder, registers given or found.

:func:`walk_dump` is the one entry point behind ``s2trace decode DUMP``, ``diff``, ``report``
and the notebooks.  It opens the memory, takes the registers from the request (or recovers
them from the ``kvm_nvhe_init_params`` in memory), chooses the annotation profile (given, from
the kernel version, or detected from the dump), walks, and on kernels that keep page states
in the hypervisor's ``hyp_vmemmap`` reads them through the hyp stage 1.  What it decided on
its own goes to ``result.notes`` (one line each), so callers can say so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from s2trace.arch.registers import Stage2Config, config_from_registers
from s2trace.columns import MAP
from s2trace.errors import InputError
from s2trace.export.table_stream import StreamWriter
from s2trace.hyp.enrich import enrich_with_vmemmap
from s2trace.hyp.init_params import registers_from_memory
from s2trace.io import open_memory
from s2trace.io.memory import PhysicalMemory
from s2trace.jobs.inputs import Inputs, resolve
from s2trace.pkvm.profiles import Profile, get_profile, profile_for_kernel
from s2trace.walk.result import WalkResult
from s2trace.walk.walker import AUTO, detect_profile, walk

__all__ = [
    "DumpRequest",
    "can_stream",
    "dump_request",
    "state_notes",
    "walk_dump",
    "walk_request",
    "write_map",
]


@dataclass(frozen=True)
class DumpRequest:
    """What to walk and how: the resolved :class:`~s2trace.jobs.inputs.Inputs` (dump files,
    registers, kernel version, evidence) plus the walk's own options.  Registers that the
    inputs lack are recovered from the dump (see :func:`walk_dump`)."""

    inputs: Inputs
    #: An explicit geometry (``--root ...``) instead of VTTBR_EL2/VTCR_EL2.
    config: Stage2Config | None = None
    #: A profile object, or None: the inputs' profile name, else the kernel's, else detected.
    profile: Profile | None = None
    #: HCR_EL2.FWB forced on (``--fwb``); else read from HCR_EL2.
    fwb: bool | None = None
    vmemmap_va: int | None = None
    include_zero: bool = False
    coalesce: bool = False

    @property
    def specs(self) -> tuple[str, ...]:
        return self.inputs.dumps

    @property
    def strict(self) -> bool:
        return self.inputs.strict


def dump_request(inputs: Inputs, **options: Any) -> DumpRequest:
    """The walk request for resolved inputs; ``options`` are :class:`DumpRequest` fields."""
    inputs.need_dump("walking")
    return DumpRequest(inputs, **options)


def walk_request(*targets: str | Path, strict: bool = False, **options: Any) -> DumpRequest:
    """The walk request of what a user names -- a capture folder or dump files -- as in
    ``walk_dump(walk_request("sample-traces/qemu-pkvm-7.3", coalesce=True))``; ``options``
    are :class:`DumpRequest` fields.  Registers, kernel and evidence come from the folder
    (:func:`~s2trace.jobs.inputs.resolve`); for more, resolve the inputs yourself."""
    inputs = resolve([str(t) for t in targets], role="dump", strict=strict)
    return dump_request(inputs, **options)


def _profile(req: DumpRequest) -> Profile | str:
    if req.profile is not None:
        return req.profile
    spec = req.inputs.profile
    if not spec and req.inputs.kernel:
        spec = profile_for_kernel(str(req.inputs.kernel))
    if not spec or spec == AUTO:
        return AUTO
    return get_profile(spec, req.inputs.profiles_file)


def can_stream(req: DumpRequest) -> bool:
    """Whether the map of ``req`` comes straight from the walk, so that :func:`write_map`
    can write it while walking (no coalescing, no vmemmap page states to merge in)."""
    return not req.coalesce and req.vmemmap_va is None and req.inputs.evidence.kallsyms is None


def write_map(
    req: DumpRequest,
    path: str | Path,
    fmt: str,
    hex_columns: Any = (),
    progress: Callable[[int, int], None] | None = None,
) -> WalkResult:
    """Walk ``req`` and write its map to ``path`` as ``fmt`` (parquet or csv) piece by piece,
    in bounded memory (:mod:`s2trace.export.table_stream`); the WalkResult has an empty map.
    The rows, their order and the values are those of ``walk_dump(req).map``."""
    if not can_stream(req):
        raise ValueError("this map needs the whole walk (coalesced or with vmemmap states)")
    writer = StreamWriter(path, fmt, MAP, hex_columns)
    try:
        result = walk_dump(req, progress, sink=writer.write)
        writer.close(meta=result.meta)
    except BaseException:
        writer.abort()
        raise
    return result


def walk_dump(
    req: DumpRequest,
    progress: Callable[[int, int], None] | None = None,
    sink: Callable[[dict[str, Any]], None] | None = None,
    *,
    memory: PhysicalMemory | None = None,
) -> WalkResult:
    """Open ``req.specs``, walk the host stage 2 and return the WalkResult (map with vmemmap
    page states where they can be read; ``notes`` says what was decided).  ``sink``: the map
    goes to it piece by piece instead (see :func:`write_map`).  ``memory``: ``req.specs``
    already opened (by a caller that reads it again, e.g. for the check); left open."""

    inputs = req.inputs
    regs = inputs.registers
    notes: list[str] = []
    config = req.config
    if config is None and regs.vttbr_el2 is not None and regs.vtcr_el2 is not None:
        config = config_from_registers(regs.vttbr_el2, regs.vtcr_el2)
        notes.append(f"VTTBR_EL2/VTCR_EL2 from {regs.origin.get('vttbr_el2', 'the request')}")
    fwb = req.fwb if req.fwb is not None else regs.fwb
    hyp = None
    if regs.ttbr0_el2 is not None and regs.tcr_el2 is not None:
        hyp = (regs.ttbr0_el2, regs.tcr_el2, regs.hcr_el2)
    best_effort = hyp is None
    kallsyms, iomem = inputs.evidence.kallsyms, inputs.evidence.iomem
    owned = memory is None
    if memory is None:
        memory = open_memory(list(inputs.dumps), base=inputs.base)
    try:
        if config is None:
            found, note = registers_from_memory(memory, kallsyms, iomem, label=inputs.dumps[0])
            notes.append(f"no VTTBR_EL2/VTCR_EL2 given; {note}")
            config = found.config()
            fwb = fwb or found.fwb
            if hyp is None:
                hyp = (found.ttbr0_el2, found.tcr_el2, found.hcr_el2)
        result = walk(
            memory,
            config,
            _profile(req),
            fwb=fwb,
            include_zero=req.include_zero,
            coalesce=req.coalesce,
            strict=req.strict,
            progress=progress,
            sink=sink,
        )
        notes += _profile_mismatch(result)
        if hyp is not None and (req.vmemmap_va is not None or kallsyms is not None):
            try:
                _enrich(result, memory, hyp, req)
            except InputError as exc:
                if not best_effort:
                    raise
                notes.append(f"page states not read from the vmemmap: {exc}")
    finally:
        if owned:
            memory.close()
    for p in getattr(memory, "problems", []):
        result.problems.add(p)
    result.notes = notes
    return result


def _profile_mismatch(result: WalkResult) -> list[str]:
    """A profile without the 7.1 type field, chosen by hand, on a dump with 7.1 entries."""

    if result.profile.type_bits is None and "profile_reason" not in result.meta:
        name, reason = detect_profile(result.map)
        if name == "linux-7.1":
            return [
                f"warning: profile {result.profile.name} reads 6.x owner fields, but the "
                f"dump holds 7.1+ entries ({reason.removeprefix('auto: ')}); try "
                "--profile linux-7.1"
            ]
    return []


def _enrich(
    result: WalkResult, memory: PhysicalMemory, hyp: tuple[int, int, int | None], req: DumpRequest
) -> None:
    """Replace the map by the map with vmemmap page states (HOST_STATE_MAP columns):
    ``struct hyp_page`` of every page, read through the hyp stage 1, blocks split where the
    states differ; the kernel layout from the kernel version, else guessed from the dump."""

    ttbr0, tcr, hcr = hyp
    inputs = req.inputs
    result.map = enrich_with_vmemmap(
        result,
        memory,
        ttbr0,
        tcr,
        vmemmap_va=req.vmemmap_va,
        kallsyms=inputs.evidence.kallsyms,
        kernel=inputs.kernel,
        iomem=inputs.evidence.iomem,
        hcr=hcr,
    )
    va = req.vmemmap_va
    result.meta["page_states"] = "hyp_vmemmap" + (f" at {va:#x}" if va is not None else "")
    if inputs.kernel:
        result.meta["kernel"] = str(inputs.kernel)


def state_notes(frame: pd.DataFrame) -> list[str]:
    """Summary notes of a map with vmemmap states: where the states come from, and what is
    still unknown and why."""
    unknown = frame["page_state"].astype("string").eq("unknown").fillna(False).to_numpy()
    notes = ["page states read from the hypervisor's hyp_vmemmap (struct hyp_page per page)"]
    if unknown.any():
        n = int(frame["size"].to_numpy()[unknown].sum())
        notes.append(
            f"{n:#x} bytes still read 'unknown': pages outside the vmemmap (MMIO, memory the "
            "hypervisor does not track) or whose struct hyp_page is not in the dump"
        )
    return notes
