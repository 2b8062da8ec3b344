"""Is pKVM's bookkeeping self-consistent in one dump?  Invariants checked page by page.

The host stage 2, the hypervisor's stage 1 and ``hyp_vmemmap`` are read into one row per
physical page (:func:`s2trace.hyp.host_state.page_states`), each side's state taken from where
the kernel keeps it (:class:`~s2trace.hyp.vmemmap.KernelLayout`), and every invariant is one
vectorised comparison over that table.  Each breach is a row of BREACHES naming the
invariant, the page and the raw entries of every side.

The invariants (:data:`INVARIANTS`) follow the boot fix-up ``fix_host_ownership_walker``
(facts §3.2: hyp OWNED -> host annotated owner HYP, hyp SHARED_OWNED -> host SHARED_BORROWED,
hyp SHARED_BORROWED -> host SHARED_OWNED) and the transitions that keep them (facts §3.1,
§3.2); read in both directions.  Allowed exceptions, each with its source:

* host SHARED_OWNED without a hyp SHARED_BORROWED is explained by an np-guest share when
  ``host_share_guest_count`` > 0 (v6.14+, facts §3.2).  A share with the Secure world over
  FF-A leaves no record on the hyp side and shows as a breach (say so in the detail).
* the hyp .text: from the July 2025 patch (see :mod:`s2trace.hyp.vmemmap`) the host keeps a
  read-only, execute-never identity mapping of pages the hyp owns and maps PAGE_HYP_EXEC,
  with host state NOPAGE (facts §2.10, seen on 7.3): not a breach.
* on v6.16+ the hyp maps pages it only borrows lazily (on pin), so a SHARED_BORROWED page
  without a hyp stage-1 mapping is fine; the reverse (a hyp mapping of a page whose hyp state
  is NOPAGE) is a breach of ``vmemmap_vs_pte``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from s2trace.arch.registers import config_from_registers
from s2trace.arch.stage1 import config_from_el2
from s2trace.columns import BREACHES
from s2trace.errors import InputError, ProblemLog
from s2trace.hyp.host_state import apply_states, page_states
from s2trace.hyp.stage1_walk import HypWalkResult, walk_hyp
from s2trace.hyp.symbols import KernelImage, read_iomem, read_kallsyms, read_symbol_u64
from s2trace.hyp.vmemmap import KernelLayout, VmemmapResult, kernel_layout, read_vmemmap
from s2trace.walk.tables import Memory
from s2trace.walk.walker import WalkResult, walk

__all__ = [
    "BREACHES",
    "INVARIANTS",
    "CheckResult",
    "HypView",
    "check_dump",
    "check_states",
    "enrich_with_vmemmap",
    "guess_kernel",
    "load_hyp_view",
    "memory_pfns",
]

#: Invariant names and what each asserts (the order of the report).
INVARIANTS: dict[str, str] = {
    "hyp_owned_vs_host_annotation": "hyp OWNED <=> host entry annotated with the hyp owner",
    "hyp_shared_owned_vs_host_borrowed": "hyp SHARED_OWNED <=> host SHARED_BORROWED",
    "hyp_borrowed_vs_host_shared_owned": "hyp SHARED_BORROWED <=> host SHARED_OWNED",
    "host_identity": "every valid host stage-2 leaf maps its IPA to the same PA",
    "host_maps_foreign_page": "no page both valid in the host stage 2 and owned by another",
    "vmemmap_vs_pte": "vmemmap states equal the PTE states where both exist",
    "hyp_alias_conflict": "hyp stage-1 leaves mapping the same page agree on its state",
}

_DETAIL = {
    "A1": "hyp owns the page but the host entry is not annotated with the hyp owner",
    "A2": "host entry annotated with the hyp owner but the hyp does not own the page",
    "B1": "hyp state shared_owned but the host state is not shared_borrowed",
    "B2": "host state shared_borrowed but the hyp state is not shared_owned",
    "C1": "hyp state shared_borrowed but the host state is not shared_owned",
    "C2": "host state shared_owned but the hyp does not borrow it and no np-guest shares it "
    "(an FF-A share with the Secure world would look like this)",
    "D": "valid host stage-2 leaf does not map its IPA to the same PA (oa differs)",
    "E1": "host stage 2 maps a page whose host state is nopage",
    "E2": "host stage 2 maps a page the hyp owns",
    "F1": "host stage-2 bits 56:55 disagree with the vmemmap host state",
    "F2": "hyp stage-1 bits 56:55 disagree with the vmemmap hyp state",
    "F3": "hyp stage 1 maps a page whose vmemmap hyp state is nopage",
    "G": "hyp stage-1 leaves mapping this page carry different states in bits 56:55",
}
_SUBCASE = {
    "A1": "hyp_owned_vs_host_annotation",
    "A2": "hyp_owned_vs_host_annotation",
    "B1": "hyp_shared_owned_vs_host_borrowed",
    "B2": "hyp_shared_owned_vs_host_borrowed",
    "C1": "hyp_borrowed_vs_host_shared_owned",
    "C2": "hyp_borrowed_vs_host_shared_owned",
    "D": "host_identity",
    "E1": "host_maps_foreign_page",
    "E2": "host_maps_foreign_page",
    "F1": "vmemmap_vs_pte",
    "F2": "vmemmap_vs_pte",
    "F3": "vmemmap_vs_pte",
    "G": "hyp_alias_conflict",
}


def _s(col: pd.Series) -> np.ndarray:
    """Names of a categorical column as an object array, "" for NA (lookup over categories)."""
    c = col.array if isinstance(col.dtype, pd.CategoricalDtype) else pd.Categorical(col)
    names = np.array([*map(str, c.categories), ""], dtype=object)
    return np.take(names, np.asarray(c.codes, dtype=np.intp))


def check_states(
    states: pd.DataFrame,
    host_map: pd.DataFrame,
    layout: KernelLayout,
    *,
    hyp_owner_id: int = 1,
    page_size: int = 4096,
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Breaches (BREACHES schema) of a PAGE_STATES table, and the invariants not checked
    (name -> why).  Pages whose state on one side is unknown (<NA>) are skipped for the
    invariants that need it."""
    host, hyp = _s(states["host_state"]), _s(states["hyp_state"])
    known_host, known_hyp = host != "", hyp != ""
    kind = _s(states["host_kind"])
    valid = (kind == "block") | (kind == "page")
    owner = states["host_owner_id"].astype("Int64").fillna(-1).to_numpy(np.int64)
    hyp_annot = (kind == "invalid") & (owner == hyp_owner_id)
    count = states["host_share_guest_count"].astype("Int64").fillna(0).to_numpy(np.int64)
    exempt = np.zeros(len(states), bool)
    if layout.hyp_text_ro_in_host:
        xn = states["host_xn"].astype("Int64").fillna(0).to_numpy(np.int64)
        hyp_ap = _s(states["hyp_ap"])
        hyp_exec_ro = (hyp_ap == "ro") & ~states["hyp_pxn"].fillna(True).to_numpy(bool)
        exempt = (
            valid
            & (_s(states["host_s2ap"]) == "ro")
            & (xn != 0)
            & (hyp == "owned")
            & np.isin(host, ["nopage", ""])
            & (hyp_exec_ro | (hyp_ap == ""))
        )
    both = known_host & known_hyp
    masks: dict[str, np.ndarray] = {
        "A1": known_hyp & (hyp == "owned") & ~hyp_annot & ~exempt,
        "A2": known_hyp & hyp_annot & (hyp != "owned"),
        "B1": both & (hyp == "shared_owned") & (host != "shared_borrowed"),
        "B2": both & (host == "shared_borrowed") & (hyp != "shared_owned"),
        "C1": both & (hyp == "shared_borrowed") & (host != "shared_owned"),
        "C2": both & (host == "shared_owned") & (hyp != "shared_borrowed") & (count == 0),
        "E1": valid & (host == "nopage") & ~exempt,
        "E2": valid & (hyp == "owned") & ~exempt,
    }
    skipped: dict[str, str] = {}
    vm_host, vm_hyp = _s(states["vm_host_state"]), _s(states["vm_hyp_state"])
    host_pte, hyp_pte = _s(states["host_pte_state"]), _s(states["hyp_pte_state"])
    host_bits = valid & (host_pte != "") & ((layout.host_states == "pte") | (host_pte != "owned"))
    masks["F1"] = host_bits & (vm_host != "") & (host_pte != vm_host)
    mapped = hyp_pte != ""
    hyp_bits = mapped & ((layout.hyp_states == "pte") | (hyp_pte != "owned"))
    masks["F2"] = hyp_bits & (vm_hyp != "") & (hyp_pte != vm_hyp)
    masks["F3"] = mapped & (vm_hyp == "nopage") & (layout.hyp_page.hyp_state is not None)
    masks["G"] = states["hyp_alias_conflict"].to_numpy(bool)
    if not known_host.any():
        skipped["hyp_shared_owned_vs_host_borrowed"] = "no host page states (vmemmap not read)"
        skipped["hyp_borrowed_vs_host_shared_owned"] = "no host page states (vmemmap not read)"
    if not known_hyp.any():
        skipped["hyp_owned_vs_host_annotation"] = "no hyp page states (vmemmap not read)"
    if layout.hyp_page.host_state is None and layout.hyp_page.hyp_state is None:
        skipped["vmemmap_vs_pte"] = f"struct hyp_page of {layout.label} keeps no page states"
    elif states["vmemmap_raw"].isna().all():
        skipped["vmemmap_vs_pte"] = "vmemmap not read"

    pieces = []
    for sub, mask in masks.items():
        sel = np.flatnonzero(mask)
        if sel.size:
            pieces.append(_breach_rows(states, sel, sub, page_size))
    pieces.append(_identity_rows(host_map))
    pieces = [p for p in pieces if len(p)]
    frame = pd.concat(pieces, ignore_index=True) if pieces else None
    return _finish(frame), skipped


def _breach_rows(states: pd.DataFrame, sel: np.ndarray, sub: str, page: int) -> pd.DataFrame:
    s = states.iloc[sel]
    return pd.DataFrame(
        {
            "invariant": _SUBCASE[sub],
            "pa": s["pa"].to_numpy(np.uint64),
            "size": np.full(sel.size, page, np.uint64),
            "host_raw": s["host_raw"].array,
            "hyp_va": s["hyp_va"].array,
            "hyp_raw": s["hyp_raw"].array,
            "vmemmap_raw": s["vmemmap_raw"].array,
            "host_state": s["host_state"].astype("string").array,
            "hyp_state": s["hyp_state"].astype("string").array,
            "detail": _DETAIL[sub],
        }
    )


def _identity_rows(host_map: pd.DataFrame) -> pd.DataFrame:
    leaf = host_map["kind"].isin(["block", "page"]).to_numpy()
    oa = host_map["oa"].astype("UInt64").fillna(0).to_numpy(np.uint64)
    bad = leaf & (oa != host_map["ipa_start"].to_numpy(np.uint64))
    m = host_map[bad]
    n = len(m)
    na = pd.array([pd.NA] * n, dtype="UInt64")
    return pd.DataFrame(
        {
            "invariant": "host_identity",
            "pa": m["ipa_start"].to_numpy(np.uint64),
            "size": m["size"].to_numpy(np.uint64),
            "host_raw": m["raw"].astype("UInt64").array,
            "hyp_va": na,
            "hyp_raw": na,
            "vmemmap_raw": na,
            "host_state": pd.array([pd.NA] * n, dtype="string"),
            "hyp_state": pd.array([pd.NA] * n, dtype="string"),
            "detail": [f"{_DETAIL['D']}: oa {o:#x}" for o in oa[bad].tolist()],
        }
    )


def _finish(frame: pd.DataFrame | None) -> pd.DataFrame:
    cats = list(INVARIANTS)
    if frame is None or frame.empty:
        out = BREACHES.empty()
        out["invariant"] = pd.Categorical([], categories=cats)
        return out
    frame["invariant"] = pd.Categorical(frame["invariant"], categories=cats)
    states = ["owned", "shared_owned", "shared_borrowed", "nopage", "reserved"]
    for col in ("host_state", "hyp_state"):
        frame[col] = pd.Categorical(frame[col].astype(object), categories=states)
    for col in ("host_raw", "hyp_va", "hyp_raw", "vmemmap_raw"):
        frame[col] = frame[col].astype("UInt64")
    frame["detail"] = frame["detail"].astype("string")
    out = frame.sort_values(["invariant", "pa"], kind="stable", ignore_index=True)
    BREACHES.check(out)
    return out


# -- loading the hypervisor's view --------------------------------------------------------------
@dataclass
class HypView:
    """The hyp stage 1, the kernel image placement and the vmemmap of one dump."""

    hyp: HypWalkResult
    layout: KernelLayout
    vmemmap: VmemmapResult | None = None
    image: KernelImage | None = None
    notes: list[str] = field(default_factory=list)


def memory_pfns(memory: Memory, page_size: int = 4096) -> np.ndarray:
    """PFNs of every page the dump holds in full (its RAM)."""
    parts = []
    for r in getattr(memory, "regions", ()):
        lo = -(-r.pa // page_size)
        hi = r.end // page_size
        if hi > lo:
            parts.append(np.arange(lo, hi, dtype=np.uint64))
    return np.concatenate(parts) if parts else np.empty(0, np.uint64)


def ram_pfns(iomem: pd.DataFrame, page_size: int = 4096) -> np.ndarray:
    """PFNs of the top-level ``System RAM`` ranges of /proc/iomem (end inclusive there,
    exclusive here): the pages the hyp_vmemmap describes, whether or not the dump holds
    them (a trimmed dump keeps the vmemmap but not the RAM)."""
    ram = iomem[(iomem["name"] == "System RAM") & (iomem["depth"] == 0)]
    parts = [
        np.arange(-(-int(lo) // page_size), int(hi) // page_size, dtype=np.uint64)
        for lo, hi in zip(ram["start"], ram["end"], strict=True)
    ]
    return np.concatenate(parts) if parts else np.empty(0, np.uint64)


def image_from_hyp_idmap(kallsyms: pd.DataFrame, hyp_map: pd.DataFrame) -> KernelImage:
    """Place the kernel image without /proc/iomem, from the hyp stage 1.

    The hyp stage 1 identity-maps the page of ``__hyp_idmap_text_start`` (the idmap used to
    turn the MMU on), so PA(_text) = PA(that page) - (VA(that symbol) - VA(_text)); the image
    is loaded 2 MiB aligned (arm64 booting.rst, text_offset 0 since v5.8), which picks the
    right page when several leaves happen to have VA == PA.
    """
    first = kallsyms.drop_duplicates("name").set_index("name")["addr"]
    name = "__kvm_nvhe___hyp_idmap_text_start"
    if name not in first or "_text" not in first:
        raise InputError(f"kallsyms: need _text and {name} to place the kernel image")
    sym, text = int(first[name]), int(first["_text"])
    ident = hyp_map[hyp_map["va_start"] == hyp_map["pa"]]
    cands = []
    for pa in ident["pa"].to_numpy(np.uint64).tolist():
        text_pa = pa + (sym & 0xFFF) - (sym - text)
        if text_pa >= 0 and text_pa % 0x200000 == 0:
            cands.append(text_pa)
    if len(set(cands)) != 1:
        raise InputError(
            "cannot place the kernel image from the hyp idmap "
            f"({len(set(cands))} candidates); give /proc/iomem (--iomem)"
        )
    return KernelImage(text, cands[0])


def guess_kernel(
    host_map: pd.DataFrame,
    memory: Memory | None = None,
    translate: Any = None,
    vmemmap_va: int | None = None,
) -> tuple[KernelLayout, str]:
    """A kernel layout from what the dump shows, and the reason (see the checks below).

    7.1-style donation entries (type 2 in bits 63:60) -> 7.1+; host leaves with bits 56:55
    set -> v6.13 or older; otherwise the vmemmap entry (8-byte stride) of hyp-annotated pages:
    state byte 0x33 -> v6.16+ (taken as 7.0, hyp .text read-only in the host allowed), 0x04
    -> v6.14-v6.15; otherwise v6.13 or older (4-byte entries, no states).
    """
    raw = host_map["raw"].to_numpy(np.uint64)
    kind = host_map["kind"].astype("string").to_numpy(object)
    inv = kind == "invalid"
    if ((raw[inv] >> np.uint64(60)) == 2).any():
        return kernel_layout((7, 1)), "7.1+ (host stage 2 holds 7.1-style donation entries)"
    leaf = (kind == "block") | (kind == "page")
    if (((raw[leaf] >> np.uint64(55)) & np.uint64(3)) != 0).any():
        return kernel_layout((6, 13)), "v6.13 or older (host stage-2 leaves carry page states)"
    if memory is not None and translate is not None and vmemmap_va is not None:
        hyp = host_map[inv & (raw == 4)]
        pfn = (hyp["ipa_start"].to_numpy(np.uint64) // np.uint64(4096))[:64]
        if pfn.size:
            pa, ok = translate(np.uint64(vmemmap_va) + pfn * np.uint64(8))
            words, got = memory.gather(np.where(ok, pa, 0).astype(np.uint64), 8)
            byte3 = ((words[:, 0] >> np.uint64(24)) & np.uint64(0xFF))[ok & got]
            if byte3.size and (byte3 == 0x33).mean() > 0.5:
                return kernel_layout((7, 0)), "v6.16-7.0 (vmemmap state bytes 0x33 on hyp pages)"
            if byte3.size and (byte3 == 0x04).mean() > 0.5:
                return kernel_layout((6, 14)), "v6.14-v6.15 (vmemmap host state 4 on hyp pages)"
    return kernel_layout((6, 13)), "v6.13 or older assumed (no page-state evidence; --kernel)"


def load_hyp_view(
    memory: Memory,
    ttbr0: int,
    tcr: int,
    layout: KernelLayout,
    *,
    hcr: int | None = None,
    mair: int | None = None,
    e2h: bool | None = None,
    vmemmap_va: int | None = None,
    kallsyms: pd.DataFrame | None = None,
    iomem: pd.DataFrame | None = None,
    pfns: np.ndarray | None = None,
    strict: bool = False,
) -> HypView:
    """Walk the hyp stage 1 and read the vmemmap (when its VA is given or in kallsyms)."""
    cfg = config_from_el2(ttbr0, tcr, e2h=e2h, hcr=hcr, mair=mair)
    hyp = walk_hyp(memory, cfg, hyp_states=layout.hyp_states, strict=strict)
    view = HypView(hyp, layout, notes=list(cfg.notes))
    if kallsyms is not None:
        view.image = (
            KernelImage.from_evidence(kallsyms, iomem)
            if iomem is not None
            else image_from_hyp_idmap(kallsyms, hyp.map)
        )
        if vmemmap_va is None:
            vmemmap_va = int(
                read_symbol_u64(memory, kallsyms, view.image, "__kvm_nvhe___hyp_vmemmap")
            )
    if vmemmap_va is None:
        view.notes.append(
            "hyp_vmemmap not read: give --vmemmap VA or --kallsyms FILE"
            + (
                " (needed for the page states of this kernel)"
                if layout.host_states == "vmemmap" or layout.hyp_states == "vmemmap"
                else ""
            )
        )
        return view
    page = cfg.geometry.granule.value
    want = memory_pfns(memory, page) if pfns is None else pfns
    view.vmemmap = read_vmemmap(
        memory, hyp.translate, vmemmap_va, layout.hyp_page, want, page_size=page, strict=strict
    )
    return view


@dataclass
class CheckResult:
    """Outcome of :func:`check_dump`."""

    breaches: pd.DataFrame
    states: pd.DataFrame
    host: WalkResult
    view: HypView
    skipped: dict[str, str]
    notes: list[str]
    kernel_reason: str

    @property
    def consistent(self) -> bool:
        return self.breaches.empty

    def counts(self) -> pd.DataFrame:
        """Breaches per invariant (every invariant listed, skipped ones marked)."""
        n = self.breaches["invariant"].value_counts().reindex(list(INVARIANTS), fill_value=0)
        return pd.DataFrame(
            {
                "invariant": list(INVARIANTS),
                "breaches": n.to_numpy(np.int64),
                "checked": [
                    ("no: " + self.skipped[k]) if k in self.skipped else "yes" for k in INVARIANTS
                ],
                "meaning": list(INVARIANTS.values()),
            }
        )

    @property
    def problems(self) -> ProblemLog:
        log = ProblemLog()
        log.extend(self.host.problems)
        log.extend(self.view.hyp.problems)
        if self.view.vmemmap is not None:
            log.extend(self.view.vmemmap.problems)
        return log

    def verdict(self) -> str:
        pages = len(self.states)
        what = f"{pages} pages, kernel layout {self.view.layout.label} ({self.kernel_reason})"
        if self.consistent:
            return f"consistent: no invariant broken over {what}"
        k = self.breaches["invariant"].nunique()
        return f"INCONSISTENT: {len(self.breaches)} breach(es) of {k} invariant(s) over {what}"


def _wx_note(hyp_map: pd.DataFrame) -> list[str]:
    """Hyp leaves writable and executable at EL2 (hVHE kernels before Marc Zyngier's Dec 2025
    'Honor UX/PX attributes for EL2 S1 mappings' set only UXN on non-executable mappings)."""
    wx = (hyp_map["ap"].astype("string").str.startswith("rw") & ~hyp_map["pxn"]).fillna(False)
    n = int(wx.sum())
    if not n:
        return []
    return [
        f"{n} hyp stage-1 leaves are writable and executable at EL2 (PXN clear); hVHE kernels "
        "before the Dec 2025 fix set only UXN (bit 54) on non-executable hyp mappings"
    ]


def _layout(
    kernel: str | KernelLayout | None,
    host_map: pd.DataFrame,
    memory: Memory,
    ttbr0: int,
    tcr: int,
    hcr: int | None,
    e2h: bool | None,
    vmemmap_va: int | None,
    kallsyms: pd.DataFrame | None,
    iomem: pd.DataFrame | None,
    *,
    strict: bool = False,
) -> tuple[KernelLayout, str]:
    """The kernel layout to use and why: ``kernel`` when given, else guessed from the dump
    (:func:`guess_kernel`) after a probe of the hyp stage 1 (walked, no vmemmap read) that
    translates the vmemmap VA (``vmemmap_va``, else ``__hyp_vmemmap`` read through kallsyms,
    the image placed by iomem or by the hyp idmap)."""
    if isinstance(kernel, KernelLayout):
        return kernel, "given"
    if kernel is not None:
        return kernel_layout(kernel), "given"
    probe = load_hyp_view(
        memory,
        ttbr0,
        tcr,
        kernel_layout((6, 13)),
        hcr=hcr,
        e2h=e2h,
        strict=strict,
        pfns=np.empty(0, np.uint64),
    )
    va = vmemmap_va
    if va is None and kallsyms is not None:
        image = (
            KernelImage.from_evidence(kallsyms, iomem)
            if iomem is not None
            else image_from_hyp_idmap(kallsyms, probe.hyp.map)
        )
        va = int(read_symbol_u64(memory, kallsyms, image, "__kvm_nvhe___hyp_vmemmap"))
    return guess_kernel(host_map, memory, probe.hyp.translate, va)


def check_dump(
    memory: Memory,
    vttbr: int,
    vtcr: int,
    ttbr0: int,
    tcr: int,
    *,
    kernel: str | KernelLayout | None = None,
    hcr: int | None = None,
    mair: int | None = None,
    e2h: bool | None = None,
    vmemmap_va: int | None = None,
    kallsyms: pd.DataFrame | str | Path | None = None,
    iomem: pd.DataFrame | str | Path | None = None,
    pfns: np.ndarray | None = None,
    strict: bool = False,
) -> CheckResult:
    """Walk both tables, read the vmemmap and check every invariant over the dump's pages.

    ``kernel`` (a version such as ``"6.12"``) says where the states live; without it the
    layout is guessed from the dump (:func:`guess_kernel`, reason in the result).
    ``pfns`` restricts the pages checked (default: every page of the dump).
    """
    ks = read_kallsyms(kallsyms) if isinstance(kallsyms, str | Path) else kallsyms
    io = read_iomem(iomem) if isinstance(iomem, str | Path) else iomem
    host_cfg = config_from_registers(vttbr, vtcr)
    fwb = hcr is not None and bool(hcr >> 46 & 1)
    host = walk(memory, host_cfg, "linux-5.15", fwb=fwb, strict=strict)
    layout, reason = _layout(
        kernel, host.map, memory, ttbr0, tcr, hcr, e2h, vmemmap_va, ks, io, strict=strict
    )
    if layout.host_profile != host.profile.name:
        host = walk(memory, host_cfg, layout.host_profile, fwb=fwb, strict=strict)
    view = load_hyp_view(
        memory,
        ttbr0,
        tcr,
        layout,
        hcr=hcr,
        mair=mair,
        e2h=e2h,
        vmemmap_va=vmemmap_va,
        kallsyms=ks,
        iomem=io,
        pfns=pfns,
        strict=strict,
    )
    page = host_cfg.geometry.granule.value
    want = memory_pfns(memory, page) if pfns is None else pfns
    vm = view.vmemmap.frame if view.vmemmap is not None else None
    states = page_states(layout, want, host.map, view.hyp.map, vm, page)
    breaches, skipped = check_states(
        states, host.map, layout, hyp_owner_id=host.profile.owner_id_of("hyp"), page_size=page
    )
    notes = [*view.notes, *_wx_note(view.hyp.map)]
    return CheckResult(breaches, states, host, view, skipped, notes, reason)


def enrich_with_vmemmap(
    walk_result: WalkResult,
    memory: Memory,
    ttbr0: int,
    tcr: int,
    vmemmap_va: int | None = None,
    kallsyms: pd.DataFrame | str | Path | None = None,
    kernel: str | KernelLayout | None = None,
    *,
    iomem: pd.DataFrame | str | Path | None = None,
    hcr: int | None = None,
    e2h: bool | None = None,
) -> pd.DataFrame:
    """The host ownership map of ``walk_result`` with page states from the vmemmap (and, up
    to v6.15, hyp states from the hyp stage 1): HOST_STATE_MAP schema, blocks split where the
    states inside differ.  Without a vmemmap VA (``vmemmap_va`` or ``kallsyms``) on 6.14+,
    ``page_state`` stays ``unknown``.  ``kernel`` None guesses the layout from the dump."""
    ks = read_kallsyms(kallsyms) if isinstance(kallsyms, str | Path) else kallsyms
    io = read_iomem(iomem) if isinstance(iomem, str | Path) else iomem
    layout, _ = _layout(kernel, walk_result.map, memory, ttbr0, tcr, hcr, e2h, vmemmap_va, ks, io)
    page = walk_result.config.geometry.granule.value
    m = walk_result.map
    start = m["ipa_start"].to_numpy(np.uint64) // np.uint64(page)
    npages = m["size"].to_numpy(np.uint64) // np.uint64(page)
    dump = ram_pfns(io, page) if io is not None else memory_pfns(memory, page)
    inside = np.zeros(dump.size, bool)
    if len(m):
        lo, hi = np.searchsorted(dump, start), np.searchsorted(dump, start + npages)
        marks = np.zeros(dump.size + 1, np.int64)
        np.add.at(marks, lo, 1)
        np.add.at(marks, hi, -1)
        inside = np.cumsum(marks)[:-1] > 0
    pfns = dump[inside]
    view = load_hyp_view(
        memory,
        ttbr0,
        tcr,
        layout,
        hcr=hcr,
        e2h=e2h,
        vmemmap_va=vmemmap_va,
        kallsyms=ks,
        iomem=io,
        pfns=pfns,
    )
    vm = view.vmemmap.frame if view.vmemmap is not None else None
    states = page_states(layout, pfns, m, view.hyp.map, vm, page)
    return apply_states(m, states, page)
