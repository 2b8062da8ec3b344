"""Region lists: where each raw memory file of a dump belongs in physical memory.

Three spellings are understood, all turned into :class:`RegionEntry` values (file, address,
declared size) that :func:`s2trace.io.opener.open_memory` resolves and maps:

* ``FILE@PA`` on the command line (the crash utility's raw-dump convention); ``PA`` is hex with
  ``0x`` or decimal.
* A Lauterbach TRACE32 script (``load.cmm``): ``d.load.binary FILE ADDRESS [/options]``, also
  spelt ``data.load.binary`` or abbreviated ``d.load.b``, any case.  ``ADDRESS`` may carry an
  access class (``A:``) and a range (``0x80000000--0xbfffffff`` inclusive, or ``0x80000000++
  0x3fffffff``, which declares the size).  Numbers need an explicit radix (``0x`` hex or a
  trailing ``.`` for decimal) because TRACE32's default radix depends on the user's setup.
  ``/SKIP n`` sets the file offset; ``/NOCLEAR`` and other options that do not change which
  bytes land where are accepted; anything else makes the line "not understood".
* A ``dump_info.txt``-style table as written next to Qualcomm-style RAM dumps (one row per
  memory file).  Accepted rows, whitespace-separated, numbers ``0x`` hex or decimal::

      INDEX BASE SIZE [DESCRIPTION...] FILE   e.g. 1 0x80000000 0x40000000 DDR CS0 DDRCS0.BIN
      BASE SIZE [DESCRIPTION...] FILE
      FILE BASE SIZE
      NAME BASE SIZE FILE

In both files, blank lines and comment lines (``;``, ``//``, ``#``) are skipped; every other line
that does not match is recorded as ``Problem(kind="unknown_line", where=line number)`` and used
for nothing: a region list is never guessed at.  File names may be double-quoted, are relative
to the list's folder, and may use ``\\`` as separator.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from s2trace.errors import InputError, Problem
from s2trace.files import read_text, shown
from s2trace.numbers import quoted, read_int

__all__ = [
    "RegionEntry",
    "parse_dump_info",
    "parse_file_at_pa",
    "parse_load_cmm",
    "parse_number",
]

_TOKEN = re.compile(r'"[^"]*"|\S+')
_COMMENT = (";", "//", "#")
_CMM_LOAD = re.compile(r"(?:d|data)\.load\.b(?:inary)?", re.IGNORECASE)
#: TRACE32 load options that do not move bytes (clearing, symbols, registers, access width).
_CMM_HARMLESS = {"NOCLEAR", "NOSYMBOL", "NOREG", "NOCODE", "BYTE", "WORD", "LONG", "QUAD"}
_T32_HEX = re.compile(r"0x[0-9a-f]+", re.IGNORECASE)
_T32_DEC = re.compile(r"[0-9]+\.")

#: Largest region list read (a real one is a few KiB).
REGION_LIST_LIMIT = 16 << 20


@dataclass(frozen=True, slots=True)
class RegionEntry:
    """One declared region: ``size`` bytes of ``file`` from ``offset``, at physical ``pa``.

    ``size`` is ``None`` when the list does not declare it (the file's length is used).
    ``line`` is the 1-based line of the list it came from (0 for the command line).
    """

    file: Path
    pa: int
    size: int | None
    name: str
    line: int = 0
    offset: int = 0


def parse_number(text: str) -> int:
    """``0x``-prefixed hex or plain decimal (``_`` between digits), below 2^64; ValueError
    otherwise (:mod:`s2trace.numbers` reads it)."""
    value = read_int(text)
    plain = text.strip(" \t")[:2].lower() not in ("0b", "0o") and text.strip(" \t")[:1] not in "+-"
    if value is None or not plain or not 0 <= value < 1 << 64:
        raise ValueError(f"not a number: {quoted(text)} (expected 0x-hex or decimal, 64 bits)")
    return value


def _is_number(text: str) -> bool:
    try:
        parse_number(text)
    except ValueError:
        return False
    return True


def parse_file_at_pa(spec: str) -> tuple[str, int]:
    """Split ``FILE@PA``; InputError naming the spec when ``PA`` is not a number."""
    file, _, pa = spec.rpartition("@")
    if not file:
        raise InputError(f"{spec}: expected FILE@PA with a file name before '@'")
    try:
        return file, parse_number(pa)
    except ValueError:
        raise InputError(
            f"{shown(spec)}: bad physical address {quoted(pa)} after '@'; expected FILE@PA with "
            "PA in 0x-hex or decimal"
        ) from None


def _tokens(line: str) -> list[str]:
    return _TOKEN.findall(line)


def _unquote(token: str) -> str:
    return token[1:-1] if len(token) >= 2 and token[0] == token[-1] == '"' else token


def _file_path(folder: Path, token: str) -> Path:
    name = _unquote(token).replace("\\", "/")
    # TRACE32 spells "the folder of the running script" as ~~~~ (PRACTICE path prefix).
    if name.startswith("~~~~/"):
        name = name[5:]
    return folder / name


def _read_lines(path: Path) -> list[str]:
    return read_text(path, "a region list", limit=REGION_LIST_LIMIT, lenient=True).splitlines()


def _skip(line: str) -> bool:
    s = line.strip()
    return not s or s.startswith(_COMMENT)


def _unknown(label: str, lineno: int, line: str, why: str) -> Problem:
    return Problem("unknown_line", lineno, f"{why}: {line.strip()!r}", source=label)


def _t32_number(text: str) -> int:
    if _T32_HEX.fullmatch(text):
        return int(text, 16)
    if _T32_DEC.fullmatch(text):
        return int(text[:-1], 10)
    raise ValueError(f"{text!r} has no explicit radix (0x... or trailing '.')")


def _t32_address(text: str) -> tuple[int, int | None]:
    """``[A:]start[--end|++extra]`` -> (start, declared size or None)."""
    body = re.sub(r"^[A-Za-z]{1,4}:", "", text)
    if "--" in body:
        lo, hi = body.split("--", 1)
        start, end = _t32_number(lo), _t32_number(hi)
        if end < start:
            raise ValueError(f"range {text!r} ends before it starts")
        return start, end - start + 1
    if "++" in body:
        lo, extra = body.split("++", 1)
        return _t32_number(lo), _t32_number(extra) + 1
    return _t32_number(body), None


def parse_load_cmm(
    path: Path, *, folder: Path | None = None, label: str | None = None
) -> tuple[list[RegionEntry], list[Problem]]:
    """Region entries of a TRACE32 ``load.cmm``, and one problem per line not understood.

    File names resolve against ``folder`` (default: the script's folder); messages and
    problems name the list ``label`` (default: ``path``).
    """
    folder = path.parent if folder is None else folder
    label = str(path) if label is None else label
    entries: list[RegionEntry] = []
    problems: list[Problem] = []
    for lineno, line in enumerate(_read_lines(path), start=1):
        if _skip(line):
            continue
        toks = _tokens(line)
        if not _CMM_LOAD.fullmatch(toks[0]):
            problems.append(_unknown(label, lineno, line, "not a d.load.binary command"))
            continue
        if len(toks) < 3 or toks[1].startswith("/"):
            problems.append(_unknown(label, lineno, line, "expected FILE ADDRESS"))
            continue
        if "&" in toks[1] or "&" in toks[2]:
            problems.append(_unknown(label, lineno, line, "PRACTICE macros are not expanded"))
            continue
        try:
            pa, size = _t32_address(toks[2])
            offset, why = _cmm_options(toks[3:])
        except ValueError as e:
            problems.append(_unknown(label, lineno, line, str(e)))
            continue
        if why:
            problems.append(_unknown(label, lineno, line, why))
            continue
        file = _file_path(folder, toks[1])
        entries.append(RegionEntry(file, pa, size, f"{label}:{lineno}", lineno, offset))
    return entries, problems


def _cmm_options(opts: list[str]) -> tuple[int, str]:
    """File offset from ``/SKIP n``; a reason string when an option is not understood."""
    offset = 0
    i = 0
    while i < len(opts):
        opt = opts[i]
        if not opt.startswith("/"):
            return 0, f"unexpected argument {opt!r}"
        word = opt[1:].upper()
        if word == "SKIP" and i + 1 < len(opts):
            offset = _t32_number(opts[i + 1])
            i += 2
            continue
        if word not in _CMM_HARMLESS:
            return 0, f"option {opt} is not understood"
        i += 1
    return offset, ""


def parse_dump_info(
    path: Path, *, folder: Path | None = None, label: str | None = None
) -> tuple[list[RegionEntry], list[Problem]]:
    """Region entries of a ``dump_info.txt`` table, and one problem per line not understood.

    ``folder`` and ``label`` as for :func:`parse_load_cmm`.
    """
    folder = path.parent if folder is None else folder
    label = str(path) if label is None else label
    entries: list[RegionEntry] = []
    problems: list[Problem] = []
    for lineno, line in enumerate(_read_lines(path), start=1):
        if _skip(line):
            continue
        row = _dump_info_row(_tokens(line))
        if row is None:
            problems.append(_unknown(label, lineno, line, "not an INDEX BASE SIZE ... FILE row"))
            continue
        pa, size, file_token, desc = row
        file = _file_path(folder, file_token)
        name = f"{label}:{lineno}" + (f" {desc}" if desc else "")
        entries.append(RegionEntry(file, pa, size, name, lineno))
    return entries, problems


def _dump_info_row(toks: list[str]) -> tuple[int, int, str, str] | None:
    """(base, size, file token, description) of one row, or None if it matches no form."""
    lead = 0
    while lead < len(toks) and _is_number(toks[lead]):
        lead += 1
    rest = toks[lead:]
    if lead in (2, 3) and rest and not _is_number(rest[-1]):
        base, size = toks[lead - 2], toks[lead - 1]
        return parse_number(base), parse_number(size), rest[-1], " ".join(rest[:-1])
    if lead == 0 and len(toks) in (3, 4) and _is_number(toks[1]) and _is_number(toks[2]):
        if len(toks) == 3:
            return parse_number(toks[1]), parse_number(toks[2]), toks[0], ""
        if not _is_number(toks[3]):
            return parse_number(toks[1]), parse_number(toks[2]), toks[3], _unquote(toks[0])
    return None
