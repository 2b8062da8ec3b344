"""The one number parser: how a number is written wherever s2trace reads one.

A number on the command line, in ``capture.toml``, a profile file, a region list or a
``--profile key=value`` override is ASCII: ``0x`` hex, ``0b`` binary, ``0o`` octal or decimal
digits, an optional sign, and ``_`` only between two digits (``0x7f70_9001``).  Surrounding
spaces and tabs are ignored; anything else -- other scripts' digits (``١٢``, fullwidth
``１２``), a misplaced underscore (``0_x1``, ``1__0``), a newline -- is refused.  Python's
``int(text, 0)`` would take several of those, so nothing in s2trace calls it on user text.

Messages quote the value with :func:`quoted`: escaped (a newline cannot split the one-line
error) and shortened (a 5000-character argument does not fill the terminal).
"""

from __future__ import annotations

import re

from s2trace.errors import InputError

__all__ = ["is_number", "parse_int", "parse_u64", "quoted", "read_int"]

_LITERAL = re.compile(
    r"(?P<sign>[+-]?)(?:0[xX](?P<hex>(?:_?[0-9a-fA-F])+)|0[bB](?P<bin>(?:_?[01])+)"
    r"|0[oO](?P<oct>(?:_?[0-7])+)|(?P<dec>[0-9](?:_?[0-9])*))",
    re.ASCII,
)
_BASES = {"hex": 16, "bin": 2, "oct": 8, "dec": 10}
_QUOTE_MAX = 80


def quoted(value: object) -> str:
    """``value`` as it may appear in a one-line message: ``repr`` (escapes newlines and
    control characters), cut to about 80 characters."""
    text = repr(value if isinstance(value, str) else str(value))
    if len(text) > _QUOTE_MAX:
        text = f"{text[: _QUOTE_MAX - 20]}...' ({len(str(value))} characters)"
    return text


def read_int(text: str) -> int | None:
    """The value of ``text`` written as described in the module docstring, else None."""
    m = _LITERAL.fullmatch(text.strip(" \t"))
    if m is None:
        return None
    base = next(k for k in _BASES if m.group(k) is not None)
    value = int(m.group(base).replace("_", ""), _BASES[base])
    return -value if m.group("sign") == "-" else value


def is_number(text: str) -> bool:
    return read_int(text) is not None


def parse_int(text: object, what: str) -> int:
    """``text`` as an integer (an ``int`` passes through; not a ``bool``); InputError naming
    ``what`` and quoting the value otherwise."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    value = read_int(text) if isinstance(text, str) else None
    if value is None:
        raise InputError(
            f"{what} {quoted(text)}: not a number (expected ASCII hex like 0x7f709001, or "
            "decimal; '_' only between digits)"
        )
    return value


def parse_u64(text: object, what: str) -> int:
    """:func:`parse_int` limited to 0 .. 2^64-1."""
    value = parse_int(text, what)
    if not 0 <= value < 1 << 64:
        raise InputError(f"{what} {quoted(text)}: does not fit in 64 bits (0 .. 2^64-1)")
    return value
