"""The host stage-2 dump that matches a plan's final ownership, built with the Construct
builders (:class:`s2trace.walk.build.Stage2Builder`).

What the dump shows, for the 6.12 (``linux-5.15`` profile) encoding (nvhe/memory.h v5.15-7.1;
docs/kernel-facts.md §KF-2.4, §KF-2.6): all of RAM identity-mapped for the host (largest blocks that
fit, as ``handle_host_mem_abort`` maps), pages the host shares as valid leaves with SW0
(SHARED_OWNED), pages owned by the hypervisor as annotated invalid entries with owner id hyp (2 MiB
blocks where a whole block is the hypervisor's, as the kernel's ``host_stage2_set_owner_locked``
annotates the largest level that fits, pages otherwise).  The final ownership comes from the plan
(by construction), never from replaying the trace, so a test comparing the two checks something.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from s2trace.synth.layout import PAGE, RAM, TABLE_BASE, Region
from s2trace.walk.build import Stage2Builder

__all__ = ["PROFILE", "build_dump", "ownership_runs", "write_dump"]

PROFILE = "linux-5.15"  # kernels 5.15-6.13: host page state in the PTE SW bits
_BLOCK = 0x20_0000


def ownership_runs(final: pd.DataFrame, ram: Region = RAM) -> pd.DataFrame:
    """Cover ``ram`` with (addr, size, state) runs: ``final`` where given, host_owned between,
    adjacent equal states merged."""
    start = final["addr"].to_numpy(dtype=np.int64)
    size = final["pages"].to_numpy(dtype=np.int64) * PAGE
    state = final["state"].to_numpy(dtype=object)
    gap_start = np.concatenate([[ram.base], start + size])
    gap_end = np.concatenate([start, [ram.end]])
    has_gap = gap_end > gap_start
    all_start = np.concatenate([start, gap_start[has_gap]])
    all_end = np.concatenate([start + size, gap_end[has_gap]])
    all_state = np.concatenate([state, np.full(int(has_gap.sum()), "host_owned", dtype=object)])
    order = np.argsort(all_start, kind="stable")
    all_start, all_end, all_state = all_start[order], all_end[order], all_state[order]
    same = (all_start[1:] == all_end[:-1]) & (all_state[1:] == all_state[:-1])
    heads = np.flatnonzero(np.r_[True, ~same])
    tails = np.r_[heads[1:], len(all_start)] - 1
    return pd.DataFrame(
        {
            "addr": all_start[heads].astype(np.uint64),
            "size": (all_end[tails] - all_start[heads]).astype(np.uint64),
            "state": all_state[heads],
        }
    )


def _annotate_hyp(b: Stage2Builder, addr: int, size: int) -> None:
    """Pages up to the first 2 MiB boundary, whole blocks, then pages."""
    end = addr + size
    lo = min(end, -(-addr // _BLOCK) * _BLOCK)
    hi = max(lo, end // _BLOCK * _BLOCK)
    if lo > addr:
        b.annotate(addr, lo - addr, owner="hyp")
    if hi > lo:
        b.annotate(lo, hi - lo, owner="hyp", level=2)
    if end > hi:
        b.annotate(hi, end - hi, owner="hyp")


def build_dump(final: pd.DataFrame, ram: Region = RAM) -> Stage2Builder:
    """A builder holding the host stage 2 for ``final`` (see the module docstring).

    One builder call per ownership run, so the cost grows with the number of pages whose
    state differs from their neighbours', not with the number of transitions.
    """
    b = Stage2Builder(profile=PROFILE, table_base=TABLE_BASE)
    runs = ownership_runs(final, ram)
    for a, s, st in zip(runs["addr"], runs["size"], runs["state"], strict=True):
        addr, size, state = int(a), int(s), str(st)
        if state == "host_owned":
            b.map(addr, size, state="owned")
        elif state in ("shared_hyp", "shared_ffa"):
            b.map(addr, size, state="shared_owned")
        elif state == "hyp_owned":
            _annotate_hyp(b, addr, size)
        else:
            raise ValueError(f"build_dump: no dump encoding for final state {state!r}")
    return b


def write_dump(final: pd.DataFrame, path: str | Path) -> Stage2Builder:
    """Build and write the dump as an ELF core holding only the table pages."""
    b = build_dump(final)
    b.write_elf(path)
    return b
