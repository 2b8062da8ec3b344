"""Dump sources: physical memory from raw images, ELF cores and region lists.

:func:`open_memory` is the entry point; it returns a :class:`PhysicalMemory` whose
:meth:`~PhysicalMemory.gather` feeds the page-table walker.
"""

from s2trace.io.compressed import cache_dir, decompressed
from s2trace.io.elfcore import elf_core_regions, elf_note, write_elf_core
from s2trace.io.memory import WORD, MemoryFault, PhysicalMemory, Region
from s2trace.io.opener import open_memory
from s2trace.io.regions import RegionEntry, parse_dump_info, parse_file_at_pa, parse_load_cmm

__all__ = [
    "WORD",
    "MemoryFault",
    "PhysicalMemory",
    "Region",
    "RegionEntry",
    "cache_dir",
    "decompressed",
    "elf_core_regions",
    "elf_note",
    "open_memory",
    "parse_dump_info",
    "parse_file_at_pa",
    "parse_load_cmm",
    "write_elf_core",
]
