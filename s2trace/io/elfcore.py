"""ELF core files: physical regions from PT_LOAD segments, and a small writer for tests.

Reading uses pyelftools for the headers (it also handles ``e_phnum == PN_XNUM``, the escape
QEMU uses for more than 65534 segments).  Each PT_LOAD segment gives the physical range
``[p_paddr, p_paddr + p_filesz)`` stored at ``p_offset``; this is the layout of QEMU
``dump-guest-memory`` (ELF format) and of kdump ``/proc/vmcore`` / makedumpfile ELF output.
Bytes between ``p_filesz`` and ``p_memsz`` are not in the file, so they are not readable.

Overlaps *inside* one core are expected, not errors: an arm64 kdump vmcore carries an extra
PT_LOAD for the kernel image whose ``p_paddr`` range lies inside a RAM segment (kexec-tools
adds it for the kernel text), and QEMU's paging mode writes one segment per virtual mapping.
Both tools fill every segment from the same physical memory, so an overlapping part holds the
same bytes; the earlier segment (by address) is kept, the rest trimmed, and a problem recorded.

:func:`write_elf_core` writes a minimal little-endian ELF64 ``ET_CORE`` for AArch64 (layout per
the System V gABI: 64-byte ``Elf64_Ehdr``, 56-byte ``Elf64_Phdr`` entries), so tests and the
project's sample builder can make cores of any layout.  Checked by reading its output back with
pyelftools and ``readelf -l`` (tests/test_memory.py).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from elftools.common.exceptions import ELFError, ELFParseError
from elftools.construct import ConstructError
from elftools.elf.elffile import ELFFile

from s2trace.errors import InputError, Problem
from s2trace.io.memory import Region
from s2trace.outputs import open_output

__all__ = ["ELF_MAGIC", "elf_core_regions", "elf_note", "write_elf_core"]

ELF_MAGIC = b"\x7fELF"

# System V gABI constants used by the writer.
_ELFCLASS64, _ELFDATA2LSB, _EV_CURRENT = 2, 1, 1
_ET_CORE, _EM_AARCH64 = 4, 183
_PT_LOAD, _PT_NOTE = 1, 4
_PF_RWX = 7
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")  # Elf64_Ehdr, 64 bytes
_PHDR = struct.Struct("<IIQQQQQQ")  # Elf64_Phdr, 56 bytes
_PN_XNUM = 0xFFFF


def elf_core_regions(path: Path, label: str) -> tuple[list[Region], list[Problem]]:
    """Regions of the PT_LOAD segments of the ELF core ``path`` (messages say ``label``).

    InputError when the file is not a little-endian ELF core or a segment's file part runs
    past the end of the file (a truncated core).
    """
    length = os.stat(path).st_size
    regions: list[Region] = []
    problems: list[Problem] = []
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            if elf["e_type"] != "ET_CORE":
                raise InputError(f"{label}: ELF type {elf['e_type']}; expected a core (ET_CORE)")
            if not elf.little_endian:
                raise InputError(f"{label}: big-endian ELF core; expected little-endian arm64")
            segments = _program_headers(elf, f, length)
    except InputError:
        raise
    except (ELFError, ELFParseError, ConstructError, struct.error, ValueError) as e:
        raise InputError(f"{label}: unreadable ELF headers ({e}); expected an ELF core") from e

    for i, (ptype, pa, filesz, memsz, off) in enumerate(segments):
        if ptype != _PT_LOAD:
            continue
        if filesz and off + filesz > length:
            raise InputError(
                f"{label}: truncated ELF: segment {i} (PT_LOAD p_paddr {pa:#x}) needs file bytes "
                f"{off:#x}..{off + filesz:#x} but the file has {length:#x}"
            )
        if filesz < memsz:
            problems.append(
                Problem(
                    "segment_short",
                    pa + filesz,
                    f"segment {i}: p_filesz {filesz:#x} < p_memsz {memsz:#x}; "
                    f"{pa + filesz:#x}..{pa + memsz:#x} is not in the file",
                    source=label,
                )
            )
        if filesz:
            regions.append(Region(pa, filesz, Path(path), off, f"{label} segment {i}"))
    if not regions:
        raise InputError(f"{label}: ELF core has no PT_LOAD segment with file data")
    return _trim_overlaps(regions, problems, label), problems


def _program_headers(
    elf: ELFFile, f: BinaryIO, length: int
) -> list[tuple[int, int, int, int, int]]:
    """(p_type, p_paddr, p_filesz, p_memsz, p_offset) of every program header.

    pyelftools gives the count (``e_phnum``, or section 0's ``sh_info`` under ``PN_XNUM``) and
    checks the file header; the table itself is read in one piece and unpacked with
    :data:`_PHDR` when it has the ELF64 entry size (parsing thousands of segments through
    pyelftools costs tens of ms per open).  ValueError when the table runs past the file.
    """
    count = elf.num_segments()
    offset, entsize = int(elf["e_phoff"]), int(elf["e_phentsize"])
    if elf.elfclass != 64 or entsize != _PHDR.size:
        return [
            (
                _PT_LOAD if seg.header["p_type"] == "PT_LOAD" else -1,
                seg.header["p_paddr"],
                seg.header["p_filesz"],
                seg.header["p_memsz"],
                seg.header["p_offset"],
            )
            for seg in elf.iter_segments()
        ]
    if offset + count * entsize > length:
        raise ValueError(
            f"{count} program headers at {offset:#x} run past the end of the file ({length:#x})"
        )
    f.seek(offset)
    table = f.read(count * entsize)
    return [
        (ptype, paddr, filesz, memsz, off)
        for ptype, _flags, off, _vaddr, paddr, filesz, memsz, _align in _PHDR.iter_unpack(table)
    ]


def _trim_overlaps(regions: list[Region], problems: list[Problem], label: str) -> list[Region]:
    """Drop the parts of segments already covered by an earlier one (sorted by address).

    After sorting by start, the covered part of ``[s, e)`` is exactly ``[s, covered_end)``,
    so trimming the start suffices.
    """
    out: list[Region] = []
    covered = -1
    for r in sorted(regions, key=lambda r: (r.pa, -r.size)):
        if r.pa >= covered:
            out.append(r)
            covered = r.end
            continue
        problems.append(
            Problem(
                "overlapping_segment",
                r.pa,
                f"{r.name} [{r.pa:#x}..{r.end:#x}) overlaps an earlier segment up to "
                f"{covered:#x}; the earlier segment's bytes are used there",
                source=label,
            )
        )
        if r.end > covered:
            cut = covered - r.pa
            out.append(Region(covered, r.size - cut, r.path, r.file_offset + cut, r.name))
            covered = r.end
    return out


def elf_note(name: bytes, ntype: int, desc: bytes) -> bytes:
    """One ELF note record (``Elf64_Nhdr`` + name + desc, each padded to 4 bytes)."""
    name_z = name + b"\0"
    header = struct.pack("<III", len(name_z), len(desc), ntype)
    return header + _pad4(name_z) + _pad4(desc)


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def write_elf_core(
    path: str | os.PathLike[str],
    segments: Sequence[tuple[int, bytes] | tuple[int, bytes, int]],
    *,
    notes: bytes = b"",
    align: int = 4096,
) -> Path:
    """Write an AArch64 ELF64 core with one PT_LOAD per ``(pa, data[, memsz])`` segment.

    ``p_paddr = p_vaddr = pa``, ``p_filesz = len(data)``, ``p_memsz = memsz`` (default
    ``len(data)``; larger means the tail is absent, as in filtered dumps).  ``notes`` (raw
    note records, see :func:`elf_note`) becomes a leading PT_NOTE when non-empty.  Segment
    data starts at file offsets that are multiples of ``align``.  Returns the path.
    """
    if align <= 0 or align & (align - 1):
        raise ValueError(f"align must be a power of two, got {align}")
    rows: list[tuple[int, int, bytes, int]] = []  # (type, pa, data, memsz)
    if notes:
        rows.append((_PT_NOTE, 0, notes, len(notes)))
    for seg in segments:
        pa, data = seg[0], bytes(seg[1])
        memsz = seg[2] if len(seg) == 3 else len(data)
        if memsz < len(data):
            raise ValueError(f"segment at {pa:#x}: memsz {memsz} < data length {len(data)}")
        rows.append((_PT_LOAD, pa, data, memsz))
    if len(rows) >= _PN_XNUM:
        raise ValueError(f"{len(rows)} segments: the writer does not do PN_XNUM")

    phoff = _EHDR.size
    offset = phoff + _PHDR.size * len(rows)
    headers: list[bytes] = []
    placed: list[tuple[int, bytes]] = []
    for ptype, pa, data, memsz in rows:
        step = 4 if ptype == _PT_NOTE else align
        offset += -offset % step
        flags = 0 if ptype == _PT_NOTE else _PF_RWX
        p_align = 0 if ptype == _PT_NOTE else align
        headers.append(_PHDR.pack(ptype, flags, offset, pa, pa, len(data), memsz, p_align))
        placed.append((offset, data))
        offset += len(data)

    ident = ELF_MAGIC + bytes([_ELFCLASS64, _ELFDATA2LSB, _EV_CURRENT]) + bytes(9)
    ehdr = _EHDR.pack(
        ident, _ET_CORE, _EM_AARCH64, _EV_CURRENT, 0, phoff, 0, 0, _EHDR.size, _PHDR.size,
        len(rows), 0, 0, 0,
    )  # fmt: skip
    out = Path(path)
    with open_output(out, "wb", "ELF core") as f:
        f.write(ehdr)
        f.write(b"".join(headers))
        for off, data in placed:
            f.seek(off)
            f.write(data)
        f.truncate(offset)
    return out
