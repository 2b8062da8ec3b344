"""What a profile table may hold: every key, its type and range, declared once.

Profiles come from the shipped ``profiles.toml``, a user's ``--profiles FILE`` and
``--profile NAME,key=value`` overrides; all three are checked here, so a wrong type, a bit
outside 63..0, a reversed range or an unknown key is one InputError line naming the file (or
the option), the profile and the key -- never a crash later in the decoder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from s2trace.errors import InputError
from s2trace.numbers import quoted, read_int

__all__ = ["FIELDS", "OVERRIDABLE", "check_table", "parse_override"]

_U64 = (1 << 64) - 1
STATE_SOURCES = ("pte", "vmemmap", "none")


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
             list: "an array", dict: "a table"}  # fmt: skip
    return names.get(type(value), type(value).__name__)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_kind(value)}")
    return value


def _integer(lo: int, hi: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {_kind(value)} {quoted(value)}")
        number = value
        if not lo <= number <= hi:
            raise ValueError(f"{number} is outside {lo}..{hi}")
        return number

    return check


_bit = _integer(0, 63)


def _bit_range(value: Any) -> tuple[int, int]:
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError(f"expected [hi, lo], got {_kind(value)}")
    hi, lo = _bit(value[0]), _bit(value[1])
    if hi < lo:
        raise ValueError(f"[{hi}, {lo}]: hi must not be below lo")
    return hi, lo


def _names(value: Any) -> dict[int, str]:
    """``{ 0 = "host", 1 = "hyp" }``: number (as a TOML key) -> name."""
    if not isinstance(value, dict):
        raise ValueError(f"expected a table of number = name, got {_kind(value)}")
    out = {}
    for key, name in value.items():
        number = read_int(key)
        if number is None or not 0 <= number <= _U64:
            raise ValueError(f"key {quoted(key)} is not a number in 0..2^64-1")
        out[number] = _text(name)
    return out


def _source(value: Any) -> str:
    if value not in STATE_SOURCES:
        raise ValueError(f"expected one of {', '.join(STATE_SOURCES)}, got {quoted(value)}")
    return str(value)


#: Every key of a profile table and how its value is checked (and converted).
FIELDS: dict[str, Callable[[Any], Any]] = {
    "kernels": _text,
    "mapped_owner": _text,
    "owners": _names,
    "owner_bits": _bit_range,
    "owner_type": _integer(0, _U64),
    "lock_bit": _bit,
    "note_bit": _bit,
    "type_bits": _bit_range,
    "types": _names,
    "lock_type": _integer(0, _U64),
    "guest_owner": _integer(0, _U64),
    "handle_bits": _bit_range,
    "gfn_bits": _bit_range,
    "state_source": _source,
    "state_bits": _bit_range,
    "states": _names,
    "prot_none_bit": _bit,
}
#: Keys ``--profile NAME,key=value`` may set (one value; tables and ranges come from files).
OVERRIDABLE = tuple(k for k, f in FIELDS.items() if f not in (_names, _bit_range))


def check_table(name: str, table: Any, origin: str) -> dict[str, Any]:
    """The checked keyword arguments of profile ``name`` from a TOML table."""
    where = f"{origin}: profile {quoted(name)}"
    if not isinstance(table, Mapping):
        raise InputError(f"{where}: expected a table of profile keys, got {_kind(table)}")
    out = {}
    for key, value in table.items():
        if key not in FIELDS:
            raise InputError(f"{where}: unknown key {quoted(key)} (known: {', '.join(FIELDS)})")
        try:
            out[key] = FIELDS[key](value)
        except ValueError as e:
            raise InputError(f"{where}: {key}: {e}") from None
    return out


def parse_override(profile: str, param: str) -> tuple[str, Any]:
    """One ``key=value`` of ``--profile NAME,key=value``, checked like a file's value."""
    key, sep, text = param.partition("=")
    key = key.strip()
    if not sep or key not in OVERRIDABLE:
        raise InputError(
            f"--profile {quoted(profile)}: parameter {quoted(param)}: expected KEY=VALUE with "
            f"KEY one of {', '.join(OVERRIDABLE)}"
        )
    check = FIELDS[key]
    value: Any = text.strip()
    if check not in (_text, _source):
        value = read_int(value) if read_int(value) is not None else value
    try:
        return key, check(value)
    except ValueError as e:
        raise InputError(f"--profile {quoted(profile)}: {key}: {e}") from None
