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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from s2trace.arch.registers import Stage2Config, config_from_registers, hcr_fwb
from s2trace.columns import MAP
from s2trace.errors import InputError
from s2trace.export.table_stream import StreamWriter
from s2trace.hyp.enrich import enrich_with_vmemmap
from s2trace.hyp.init_params import registers_from_memory
from s2trace.io import open_memory
from s2trace.io.memory import PhysicalMemory
from s2trace.jobs.capture import Capture, load_capture
from s2trace.pkvm.profiles import Profile, get_profile, profile_for_kernel
from s2trace.walk.result import WalkResult
from s2trace.walk.walker import AUTO, detect_profile, walk

__all__ = ["DumpRequest", "can_stream", "request_from_capture", "walk_dump", "write_map"]


@dataclass(frozen=True)
class DumpRequest:
    """What to walk and how.  ``None`` means "work it out" (see :func:`walk_dump`)."""

    specs: tuple[str, ...]
    base: int = 0
    vttbr: int | None = None
    vtcr: int | None = None
    config: Stage2Config | None = None  # explicit geometry (``--root``), instead of registers
    profile: Profile | str | None = None  # a name, a Profile, "auto", or None (kernel, else auto)
    profiles_file: str | None = None
    kernel: str | None = None
    fwb: bool | None = None
    ttbr0_el2: int | None = None
    tcr_el2: int | None = None
    hcr_el2: int | None = None
    vmemmap_va: int | None = None
    kallsyms: str | Path | None = None
    iomem: str | Path | None = None
    include_zero: bool = False
    coalesce: bool = False
    strict: bool = False
    capture: Capture | None = None  # the Capture it came from, if any


def request_from_capture(folder: str | Path | Capture, **overrides: Any) -> DumpRequest:
    """A request from a capture folder's ``capture.toml`` (or its conventional layout, or a
    :class:`Capture` already loaded); ``overrides`` that are not None win over its values."""

    cap = folder if isinstance(folder, Capture) else load_capture(folder)
    req = DumpRequest(
        specs=tuple(cap.dump),
        vttbr=cap.reg("vttbr_el2"),
        vtcr=cap.reg("vtcr_el2"),
        kernel=cap.kernel,
        ttbr0_el2=cap.reg("ttbr0_el2"),
        tcr_el2=cap.reg("tcr_el2"),
        hcr_el2=cap.reg("hcr_el2"),
        kallsyms=cap.kallsyms,
        iomem=cap.iomem,
        capture=cap,
    )
    given = {k: v for k, v in overrides.items() if v is not None}
    if "config" in given:  # explicit geometry replaces the folder's registers
        req = replace(req, vttbr=None, vtcr=None)
    if "ttbr0_el2" in given or "tcr_el2" in given:
        req = replace(req, ttbr0_el2=None, tcr_el2=None)
    return replace(req, **given)


def _profile(req: DumpRequest) -> Profile | str:

    spec = req.profile
    if spec is not None and not isinstance(spec, str):
        return spec
    if not spec and req.kernel:
        spec = profile_for_kernel(str(req.kernel))
    if not spec or spec == AUTO:
        return AUTO
    return get_profile(spec, req.profiles_file)


def can_stream(req: DumpRequest) -> bool:
    """Whether the map of ``req`` comes straight from the walk, so that :func:`write_map`
    can write it while walking (no coalescing, no vmemmap page states to merge in)."""
    return not req.coalesce and req.vmemmap_va is None and req.kallsyms is None


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

    if (req.vttbr is None) != (req.vtcr is None):
        raise InputError("VTTBR_EL2 and VTCR_EL2 go together")
    if (req.ttbr0_el2 is None) != (req.tcr_el2 is None):
        raise InputError("TTBR0_EL2 and TCR_EL2 go together")
    notes: list[str] = []
    config = req.config
    if config is None and req.vttbr is not None and req.vtcr is not None:
        config = config_from_registers(req.vttbr, req.vtcr)
    fwb = req.fwb if req.fwb is not None else hcr_fwb(req.hcr_el2)
    hyp = None
    if req.ttbr0_el2 is not None and req.tcr_el2 is not None:
        hyp = (req.ttbr0_el2, req.tcr_el2, req.hcr_el2)
    best_effort = hyp is None
    owned = memory is None
    if memory is None:
        memory = open_memory(list(req.specs), base=req.base)
    try:
        if config is None:
            regs, note = registers_from_memory(memory, req.kallsyms, req.iomem, label=req.specs[0])
            notes.append(f"no VTTBR_EL2/VTCR_EL2 given; {note}")
            config = regs.config()
            fwb = fwb or regs.fwb
            if hyp is None:
                hyp = (regs.ttbr0_el2, regs.tcr_el2, regs.hcr_el2)
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
        if hyp is not None and (req.vmemmap_va is not None or req.kallsyms is not None):
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
    result.map = enrich_with_vmemmap(
        result,
        memory,
        ttbr0,
        tcr,
        vmemmap_va=req.vmemmap_va,
        kallsyms=req.kallsyms,
        kernel=req.kernel,
        iomem=req.iomem,
        hcr=hcr,
    )
    va = req.vmemmap_va
    result.meta["page_states"] = "hyp_vmemmap" + (f" at {va:#x}" if va is not None else "")
    if req.kernel:
        result.meta["kernel"] = str(req.kernel)
