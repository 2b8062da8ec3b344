"""Page states per physical page, from every source, and applied to a host ownership map.

:func:`page_states` puts the three sources side by side for a set of PFNs (one row each): the
host stage-2 entry covering the page, the hyp stage-1 leaves mapping it, and its
``struct hyp_page``; it then picks each side's state from the place the kernel keeps it
(:class:`~s2trace.hyp.vmemmap.KernelLayout`: host stage 2 up to v6.13, vmemmap after; hyp
stage-1 SW bits up to v6.15, vmemmap after).  The consistency checks
(:mod:`s2trace.hyp.check`) and :func:`apply_states` read that table.

:func:`apply_states` fills ``page_state`` (host), ``hyp_state`` and ``host_share_guest_count``
of an ownership map (``MAP`` schema) from it, splitting a block where the states of the pages
inside it differ (a page shared with a guest can sit inside a plain 2 MiB block on 6.14+,
§KF-2.8).  Everything is vectorised over pages and rows; no loop per page or per row.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from s2trace.arch.attributes import KINDS
from s2trace.columns import HOST_STATE_MAP, MAP, PAGE_STATES
from s2trace.hyp.stage1_walk import HYP_STATES, category_dtype
from s2trace.hyp.vmemmap import STATES, KernelLayout
from s2trace.intervals import covering, distinct

__all__ = ["HOST_STATE_MAP", "PAGE_STATES", "apply_states", "page_states"]

_NA = -1
_OWNED, _SHARED_OWNED, _SHARED_BORROWED, _NOPAGE, _RESERVED = range(len(STATES))
_AP = ("rw", "ro")  # EL2 access of a hyp leaf (the first two letters of its ``ap``)


def _codes(cat: pd.Series | pd.Categorical, names: tuple[str, ...] = STATES) -> np.ndarray:
    """Codes into ``names`` of a categorical column (-1 for NA or other names): one lookup
    over the categories, one ``take`` over the rows."""
    c = pd.Categorical(cat) if not isinstance(cat, pd.Categorical) else cat
    if isinstance(cat, pd.Series) and isinstance(cat.dtype, pd.CategoricalDtype):
        c = cat.array
    lut = np.array([names.index(x) if x in names else -1 for x in c.categories] + [-1], np.int8)
    return np.take(lut, np.asarray(c.codes, dtype=np.intp))


def _cat(codes: np.ndarray, names: tuple[str, ...] = STATES) -> pd.Categorical[Any]:
    return pd.Categorical.from_codes(
        codes.astype(np.int8), dtype=category_dtype(names), validate=False
    )


def _na_int(values: np.ndarray, absent: np.ndarray, dtype: str) -> pd.api.extensions.ExtensionArray:
    return pd.arrays.IntegerArray(values.astype(np.dtype(dtype.lower())), absent)


_S2AP = ("none", "ro", "wo", "rw")
_LEAF_KINDS = np.array([KINDS.index("block"), KINDS.index("page")], np.int8)


def _masked(col: pd.Series, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Values (NA as 0) and NA mask of a nullable integer column."""
    na = col.isna().to_numpy()
    return col.to_numpy(np.dtype(dtype.lower()), na_value=0), na


def _host_side(host_map: pd.DataFrame, pa: np.ndarray) -> dict[str, Any]:
    """The host stage-2 entry covering each page: categorical codes and masks taken per page
    by one index array (no per-page strings)."""
    n = pa.size
    if not len(host_map):
        none = np.zeros(n, bool)
        return {
            "host_raw": _na_int(np.zeros(n, np.uint64), ~none, "UInt64"),
            "host_kind": _cat(np.full(n, _NA), KINDS),
            "host_owner_id": pd.array([pd.NA] * n, dtype="UInt32"),
            "host_s2ap": _cat(np.full(n, _NA), _S2AP),
            "host_xn": pd.array([pd.NA] * n, dtype="UInt8"),
            "host_pte_state": _cat(np.full(n, _NA), HYP_STATES),
            "_valid": none,
            "_has": none,
        }
    ipa = host_map["ipa_start"].to_numpy(np.uint64)
    order = np.argsort(ipa, kind="stable")
    start = ipa[order]
    row = covering(start, start + host_map["size"].to_numpy(np.uint64)[order], pa)
    has = row >= 0
    r = order[np.maximum(row, 0)]
    raw = host_map["raw"].to_numpy(np.uint64)[r]
    kind = np.where(has, _codes(host_map["kind"], KINDS)[r], _NA)
    valid = has & np.isin(kind, _LEAF_KINDS)
    owner, owner_na = _masked(host_map["owner_id"], "UInt32")
    xn, xn_na = _masked(host_map["xn"], "UInt8")
    pte = np.where(valid, ((raw >> np.uint64(55)) & np.uint64(3)).astype(np.int8), _NA)
    return {
        "host_raw": _na_int(raw, ~has, "UInt64"),
        "host_kind": _cat(kind, KINDS),
        "host_owner_id": _na_int(owner[r], owner_na[r] | ~(has & ~valid), "UInt32"),
        "host_s2ap": _cat(np.where(valid, _codes(host_map["s2ap"], _S2AP)[r], _NA), _S2AP),
        "host_xn": _na_int(xn[r], xn_na[r] | ~valid, "UInt8"),
        "host_pte_state": _cat(pte, HYP_STATES),
        "_valid": valid,
        "_has": has,
    }


def _hyp_side(hyp_map: pd.DataFrame, pa: np.ndarray, page: int) -> dict[str, Any]:
    """Hyp stage-1 leaves expanded to pages, reduced per PFN (first mapping, alias count,
    min/max state code for conflicts)."""
    n = pa.size
    if hyp_map.empty:
        none = np.zeros(n, bool)
        return {
            "hyp_va": _na_int(np.zeros(n), ~none, "UInt64"),
            "hyp_raw": _na_int(np.zeros(n), ~none, "UInt64"),
            "hyp_ap": _cat(np.full(n, _NA), _AP),
            "hyp_pxn": pd.arrays.BooleanArray(none, ~none),
            "hyp_aliases": np.zeros(n, np.uint16),
            "hyp_pte_state": _cat(np.full(n, _NA), HYP_STATES),
            "hyp_alias_conflict": none,
            "_mapped": none,
        }
    size = hyp_map["size"].to_numpy(np.uint64)
    npages = (size // np.uint64(page)).astype(np.int64)
    leaf = np.repeat(np.arange(len(hyp_map)), npages)
    first = np.repeat(np.cumsum(npages) - npages, npages)
    offset = (np.arange(leaf.size) - first).astype(np.uint64)
    ppa = hyp_map["pa"].to_numpy(np.uint64)[leaf] + offset * np.uint64(page)
    pva = hyp_map["va_start"].to_numpy(np.uint64)[leaf] + offset * np.uint64(page)
    state = ((hyp_map["raw"].to_numpy(np.uint64) >> np.uint64(55)) & np.uint64(3)).astype(np.int8)
    at = np.minimum(np.searchsorted(pa, ppa), max(n - 1, 0))
    sel = pa[at] == ppa if n else np.zeros(ppa.size, bool)  # pa is sorted and unique
    ppa, pva, leaf = ppa[sel], pva[sel], leaf[sel]
    order = np.lexsort((pva, ppa))
    ppa, pva, leaf = ppa[order], pva[order], leaf[order]
    start = np.flatnonzero(np.concatenate(([True], ppa[1:] != ppa[:-1]))) if ppa.size else ppa
    start = start.astype(np.intp)
    uniq = ppa[start]
    count = np.diff(np.append(start, ppa.size))
    st = state[leaf]
    smin = np.minimum.reduceat(st, start) if st.size else st
    smax = np.maximum.reduceat(st, start) if st.size else st
    where = np.searchsorted(pa, uniq)
    mapped = np.zeros(n, bool)
    mapped[where] = True
    first_leaf = np.zeros(n, np.int64)
    first_leaf[where] = leaf[start]
    va = np.zeros(n, np.uint64)
    va[where] = pva[start]
    aliases = np.zeros(n, np.uint16)
    aliases[where] = count
    conflict = np.zeros(n, bool)
    conflict[where] = smin != smax
    pte = np.full(n, _NA, np.int8)
    pte[where] = st[start]
    ap = hyp_map["ap"].astype("category").array
    ap_lut = np.array([_AP.index(str(c)[:2]) if str(c)[:2] in _AP else _NA for c in ap.categories]
                      + [_NA], np.int8)  # fmt: skip
    ap_code = ap_lut[np.asarray(ap.codes, np.intp)][first_leaf]
    pxn = hyp_map["pxn"].to_numpy(bool)[first_leaf]
    return {
        "hyp_va": _na_int(va, ~mapped, "UInt64"),
        "hyp_raw": _na_int(hyp_map["raw"].to_numpy(np.uint64)[first_leaf], ~mapped, "UInt64"),
        "hyp_ap": _cat(np.where(mapped, ap_code, _NA), _AP),
        "hyp_pxn": pd.arrays.BooleanArray(pxn, ~mapped),
        "hyp_aliases": aliases,
        "hyp_pte_state": _cat(pte, HYP_STATES),
        "hyp_alias_conflict": conflict,
        "_mapped": mapped,
    }


def page_states(
    layout: KernelLayout,
    pfns: np.ndarray,
    host_map: pd.DataFrame,
    hyp_map: pd.DataFrame | None = None,
    vmemmap: pd.DataFrame | None = None,
    page_size: int = 4096,
) -> pd.DataFrame:
    """The PAGE_STATES table for ``pfns`` (sorted and de-duplicated), indexed by PFN.

    Effective host state: up to v6.13 from the host stage 2 (valid leaf: bits 56:55; invalid
    entry annotated for another owner: nopage; no entry or a zero entry: owned); from v6.14
    the vmemmap's (<NA> where it was not read).  Effective hyp state: up to v6.15 from the hyp
    stage-1 SW bits of the leaf mapping the page (nopage when none maps it); from v6.16 the
    vmemmap's.
    """
    pfn = distinct(np.asarray(pfns, dtype=np.uint64))
    pa = pfn * np.uint64(page_size)
    n = pa.size
    host = _host_side(host_map, pa)
    hyp = _hyp_side(hyp_map if hyp_map is not None else pd.DataFrame(), pa, page_size)
    if vmemmap is not None and len(vmemmap):
        vm = vmemmap.reindex(pfn)
        vm_raw = _na_int(
            vm["raw"].fillna(0).to_numpy(np.uint64), vm["raw"].isna().to_numpy(), "UInt64"
        )
        vm_host, vm_hyp = _codes(vm["host_state"]), _codes(vm["hyp_state"])
        count = vm["host_share_guest_count"].astype("UInt32").array
    else:
        vm_raw = _na_int(np.zeros(n), np.ones(n, bool), "UInt64")
        vm_host = vm_hyp = np.full(n, _NA, np.int8)
        count = pd.array([pd.NA] * n, dtype="UInt32")

    if layout.host_states == "pte":
        pte = _codes(host["host_pte_state"])  # "reserved" (0b11) maps to _RESERVED
        annotated = host["_has"] & ~host["_valid"]
        other = annotated & (host["host_owner_id"].fillna(0).to_numpy(np.int64) != 0)
        host_eff = np.where(host["_valid"], pte, np.where(other, _NOPAGE, _OWNED))
    else:
        host_eff = vm_host
    if layout.hyp_states == "pte":
        hyp_eff = np.where(hyp["_mapped"], _codes(hyp["hyp_pte_state"]), _NOPAGE)
    else:
        hyp_eff = vm_hyp
    cols: dict[str, Any] = {"pa": pa}
    cols.update({k: v for k, v in host.items() if not k.startswith("_")})
    cols.update({k: v for k, v in hyp.items() if not k.startswith("_")})
    cols.update(
        {
            "vmemmap_raw": vm_raw,
            "vm_host_state": _cat(vm_host),
            "vm_hyp_state": _cat(vm_hyp),
            "host_share_guest_count": count,
            "host_state": _cat(np.asarray(host_eff, np.int8)),
            "hyp_state": _cat(np.asarray(hyp_eff, np.int8)),
        }
    )
    frame = pd.DataFrame(cols, index=pd.Index(pfn, name="pfn"))
    PAGE_STATES.check(frame)
    return frame


def apply_states(map_df: pd.DataFrame, states: pd.DataFrame, page_size: int = 4096) -> pd.DataFrame:
    """The map with the pages' effective states (HOST_STATE_MAP schema).

    Rows are split into runs of pages with equal (host state, hyp state, share count), and
    at the edges of the pages ``states`` covers; pieces outside ``states`` (MMIO, memory not
    read) keep the map's ``page_state`` and get <NA> in the new columns.  A piece keeps its
    entry's ``level``, ``kind``, ``raw``, ``table_pa`` and ``index``; ``ipa_start``, ``size``
    and ``oa`` describe the piece.
    """
    m = map_df.sort_values("ipa_start", kind="stable", ignore_index=True)
    page = np.uint64(page_size)
    p0 = m["ipa_start"].to_numpy(np.uint64) // page
    p1 = p0 + m["size"].to_numpy(np.uint64) // page
    spfn = states.index.to_numpy(np.uint64)
    host = _codes(states["host_state"])
    hyp = _codes(states["hyp_state"])
    cnt = states["host_share_guest_count"].astype("Int64").fillna(-1).to_numpy(np.int64)
    key = (host.astype(np.int64) + 1) * 16 + (hyp.astype(np.int64) + 1) + (cnt + 1) * 256
    i0, i1 = np.searchsorted(spfn, p0), np.searchsorted(spfn, p1)
    per_row = (i1 - i0).astype(np.int64)
    row = np.repeat(np.arange(len(m)), per_row)
    idx = np.repeat(i0, per_row) + (
        np.arange(row.size) - np.repeat(np.cumsum(per_row) - per_row, per_row)
    )
    pf, k = spfn[idx], key[idx]
    brk = np.ones(row.size, bool)
    brk[1:] = (row[1:] != row[:-1]) | (k[1:] != k[:-1]) | (pf[1:] != pf[:-1] + np.uint64(1))
    rs = np.flatnonzero(brk)
    re_ = np.append(rs[1:], row.size) - 1 if row.size else rs  # no page has a state
    run_row, run_lo, run_hi, run_idx = row[rs], pf[rs], pf[re_] + np.uint64(1), idx[rs]
    # Gaps: row parts no run covers (leading, between runs, trailing, rows without runs).
    lo_all = np.concatenate([p0, run_hi])
    row_all = np.concatenate([np.arange(len(m)), run_row])
    nxt_lo = np.concatenate(
        [
            _next_start(run_row, run_lo, p1, first=True),
            _next_start(run_row, run_lo, p1, first=False),
        ]
    )
    gap = nxt_lo > lo_all
    g_row, g_lo, g_hi = row_all[gap], lo_all[gap], nxt_lo[gap]
    piece_row = np.concatenate([run_row, g_row])
    piece_lo = np.concatenate([run_lo, g_lo])
    piece_hi = np.concatenate([run_hi, g_hi])
    piece_idx = np.concatenate([run_idx, np.full(g_row.size, -1)])
    order = np.lexsort((piece_lo, piece_row))
    piece_row, piece_lo, piece_hi, piece_idx = (
        a[order] for a in (piece_row, piece_lo, piece_hi, piece_idx)
    )
    out = m.iloc[piece_row].reset_index(drop=True)
    delta = (piece_lo - p0[piece_row]) * page
    out["ipa_start"] = piece_lo * page
    out["size"] = (piece_hi - piece_lo) * page
    oa = out["oa"].astype("UInt64")
    out["oa"] = (oa + pd.array(delta, dtype="UInt64")).astype("UInt64")
    got = piece_idx >= 0
    safe = np.maximum(piece_idx, 0)
    host_names = list(dict.fromkeys([*STATES, *m["page_state"].cat.categories]))
    old = out["page_state"].astype("string").to_numpy(object)
    new_host = np.where(got & (host[safe] >= 0), np.asarray(STATES, object)[host[safe]], old)
    out["page_state"] = pd.Categorical(new_host, categories=host_names)
    out["hyp_state"] = _cat(np.where(got, hyp[safe], _NA))
    out["host_share_guest_count"] = _na_int(
        np.where(got & (cnt[safe] >= 0), cnt[safe], 0), ~(got & (cnt[safe] >= 0)), "UInt32"
    )
    for col, dtype in MAP.dtypes().items():
        if dtype != "category":
            out[col] = out[col].astype(pd.api.types.pandas_dtype(dtype))
    HOST_STATE_MAP.check(out)
    return out


def _next_start(run_row: np.ndarray, run_lo: np.ndarray, p1: np.ndarray, first: bool) -> np.ndarray:
    """Where the gap after a position ends: with ``first``, for each row the start of its
    first run (or its end when it has none); otherwise, for each run the start of the next
    run of the same row (or the row's end)."""
    if first:
        out = p1.copy()
        if run_row.size:
            rows, pos = np.unique(run_row, return_index=True)
            out[rows] = run_lo[pos]
        return out
    nxt = np.append(run_lo[1:], np.uint64(0))
    same = np.append(run_row[1:] == run_row[:-1], False)
    return np.where(same, nxt, p1[run_row]) if run_row.size else np.empty(0, np.uint64)
