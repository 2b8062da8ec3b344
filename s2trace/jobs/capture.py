"""Capture folders: a dump plus what is needed to read it, as one input.

A capture folder holds a ``capture.toml`` and the files it names::

    kernel = "6.12.117"            # picks the annotation profile (and hypercall table)
    dump = ["host-s2.elf"]         # ELF core(s), FILE@PA raw images or region lists
    trace = "ftrace.txt"           # optional
    kallsyms = "kallsyms.txt"      # optional: kallsyms, iomem, dmesg
    iomem = "iomem.txt"
    dmesg = "dmesg.txt"
    linear_map = "0xffff000000000000=0x40000000"   # kernel linear-map VA = PA

    [registers]                    # EL2 registers (any subset; hex strings or integers)
    vttbr_el2 = "0x7f709001"
    vtcr_el2 = "0x802d3590"
    ttbr0_el2 = "0x7f301001"
    tcr_el2 = "0x15001f5b5d53510"
    hcr_el2 = "0x30480080001"
    mair_el2 = "0x40044ffff"

Everything is optional except the dump; the CLI takes flags over the folder's values.

A folder without ``capture.toml`` but laid out as the QEMU capture script leaves it
(``host-s2.elf[.zst]``, ``gdb-regs.txt``, a README naming ``linux-image-X.Y``, ``kallsyms*``,
``iomem*``, ``dmesg*``, ``ftrace*``) is read by convention: registers are the first value of
each register in ``gdb-regs.txt`` (CPU 0).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s2trace.arch.registers import hcr_fwb
from s2trace.errors import InputError
from s2trace.pkvm.profiles import profile_for_kernel

__all__ = ["Capture", "is_capture", "load_capture"]

CAPTURE_FILE = "capture.toml"


@dataclass(frozen=True)
class Capture:
    """A parsed capture folder (paths are absolute)."""

    folder: Path
    dump: tuple[str, ...]
    registers: dict[str, int] = field(default_factory=dict)
    kernel: str | None = None
    trace: Path | None = None
    kallsyms: Path | None = None
    iomem: Path | None = None
    dmesg: Path | None = None
    linear_map: tuple[int, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def profile(self) -> str | None:
        return profile_for_kernel(self.kernel) if self.kernel else None

    @property
    def fwb(self) -> bool:
        """HCR_EL2.FWB (bit 46), when the folder records HCR_EL2."""
        return hcr_fwb(self.registers.get("hcr_el2"))

    def reg(self, name: str) -> int | None:
        return self.registers.get(name)


def is_capture(path: str | Path) -> bool:
    """A folder with a ``capture.toml``, or laid out as the capture script leaves it."""
    p = Path(path)
    return p.is_dir() and ((p / CAPTURE_FILE).exists() or _first(p, *_DUMP_NAMES) is not None)


_DUMP_NAMES = ("host-s2.elf", "host-s2.elf.zst", "*.elf", "*.elf.zst")
_REG = re.compile(r"^([A-Z][A-Z0-9_]+)\s+(0x[0-9a-fA-F]+)\b", re.M)


def _first(folder: Path, *patterns: str) -> Path | None:
    for pattern in patterns:
        hits = sorted(folder.glob(pattern))
        if hits:
            return hits[0]
    return None


def _from_layout(root: Path) -> Capture:
    """A capture-script folder without ``capture.toml`` (see the module docstring)."""
    dump = _first(root, *_DUMP_NAMES)
    if dump is None:
        raise InputError(f"{root}: not a capture folder (no {CAPTURE_FILE} and no host-s2.elf)")
    regs: dict[str, int] = {}
    gdb = _first(root, "gdb-regs.txt")
    if gdb is not None:
        for name, value in _REG.findall(gdb.read_text(errors="replace")):
            regs.setdefault(name.lower(), int(value, 16))
    kernel = None
    readme = _first(root, "README.md", "README*")
    if readme is not None:
        m = re.search(r"linux-image-(\d+\.\d+(?:\.\d+)?)", readme.read_text(errors="replace"))
        kernel = m.group(1) if m else None
    linear = None
    if readme is not None:
        m = re.search(
            r"virtual (0x[0-9a-f]+) (?:for|is) physical (0x[0-9a-f]+)",
            readme.read_text(errors="replace"),
        )
        linear = (int(m.group(1), 16), int(m.group(2), 16)) if m else None
    return Capture(
        folder=root,
        dump=(str(dump),),
        registers=regs,
        kernel=kernel,
        trace=_first(root, "ftrace*.txt", "trace*.txt"),
        kallsyms=_first(root, "kallsyms*.txt", "kallsyms"),
        iomem=_first(root, "iomem*.txt", "iomem"),
        dmesg=_first(root, "dmesg*.txt", "dmesg"),
        linear_map=linear,
    )


def _int(value: Any, what: str, origin: str) -> int:
    if isinstance(value, int):
        return value
    try:
        return int(str(value).replace("_", ""), 0)
    except ValueError:
        raise InputError(f"{origin}: {what} = {value!r} is not a number") from None


def _linear(text: str, origin: str) -> tuple[int, int]:
    va, sep, pa = str(text).partition("=")
    if not sep:
        raise InputError(f"{origin}: linear_map {text!r}: expected VA=PA")
    return _int(va, "linear_map VA", origin), _int(pa, "linear_map PA", origin)


def load_capture(folder: str | Path) -> Capture:
    """Read ``capture.toml`` of a capture folder; missing named files are an InputError."""
    root = Path(folder).resolve()
    if not root.is_dir():
        raise InputError(f"{folder}: not a capture folder")
    path = root / CAPTURE_FILE
    if not path.exists():
        return _from_layout(root)
    origin = str(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{root}: not a capture folder (no {CAPTURE_FILE})") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{origin}: not valid TOML: {exc}") from None

    def file(key: str) -> Path | None:
        if key not in data:
            return None
        p = root / str(data[key])
        if not p.exists():
            raise InputError(f"{origin}: {key} = {data[key]!r}: no such file in {root}")
        return p

    dumps = data.get("dump")
    if not dumps:
        raise InputError(f"{origin}: 'dump' is required (the dump file or files)")
    if isinstance(dumps, str):
        dumps = [dumps]
    dump_paths = []
    for d in dumps:
        name, at, pa = str(d).partition("@")
        if not (root / name).exists():
            raise InputError(f"{origin}: dump {name!r}: no such file in {root}")
        dump_paths.append(str(root / name) + (at + pa if at else ""))
    regs = {k.lower(): _int(v, k, origin) for k, v in data.get("registers", {}).items()}
    known = {"kernel", "dump", "trace", "kallsyms", "iomem", "dmesg", "linear_map", "registers"}
    return Capture(
        folder=root,
        dump=tuple(dump_paths),
        registers=regs,
        kernel=str(data["kernel"]) if "kernel" in data else None,
        trace=file("trace"),
        kallsyms=file("kallsyms"),
        iomem=file("iomem"),
        dmesg=file("dmesg"),
        linear_map=_linear(data["linear_map"], origin) if "linear_map" in data else None,
        extra={k: v for k, v in data.items() if k not in known},
    )
