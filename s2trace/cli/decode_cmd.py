"""``s2trace decode``, ``s2trace build`` and ``s2trace profiles``.

``decode`` takes descriptor values, a file of raw descriptors (one table), or a dump with
walk options (``--vttbr/--vtcr`` or ``--root ...``), which it hands to the walk command's code.
"""

from __future__ import annotations

import json
import os
from typing import Any

import click

from s2trace.arch.geometry import Geometry, Granule
from s2trace.cli.options import (
    DUMP,
    OUTPUT,
    StrictInt,
    parse_int,
    parse_u64,
    profile_options,
    refuse_parquet_to_stdout,
    use,
)
from s2trace.cli.output import emit_frame
from s2trace.cli.walk_cmd import run_walk
from s2trace.decode import decode
from s2trace.decode.build import build_descriptor
from s2trace.errors import InputError
from s2trace.files import input_file
from s2trace.io.opener import looks_like_dump
from s2trace.jobs.capture import is_capture
from s2trace.jobs.decode import DecodeRequest, decode_files, decode_values, explain_values
from s2trace.numbers import is_number, quoted
from s2trace.pkvm.profiles import DEFAULT_PROFILE, get_profile, load_profiles

__all__ = ["register"]


_WALK_KEYS = (
    "vttbr",
    "vtcr",
    "root",
    "start_level",
    "ipa_bits",
    "base",
    "kallsyms",
    "iomem",
    "ttbr0_el2",
    "tcr_el2",
    "vmemmap_va",
)


def _is_dump(targets: tuple[str, ...], level: int | None) -> bool:
    """A capture folder or a dump (:func:`~s2trace.io.opener.looks_like_dump`) is walked;
    with ``--level`` a file is one table of descriptors, whatever its name."""
    if any(is_capture(t) for t in targets):
        return True
    return level is None and any(not is_number(t) and looks_like_dump(t) for t in targets)


#: Columns of a decoded descriptor shown in a text table (csv/json/parquet keep them all).
TABLE_COLUMNS = [
    "raw",
    "kind",
    "oa",
    "next_table",
    "memattr_name",
    "s2ap",
    "sh",
    "af",
    "xn_name",
    "sw",
    "owner",
    "page_state",
]


def _decode_values(targets: tuple[str, ...], kw: dict[str, Any]) -> None:
    req = DecodeRequest.of(
        granule=kw["granule"],
        ds=kw["ds"],
        lpa=kw["lpa"],
        level=kw["level"],
        profile=kw["profile"],
        profiles_file=kw["profiles_file"],
        fwb=kw["fwb"],
    )
    if all(is_number(t) for t in targets):
        if kw["explain"]:
            for text in explain_values(req, targets):
                click.echo(text)
            return
        frame = decode_values(req, targets)
    else:
        if kw["explain"]:
            raise InputError("--explain takes descriptor values, not files")
        bad = [t for t in targets if not os.path.exists(t) and not is_number(t)]
        if bad:
            raise InputError(
                f"{quoted(bad[0])}: neither a number nor an existing file (expected a "
                "64-bit descriptor like 0x4393d7ff in ASCII digits, or a file of descriptors)"
            )
        for t in targets:  # a special file is refused as such, whatever it was taken for
            input_file(t, "a memory dump or a file of raw 64-bit descriptors")
        if kw["level"] is None:
            raise InputError(
                f"{targets[0]}: decoding a table file needs --level N (the level "
                "of the table), or --vttbr/--vtcr to walk a dump"
            )
        frame = decode_files(req, targets)
    fmt = kw["fmt"]
    if fmt == "ptdump":
        raise InputError("--format ptdump renders a walk: give --vttbr/--vtcr or --root")
    if fmt == "table" and not kw["output"]:
        frame = frame[(["index"] if "index" in frame.columns else []) + TABLE_COLUMNS]
    emit_frame(frame, kw)


def register(cli: click.Group) -> None:
    @cli.command("decode")
    @click.argument("targets", nargs=-1, required=True)
    @click.option(
        "--level",
        type=StrictInt(-1, 3),
        default=None,
        help="Lookup level of the descriptors (default 3 for values).",
    )
    @click.option("--granule", default="4k", show_default=True, help="4k, 16k or 64k.")
    @click.option("--ds", is_flag=True, help="VTCR_EL2.DS=1: 52-bit (FEAT_LPA2) format.")
    @click.option("--lpa", is_flag=True, help="64k granule with 52-bit OA (FEAT_LPA).")
    @click.option("--fwb", is_flag=True, help="HCR_EL2.FWB=1: MemAttr with the FWB meaning.")
    @use(*DUMP, "vmemmap_va")
    @refuse_parquet_to_stdout
    @click.option(
        "--format",
        "fmt",
        type=click.Choice(["table", "csv", "json", "parquet", "ptdump"]),
        default="table",
        show_default=True,
    )
    @click.option(
        "-o",
        "--output",
        type=OUTPUT,
        help="Write to FILE instead of standard output.",
    )
    @click.option("--explain", is_flag=True, help="Per-bit breakdown of each value.")
    @click.option("--root", help="Explicit root table PA (with --start-level, --ipa-bits).")
    @click.option("--start-level", type=StrictInt(-1, 3), help="Start level for --root.")
    @click.option("--ipa-bits", type=StrictInt(1, 64), help="IPA size in bits for --root.")
    @click.option(
        "--all",
        "include_zero",
        is_flag=True,
        help="Also list zero (never-mapped, host-owned) entries.",
    )
    @click.option("--coalesce", is_flag=True, help="Merge adjacent equal rows into ranges.")
    @click.option("--summary", is_flag=True, help="Print the walk summary instead of rows.")
    @click.option(
        "--labels/--no-labels",
        default=None,
        help="Add a label column naming each range from kallsyms, iomem, dmesg and "
        "the trace (default: on for capture folders).",
    )
    def decode_cmd(targets: tuple[str, ...], **kw: Any) -> None:
        """Decode descriptor VALUEs, a FILE of raw descriptors (--level N), or walk a DUMP.

        \b
        s2trace decode 0x4393d7ff
        s2trace decode 0x4 0x2000000000000002 --profile linux-7.1 --format json
        s2trace decode table.bin --level 3
        s2trace decode host-s2.elf --vttbr 0x7f709001 --vtcr 0x802d3590 --summary
        """
        if any(kw.get(k) is not None for k in _WALK_KEYS) or _is_dump(targets, kw["level"]):
            run_walk(targets, kw)
            return
        _decode_values(targets, kw)

    @cli.command("build")
    @click.option("--kind", type=click.Choice(["page", "block", "table", "invalid"]), required=True)
    @click.option(
        "--level", type=StrictInt(-1, 3), default=None, help="Level (default 3; 2 for blocks)."
    )
    @click.option("--granule", default="4k", show_default=True)
    @click.option("--ds", is_flag=True)
    @click.option("--lpa", is_flag=True)
    @click.option("--fwb", is_flag=True, help="Encode --memattr names with FWB values.")
    @profile_options
    @click.option("--oa", help="Output address (page, block).")
    @click.option("--next-table", help="Next-level table address (table).")
    @click.option(
        "--memattr",
        default="normal-wb",
        show_default=True,
        help="Name (normal-wb, device-ngnre, ...) or raw 0..15.",
    )
    @click.option("--s2ap", default="rw", show_default=True, help="none, ro, wo or rw.")
    @click.option("--sh", default="inner", show_default=True, help="non, outer or inner.")
    @click.option("--no-af", is_flag=True, help="Leave the access flag clear.")
    @click.option("--xn", default="px ux", show_default=True, help="px ux, PXN, XN, UXN or 0..3.")
    @click.option("--contiguous", is_flag=True)
    @click.option("--dbm", is_flag=True)
    @click.option("--sw", default="0", help="Software bits 58:55 (raw).")
    @click.option("--state", help="pKVM page state in the SW bits (shared_owned ...).")
    @click.option("--owner", help="pKVM owner of an invalid entry (hyp, guest, id:N).")
    @click.option("--locked", is_flag=True, help="Lock marker of an invalid entry.")
    @click.option("--vm-handle", default="0", help="7.1+ guest donation: VM handle.")
    @click.option("--gfn", default="0", help="7.1+ guest donation: guest frame number.")
    @click.option("--format", "fmt", type=click.Choice(["hex", "json"]), default="hex")
    def build_cmd(**kw: Any) -> None:
        """Encode a descriptor from named fields (the inverse of decode)."""
        geometry = Geometry(Granule.parse(kw["granule"]), ds=kw["ds"], lpa=kw["lpa"])
        level = (
            kw["level"]
            if kw["level"] is not None
            else (2 if kw["kind"] == "block" else 3 if kw["kind"] != "table" else 0)
        )
        profile = get_profile(kw["profile"] or DEFAULT_PROFILE, kw["profiles_file"])
        mem: int | str = kw["memattr"]
        if is_number(str(mem)):
            mem = parse_int(str(mem), "memattr")
        xn: int | str = kw["xn"]
        if is_number(str(xn)):
            xn = parse_int(str(xn), "xn")
        raw = build_descriptor(
            kw["kind"],
            level=level,
            geometry=geometry,
            profile=profile,
            fwb=kw["fwb"],
            oa=parse_u64(kw["oa"], "--oa") if kw["oa"] else None,
            next_table=parse_u64(kw["next_table"], "--next-table") if kw["next_table"] else None,
            memattr=mem,
            s2ap=kw["s2ap"],
            sh=kw["sh"],
            af=not kw["no_af"],
            xn=xn,
            contiguous=kw["contiguous"],
            dbm=kw["dbm"],
            sw=parse_int(kw["sw"], "--sw"),
            state=kw["state"],
            owner=kw["owner"],
            locked=kw["locked"],
            vm_handle=parse_int(kw["vm_handle"], "--vm-handle"),
            gfn=parse_int(kw["gfn"], "--gfn"),
        )
        if kw["fmt"] == "json":
            click.echo(json.dumps(decode(raw, geometry, level, profile, kw["fwb"]).to_dict()))
        else:
            click.echo(f"{raw:#018x}")

    @cli.command("profiles")
    @click.option(
        "--profiles",
        "profiles_file",
        type=click.Path(dir_okay=False),
        help="Also list the profiles of this TOML file.",
    )
    def profiles_cmd(profiles_file: str | None) -> None:
        """List the pKVM annotation profiles."""
        table = load_profiles()
        if profiles_file:
            table.update(load_profiles(profiles_file))
        for name, p in table.items():
            mark = " (default)" if name == DEFAULT_PROFILE else ""
            click.echo(f"{name}{mark}\n    {p.kernels}")
