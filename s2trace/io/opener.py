"""``open_memory``: turn the dump files a user names into one :class:`PhysicalMemory`.

Each spec is one of (checked in this order):

* ``FILE@PA`` -- a raw image at physical ``PA`` (hex ``0x..`` or decimal; the crash utility's
  convention).  A ``str`` containing ``@`` is read this way unless the whole string names an
  existing file; ``os.PathLike`` values are never split.
* an ELF core (detected by its magic): every PT_LOAD segment at its ``p_paddr``;
* a TRACE32 script (name ends in ``.cmm``) or a ``dump_info.txt``-style table (name ends in
  ``.txt``): the regions it lists (see :mod:`s2trace.io.regions`);
* anything else: a raw image at ``base``.

``.zst``/``.zstd``/``.gz``/``.xz`` files (also those named inside region lists) are decompressed
once into the cache (:mod:`s2trace.io.compressed`) and then treated by their inner name.  A
region-list entry whose file is missing but whose compressed sibling (``FILE.zst`` ...) exists
uses the sibling, so a dump folder can be stored compressed without editing its lists.
Directories are refused: finding the dump inside a capture folder is another module's job.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from s2trace.errors import InputError, Problem
from s2trace.files import input_file, is_regular, shown
from s2trace.io.compressed import COMPRESSED_SUFFIXES, decompressed, is_compressed, plain_name
from s2trace.io.elfcore import ELF_MAGIC, elf_core_regions
from s2trace.io.memory import PhysicalMemory, Region
from s2trace.io.regions import (
    RegionEntry,
    parse_dump_info,
    parse_file_at_pa,
    parse_load_cmm,
)

__all__ = ["looks_like_dump", "open_memory"]


def open_memory(specs: Sequence[str | os.PathLike[str]], base: int = 0) -> PhysicalMemory:
    """Open the dump files ``specs`` as one physical memory.

    Raw images without ``@PA`` are placed at ``base``.  Regions from all specs are combined;
    an overlap between them is an InputError naming both.  Lines of region lists that were
    not understood end up in ``PhysicalMemory.problems``.
    """
    if isinstance(specs, str | os.PathLike):
        specs = [specs]
    if not specs:
        raise InputError("no memory dump given; expected FILE, FILE@PA, an ELF core or a list")
    if base < 0:
        raise InputError(f"base address {base:#x} is negative")
    regions: list[Region] = []
    problems: list[Problem] = []
    for spec in specs:
        found, more = _open_spec(spec, base)
        regions.extend(found)
        problems.extend(more)
    return PhysicalMemory(regions, problems)


#: Names of raw memory images by convention (a trace is text, never one of these).
_RAW_SUFFIXES = (".elf", ".core", ".vmcore", ".bin", ".img", ".raw", ".mem", ".dump", ".dmp")


def looks_like_dump(spec: str | os.PathLike[str]) -> bool:
    """``spec`` names a memory dump as :func:`open_memory` reads it (``FILE@PA``, an ELF core,
    a region list, a raw image by its name), not a trace or another text file.

    Compressed files are judged by their inner name (``host-s2.elf.zst`` is a dump,
    ``ftrace.txt.zst`` is not); an uncompressed file by its ELF magic, else its name.  Only
    regular files are opened (a FIFO or a device could block): anything else is no dump.
    """
    text = os.fspath(spec)
    path = Path(text)
    if "@" in text and not os.path.exists(path):  # os.path: False for unusable names
        name, _, pa = text.rpartition("@")
        return bool(name) and bool(pa) and is_regular(name)
    if not is_regular(path):
        return False
    name = plain_name(path).lower()
    if name.endswith(".cmm") or name == "dump_info.txt" or name.endswith(_RAW_SUFFIXES):
        return True
    if is_compressed(path):
        return False
    try:
        return _starts_with(path, ELF_MAGIC)
    except OSError:
        return False


def _open_spec(spec: str | os.PathLike[str], base: int) -> tuple[list[Region], list[Problem]]:
    pa: int | None = None
    if isinstance(spec, str) and "@" in spec and not is_regular(spec):
        text, pa = parse_file_at_pa(spec)
        given = Path(text)
    else:
        given = Path(spec)
    path, logical = _materialise(given, "a memory dump")
    label = str(given)
    if _starts_with(path, ELF_MAGIC):
        if pa is not None:
            raise InputError(f"{spec}: an ELF core places its own segments; drop '@PA'")
        return elf_core_regions(path, label)
    suffix = Path(logical).suffix.lower()
    if suffix in (".cmm", ".txt"):
        if pa is not None:
            raise InputError(f"{spec}: a region list places its own files; drop '@PA'")
        parse = parse_load_cmm if suffix == ".cmm" else parse_dump_info
        # Names in a list are relative to the folder of the list the user gave (not the cache).
        entries, problems = parse(path, folder=given.parent, label=label)
        if not entries:
            raise InputError(f"{label}: region list names no memory file (see its lines)")
        return [_entry_region(e, problems) for e in entries if _nonempty(e, problems)], problems
    length = path.stat().st_size
    if length % 8:
        raise InputError(
            f"{label}: raw image of {length} bytes; expected a multiple of 8 (whole 64-bit words)"
        )
    return [Region(base if pa is None else pa, length, path, 0, label)], []


def _nonempty(e: RegionEntry, problems: list[Problem]) -> bool:
    if e.size == 0:
        problems.append(Problem("empty_region", e.line, f"{e.name}: declared size 0; skipped"))
        return False
    return True


def _entry_region(e: RegionEntry, problems: list[Problem]) -> Region:
    """Resolve one list entry to a mapped region; InputError if its file is too short."""
    given = e.file
    if not os.path.exists(given):  # False also for a name too long to look up
        for suffix in COMPRESSED_SUFFIXES:
            sibling = given.with_name(given.name + suffix)
            if is_regular(sibling):
                given = sibling
                break
    path, _ = _materialise(given, f"the memory file listed at {e.name}")
    length = path.stat().st_size
    if e.size is None and e.offset >= length:
        raise InputError(
            f"{e.name}: truncated region: {given} has {length} bytes, expected more than "
            f"the skipped {e.offset:#x}"
        )
    size = length - e.offset if e.size is None else e.size
    if e.offset + size > length:
        raise InputError(
            f"{e.name}: truncated region: {given} has {length} bytes, expected "
            f"{e.offset + size} (offset {e.offset:#x} + declared size {size:#x})"
        )
    return Region(e.pa, size, path, e.offset, f"{e.name} ({given})")


def _materialise(given: Path, what: str) -> tuple[Path, str]:
    """Check ``given`` is a readable non-empty file; decompress it if compressed.

    Returns the path to map and the logical file name (without a compression suffix).
    """
    input_file(given, what)  # a regular file: a FIFO or a device is refused before open()
    try:
        with open(given, "rb") as f:
            first = f.read(1)
    except OSError as e:
        raise InputError(f"{shown(given)}: cannot read ({e.strerror}); expected {what}") from e
    if not first:
        raise InputError(f"{shown(given)}: empty file; expected {what}")
    if not is_compressed(given):
        return given, given.name
    path = decompressed(given)
    if path.stat().st_size == 0:
        raise InputError(f"{given}: decompresses to nothing; expected {what}")
    return path, plain_name(given)


def _starts_with(path: Path, magic: bytes) -> bool:
    with open(path, "rb") as f:
        return f.read(len(magic)) == magic
