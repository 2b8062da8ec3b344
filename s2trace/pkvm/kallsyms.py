"""A minimal ``/proc/kallsyms`` reader: symbol name -> kernel virtual address.

Only what register recovery needs (:mod:`s2trace.hyp.init_params`): look a few symbols up by
name.  Lines are ``ADDRESS TYPE NAME [MODULE]`` with a hexadecimal address of up to 16
digits (``ffffb0998ee00000 T _text``, ``... t foo [kvm]``); other lines (headers, blank lines,
text around a copy-paste) are counted in :attr:`Kallsyms.skipped` and otherwise ignored.

The addresses are this boot's virtual addresses (KASLR moves them every boot), so the file
must come from the boot that was dumped.  A reader without ``CAP_SYSLOG`` (or any reader when
``kernel.kptr_restrict`` is 2) sees every address as 0: :attr:`Kallsyms.hidden` tells.

A name can appear more than once (static functions of different files); :meth:`address`
returns the first occurrence, in file order.  Addresses are also kept as one ``uint64``
array so callers can work on all of them at once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from s2trace.errors import InputError
from s2trace.files import read_text, shown

__all__ = ["Kallsyms", "parse_kallsyms", "read_kallsyms"]

_LINE = re.compile(
    r"^[ \t]*([0-9A-Fa-f]{1,16})[ \t]+([A-Za-z?])[ \t]+(\S+)(?:[ \t]+\[(\S+)\])?[ \t]*\r?$",
    re.MULTILINE,
)


@dataclass(frozen=True, eq=False)
class Kallsyms:
    """Symbols of one boot: ``names[i]`` of type ``types[i]`` is at ``addresses[i]``
    (compared by identity: it holds an array)."""

    source: str
    names: tuple[str, ...]
    types: tuple[str, ...]
    modules: tuple[str, ...]
    addresses: np.ndarray
    skipped: int = 0
    lines: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # lines: the 1-based line of each symbol in its file (empty when not known)
    _first: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self._first:
            first: dict[str, int] = {}
            for i, name in enumerate(self.names):
                first.setdefault(name, i)
            object.__setattr__(self, "_first", first)

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self._first

    def address(self, name: str) -> int | None:
        """Virtual address of the first symbol called ``name``, or None."""
        i = self._first.get(name)
        return None if i is None else int(self.addresses[i])

    def require(self, names: Iterable[str], why: str) -> dict[str, int]:
        """Addresses of ``names``; an InputError naming every missing one otherwise."""
        wanted = list(names)
        missing = [n for n in wanted if n not in self._first]
        if missing:
            raise InputError(
                f"{self.source}: no symbol {', '.join(missing)}; {why} needs the full "
                "/proc/kallsyms of the dumped boot"
            )
        return {n: int(self.addresses[self._first[n]]) for n in wanted}

    @property
    def hidden(self) -> bool:
        """True when every address is 0 (read without permission: ``kptr_restrict``)."""
        return bool(len(self.names)) and not bool(np.any(self.addresses))


def parse_kallsyms(text: str, source: str = "kallsyms", *, strict: bool = False) -> Kallsyms:
    """Parse kallsyms ``text``; InputError when no line has the kallsyms form, or, with
    ``strict``, naming the first non-blank line that does not."""
    matches = list(_LINE.finditer(text))
    found = [m.groups() for m in matches]
    if not found:
        raise InputError(
            f"{source}: no 'ADDRESS TYPE NAME' line; expected a copy of /proc/kallsyms"
        )
    lines = sum(1 for line in text.splitlines() if line.strip())
    if strict and lines != len(found):  # locate the culprit (error path only)
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip() and not _LINE.match(line):
                raise InputError(
                    f"{source}: line {number}: {line!r} is not 'HEXADDR TYPE NAME' (kallsyms)"
                )
    addresses = np.array([int(a, 16) for a, _, _, _ in found], dtype=np.uint64)
    newlines = np.array([m.start() for m in re.finditer("\n", text)], dtype=np.int64)
    starts = np.array([m.start() for m in matches], dtype=np.int64)
    return Kallsyms(
        source=source,
        names=tuple(n for _, _, n, _ in found),
        types=tuple(t for _, t, _, _ in found),
        modules=tuple(m for _, _, _, m in found),
        addresses=addresses,
        skipped=lines - len(found),
        lines=np.searchsorted(newlines, starts, "left") + 1,
    )


def read_kallsyms(path: str | os.PathLike[str]) -> Kallsyms:
    """Read and parse a kallsyms file; InputError if it cannot be read."""
    p = Path(path)
    text = read_text(p, "a copy of /proc/kallsyms", lenient=True)
    return parse_kallsyms(text, shown(p))
