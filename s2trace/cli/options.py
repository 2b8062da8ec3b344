"""Option parsing shared by the commands: numbers, geometry, profiles, output.

Numbers are read by the one strict parser (:mod:`s2trace.numbers`), including the integer
options click would otherwise read with ``int()`` (which takes other scripts' digits and
misplaced underscores): :func:`int_option_type` gives their click type, with the range each
option admits.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from s2trace.errors import InputError
from s2trace.numbers import parse_int, parse_u64, quoted, read_int
from s2trace.outputs import check_output

__all__ = [
    "OUTPUT",
    "StrictInt",
    "output_options",
    "parse_int",
    "parse_u64",
    "profile_options",
]


class StrictInt(click.ParamType):
    """An integer option read by :func:`s2trace.numbers.read_int`, within ``[lo, hi]``."""

    name = "integer"

    def __init__(self, lo: int | None = None, hi: int | None = None) -> None:
        self.lo, self.hi = lo, hi

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        number = value if isinstance(value, int) else read_int(str(value))
        if number is None or isinstance(number, bool):
            self.fail(f"{quoted(value)} is not an integer (ASCII digits, 0x hex)", param, ctx)
        if (self.lo is not None and number < self.lo) or (self.hi is not None and number > self.hi):
            lo = "" if self.lo is None else self.lo
            hi = "" if self.hi is None else self.hi
            self.fail(f"{number} is not in the range {lo}..{hi}", param, ctx)
        return number


class OutputFile(click.ParamType):
    """An output file name, checked when the command line is read (missing directory, a
    directory, an input named as output are refused before any work is done; the writer,
    :mod:`s2trace.outputs`, checks again when it writes)."""

    name = "file"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            check_output(value)
        except InputError as exc:
            self.fail(str(exc), param, ctx)
        return str(value)


OUTPUT = OutputFile()


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
        type=OUTPUT,
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
