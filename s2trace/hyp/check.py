"""Is pKVM's bookkeeping self-consistent in one dump?  Invariants checked page by page.

This module runs the whole check on one dump (:func:`check_dump`, :class:`CheckResult`); the
invariants themselves are in :mod:`s2trace.hyp.invariants`, loading the hyp view in
:mod:`s2trace.hyp.hyp_view`, the kernel layout guess in :mod:`s2trace.hyp.kernel_guess` and
:func:`enrich_with_vmemmap` in :mod:`s2trace.hyp.enrich`.

The host stage 2, the hypervisor's stage 1 and ``hyp_vmemmap`` are read into one row per
physical page (:func:`s2trace.hyp.host_state.page_states`), each side's state taken from where
the kernel keeps it (:class:`~s2trace.hyp.vmemmap.KernelLayout`), and every invariant is one
vectorised comparison over that table.  Each breach is a row of BREACHES naming the
invariant, the page and the raw entries of every side.

The invariants, their sources and the allowed exceptions are described in
:mod:`s2trace.hyp.invariants`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from s2trace.arch.registers import config_from_registers, hcr_fwb
from s2trace.errors import ProblemLog
from s2trace.hyp.evidence import read_iomem, read_kallsyms
from s2trace.hyp.host_state import page_states
from s2trace.hyp.hyp_view import HypView, load_hyp_view, memory_pfns
from s2trace.hyp.invariants import INVARIANTS, check_states
from s2trace.hyp.kernel_guess import resolve_layout
from s2trace.hyp.vmemmap import KernelLayout
from s2trace.walk.tables import Memory
from s2trace.walk.walker import WalkResult, walk

__all__ = ["CheckResult", "check_dump"]


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
    fwb = hcr_fwb(hcr)
    # With the kernel given, the layout (and so the host profile) is known before walking:
    # one walk.  Guessing it needs a host map first (walked under the 5.15 profile).
    host = None
    if kernel is None:
        host = walk(memory, host_cfg, "linux-5.15", fwb=fwb, strict=strict)
    layout, reason = resolve_layout(
        kernel,
        host.map if host is not None else pd.DataFrame(),
        memory,
        ttbr0,
        tcr,
        hcr,
        e2h,
        vmemmap_va,
        ks,
        io,
        strict=strict,
    )
    if host is None or layout.host_profile != host.profile.name:
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
        states,
        host.map,
        layout,
        hyp_owner_id=host.profile.owner_id_of("hyp"),
        page_size=page,
    )
    notes = [*view.notes, *_wx_note(view.hyp.map)]
    return CheckResult(breaches, states, host, view, skipped, notes, reason)
