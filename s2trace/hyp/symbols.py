"""Evidence a post-mortem has, as labelled physical ranges: kallsyms, /proc/iomem, dmesg, traces.

Every source becomes rows of the LABELS schema (``start, end, label, source``; physical
addresses, ``end`` exclusive), and :func:`label_map` joins them onto any frame with an address
and a size column (an ownership map, the hyp map, breaches), so a row reads as what it is.

* kallsyms (``/proc/kallsyms`` format ``ADDR TYPE NAME [MODULE]``): the hypervisor's sections
  (``__kvm_nvhe___hyp_*_start``/``_end``, the per-CPU template ``__kvm_nvhe___per_cpu_*``) and
  the kernel image's (``_text``/``_etext``/``__init_begin``/``_sdata``/``__bss_start`` ...).
  Image VAs become PAs with the image offset: PA = VA - ``_text`` + start of iomem
  "Kernel code" (the kernel maps its image linearly from ``_text``).
* The hypervisor's per-CPU areas: the array ``__kvm_nvhe_kvm_arm_hyp_percpu_base[]`` (in the
  dump) holds their kernel linear-map addresses, each area is the per-CPU template rounded up
  to pages (arch/arm64/kvm/arm.c; docs/kernel-facts.md §KF-2.9).
* ``/proc/iomem``: "System RAM", "Kernel code", "reserved" ... as they are.
* dmesg: ``kvm [0]: Reserved N MiB at 0x...`` (the hyp carve-out) and ``cma: Reserved ...``.
* traces: the ownership transitions the recipes derive from them (TRANSITIONS, see
  :mod:`s2trace.trace`; e.g. ``kvm_share_hyp`` shares, the allocations ``pkvm_create_hyp_vm``
  and ``pkvm_create_hyp_vcpu`` donate to the hypervisor, guest pages of
  ``pkvm_pgtable_stage2_map``), one label each (:func:`trace_labels`).  The recipes convert
  kernel linear addresses with a ``(VA, PA)`` pair; :meth:`LinearMap.pair` gives the one a dump
  implies (PA = (VA & ~PAGE_OFFSET) + PHYS_OFFSET, the kernel's ``__lm_to_phys``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from s2trace.columns import LABELS, TRANSITIONS
from s2trace.errors import InputError
from s2trace.hyp.evidence import (
    KernelImage,
    LinearMap,
    _frame,
    _symbols,
    dmesg_labels,
    iomem_labels,
    read_iomem,
    read_kallsyms,
    read_symbol_u64,
)
from s2trace.walk.tables import Memory

__all__ = [
    "LABELS",
    "KernelImage",
    "LinearMap",
    "collect_labels",
    "dmesg_labels",
    "image_labels",
    "iomem_labels",
    "label_map",
    "percpu_labels",
    "read_iomem",
    "read_kallsyms",
    "read_symbol_u64",
    "symbol_labels",
    "trace_labels",
]

PAGE = 4096

#: (start symbol, end symbol, label): the image sections, most specific last.
SECTIONS: tuple[tuple[str, str, str], ...] = (
    ("_text", "_etext", "kernel text"),
    ("_etext", "__init_begin", "kernel rodata"),
    ("__init_begin", "__init_end", "kernel init"),
    ("_sdata", "_edata", "kernel data"),
    ("__bss_start", "__bss_stop", "kernel bss"),
    ("__kvm_nvhe___hyp_idmap_text_start", "__kvm_nvhe___hyp_idmap_text_end", "hyp .idmap.text"),
    ("__kvm_nvhe___hyp_text_start", "__kvm_nvhe___hyp_text_end", "hyp .text"),
    ("__kvm_nvhe___hyp_rodata_start", "__kvm_nvhe___hyp_rodata_end", "hyp .rodata"),
    ("__kvm_nvhe___per_cpu_start", "__kvm_nvhe___per_cpu_end", "hyp per-CPU template"),
    ("__kvm_nvhe___hyp_data_start", "__kvm_nvhe___hyp_data_end", "hyp .data"),
    ("__kvm_nvhe___hyp_bss_start", "__kvm_nvhe___hyp_bss_end", "hyp .bss"),
)


def image_labels(kallsyms: pd.DataFrame, image: KernelImage) -> pd.DataFrame:
    """The image and hypervisor sections named by :data:`SECTIONS`, as physical ranges."""
    syms = _symbols(kallsyms)
    rows = [(syms[a], syms[b], lab) for a, b, lab in SECTIONS if a in syms and b in syms]
    if not rows:
        return LABELS.empty()
    s, e, lab = zip(*rows, strict=True)
    return _frame(image.pa(list(s)), image.pa(list(e)), list(lab), "kallsyms")


def percpu_labels(
    memory: Memory,
    kallsyms: pd.DataFrame,
    image: KernelImage,
    linear: LinearMap,
    max_cpus: int = 512,
) -> pd.DataFrame:
    """The hypervisor's per-CPU areas from ``kvm_arm_hyp_percpu_base[]`` in the dump.

    The array is read up to its first zero entry (unused CPUs) or ``max_cpus`` entries.
    """
    syms = _symbols(kallsyms)
    need = ("__kvm_nvhe_kvm_arm_hyp_percpu_base", "__kvm_nvhe___per_cpu_start")
    if any(n not in syms for n in (*need, "__kvm_nvhe___per_cpu_end")):
        return LABELS.empty()
    bases = np.asarray(
        read_symbol_u64(memory, kallsyms, image, need[0], count=max_cpus), dtype=np.uint64
    )
    zero = np.flatnonzero(bases == 0)
    bases = bases[: int(zero[0])] if zero.size else bases
    size = syms["__kvm_nvhe___per_cpu_end"] - syms["__kvm_nvhe___per_cpu_start"]
    size = -(-size // PAGE) * PAGE
    start = linear.pa(bases)
    labels = [f"hyp per-CPU area, CPU {i}" for i in range(len(bases))]
    return _frame(start, start + np.uint64(size), labels, "percpu")


# -- traces -------------------------------------------------------------------------------------
#: Verb of the ops that hand a page to the completer.
_GIVES = {"share": "shared", "donate": "donated"}
_TO = {"share": "with", "donate": "to"}


def _hex_text(values: np.ndarray) -> np.ndarray:
    """uint64 values as ``0x...`` lowercase hex text (the inverse of :func:`hex_values`),
    vectorised: one nibble lookup per digit column, leading zeros stripped by pandas."""
    v = np.asarray(values, dtype=np.uint64).reshape(-1)
    shifts = np.arange(60, -4, -4, dtype=np.uint64)
    digits = np.frombuffer(b"0123456789abcdef", np.uint8)[(v[:, None] >> shifts) & np.uint64(15)]
    raw = np.ascontiguousarray(digits).view("S16").reshape(-1)
    text = pd.Series(raw, dtype=object).str.decode("ascii").str.lstrip("0").replace("", "0")
    return ("0x" + text).to_numpy(object)


def _combo_text(op: str, initiator: str, completer: str, recipe: str) -> tuple[str, str]:
    """(head, first detail) of the label of one (op, initiator, completer, recipe)."""
    by = f" by {initiator}" if initiator not in ("host", "") else ""
    if op in _GIVES and completer == "guest":
        return "guest memory", ", ".join(x for x in (_GIVES[op] + by, recipe) if x)
    if op in _GIVES:
        return f"{_GIVES[op]} {_TO[op]} {completer}{by}", recipe
    return f"{op} {initiator or '?'} -> {completer or '?'}", recipe


def trace_labels(transitions: pd.DataFrame) -> pd.DataFrame:
    """The ranges a trace's ownership transitions name (TRANSITIONS input, as
    :func:`s2trace.trace.to_transitions` or :func:`s2trace.trace.analyze` make them).

    One label per transition, from its op, parties, recipe, VM and gfn: e.g.
    ``shared with hyp (kvm_share_hyp)``, ``donated to hyp (hyp_vm_donation, VM 0x4393d000)``,
    ``guest memory (shared, guest_map, gfn 0x0)``, ``reclaim hyp -> host (...)``.  The recipes
    already paired the probes, checked return values and converted linear addresses, so
    allocations that are no ownership transition (e.g. ``kvm_s2_zalloc_pages_exact``) get no
    label.  Lost-events markers are skipped.  Vectorised: the text of each distinct
    (op, initiator, completer, recipe) is built once, VM and gfn as whole columns.
    """
    try:
        TRANSITIONS.check(transitions)
    except ValueError as exc:
        raise InputError(f"trace labels: transitions frame: {exc}") from None
    tr = transitions[transitions["op"].astype("string").fillna("") != "lost"]
    if tr.empty:
        return LABELS.empty()
    keys = pd.DataFrame(
        {c: tr[c].astype("string").fillna("") for c in ("op", "initiator", "completer", "recipe")}
    )
    codes, uniques = pd.MultiIndex.from_frame(keys).factorize()
    texts = [_combo_text(*u) for u in uniques]
    head = np.array([h for h, _ in texts], dtype=object)[codes]
    first = np.array([d for _, d in texts], dtype=object)[codes]
    vm = tr["vm"].astype("Int64")
    has_vm = vm.notna().to_numpy()
    gfn = tr["gfn"].astype("UInt64")
    has_gfn = gfn.notna().to_numpy()
    vm_text = np.where(has_vm, ", VM " + _hex_text(vm.fillna(0).to_numpy(np.int64)), "")
    gfn_text = np.where(has_gfn, ", gfn " + _hex_text(gfn.fillna(0).to_numpy(np.uint64)), "")
    detail = (pd.Series(first, dtype="string") + vm_text + gfn_text).str.removeprefix(", ")
    label = pd.Series(head, dtype="string") + (" (" + detail + ")").where(detail != "", "")
    start = tr["addr"].to_numpy(np.uint64)
    end = start + tr["size"].to_numpy(np.uint64)
    return _frame(start, end, label.to_numpy(object), "trace")


# -- the interval join ---------------------------------------------------------------------------
def label_map(
    frame: pd.DataFrame,
    labels: pd.DataFrame,
    start: str = "ipa_start",
    size: str = "size",
    column: str = "label",
) -> pd.DataFrame:
    """``frame`` with a ``label`` column: the labels of every range overlapping each row,
    most specific (smallest) first, joined with ``"; "`` (<NA> where none).

    Vectorised interval join.  Labels up to 16 MiB wide are found per row with two
    ``searchsorted`` over their sorted starts (a window as wide as the widest of them); the
    few wider ones (RAM, CMA, carve-out) with a rows x labels comparison.  The joined text is
    built once per distinct set of labels (a 64-bit sum of per-label random keys names the
    set), not once per row.
    """
    out = frame.copy()
    n = len(frame)
    if labels.empty or n == 0:
        out[column] = pd.array([pd.NA] * n, dtype="string")
        return out
    lab = labels.drop_duplicates(["start", "end", "label"])
    ls = lab["start"].to_numpy(np.uint64)
    le = lab["end"].to_numpy(np.uint64)
    width = le - ls
    names = lab["label"].astype(str).to_numpy(object)
    rs = frame[start].to_numpy(np.uint64)
    re_ = rs + frame[size].to_numpy(np.uint64)
    small = np.flatnonzero(width <= np.uint64(1 << 24))
    big = np.flatnonzero(width > np.uint64(1 << 24))
    rows, hits = [], []
    if small.size:
        order = small[np.argsort(ls[small], kind="stable")]
        starts = ls[order]
        reach = np.uint64(int(width[small].max()))
        lo = np.searchsorted(starts, np.where(rs > reach, rs - reach, 0), side="left")
        hi = np.searchsorted(starts, re_, side="left")
        cnt = (hi - lo).astype(np.int64)
        r = np.repeat(np.arange(n), cnt)
        k = order[np.repeat(lo, cnt) + (np.arange(r.size) - np.repeat(np.cumsum(cnt) - cnt, cnt))]
        keep = le[k] > rs[r]
        rows.append(r[keep])
        hits.append(k[keep])
    if big.size:
        m = (ls[big][None, :] < re_[:, None]) & (le[big][None, :] > rs[:, None])
        r, j = np.nonzero(m)
        rows.append(r)
        hits.append(big[j])
    r = np.concatenate(rows)
    k = np.concatenate(hits)
    order = np.lexsort((ls[k], width[k], r))
    r, k = r[order], k[order]
    keys = np.random.default_rng(0x5EED).integers(1, 2**63, size=len(lab), dtype=np.uint64)
    text = np.full(n, None, dtype=object)
    if r.size:
        first = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
        with np.errstate(over="ignore"):
            sums = np.add.reduceat(keys[k], first)
        uniq, at = np.unique(sums, return_index=True)
        ends = np.r_[first[1:], r.size]
        combo = {
            int(u): "; ".join(names[k[first[i] : ends[i]]]) for u, i in zip(uniq, at, strict=True)
        }
        text[r[first]] = [combo[int(s)] for s in sums]
    out[column] = pd.array(text, dtype="string")
    return out


def symbol_labels(
    kallsyms: pd.DataFrame, image: KernelImage, prefixes: tuple[str, ...] = ("__kvm_nvhe_",)
) -> pd.DataFrame:
    """Data objects (kallsyms types D, d, B, b, R, r) whose name starts with one of
    ``prefixes`` (or contains ``kvm``), each from its address to the next symbol, at most to
    the end of its page (kallsyms has no sizes): e.g. ``__kvm_nvhe___hyp_vmemmap``,
    ``kvm_vgic_global_state``.  Section markers (``__kvm_nvhe___hyp_*``) are left to
    :func:`image_labels`."""
    ks = kallsyms.sort_values("addr", kind="stable").drop_duplicates("addr", keep="last")
    addr = ks["addr"].to_numpy(np.uint64)
    nxt = np.r_[addr[1:], np.uint64(2**64 - 1)]
    name = ks["name"].astype(str)
    obj = ks["type"].astype(str).isin(list("DdBbRr")).to_numpy()
    pick = name.str.startswith(prefixes) | name.str.contains("kvm")
    pick &= ~name.str.contains(r"___hyp_|__per_cpu_|_section_", regex=True)
    sel = obj & pick.to_numpy()
    end = np.minimum(nxt[sel], (addr[sel] // np.uint64(PAGE) + np.uint64(1)) * np.uint64(PAGE))
    return _frame(image.pa(addr[sel]), image.pa(end), name[sel].to_numpy(object), "kallsyms")


def collect_labels(
    memory: Memory | None = None,
    kallsyms: pd.DataFrame | None = None,
    image: KernelImage | None = None,
    iomem: pd.DataFrame | None = None,
    dmesg: str | Path | None = None,
    transitions: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Every label the given evidence yields (LABELS schema).  Per-CPU areas need the dump
    (``memory``) to read ``kvm_arm_hyp_percpu_base[]`` and ``memstart_addr``; ``transitions``
    (TRANSITIONS, from the trace: :func:`s2trace.trace.analyze`) are labelled by
    :func:`trace_labels`; sources that cannot be used are skipped."""
    parts = []
    if iomem is not None:
        parts.append(iomem_labels(iomem))
    if dmesg is not None:
        parts.append(dmesg_labels(dmesg))
    if kallsyms is not None and image is not None:
        parts.append(image_labels(kallsyms, image))
        parts.append(symbol_labels(kallsyms, image))
        if memory is not None:
            parts.append(
                percpu_labels(memory, kallsyms, image, LinearMap.from_dump(memory, kallsyms, image))
            )
    if transitions is not None:
        parts.append(trace_labels(transitions))
    parts = [p for p in parts if len(p)]
    if not parts:
        return LABELS.empty()
    out = pd.concat(parts, ignore_index=True)
    out["source"] = out["source"].astype(str).astype("category")
    LABELS.check(out)
    return out
