"""Which kernel layout a dump follows: where the host and hyp page states live
(:class:`~s2trace.hyp.vmemmap.KernelLayout`), given or guessed from what the dump shows."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from s2trace.hyp.evidence import KernelImage, read_symbol_u64
from s2trace.hyp.hyp_view import image_from_hyp_idmap, load_hyp_view
from s2trace.hyp.vmemmap import KernelLayout, kernel_layout
from s2trace.walk.tables import Memory

__all__ = ["guess_kernel", "resolve_layout"]


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


def resolve_layout(
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
