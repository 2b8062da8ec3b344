"""Options shared by the commands, declared once (:data:`OPTIONS`): the same name means the
same thing in every command, and :func:`inputs_from` turns them, with the positional targets,
into the resolved :class:`~s2trace.jobs.inputs.Inputs` every job takes.

Numbers are read by the one strict parser (:mod:`s2trace.numbers`), including the integer
options click would otherwise read with ``int()`` (which takes other scripts' digits and
misplaced underscores): :func:`int_option_type` gives their click type, with the range each
option admits.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Literal

import click

from s2trace.errors import InputError
from s2trace.jobs.inputs import Inputs, resolve
from s2trace.numbers import parse_int, parse_u64, quoted, read_int
from s2trace.outputs import check_output
from s2trace.render import PARQUET_NEEDS_FILE

__all__ = [
    "DUMP",
    "HYP",
    "OUTPUT",
    "TRACE",
    "StrictInt",
    "inputs_from",
    "output_options",
    "parse_int",
    "parse_u64",
    "profile_options",
    "refuse_parquet_to_stdout",
    "use",
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


Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

_FILE = click.Path(dir_okay=False)

#: Every shared option by its keyword name.
OPTIONS: dict[str, Decorator] = {
    "vttbr": click.option("--vttbr", help="VTTBR_EL2 (host stage-2 root)."),
    "vtcr": click.option("--vtcr", help="VTCR_EL2 (with --vttbr)."),
    "ttbr0_el2": click.option("--ttbr0-el2", help="TTBR0_EL2 (hyp stage-1 root)."),
    "tcr_el2": click.option("--tcr-el2", help="TCR_EL2 (with --ttbr0-el2)."),
    "hcr_el2": click.option("--hcr-el2", help="HCR_EL2 (E2H picks the hyp format; FWB)."),
    "mair_el2": click.option("--mair-el2", help="MAIR_EL2 (names AttrIndx memory types)."),
    "base": click.option("--base", help="Physical address of raw images (default 0)."),
    "kallsyms": click.option(
        "--kallsyms",
        "--symbols",
        "kallsyms",
        type=_FILE,
        help="kallsyms of the captured boot (its hyp sections are the hypervisor's from boot; "
        "placed with --iomem).",
    ),
    "iomem": click.option("--iomem", type=_FILE, help="/proc/iomem of the captured boot."),
    "dmesg": click.option(
        "--dmesg", type=_FILE, help="dmesg of the captured boot (hyp carve-out, Linux version)."
    ),
    "trace": click.option("--trace", type=_FILE, help="Host ftrace file of the dumped boot."),
    "kernel": click.option(
        "--kernel", help="Kernel version (6.12, 7.3 ...); default: the capture's, else inferred."
    ),
    "strict": click.option(
        "--strict", is_flag=True, help="Any problem found (malformed line, damaged table) is fatal."
    ),
    "profile": click.option(
        "--profile",
        default=None,
        help="pKVM annotation profile (default: the kernel's, else detected; see "
        "`s2trace profiles`).",
    ),
    "profiles_file": click.option(
        "--profiles",
        "profiles_file",
        type=_FILE,
        help="TOML file with extra annotation profiles (same keys as the shipped profiles.toml).",
    ),
    "vmemmap_va": click.option("--vmemmap", "vmemmap_va", help="Hyp VA of hyp_vmemmap."),
    "e2h": click.option(
        "--hvhe/--nvhe",
        "e2h",
        default=None,
        help="Force the E2H=1 / E2H=0 hyp table format (default: HCR_EL2, else guessed).",
    ),
    "recipes": click.option(
        "--recipes", multiple=True, type=_FILE, help="Extra recipe TOML file(s) (docs/recipes.md)."
    ),
    "linear_map": click.option(
        "--linear-map", help="Kernel linear map VA=PA, e.g. 0xffff000000000000=0x40000000."
    ),
    "page_size": click.option(
        "--page-size",
        type=click.Choice(["4096", "16384", "65536"]),
        default="4096",
        show_default=True,
        help="Page size of the traced kernel (4K, 16K or 64K granule).",
    ),
    "no_cache": click.option("--no-cache", is_flag=True, help="Do not use the parsed-trace cache."),
    "dump": click.option(
        "--dump",
        multiple=True,
        help="Dump taken after the trace (FILE or FILE@PA, repeatable): pages the trace never "
        "touches take its state, the ones it touches are checked against it (default: a "
        "capture folder's).",
    ),
    "hyp_trace": click.option(
        "--hyp-trace",
        type=_FILE,
        help="The hypervisor's own trace, on the host trace's clock: its hypercall events pin "
        "the transitions the host trace only brackets.",
    ),
    "hypercalls": click.option(
        "--hypercalls",
        type=_FILE,
        help="The kernel's arch/arm64/include/asm/kvm_asm.h (or a TOML names = [...]): names "
        "ACK host_hcall ids.",
    ),
}

#: What a command reading a dump takes.
DUMP = (
    "vttbr",
    "vtcr",
    "ttbr0_el2",
    "tcr_el2",
    "hcr_el2",
    "mair_el2",
    "base",
    "kallsyms",
    "iomem",
    "dmesg",
    "kernel",
    "profile",
    "profiles_file",
    "strict",
)
#: What a command reading the hypervisor's own view adds.
HYP = ("vmemmap_va", "e2h")
#: What a command reading a trace takes.
TRACE = (
    "recipes",
    "kernel",
    "linear_map",
    "page_size",
    "strict",
    "no_cache",
    "dump",
    "dmesg",
    "kallsyms",
    "iomem",
    "hyp_trace",
    "hypercalls",
)


def use(*names: str) -> Decorator:
    """Decorate a command with the shared options ``names`` (each once, in this order)."""
    seen = list(dict.fromkeys(names))

    def apply(f: Callable[..., Any]) -> Callable[..., Any]:
        for name in reversed(seen):
            f = OPTIONS[name](f)
        return f

    return apply


def profile_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--profile NAME[,key=value]`` and ``--profiles FILE`` (user-defined profiles)."""
    return use("profile", "profiles_file")(f)


def refuse_parquet_to_stdout(f: Callable[..., Any]) -> Callable[..., Any]:
    """Refuse ``--format parquet`` without ``-o`` before the command reads anything (not
    after a whole walk)."""

    @functools.wraps(f)
    def checked(*args: Any, **kw: Any) -> Any:
        if kw.get("fmt") == "parquet" and kw.get("output") is None:
            raise InputError(PARQUET_NEEDS_FILE)
        return f(*args, **kw)

    return checked


def output_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``-o FILE`` and ``--format`` (table, csv, json, parquet: parquet needs ``-o``)."""
    f = click.option(
        "-o",
        "--output",
        type=OUTPUT,
        help="Write to FILE instead of standard output.",
    )(refuse_parquet_to_stdout(f))
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(["table", "csv", "json", "parquet"]),
        default="table",
        show_default=True,
    )(f)


def inputs_from(
    targets: Sequence[str], kw: dict[str, Any], role: Literal["dump", "trace", "any"]
) -> Inputs:
    """The resolved inputs of a command line: positional ``targets`` plus the shared options
    in ``kw`` (options the command does not take are simply absent)."""
    regs = {
        "vttbr_el2": kw.get("vttbr"),
        "vtcr_el2": kw.get("vtcr"),
        "ttbr0_el2": kw.get("ttbr0_el2"),
        "tcr_el2": kw.get("tcr_el2"),
        "hcr_el2": kw.get("hcr_el2"),
        "mair_el2": kw.get("mair_el2"),
    }
    return resolve(
        targets,
        role=role,
        trace=kw.get("trace"),
        registers=regs,
        kallsyms=kw.get("kallsyms"),
        iomem=kw.get("iomem"),
        dmesg=kw.get("dmesg"),
        kernel=kw.get("kernel"),
        linear_map=kw.get("linear_map"),
        base=kw.get("base"),
        profile=kw.get("profile"),
        profiles_file=kw.get("profiles_file"),
        strict=bool(kw.get("strict")),
    )
