"""Host hypercall ids -> names, per kernel.

ACK's ``host_hcall`` hypervisor event prints only ``id=N`` (the ``enum __kvm_host_smccc_func``
index, x0 - 0xC6000000; asm/kvm_asm.h; docs/kernel-facts.md §KF-3.6, §KF-4.2).  The numbering
changes between kernels, so it is data: ``hypercalls.toml`` holds the mainline tables of §KF-3.6
(6.5 and 7.1), and
:func:`parse_kvm_asm_h` reads the enum from the ``arch/arm64/include/asm/kvm_asm.h`` of the
kernel that produced the trace (the right thing for ACK builds, whose numbering differs).

A ``host_hcall`` names a share or unshare hypercall but not the page, so it never becomes a
transition; :func:`hypercall_names` labels the events for queries and plots.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from s2trace.errors import InputError
from s2trace.files import parse_toml, read_text, shown
from s2trace.pkvm.rules import parse_kernel
from s2trace.trace.parse.readers import as_arrow, extract_fields, parse_uint

__all__ = ["SMCCC_BASE", "hypercall_names", "hypercall_table", "known_tables", "parse_kvm_asm_h"]

#: KVM_HOST_SMCCC_ID(0): ARM_SMCCC_CALL_VAL(FAST_CALL, SMC_64, OWNER_VENDOR_HYP, 0).
SMCCC_BASE = 0xC6000000
_PREFIX = "__KVM_HOST_SMCCC_FUNC_"


@lru_cache(maxsize=1)
def _builtin() -> dict[str, tuple[str, ...]]:
    text = (resources.files("s2trace.trace.recipes") / "hypercalls.toml").read_text()
    return {k: tuple(v["names"]) for k, v in tomllib.loads(text).items()}


def known_tables() -> list[str]:
    """Kernel versions with a built-in table."""
    return list(_builtin())


def hypercall_table(
    kernel: str | tuple[int, int] | None = None, path: str | Path | None = None
) -> dict[int, str]:
    """id -> hypercall name, from ``path`` (a kvm_asm.h or a TOML with ``names = [...]``) or
    the built-in table of ``kernel`` (its major.minor must match one exactly)."""
    if path is not None:
        src = Path(path)
        text = read_text(src, "a hypercall table (kvm_asm.h or TOML)", limit=16 << 20)
        if src.suffix == ".toml":
            names = parse_toml(text, shown(src)).get("names")
            if not isinstance(names, list):
                raise InputError(f"{shown(src)}: expected names = [...] in order of id")
            return dict(enumerate(str(n) for n in names))
        return parse_kvm_asm_h(text, str(src))
    if kernel is None:
        raise InputError("hypercall table: give a kernel version or a kvm_asm.h")
    major, minor = parse_kernel(kernel)
    names = _builtin().get(f"{major}.{minor}")
    if names is None:
        raise InputError(
            f"kernel {major}.{minor}: no built-in hypercall table (have "
            f"{', '.join(known_tables())}); pass that kernel's arch/arm64/include/asm/kvm_asm.h"
        )
    return dict(enumerate(names))


_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_ENUM = re.compile(r"enum\s+__kvm_host_smccc_func\s*\{(?P<body>.*?)\}\s*;", re.S)
_DEFINE = re.compile(r"^\s*#\s*define\s+(?P<name>\w+)\s+(?P<value>\d+)\s*$", re.M)
_ENTRY = re.compile(r"^(?P<name>\w+)(?:\s*=\s*(?P<expr>.+))?$", re.S)
_MARKER = re.compile(r"^MARKER\s*\(\s*(?P<name>\w+)\s*\)$")
_EXPR = re.compile(r"^(?:(?P<ref>[A-Za-z_]\w*)|(?P<num>\d+))\s*(?:(?P<sign>[+-])\s*(?P<off>\d+))?$")


def parse_kvm_asm_h(text: str, source: str = "kvm_asm.h") -> dict[int, str]:
    """The id -> name table of ``enum __kvm_host_smccc_func`` in a kvm_asm.h.

    Understands plain entries (next value), ``= N``, ``= OTHER [+|- N]`` (e.g. the 6.x
    ``__KVM_HOST_SMCCC_FUNC___kvm_hyp_init + 1``, with ``__kvm_hyp_init`` #defined as 0) and
    ``MARKER(NAME)``, which names the next value without taking it (7.1).  Markers and names
    without the ``__KVM_HOST_SMCCC_FUNC_`` prefix are not hypercalls and are left out.
    """
    clean = _COMMENT.sub(" ", text)
    m = _ENUM.search(clean)
    if m is None:
        raise InputError(f"{source}: no 'enum __kvm_host_smccc_func {{...}};' found")
    values: dict[str, int] = {d["name"]: int(d["value"]) for d in _DEFINE.finditer(clean)}
    table: dict[int, str] = {}
    for name, value in values.items():
        if name.startswith(_PREFIX + "_"):
            table[value] = name[len(_PREFIX) :]
    nxt = 0
    for raw in m.group("body").split(","):
        item = " ".join(raw.split())
        if not item:
            continue
        if mk := _MARKER.match(item):
            values[mk.group("name")] = nxt
            continue
        e = _ENTRY.match(item)
        if e is None:
            raise InputError(f"{source}: cannot read enum entry {item!r}")
        name = e.group("name")
        if e.group("expr") is not None:
            nxt = _evaluate(e.group("expr").strip(), values, source)
        values[name] = nxt
        if name.startswith(_PREFIX + "_"):
            table[nxt] = name[len(_PREFIX) :]
        nxt += 1
    return dict(sorted(table.items()))


def _evaluate(expr: str, values: Mapping[str, int], source: str) -> int:
    m = _EXPR.match(expr)
    if m is None:
        raise InputError(f"{source}: enum value {expr!r}: expected NAME, N, or NAME +/- N")
    if m.group("ref") is not None:
        if m.group("ref") not in values:
            raise InputError(f"{source}: enum value {expr!r}: {m.group('ref')} is not defined")
        base = values[m.group("ref")]
    else:
        base = int(m.group("num"))
    off = int(m.group("off") or 0)
    return base - off if m.group("sign") == "-" else base + off


def hypercall_names(events: pd.DataFrame, table: Mapping[int, str]) -> pd.Series:
    """The hypercall name of each ``host_hcall`` event (<NA> for other events and unknown ids),
    as a categorical Series aligned with ``events``; vectorised (one lookup array)."""
    categories = list(dict.fromkeys(table[i] for i in sorted(table)))
    codes = np.full(len(events), -1, np.int64)
    rows = np.flatnonzero((events["event"] == "host_hcall").to_numpy())
    if len(rows) and table:
        text = as_arrow(events["fields"].iloc[rows])
        ids, ok = parse_uint(extract_fields(text, ["id"])["id"])
        lookup = np.full(max(table) + 1, -1, np.int64)
        where = {name: i for i, name in enumerate(categories)}
        lookup[sorted(table)] = [where[table[i]] for i in sorted(table)]
        inside = ok & (ids < np.uint64(len(lookup)))
        found = np.full(len(rows), -1, np.int64)
        found[inside] = lookup[ids[inside].astype(np.int64)]
        codes[rows] = found
    return pd.Series(
        pd.Categorical.from_codes(codes, dtype=pd.CategoricalDtype(categories)),
        index=events.index,
        name="hypercall",
    )
