"""The one input resolver: what the user named, turned into typed inputs that every job reads.

A user names things in three ways, and every command accepts all three:

* a **capture folder** (``capture.toml``, or the capture script's layout): the dump, the EL2
  registers, the kernel version, the linear-map offset, the trace and the evidence files, read
  once into a :class:`~s2trace.jobs.capture.Capture`;
* **files**: dumps (ELF cores, ``FILE@PA`` raw images, region lists, compressed copies), a
  trace, evidence files (kallsyms, /proc/iomem, dmesg);
* **values**: register values, a kernel version, a linear-map ``VA=PA``.

:func:`resolve` merges them into one :class:`Inputs`: values given on the command line win over
the folder's, and :attr:`Inputs.origin` says where each one came from, so a job can say its basis
("registers from capture.toml", "kernel from --kernel").  Jobs then build their own typed
request from the inputs (:func:`s2trace.jobs.walk.dump_request`, ...).  Nothing here opens a
dump or reads a trace: resolving is cheap and never guesses.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from s2trace.arch.registers import hcr_fwb
from s2trace.errors import InputError
from s2trace.files import shown
from s2trace.io.opener import looks_like_dump
from s2trace.jobs.capture import Capture, is_capture, load_capture
from s2trace.numbers import parse_u64, quoted

__all__ = [
    "REGISTER_NAMES",
    "Evidence",
    "Inputs",
    "Registers",
    "classify",
    "parse_linear_map",
    "resolve",
    "with_registers",
]

#: The EL2 registers a walk or a check can use, in the order they are printed.
REGISTER_NAMES = ("vttbr_el2", "vtcr_el2", "ttbr0_el2", "tcr_el2", "hcr_el2", "mair_el2")

Role = Literal["dump", "trace", "capture"]


def parse_linear_map(text: str | None) -> tuple[int, int] | None:
    """``VA=PA`` (or ``VA:PA``) of the kernel linear map, e.g. ``0xffff000000000000=0x40000000``;
    both 64-bit numbers (:mod:`s2trace.numbers`)."""
    if not text:
        return None
    va, sep, pa = (
        re.split(r"([=:])", text, maxsplit=1) if re.search(r"[=:]", text) else (text, "", "")
    )
    if not sep:
        raise InputError(
            f"--linear-map {quoted(text)}: expected VA=PA, e.g. 0xffff000000000000=0x40000000"
        )
    return parse_u64(va, "--linear-map VA"), parse_u64(pa, "--linear-map PA")


@dataclass(frozen=True)
class Registers:
    """EL2 register values (None: not known); :attr:`origin` says where each came from."""

    vttbr_el2: int | None = None
    vtcr_el2: int | None = None
    ttbr0_el2: int | None = None
    tcr_el2: int | None = None
    hcr_el2: int | None = None
    mair_el2: int | None = None
    origin: Mapping[str, str] = field(default_factory=dict)

    @property
    def host_stage2(self) -> bool:
        """VTTBR_EL2 and VTCR_EL2 are both known (the host stage 2 can be walked)."""
        return self.vttbr_el2 is not None and self.vtcr_el2 is not None

    @property
    def hyp_stage1(self) -> bool:
        """TTBR0_EL2 and TCR_EL2 are both known (the hypervisor's stage 1 can be walked)."""
        return self.ttbr0_el2 is not None and self.tcr_el2 is not None

    @property
    def fwb(self) -> bool:
        """HCR_EL2.FWB, False when HCR_EL2 is not known."""
        return hcr_fwb(self.hcr_el2)

    def values(self) -> dict[str, int]:
        """The known registers by name."""
        return {n: v for n in REGISTER_NAMES if (v := getattr(self, n)) is not None}

    def check_pairs(self) -> None:
        """Registers that only work together must be given together."""
        if (self.vttbr_el2 is None) != (self.vtcr_el2 is None):
            raise InputError("VTTBR_EL2 and VTCR_EL2 go together (--vttbr and --vtcr)")
        if (self.ttbr0_el2 is None) != (self.tcr_el2 is None):
            raise InputError("TTBR0_EL2 and TCR_EL2 go together (--ttbr0-el2 and --tcr-el2)")


@dataclass(frozen=True)
class Evidence:
    """Files from the dumped boot that explain a dump or a trace."""

    kallsyms: Path | None = None
    iomem: Path | None = None
    dmesg: Path | None = None


@dataclass(frozen=True)
class Inputs:
    """Everything a job may read, resolved from what the user named (see :func:`resolve`)."""

    dumps: tuple[str, ...] = ()
    base: int = 0
    registers: Registers = field(default_factory=Registers)
    evidence: Evidence = field(default_factory=Evidence)
    trace: Path | None = None
    kernel: str | None = None
    linear_map: tuple[int, int] | None = None
    profile: str | None = None
    profiles_file: Path | None = None
    strict: bool = False
    capture: Capture | None = None
    #: Where each resolved value came from ("capture.toml", "--kernel", "gdb-regs.txt" ...).
    origin: Mapping[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """How to name these inputs in a message: the capture folder, else the first file."""
        if self.capture is not None:
            return str(self.capture.folder)
        if self.dumps:
            return self.dumps[0]
        return str(self.trace) if self.trace is not None else "(no input)"

    def need_dump(self, what: str) -> None:
        if not self.dumps:
            raise InputError(f"{what} needs a dump (a dump file or a capture folder)")

    def need_trace(self, what: str) -> Path:
        if self.trace is None:
            where = f"{self.capture.folder}: the capture names no trace" if self.capture else ""
            raise InputError(
                (where + "; " if where else "")
                + f"{what} needs a trace (a trace file, --trace, or a capture folder with one)"
            )
        return self.trace


def classify(target: str) -> Role:
    """What a path names: a capture folder, a dump, or (any other existing file) a trace."""
    if is_capture(target):
        return "capture"
    if looks_like_dump(target):
        return "dump"
    # os.path's tests answer False for any name that cannot be looked up (one too long):
    # pathlib's raise for some of those
    if os.path.isdir(target):
        raise InputError(
            f"{shown(target)}: not a capture folder (no capture.toml, no host-s2.elf) and not "
            "a dump or trace file"
        )
    if not os.path.exists(target):
        raise InputError(f"{shown(target)}: no such file or capture folder")
    return "trace"


def resolve(
    targets: Sequence[str] = (),
    *,
    role: Literal["dump", "trace", "any"] = "any",
    dumps: Sequence[str] = (),
    trace: str | Path | None = None,
    registers: Mapping[str, str | int | None] | None = None,
    kallsyms: str | Path | None = None,
    iomem: str | Path | None = None,
    dmesg: str | Path | None = None,
    kernel: str | None = None,
    linear_map: str | tuple[int, int] | None = None,
    base: str | int | None = None,
    profile: str | None = None,
    profiles_file: str | Path | None = None,
    strict: bool = False,
) -> Inputs:
    """Resolve ``targets`` (positional paths) and options into :class:`Inputs`.

    A capture folder among ``targets`` supplies every value the options leave out (at most
    one folder).  Other targets are dumps or a trace: ``role`` says which a bare file is for
    commands that take one kind (``decode`` takes dumps, ``timeline`` a trace); with ``any``
    each file is classified by :func:`classify`.  ``registers`` maps register names
    (``vttbr_el2`` ...) to values (strings are parsed; None is "not given").
    """
    origin: dict[str, str] = {}
    cap: Capture | None = None
    dump_specs: list[str] = list(dumps)
    trace_path: Path | None = Path(trace) if trace is not None else None
    if trace is not None:
        origin["trace"] = "--trace"
    for t in targets:
        kind = classify(t) if role == "any" or os.path.isdir(t) else role
        if kind == "capture":
            if cap is not None:
                raise InputError(f"{t}: one capture folder at a time (already {cap.folder})")
            cap = load_capture(t)
        elif kind == "dump":
            dump_specs.append(str(t))
        else:
            if trace_path is not None:
                raise InputError(f"{t}: one trace at a time (already {trace_path})")
            trace_path = Path(t)
            origin["trace"] = "argument"
    if cap is not None:
        if not dump_specs:
            dump_specs = list(cap.dump)
            origin["dumps"] = f"{cap.folder}/capture.toml"
        if trace_path is None and cap.trace is not None:
            trace_path = cap.trace
            origin["trace"] = f"{cap.folder}/capture.toml"
    regs = _registers(registers or {}, cap)
    evidence = Evidence(
        kallsyms=_pick(kallsyms, cap, "kallsyms", origin),
        iomem=_pick(iomem, cap, "iomem", origin),
        dmesg=_pick(dmesg, cap, "dmesg", origin),
    )
    if kernel:
        origin["kernel"] = "--kernel"
    elif cap is not None and cap.kernel:
        kernel = cap.kernel
        origin["kernel"] = f"{cap.folder}/capture.toml"
    lm = parse_linear_map(linear_map) if isinstance(linear_map, str) else linear_map
    if lm is not None:
        origin["linear_map"] = "--linear-map"
    elif cap is not None and cap.linear_map is not None:
        lm = cap.linear_map
        origin["linear_map"] = f"{cap.folder}/capture.toml"
    return Inputs(
        dumps=tuple(dump_specs),
        base=parse_u64(base, "--base") if base is not None else 0,
        registers=regs,
        evidence=evidence,
        trace=trace_path,
        kernel=kernel,
        linear_map=lm,
        profile=profile,
        profiles_file=Path(profiles_file) if profiles_file else None,
        strict=strict,
        capture=cap,
        origin=origin,
    )


def with_registers(inputs: Inputs, **values: int | None) -> Inputs:
    """The inputs with some registers replaced (e.g. the second dump of a diff)."""
    given = {k: v for k, v in values.items() if v is not None}
    if not given:
        return inputs
    origin = dict(inputs.registers.origin) | {k: "option" for k in given}
    return replace(inputs, registers=replace(inputs.registers, **given, origin=origin))


def _registers(given: Mapping[str, str | int | None], cap: Capture | None) -> Registers:
    values: dict[str, int] = {}
    origin: dict[str, str] = {}
    if cap is not None:
        for name, value in cap.registers.items():
            if name in REGISTER_NAMES:
                values[name] = value
                origin[name] = f"{cap.folder}/{cap.register_origin}"
    options = {k: v for k, v in given.items() if v is not None}
    unknown = set(options) - set(REGISTER_NAMES)
    if unknown:
        raise InputError(f"unknown register {sorted(unknown)[0]!r}; known: {REGISTER_NAMES}")
    # A register pair given on the command line replaces the folder's pair as a whole.
    for pair in (("vttbr_el2", "vtcr_el2"), ("ttbr0_el2", "tcr_el2")):
        if any(p in options for p in pair):
            for p in pair:
                values.pop(p, None)
                origin.pop(p, None)
    for name, text in options.items():
        flag = "--" + name.removesuffix("_el2").replace("_", "-")
        if name in ("ttbr0_el2", "tcr_el2", "hcr_el2", "mair_el2"):
            flag = "--" + name.replace("_", "-")
        values[name] = parse_u64(text, flag)
        origin[name] = flag
    regs = Registers(**values, origin=origin)
    regs.check_pairs()
    return regs


def _pick(
    value: str | Path | None, cap: Capture | None, key: str, origin: dict[str, str]
) -> Path | None:
    if value:
        origin[key] = f"--{key}"
        return Path(value)
    found = getattr(cap, key, None) if cap is not None else None
    if found is not None:
        origin[key] = f"{cap.folder}/capture.toml" if cap is not None else key
    return found
