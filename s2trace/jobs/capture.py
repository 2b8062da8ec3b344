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

The keys and what each may hold are declared once, in :data:`SCHEMA`; anything else (an
unknown key, a value of the wrong type, a number that is not ASCII digits, a file that is not
UTF-8 TOML) is one InputError line naming ``capture.toml`` and the key.  Paths are relative to
the folder and stay inside it: an absolute path or a ``..`` component is refused, with a line
that quotes nothing of what it points to.  A symlink *inside* the folder is the user's own
choice and is followed.  Every file the folder names must be a regular file (not a FIFO or a
device), and is remembered as an input, so that no output overwrites it.

A folder without ``capture.toml`` but laid out as the QEMU capture script leaves it
(``host-s2.elf[.zst]``, ``gdb-regs.txt``, a README naming ``linux-image-X.Y``, ``kallsyms*``,
``iomem*``, ``dmesg*``, ``ftrace*``) is read by convention: registers are the first value of
each register in ``gdb-regs.txt`` (CPU 0).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from s2trace.arch.registers import hcr_fwb
from s2trace.errors import InputError
from s2trace.files import input_file, parse_toml, read_text, shown
from s2trace.numbers import parse_u64, quoted
from s2trace.pkvm.profiles import profile_for_kernel

__all__ = ["SCHEMA", "Capture", "is_capture", "load_capture"]

CAPTURE_FILE = "capture.toml"
#: Largest capture.toml read (it is a few hundred bytes).
CAPTURE_FILE_LIMIT = 1 << 20
#: Largest gdb-regs.txt / README read from a capture-script folder.
LAYOUT_TEXT_LIMIT = 16 << 20
#: The EL2 registers a ``[registers]`` table may hold.
REGISTERS = ("vttbr_el2", "vtcr_el2", "ttbr0_el2", "tcr_el2", "hcr_el2", "mair_el2", "tpidr_el2")


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
    #: Where the register values came from (``capture.toml``, or ``gdb-regs.txt`` by layout).
    register_origin: str = CAPTURE_FILE

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
    """A folder with a ``capture.toml``, or laid out as the capture script leaves it (a
    ``host-s2.elf`` or ``host-s2.elf.zst``; a folder that merely holds ``*.elf`` files is not
    a capture)."""
    p = Path(path)
    try:
        return p.is_dir() and any(
            (p / name).exists() or (p / name).is_symlink() for name in (CAPTURE_FILE, *_DUMP_NAMES)
        )
    except OSError:  # a name too long, a path through a file
        return False


_DUMP_NAMES = ("host-s2.elf", "host-s2.elf.zst")
_REG = re.compile(r"^([A-Z][A-Z0-9_]+)\s+(0x[0-9a-fA-F]+)\b", re.M | re.ASCII)


def _first(folder: Path, *patterns: str) -> Path | None:
    for pattern in patterns:
        hits = sorted(folder.glob(pattern))
        if hits:
            return hits[0]
    return None


def _layout_text(path: Path | None, what: str) -> str:
    return "" if path is None else read_text(path, what, limit=LAYOUT_TEXT_LIMIT, lenient=True)


def _from_layout(root: Path) -> Capture:
    """A capture-script folder without ``capture.toml`` (see the module docstring)."""
    dump = _first(root, *_DUMP_NAMES)
    if dump is None:
        raise InputError(
            f"{shown(root)}: not a capture folder (no {CAPTURE_FILE} and no host-s2.elf)"
        )
    input_file(dump, "the capture's dump")
    regs: dict[str, int] = {}
    gdb_text = _layout_text(_first(root, "gdb-regs.txt"), "gdb-regs.txt (gdb's info registers)")
    for name, value in _REG.findall(gdb_text):
        regs.setdefault(name.lower(), int(value, 16))
    readme = _layout_text(_first(root, "README.md", "README*"), "the capture's README")
    m = re.search(r"linux-image-(\d+\.\d+(?:\.\d+)?)", readme, re.ASCII)
    kernel = m.group(1) if m else None
    m = re.search(r"virtual (0x[0-9a-f]+) (?:for|is) physical (0x[0-9a-f]+)", readme, re.ASCII)
    linear = (int(m.group(1), 16), int(m.group(2), 16)) if m else None
    members = {
        key: _first(root, *patterns)
        for key, patterns in (
            ("trace", ("ftrace*.txt", "trace*.txt")),
            ("kallsyms", ("kallsyms*.txt", "kallsyms")),
            ("iomem", ("iomem*.txt", "iomem")),
            ("dmesg", ("dmesg*.txt", "dmesg")),
        )
    }
    for key, path in members.items():
        if path is not None:
            input_file(path, f"the capture's {key}")
    origin = "gdb-regs.txt (CPU 0)" if regs else CAPTURE_FILE
    return Capture(folder=root, dump=(str(dump),), registers=regs, kernel=kernel,
                   linear_map=linear, register_origin=origin,
                   **members)  # type: ignore[arg-type]  # fmt: skip


# -- capture.toml: the schema -------------------------------------------------------------------
class _Doc:
    """One capture.toml being read: its folder and name, for paths and messages."""

    def __init__(self, root: Path, path: Path) -> None:
        self.root, self.origin = root, shown(path)

    def fail(self, key: str, what: str) -> InputError:
        return InputError(f"{self.origin}: {key}: {what}")

    def member(self, key: str, value: Any, what: str) -> Path:
        """A file named by ``key``: a relative path that stays inside the folder, naming a
        regular file there (checked, not opened)."""
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"expected a file name relative to the folder, got {_kind(value)}")
        rel = PurePosixPath(value)
        if rel.is_absolute() or value.startswith("~") or ".." in rel.parts or "\0" in value:
            raise self.fail(
                key,
                "the path leaves the capture folder (absolute paths and '..' are refused; a "
                "symlink made inside the folder is followed)",
            )
        path = self.root / rel
        if not (path.exists() or path.is_symlink()):
            raise self.fail(key, f"{quoted(value)}: no such file in {shown(self.root)}")
        return input_file(path, f"{what} ({CAPTURE_FILE} {key})")


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
             list: "an array", dict: "a table"}  # fmt: skip
    return names.get(type(value), type(value).__name__)


def _path(what: str) -> Callable[[_Doc, str, Any], Path]:
    return lambda doc, key, value: doc.member(key, value, what)


def _dumps(doc: _Doc, key: str, value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(d, str) for d in items):
        raise doc.fail(key, f"expected a file name or an array of them, got {_kind(value)}")
    out = []
    for d in items:
        name, at, pa = d.partition("@")
        path = doc.member(key, name, "a memory dump")
        if at:
            parse_u64(pa, f"{doc.origin}: {key}: physical address")
        out.append(str(path) + (at + pa if at else ""))
    return tuple(out)


def _kernel(doc: _Doc, key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise doc.fail(key, f'expected a version string like "6.12", got {_kind(value)}')
    try:
        profile_for_kernel(value)
    except InputError as e:
        raise doc.fail(key, str(e)) from None
    return value


def _number(doc: _Doc, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise doc.fail(key, f"expected a number (hex string or integer), got {_kind(value)}")
    return parse_u64(value, f"{doc.origin}: {key}")


def _linear(doc: _Doc, key: str, value: Any) -> tuple[int, int]:
    if not isinstance(value, str) or value.count("=") != 1:
        raise doc.fail(key, 'expected "VA=PA", e.g. "0xffff000000000000=0x40000000"')
    va, pa = value.split("=")
    return _number(doc, f"{key} VA", va), _number(doc, f"{key} PA", pa)


def _registers(doc: _Doc, key: str, value: Any) -> dict[str, int]:
    if not isinstance(value, dict):
        raise doc.fail(key, f"expected a table of register values, got {_kind(value)}")
    regs = {}
    for name, v in value.items():
        if name.lower() not in REGISTERS:
            raise doc.fail(
                f"{key}.{quoted(name)}", f"unknown register (known: {', '.join(REGISTERS)})"
            )
        regs[name.lower()] = _number(doc, f"{key}.{name}", v)
    return regs


def _table(doc: _Doc, key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise doc.fail(key, f"expected a table, got {_kind(value)}")
    return value


#: Every key of capture.toml: how its value is checked and converted (the one place).
SCHEMA: dict[str, Callable[[_Doc, str, Any], Any]] = {
    "kernel": _kernel,
    "dump": _dumps,
    "trace": _path("a trace"),
    "kallsyms": _path("a kallsyms listing"),
    "iomem": _path("an iomem listing"),
    "dmesg": _path("a dmesg log"),
    "linear_map": _linear,
    "registers": _registers,
    "synth": _table,  # how `s2trace synth` made the folder (free-form, for the record)
}


def load_capture(folder: str | Path) -> Capture:
    """Read ``capture.toml`` of a capture folder (or a capture-script layout); InputError for
    anything the schema refuses, a missing named file, or a special file."""
    root = Path(folder).resolve()
    if not root.is_dir():
        raise InputError(f"{shown(folder)}: not a capture folder")
    path = root / CAPTURE_FILE
    if not (path.exists() or path.is_symlink()):
        return _from_layout(root)
    text = read_text(path, "a capture.toml (UTF-8 TOML)", limit=CAPTURE_FILE_LIMIT)
    doc = _Doc(root, path)
    data = parse_toml(text, doc.origin)
    unknown = sorted(set(data) - set(SCHEMA))
    if unknown:
        raise doc.fail(quoted(unknown[0]), f"unknown key (known: {', '.join(SCHEMA)})")
    if "dump" not in data:
        raise doc.fail("dump", "required (the dump file or files)")
    value = {key: SCHEMA[key](doc, key, v) for key, v in data.items()}
    return Capture(
        folder=root,
        dump=value["dump"],
        registers=value.get("registers", {}),
        kernel=value.get("kernel"),
        trace=value.get("trace"),
        kallsyms=value.get("kallsyms"),
        iomem=value.get("iomem"),
        dmesg=value.get("dmesg"),
        linear_map=value.get("linear_map"),
        extra={k: v for k, v in data.items() if k == "synth"},
    )
