"""The VMs the hypervisor holds, their stage-2 tables and their pages, read from one dump.

pKVM keeps every VM it runs in ``vm_table`` (EL2 ``static struct pkvm_hyp_vm **vm_table``,
symbol ``__kvm_nvhe_vm_table`` in kallsyms), one hyp-VA pointer per slot; the VM handle of
slot ``i`` is ``i + HANDLE_OFFSET`` (0x1000, ``idx_to_vm_handle`` in
``arch/arm64/kvm/hyp/nvhe/pkvm.c``; the first VM's handle 0x1000 is what the 7.3 sample's
host entries carry, §KF-2.8).  Each ``struct pkvm_hyp_vm`` starts with the hyp's own
``struct kvm`` and then holds ``host_kvm`` and the guest's ``struct kvm_pgtable`` (``u32
ia_bits; s8 start_level; kvm_pteref_t pgd; ...``); its ``kvm.arch.mmu`` (``struct
kvm_s2_mmu``: ``vmid, pgd_phys, pgt, vtcr``) points back at that pgtable.  ``struct kvm``
depends on the kernel's configuration, so the offsets are data per version
(:data:`HYP_VM_LAYOUTS`), and every VM is *verified* before it is used: the ``pgt`` pointer
of the mmu must be the VM's own pgtable and ``pgd_phys`` must be what the pgtable's ``pgd``
hyp VA translates to.  When no known layout verifies, the struct is scanned for the one
place where that back-pointer pair holds (the same check, so a wrong guess cannot pass).

Each guest stage 2 is then walked with the stage-2 walker (not an identity map) and the
``linux-7.1-guest`` profile: guest leaves carry the guest's page state in SW bits 56:55
(shared_borrowed for pages an np-guest borrows from the host, mem_protect.c v6.14-7.1;
docs/kernel-facts.md §KF-3.2, §KF-2.8).  The reverse map is completed from the host side: 7.1+ host
entries of pages donated to a guest name the VM handle and the gfn (mem_protect.c 7.1;
docs/kernel-facts.md §KF-2.2).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from s2trace.arch.registers import Stage2Config, config_explicit, config_from_registers, hcr_fwb
from s2trace.arch.stage1 import config_from_el2
from s2trace.columns import GUEST_PAGES, VMS
from s2trace.errors import InputError, Problem, ProblemLog
from s2trace.hyp.evidence import KernelImage, read_iomem, read_kallsyms, read_symbol_u64
from s2trace.hyp.hyp_view import image_from_hyp_idmap
from s2trace.hyp.stage1_walk import HypWalkResult, walk_hyp
from s2trace.intervals import covering
from s2trace.pkvm.profiles import Profile, get_profile
from s2trace.walk.tables import Memory
from s2trace.walk.walker import WalkResult, walk

__all__ = [
    "GUEST_PAGES",
    "HANDLE_OFFSET",
    "HYP_VM_LAYOUTS",
    "MAX_VMS",
    "VMS",
    "GuestsResult",
    "HypVmLayout",
    "find_guests",
    "guest_profile",
    "locate_layout",
]

#: ``HANDLE_OFFSET`` of arch/arm64/kvm/hyp/nvhe/pkvm.c (v6.2+): handle = slot + 0x1000.
HANDLE_OFFSET = 0x1000
#: ``KVM_MAX_PVMS`` (asm/kvm_pkvm.h): slots of vm_table (one page of pointers).
MAX_VMS = 255
_VM_TABLE_SYMBOL = "__kvm_nvhe_vm_table"
_PAGE = 4096


@dataclass(frozen=True)
class HypVmLayout:
    """Offsets inside ``struct pkvm_hyp_vm`` (bytes).

    ``pgt`` is the guest's ``struct kvm_pgtable`` (``host_kvm`` is the word before it);
    ``mmu`` is ``kvm.arch.mmu`` (``struct kvm_s2_mmu``: vmid at +0, pgd_phys +8, pgt +16,
    vtcr +24); ``size`` is how much of the struct is read.
    """

    pgt: int
    mmu: int
    size: int = 0x2000
    label: str = ""

    @property
    def host_kvm(self) -> int:
        return self.pgt - 8


#: Known layouts by kernel version.  7.3: read from the 7.3.4 sample's hyp VM at PA
#: 0x461c2000 (the 2-page ``pkvm_hyp_vm`` allocated by ``pkvm_create_hyp_vm``, ftrace
#: ``ret=0xffff0000061c2000``): +0x1028 = 0x...05134000 (the struct kvm of the trace's
#: ``s2_kvm_arch_init_vm kvm=``), +0x1030 ia_bits 48, +0x1034 start_level 0, +0x1038 pgd hyp
#: VA of PA 0x44eac000 (the 1-page pgd allocated by the same call); mmu at +0x9b0: vmid 1,
#: pgd_phys 0x44eac000, pgt = VM + 0x1030, vtcr 0x802d3590.
HYP_VM_LAYOUTS: dict[tuple[int, int], HypVmLayout] = {
    (7, 3): HypVmLayout(pgt=0x1030, mmu=0x9B0, label="7.3"),
}


def guest_profile(kernel: tuple[int, int] | None) -> Profile:
    """The profile for guest stage 2s: ``linux-7.1-guest``; before 7.1 the same state bits
    with the 6.x invalid encoding (owner in 9:2) and the mapped owner named ``guest``."""
    if kernel is None or kernel >= (7, 1):
        return get_profile("linux-7.1-guest")
    base = get_profile("linux-5.15")
    owners = {**dict(base.owners), 2: "guest"}
    return replace(base, name="linux-5.15-guest", mapped_owner="guest", owners=owners)


@dataclass
class GuestsResult:
    """Outcome of :func:`find_guests`."""

    vms: pd.DataFrame
    pages: pd.DataFrame
    walks: dict[int, WalkResult]
    hyp: HypWalkResult
    problems: ProblemLog
    notes: list[str] = field(default_factory=list)
    meta: dict[str, object] = field(default_factory=dict)


def _read_words(memory: Memory, hyp: HypWalkResult, va: int, count: int) -> np.ndarray | None:
    """``count`` u64 at hyp VA ``va`` (translated word by word), None if any is missing."""
    vas = np.uint64(va) + np.arange(count, dtype=np.uint64) * np.uint64(8)
    pa, ok = hyp.translate(vas)
    if not ok.all():
        return None
    words, got = memory.gather(pa.astype(np.uint64), 8)
    if not np.asarray(got).all():
        return None
    return np.asarray(words, dtype=np.uint64)[:, 0]


def _verifies(words: np.ndarray, vm_va: int, pgt: int, mmu: int, hyp: HypWalkResult) -> bool:
    """The back-pointer check of a candidate layout (see the module docstring)."""
    n = words.size
    if pgt % 8 or mmu % 8 or pgt // 8 + 2 > n or mmu // 8 + 4 > n:
        return False
    if int(words[mmu // 8 + 2]) != vm_va + pgt:
        return False
    lo = int(words[pgt // 8])
    ia_bits, start = lo & 0xFFFFFFFF, np.int8(lo >> 32 & 0xFF)
    if not 16 <= ia_bits <= 52 or not -1 <= int(start) <= 3:
        return False
    pgd_pa, ok = hyp.translate(int(words[pgt // 8 + 1]))
    return bool(ok[0]) and int(pgd_pa[0]) == int(words[mmu // 8 + 1])


def locate_layout(
    words: np.ndarray, vm_va: int, hyp: HypWalkResult, kernel: tuple[int, int] | None = None
) -> HypVmLayout | None:
    """The layout of one ``struct pkvm_hyp_vm`` (its words read from the dump): the known
    layout of ``kernel`` (or of any version) when it verifies, else the scanned one."""
    known = sorted(HYP_VM_LAYOUTS.items(), key=lambda kv: kv[0] != kernel)
    for _, lay in known:
        if _verifies(words, vm_va, lay.pgt, lay.mmu, hyp):
            return lay
    # scan: words that point inside the struct are candidate mmu.pgt fields (vectorised)
    rel = words - np.uint64(vm_va)
    cand = np.flatnonzero((words >= np.uint64(vm_va)) & (rel < np.uint64(words.size * 8)))
    for i in cand[cand >= 2].tolist():
        pgt, mmu = int(rel[i]), (i - 2) * 8
        if _verifies(words, vm_va, pgt, mmu, hyp):
            return HypVmLayout(pgt=pgt, mmu=mmu, size=words.size * 8, label="scanned")
    return None


def _guest_config(words: np.ndarray, lay: HypVmLayout, pgd_pa: int) -> Stage2Config:
    """The guest walk configuration: VTCR_EL2 from the mmu, checked against the pgtable's
    ia_bits/start_level; the pgtable's own values when VTCR cannot be decoded."""
    lo = int(words[lay.pgt // 8])
    ia_bits, start = lo & 0xFFFFFFFF, int(np.int8(lo >> 32 & 0xFF))
    vtcr = int(words[lay.mmu // 8 + 3])
    try:
        cfg = config_from_registers(pgd_pa, vtcr)
        if cfg.ia_bits == ia_bits and cfg.start_level == start:
            return cfg
    except InputError:
        pass
    return config_explicit(pgd_pa, start, ia_bits)


def _vm_table(
    memory: Memory,
    hyp: HypWalkResult,
    kallsyms: pd.DataFrame | None,
    iomem: pd.DataFrame | None,
    vm_table_va: int | None,
) -> int:
    if vm_table_va is not None:
        return vm_table_va
    if kallsyms is None:
        raise InputError("guests: give --kallsyms (to read __kvm_nvhe_vm_table) or --vm-table VA")
    image = (
        KernelImage.from_evidence(kallsyms, iomem)
        if iomem is not None
        else image_from_hyp_idmap(kallsyms, hyp.map)
    )
    return int(read_symbol_u64(memory, kallsyms, image, _VM_TABLE_SYMBOL))


def find_guests(
    memory: Memory,
    ttbr0: int,
    tcr: int,
    *,
    kallsyms: pd.DataFrame | str | Path | None = None,
    iomem: pd.DataFrame | str | Path | None = None,
    vm_table_va: int | None = None,
    host_map: pd.DataFrame | None = None,
    kernel: tuple[int, int] | None = None,
    hcr: int | None = None,
    e2h: bool | None = None,
    fwb: bool | None = None,
    strict: bool = False,
) -> GuestsResult:
    """Every VM of the hypervisor's vm_table, its guest stage 2 and its pages.

    ``vm_table_va`` is the *value* of ``vm_table`` (the table's hyp VA); without it, the
    symbol is read through ``kallsyms`` (and ``iomem``, or the hyp idmap, to place the
    image).  ``host_map`` (a walked host map, 7.1+ profile) adds the pages the host
    annotates as donated to a guest and says whether the guest's table pages are hyp-owned.
    """
    ks = read_kallsyms(kallsyms) if isinstance(kallsyms, str | Path) else kallsyms
    io = read_iomem(iomem) if isinstance(iomem, str | Path) else iomem
    cfg = config_from_el2(ttbr0, tcr, e2h=e2h, hcr=hcr)
    hyp = walk_hyp(memory, cfg, hyp_states="vmemmap", strict=strict)
    if fwb is None:
        fwb = hcr_fwb(hcr)
    log = ProblemLog(strict=strict)
    table_va = _vm_table(memory, hyp, ks, io, vm_table_va)
    slots = _read_words(memory, hyp, table_va, MAX_VMS) if table_va else None
    if slots is None:
        raise InputError(
            f"guests: vm_table at hyp VA {table_va:#x} is not mapped or not in the dump"
        )
    prof = guest_profile(kernel)
    rows: list[dict[str, object]] = []
    pages: list[pd.DataFrame] = []
    walks: dict[int, WalkResult] = {}
    for slot in np.flatnonzero(slots).tolist():
        handle, vm_va = slot + HANDLE_OFFSET, int(slots[slot])
        row: dict[str, object] = {"handle": handle, "hyp_va": vm_va}
        vm_pa, ok = hyp.translate(vm_va)
        if not ok[0]:
            # pkvm_reserve_vm() parks a marker in reserved slots; it is not a hyp VA
            row["status"] = "not a hyp VA (reserved slot?)"
            rows.append(row)
            continue
        row["hyp_pa"] = int(vm_pa[0])
        size = max([lay.size for lay in HYP_VM_LAYOUTS.values()] + [0x2000])
        words = _read_words(memory, hyp, vm_va, size // 8)
        lay = locate_layout(words, vm_va, hyp, kernel) if words is not None else None
        if words is None or lay is None:
            what = "not in the dump" if words is None else "no layout verifies"
            log.add(Problem("vm_unreadable", int(vm_pa[0]), f"VM {handle:#x}: {what}", 0))
            row["status"] = what
            rows.append(row)
            continue
        pgd_va = int(words[lay.pgt // 8 + 1])
        pgd_pa = int(words[lay.mmu // 8 + 1])
        lo = int(words[lay.pgt // 8])
        row.update(
            host_kvm=int(words[lay.host_kvm // 8]),
            pgd_va=pgd_va,
            pgd_pa=pgd_pa,
            ia_bits=lo & 0xFFFFFFFF,
            start_level=int(np.int8(lo >> 32 & 0xFF)),
            vtcr=int(words[lay.mmu // 8 + 3]),
            vmid=int(words[lay.mmu // 8]),
            layout=lay.label,
            status="ok",
        )
        gw = walk(
            memory,
            _guest_config(words, lay, pgd_pa),
            prof,
            fwb=bool(fwb),
            identity=False,
            strict=strict,
        )
        walks[handle] = gw
        for p in gw.problems:
            log.add(Problem(p.kind, p.where, f"VM {handle:#x} stage 2: {p.detail}", p.level))
        frame = _guest_rows(handle, gw.map, _PAGE)
        pages.append(frame)
        mapped = frame["pa"].notna().to_numpy()
        npages = frame["size"].to_numpy(np.uint64) // np.uint64(_PAGE)
        shared = (frame["state"].astype("string") == "shared_borrowed").fillna(False).to_numpy()
        row.update(
            table_pages=len(gw.tables),
            pages_mapped=int(npages[mapped].sum()),
            pages_shared=int(npages[mapped & shared].sum()),
        )
        if host_map is not None:
            row["tables_hyp_owned"] = _hyp_owned(host_map, gw.tables["pa"].to_numpy(np.uint64))
        rows.append(row)
    if host_map is not None:
        donated = _host_rows(host_map, _PAGE)
        pages.append(donated)
        per = donated.groupby("handle")["size"].sum() // _PAGE
        for row in rows:
            row["pages_donated"] = int(per.get(row["handle"], 0))
    meta = {"vm_table": f"{table_va:#x}", "guest_profile": prof.name, "vms": len(rows)}
    return GuestsResult(_vms_frame(rows), _pages_frame(pages), walks, hyp, log, [], meta)


def _hyp_owned(host_map: pd.DataFrame, table_pa: np.ndarray) -> int:
    """How many of ``table_pa`` the host map covers with an entry owned by hyp."""
    m = host_map.sort_values("ipa_start", kind="stable")
    starts = m["ipa_start"].to_numpy(np.uint64)
    ends = starts + m["size"].to_numpy(np.uint64)
    idx = covering(starts, ends, table_pa)
    owner = m["owner"].astype("string").fillna("").to_numpy(object)
    return int(((idx >= 0) & (owner[np.maximum(idx, 0)] == "hyp")).sum())


def _guest_rows(handle: int, gmap: pd.DataFrame, page: int) -> pd.DataFrame:
    """Guest stage-2 leaves and non-zero invalid entries as GUEST_PAGES rows."""
    kind = gmap["kind"].astype("string").to_numpy(object)
    leaf = (kind == "block") | (kind == "page")
    keep = leaf | ((kind == "invalid") & (gmap["raw"].to_numpy(np.uint64) != 0))
    g = gmap[keep]
    leaf = leaf[keep]
    ipa = g["ipa_start"].to_numpy(np.uint64)
    state = np.where(
        leaf,
        g["page_state"].astype("string").fillna("").to_numpy(object),
        g["inv_type"].astype("string").fillna("").to_numpy(object),
    )
    return pd.DataFrame(
        {
            "handle": np.full(len(g), handle, np.uint32),
            "gfn": ipa // np.uint64(page),
            "ipa": ipa,
            "pa": g["oa"].astype("UInt64").array,
            "size": g["size"].to_numpy(np.uint64),
            "state": state,
            "source": "guest-s2",
            "raw": g["raw"].to_numpy(np.uint64),
        }
    )


def _host_rows(host_map: pd.DataFrame, page: int) -> pd.DataFrame:
    """Host entries annotated as donated to a guest (7.1+: owner guest, handle, gfn)."""
    m = host_map[
        (host_map["owner"].astype("string") == "guest").fillna(False)
        & host_map["vm_handle"].notna()
    ]
    gfn = m["gfn"].astype("UInt64").fillna(0).to_numpy(np.uint64)
    return pd.DataFrame(
        {
            "handle": m["vm_handle"].astype("UInt32").fillna(0).to_numpy(np.uint32),
            "gfn": gfn,
            "ipa": gfn * np.uint64(page),
            "pa": pd.array(m["ipa_start"].to_numpy(np.uint64), dtype="UInt64"),
            "size": m["size"].to_numpy(np.uint64),
            "state": "owned",
            "source": "host-annotation",
            "raw": m["raw"].to_numpy(np.uint64),
        }
    )


def _vms_frame(rows: list[dict[str, object]]) -> pd.DataFrame:
    out = VMS.empty() if not rows else pd.DataFrame(rows)
    for c in VMS.columns:
        if c.name not in out:
            out[c.name] = pd.NA if c.dtype not in ("uint32", "uint64") else 0
        if c.dtype == "category":
            out[c.name] = pd.Categorical(out[c.name].astype(object))
        else:
            out[c.name] = out[c.name].fillna(0) if c.dtype.islower() else out[c.name]
            out[c.name] = out[c.name].astype(pd.api.types.pandas_dtype(c.dtype))
    out = out[VMS.names].sort_values("handle", ignore_index=True)
    VMS.check(out)
    return out


def _pages_frame(parts: list[pd.DataFrame]) -> pd.DataFrame:
    parts = [p for p in parts if len(p)]
    if not parts:
        return GUEST_PAGES.empty()
    out = pd.concat(parts, ignore_index=True)
    out["state"] = pd.Categorical(out["state"].replace("", None))
    out["source"] = pd.Categorical(out["source"], categories=["guest-s2", "host-annotation"])
    out["pa"] = out["pa"].astype("UInt64")
    out = out.sort_values(["handle", "gfn", "source"], kind="stable", ignore_index=True)
    out = out[GUEST_PAGES.names]
    GUEST_PAGES.check(out)
    return out
