"""Allocations taken in runs: which hypercall takes which pages, inside one call.

``pkvm_create_hyp_vm`` allocates the stage-2 pgd and the hyp VM struct, then issues
``__pkvm_init_vm``, which takes both; on 6.12 it goes on, inside the same call, to allocate
each hyp vCPU and issue ``__pkvm_init_vcpu`` for it before the next one
(``arch/arm64/kvm/pkvm.c``; docs/kernel-facts.md §KF-3.7).  So the allocations of one call fall
into *runs*, each taken by the hypercall that follows its last allocation.  A recipe says
``runs = [2, 1]``: the first run is two allocations, every later one a single allocation (the
last number repeats).

For each run, :func:`run_windows` narrows the rows' window to what the kernel allows:

* ``early`` (``t_earliest``): the return of the run's **last** allocation -- the hypercall comes
  after it, so none of the run's pages can be the hypervisor's before;
* ``done`` (``ts``): the entry of the next run's first allocation in the same call (the
  hypercall returned successfully, else the call would have given up), else the call's
  ``complete`` event (its return), as before.

Rows of one call are those with the same ``complete`` event; rows without one are left alone.
"""

from __future__ import annotations

import numpy as np

from s2trace.trace.recipes.rowset import RowSet

__all__ = ["run_windows"]


def run_of(ordinal: np.ndarray, runs: tuple[int, ...]) -> np.ndarray:
    """The run index of each allocation ordinal within its call (``runs``' last size repeats)."""
    head = np.cumsum(runs[:-1], dtype=np.int64)  # first ordinal of runs 1 .. len-1
    fixed = np.searchsorted(head, ordinal, side="right")
    past = int(head[-1]) if len(head) else 0
    extra = (ordinal - past) // runs[-1]
    return np.where(ordinal >= past, len(runs) - 1 + extra, fixed)


def run_windows(rows: RowSet, finish: np.ndarray, runs: tuple[int, ...]) -> RowSet:
    """``rows`` with ``early``/``done`` narrowed per run (see the module docstring);
    ``finish[i]`` is row i's ``complete`` event (-1: none)."""
    inside = np.flatnonzero(finish >= 0)
    if not len(inside) or not runs:
        return rows
    order = inside[np.lexsort((rows.anchor[inside], finish[inside]))]
    call = finish[order]
    first = np.r_[True, call[1:] != call[:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
    run = run_of(np.arange(len(order)) - start, runs)
    # segments: one (call, run) each, in anchor order
    seg_head = first | np.r_[True, run[1:] != run[:-1]]
    seg = np.cumsum(seg_head) - 1
    heads = np.flatnonzero(seg_head)
    tails = np.r_[heads[1:], len(order)] - 1
    last_anchor = rows.anchor[order][tails]
    # the next segment's first allocation entry, when it belongs to the same call
    nxt = np.r_[heads[1:], len(order)]
    same_call = np.r_[~first[heads[1:]], False] if len(heads) > 1 else np.zeros(1, bool)
    entry = rows.pair[order]
    next_entry = np.where(same_call, entry[np.minimum(nxt, len(order) - 1)], -1)
    out = rows.take(np.arange(len(rows)))
    out.early[order] = last_anchor[seg]
    closer = next_entry[seg]
    out.done[order] = np.where(closer >= 0, closer, out.done[order])
    return out
