"""Option parsing shared by the commands: numbers, geometry, profiles, output."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from s2trace.errors import InputError

__all__ = ["output_options", "parse_int", "parse_u64", "profile_options"]


def parse_int(text: str, what: str) -> int:
    """An integer in hex (0x...), binary, octal or decimal; ``_`` separators allowed."""
    try:
        return int(str(text).strip().replace("_", ""), 0)
    except ValueError:
        raise InputError(
            f"{what} {text!r}: not a number (expected hex like 0x7f709001 or decimal)"
        ) from None


def parse_u64(text: str, what: str) -> int:
    value = parse_int(text, what)
    if not 0 <= value < 1 << 64:
        raise InputError(f"{what} {text!r}: does not fit in 64 bits")
    return value


def profile_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--profile NAME[,key=value]`` and ``--profiles FILE`` (user-defined profiles)."""
    f = click.option(
        "--profiles",
        "profiles_file",
        type=click.Path(dir_okay=False),
        help="TOML file with extra annotation profiles (same keys as the shipped profiles.toml).",
    )(f)
    return click.option(
        "--profile",
        default=None,
        help="pKVM annotation profile (default linux-5.15; see `s2trace profiles`).",
    )(f)


def output_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "-o",
        "--output",
        type=click.Path(dir_okay=False),
        help="Write to FILE instead of standard output.",
    )(f)
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(["table", "csv", "json", "parquet"]),
        default="table",
        show_default=True,
    )(f)


def stdout() -> Any:
    return sys.stdout
