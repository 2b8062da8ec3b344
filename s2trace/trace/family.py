"""Which kernel a trace comes from, said by its evidence, never silently defaulted.

:func:`choose_kernel` weighs what the user and the files state (``--kernel``, a capture's
``capture.toml``, ``Linux version`` in a dmesg or in the trace's header comments) and what the
events themselves show: a kprobe on a function that exists only in some kernels
(:data:`~s2trace.trace.recipes.probes.PROBES` gives each probed function's version range; the
return probes also name their caller), and the 7.1 hypervisor event format (``hyp_enter`` with
a ``reason=`` field, docs/kernel-facts.md §KF-4.2, §KF-4.5).  The result names the family and why; a
contradiction, or events that fit several families which would replay them differently, is an
:class:`~s2trace.errors.InputError` saying which (exit 2).

:func:`ignored_events` counts the events that recipes of other kernels read but the chosen
one does not; :func:`linear_map_from_trace` finds the kernel linear map from the trace's own
pairs of a range call and its per-page calls (``kvm_unshare_hyp(from)`` followed by
``unshare_pfn_hyp(pfn)``, §KF-4.5).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from s2trace.errors import InputError
from s2trace.pkvm.rules import kernel_family, parse_kernel, rule_table
from s2trace.trace.recipes.model import RecipeSet
from s2trace.trace.recipes.probes import PROBES
from s2trace.trace.spill import TransitionStore

__all__ = [
    "KernelChoice",
    "choose_kernel",
    "confirm_alike",
    "event_range",
    "ignored_events",
    "linear_map_from_trace",
    "stated_version",
]

Version = tuple[int, int]
_FAMILY_STARTS: tuple[Version, ...] = ((5, 13), (5, 15), (5, 17), (6, 14), (7, 1))
_LINUX = re.compile(r"Linux version (\d+\.\d+(?:\.\d+)?)")
_FUNC = re.compile(r"^\(([A-Za-z_][\w.]*)\+0x[0-9a-f]+/0x[0-9a-f]+(?: <- ([A-Za-z_][\w.]*))?\)")


@dataclass(frozen=True)
class KernelChoice:
    """The kernel version the replay uses, its family, and the evidence, in words."""

    kernel: str
    family: str
    source: str  # "--kernel", "capture.toml", "dmesg", "trace header" or "trace events"
    why: tuple[str, ...] = field(default_factory=tuple)
    alike: tuple[Version, ...] = ()  # families the events could not tell apart

    def header(self) -> str:
        """One line for the output's header: the family, the version used, and why."""
        family = self.family
        if len(self.alike) > 1:
            family = " or ".join(kernel_family(v) for v in self.alike)
        return f"{family} (Linux {self.kernel}, from {self.source}: {'; '.join(self.why)})"


def _v(v: Version) -> str:
    return f"{v[0]}.{v[1]}"


def stated_version(path: str | Path | None, head_only: bool = False) -> str | None:
    """``X.Y.Z`` of the first ``Linux version X.Y.Z`` line of a dmesg (or of the ``#``
    comment lines at the top of a trace, ``head_only``)."""
    if path is None:
        return None
    try:
        with open(path, errors="replace") as f:
            for i, line in enumerate(f):
                if head_only and (i > 64 or not line.startswith("#")):
                    return None
                m = _LINUX.search(line)
                if m:
                    return m.group(1)
    except OSError:
        return None
    return None


def _functions(events: pd.DataFrame) -> dict[str, int]:
    """Kernel functions the kprobe events show (the probed function, and the caller a return
    probe went back to), with how many events show them."""
    cat = events["event"].astype("category")
    codes = cat.cat.codes.to_numpy()
    counts = np.bincount(codes[codes >= 0], minlength=len(cat.cat.categories))
    text = events["fields"]
    out: dict[str, int] = {}
    for code, name in enumerate(cat.cat.categories):
        n = int(counts[code])
        if not str(name).startswith("s2_") or n == 0:
            continue
        i = int(np.argmax(codes == code))
        m = _FUNC.match(str(text.iloc[i] or ""))
        if m is None:
            continue
        probed = m.group(2) or m.group(1)
        out[probed] = out.get(probed, 0) + int(n)
        if m.group(2):
            out[m.group(1)] = out.get(m.group(1), 0) + int(n)
    return out


def event_range(events: pd.DataFrame) -> tuple[Version, Version | None, list[str]]:
    """[lowest, highest) kernel version the events fit, and the reasons (one per bound)."""
    lo: Version = (5, 13)
    hi: Version | None = None
    why: list[str] = []
    ranges: dict[str, tuple[Version, Version | None]] = {}
    for p in PROBES:
        got = ranges.get(p.function)
        ranges[p.function] = (
            (p.since, p.until) if got is None
            else (min(got[0], p.since), None if got[1] is None or p.until is None
                  else max(got[1], p.until))
        )  # fmt: skip
    for func, n in sorted(_functions(events).items()):
        r = ranges.get(func) or ranges.get(func.removesuffix(".isra.0"))
        if r is None:
            continue
        if r[0] > lo:
            lo = r[0]
            why.append(f"{func} ({n} events) exists from {_v(r[0])}")
        if r[1] is not None and (hi is None or r[1] < hi):
            hi = r[1]
            why.append(f"{func} ({n} events) exists before {_v(r[1])}")
    enter = events["fields"][(events["event"].astype("category") == "hyp_enter").to_numpy()]
    enter = enter.astype("object")
    if len(enter) and enter.str.contains("reason=", regex=False).any() and lo < (7, 1):
        lo = (7, 1)
        why.append("hyp_enter events carry reason= (the 7.1 hypervisor trace format)")
    return lo, hi, why


def _families(lo: Version, hi: Version | None) -> list[Version]:
    """Start versions of the rule families overlapping [lo, hi)."""
    out = []
    for i, start in enumerate(_FAMILY_STARTS):
        end = _FAMILY_STARTS[i + 1] if i + 1 < len(_FAMILY_STARTS) else None
        if (end is None or lo < end) and (hi is None or start < hi):
            out.append(start)
    return out


def _readers(recipes: RecipeSet, version: Version, present: set[str]) -> tuple[str, ...]:
    """The recipes of ``version`` that read events of the trace."""
    return tuple(sorted(r.name for r in recipes.for_kernel(version) if r.event in present))


def _rules(version: Version, keys: Iterable[tuple[str, str | None, str | None]]) -> tuple:
    """What each transition kind does under ``version`` (checks and results, as arrays)."""
    table = rule_table(version)
    out = []
    for key in sorted(keys, key=str):
        rid = table.rule_id(*key)
        out.append((key, table.rules[rid].op, table.fail[rid].tobytes(),
                    table.target[rid].tobytes()))  # fmt: skip
    return tuple(out)


def confirm_alike(choice: KernelChoice, transitions: pd.DataFrame | TransitionStore) -> None:
    """Raise InputError when the families ``choice`` could not tell apart replay these
    transitions differently (a transition one of them refuses or lacks)."""
    if len(choice.alike) < 2:
        return
    if isinstance(transitions, TransitionStore):
        keys = transitions.combos()
    else:
        keys = {
            (str(o), None if pd.isna(i) else str(i), None if pd.isna(c) else str(c))
            for o, i, c in transitions[["op", "initiator", "completer"]]
            .astype("object")
            .drop_duplicates()
            .itertuples(index=False)
        }
    first = _rules(choice.alike[0], keys)
    if any(_rules(v, keys) != first for v in choice.alike[1:]):
        names = ", ".join(kernel_family(v).split(":")[0] for v in choice.alike)
        raise InputError(
            f"the trace states no kernel; its events fit {names}, whose rules differ for its "
            f"transitions ({'; '.join(choice.why)}); give --kernel (or a dmesg with its "
            "'Linux version' line)"
        )


def choose_kernel(
    events: pd.DataFrame,
    recipes: RecipeSet,
    *,
    given: str | None = None,
    capture: str | None = None,
    dmesg: str | None = None,
    header: str | None = None,
) -> KernelChoice:
    """The kernel to replay ``events`` with (see the module docstring).  ``recipes``: every
    recipe, for all kernels.  Raises InputError when the evidence contradicts itself or is
    ambiguous."""
    lo, hi, why = event_range(events)
    stated = [(s, v) for s, v in (("--kernel", given), ("capture.toml", capture),
                                  ("dmesg", dmesg), ("trace header", header)) if v]  # fmt: skip
    for source, text in stated:
        version = parse_kernel(text)
        if version < lo or (hi is not None and version >= hi):
            raise InputError(
                f"{source} says Linux {text}, but the trace's events need "
                f"{_v(lo)}+{'' if hi is None else f' and < {_v(hi)}'}: {'; '.join(why)}"
            )
    if stated:
        source, text = stated[0]
        version = parse_kernel(text)
        for other, other_text in stated[1:]:
            if kernel_family(parse_kernel(other_text)) != kernel_family(version):
                raise InputError(
                    f"{source} says Linux {text} but {other} says Linux {other_text} "
                    "(different pKVM families); give --kernel"
                )
        agree = [f"{s} says {t}" for s, t in stated]
        return KernelChoice(str(text), kernel_family(version), source, tuple(agree + why))
    present = {str(e) for e, n in events["event"].astype("category").value_counts().items() if n}
    starts = _families(lo, hi)
    versions = [max(lo, s) for s in starts]
    if len(versions) > 1:
        first = _readers(recipes, versions[0], present)
        differ = [v for v in versions[1:] if _readers(recipes, v, present) != first]
        if differ:
            names = ", ".join(kernel_family(v).split(":")[0] for v in versions)
            raise InputError(
                f"the trace states no kernel and its events fit {names}, whose recipes read "
                f"them differently ({'; '.join(why) or 'no version-specific probe seen'}); "
                "give --kernel (or a dmesg with its 'Linux version' line)"
            )
    note = list(why) or ["no version-specific probe seen"]
    if len(versions) > 1:
        alike = ", ".join(kernel_family(v).split(":")[0] for v in versions)
        note.append(f"families {alike} replay these events alike")
    return KernelChoice(_v(lo), kernel_family(lo), "trace events", tuple(note), tuple(versions))


def ignored_events(
    events: pd.DataFrame,
    every: RecipeSet,
    chosen: RecipeSet,
    counts: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Events that a recipe of another kernel reads but none of ``chosen`` does, counted
    (``counts``: events per name, when ``events`` holds only some of the trace's)."""
    mine = {r.event for r in chosen}
    others = {r.event for r in every} - mine
    if counts is None:
        counts = {
            str(e): int(n) for e, n in events["event"].astype("category").value_counts().items()
        }
    return {str(e): int(n) for e, n in counts.items() if e in others and n}


_PAIRS = (("s2_kvm_unshare_hyp", "s2_unshare_pfn_hyp"), ("s2_kvm_share_hyp", "s2_share_pfn_hyp"))


def linear_map_from_trace(
    events: pd.DataFrame, page_size: int = 4096
) -> tuple[tuple[int, int] | None, str]:
    """(VA, PA) of the kernel linear map from a range call followed, on the same task, by its
    first per-page call (``from`` page = ``pfn``), when every such pair agrees; and why."""
    cat = events["event"].astype("category")
    wanted = [c for pair in _PAIRS for c in pair if c in cat.cat.categories]
    if not wanted:
        return None, "no kvm_(un)share_hyp call followed by its per-page call"
    rows_all = np.flatnonzero(cat.isin(wanted).to_numpy())[:40000]
    names = np.full(len(events), None, dtype=object)
    names[rows_all] = cat.iloc[rows_all].astype("object").to_numpy()
    pid = events["pid"].to_numpy(dtype="float64", na_value=np.nan)
    text = events["fields"]
    offsets: dict[int, int] = {}
    for outer, inner in _PAIRS:
        rows = rows_all[np.isin(names[rows_all], [outer, inner])]
        last_from: dict[float, int] = {}
        for i in rows[:20000]:  # a sample is plenty: every pair must agree
            if names[i] == outer:
                m = re.search(r"\bfrom=(0x[0-9a-fA-F]+)", str(text.iloc[i]))
                if m:
                    last_from[pid[i]] = int(m.group(1), 16)
                continue
            m = re.search(r"\bpfn=(0x[0-9a-fA-F]+|\d+)", str(text.iloc[i]))
            va = last_from.pop(pid[i], None)
            if m and va is not None:
                off = (va - va % page_size) - int(m.group(1), 0) * page_size
                offsets[off] = offsets.get(off, 0) + 1
    if len(offsets) != 1:
        return None, ("no kvm_(un)share_hyp call followed by its per-page call" if not offsets
                      else "kvm_(un)share_hyp / (un)share_pfn_hyp pairs disagree")  # fmt: skip
    off, n = next(iter(offsets.items()))
    base = 0xFFFF000000000000  # PAGE_OFFSET of a 48-bit VA kernel: only for the spelling
    pair = (base, base - off) if 0 <= base - off < 1 << 52 else (off, 0)
    return pair, f"{n} kvm_(un)share_hyp call(s) and the per-page call each made"
