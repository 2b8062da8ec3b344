"""The invariants of pKVM's bookkeeping, checked page by page over a PAGE_STATES table.

The host stage 2, the hypervisor's stage 1 and ``hyp_vmemmap`` are read into one row per
physical page (:func:`s2trace.hyp.host_state.page_states`), each side's state taken from where
the kernel keeps it (:class:`~s2trace.hyp.vmemmap.KernelLayout`), and every invariant is one
vectorised comparison over that table.  Each breach is a row of BREACHES naming the
invariant, the page and the raw entries of every side.

The invariants (:data:`INVARIANTS`) follow the boot fix-up ``fix_host_ownership_walker``
(arch/arm64/kvm/hyp/nvhe/setup.c, docs/kernel-facts.md §KF-3.3: hyp OWNED -> host annotated owner
HYP, hyp SHARED_OWNED -> host SHARED_BORROWED, hyp SHARED_BORROWED -> host SHARED_OWNED) and the
transitions that keep them (§KF-3.1, §KF-3.2); read in both directions.  Allowed exceptions, each
with its source:

* host SHARED_OWNED without a hyp SHARED_BORROWED is explained by an np-guest share when
  ``host_share_guest_count`` > 0 (v6.14+, mem_protect.c v6.14-7.1; docs/kernel-facts.md
  §KF-3.2).  A share with the Secure world over FF-A leaves no record on the hyp side and shows
  as a breach (say so in the detail).
* the hyp .text: from the July 2025 patch (see :mod:`s2trace.hyp.vmemmap`) the host keeps a
  read-only, execute-never identity mapping of pages the hyp owns and maps PAGE_HYP_EXEC,
  with host state NOPAGE (docs/kernel-facts.md §KF-2.8, seen on 7.3): not a breach.
* on v6.16+ the hyp maps pages it only borrows lazily (on pin), so a SHARED_BORROWED page
  without a hyp stage-1 mapping is fine; the reverse (a hyp mapping of a page whose hyp state
  is NOPAGE) is a breach of ``vmemmap_vs_pte``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from s2trace.columns import BREACHES
from s2trace.hyp.vmemmap import KernelLayout

__all__ = ["BREACHES", "INVARIANTS", "check_states"]

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
