"""Hypervisor events pin a bracketed transition to the hypercall that made it.

The host only brackets a hypercall (the allocation before it, the function return after it).
Where the hypervisor's own trace is merged into the events (same clock: the host traced with
``trace_clock=boot``, docs/kernel-facts.md §KF-4.3), the hypercall itself shows:

* ACK ``host_hcall id=%u invalid=%u`` (``arch/arm64/include/asm/kvm_hypevents.h``), written by
  ``handle_host_hcall`` after the handler returned (``arch/arm64/kvm/hyp/nvhe/hyp-main.c``):
  the change is certain at that event; it began at the CPU's latest ``hyp_enter`` before it,
  when traced.  The id names the hypercall only with the kernel's own numbering (ACK numbers
  differ from mainline's): it is used only when the caller gives that table;
* mainline 7.1+ ``hyp_enter reason=hvc vcpu=%d`` (the trace remote's ``kvm_hypevents.h``): the
  host trapped into EL2 with an HVC; the change lies between it and the CPU's next
  ``hyp_exit``.  It carries no hypercall id, so it pins a row only when it is the *only* HVC
  of the right CPU in the row's bracket.

A recipe names the hypercalls that make its transition (``hypercall = [...]``).  The right CPU
is the one the host task ran on at either end of the bracket.  A row is pinned when exactly one
such event lies inside its bracket; its ``early``/``done`` move to the hypercall's ends and its
basis names the event.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from s2trace.trace.parse.field_access import parse_uint
from s2trace.trace.recipes.model import RecipeSet
from s2trace.trace.recipes.related import EventTable
from s2trace.trace.recipes.rowset import BasisTexts, RowSet

__all__ = ["pin_to_hypervisor"]

HCALL, ENTER, EXIT = "host_hcall", "hyp_enter", "hyp_exit"


def pin_to_hypervisor(
    ev: EventTable,
    rs: RecipeSet,
    done: dict[str, RowSet],
    texts: BasisTexts,
    hypercalls: Mapping[int, str] | None,
) -> None:
    """Pin (in place, in ``done``) the bracketed rows of recipes that name a ``hypercall``."""
    wanted = [r for r in rs if r.hypercall and r.name in done and len(done[r.name])]
    if not wanted or not (len(ev.rows(HCALL)) or len(ev.rows(ENTER))):
        return
    cpu = ev.frame["cpu"].to_numpy(dtype="float64", na_value=-1.0).astype(np.int64)
    enters, exits = ev.rows(ENTER), ev.rows(EXIT)
    hvc = enters[_reason_is(ev, enters, "hvc")]
    calls, names = _named_hcalls(ev, hypercalls)
    for r in wanted:
        rows = done[r.name]
        base = r.basis
        if len(calls):  # ACK: the named hypercall, certain at its event
            mine = calls[np.isin(names, list(r.hypercall))]
            desc = f"host_hcall ({' or '.join(r.hypercall)})"
            _pin(rows, mine, cpu, enters, "after", texts, base, desc)
        if len(hvc):  # 7.1+: the only HVC of the bracket, from its entry to its exit
            _pin(rows, hvc, cpu, exits, "before", texts, base, "hyp_enter reason=hvc")


def _reason_is(ev: EventTable, rows: np.ndarray, reason: str) -> np.ndarray:
    if not len(rows):
        return np.zeros(0, bool)
    got = ev.values(rows, ["reason"])["reason"].to_numpy(zero_copy_only=False)
    return np.asarray(got == reason, bool)


def _named_hcalls(ev: EventTable, table: Mapping[int, str] | None) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the valid ``host_hcall`` events and their hypercall names (by ``table``)."""
    rows = ev.rows(HCALL)
    if table is None or not len(rows):
        return np.zeros(0, np.int64), np.zeros(0, object)
    vals = ev.values(rows, ["id", "invalid"])
    ids, ok = parse_uint(vals["id"])
    bad, ok_bad = parse_uint(vals["invalid"])
    ok &= ok_bad & (bad == 0)
    names = np.array([table.get(int(i)) for i in ids], dtype=object)
    ok &= names != None  # noqa: E711 (element-wise)
    return rows[ok], names[ok]


def _pin(
    rows: RowSet,
    marks: np.ndarray,
    cpu: np.ndarray,
    partners: np.ndarray,
    side: str,
    texts: BasisTexts,
    base: str,
    desc: str,
) -> None:
    """Pin every bracketed row with exactly one of ``marks`` (hypervisor event rows) on its
    CPU inside its bracket.  ``side``: where the mark's partner (the hypercall's other end on
    the same CPU) lies -- ``before`` (an ``hyp_enter``: the partner is the next ``hyp_exit``) or
    ``after`` (a ``host_hcall``: the partner is the latest ``hyp_enter``)."""
    open_ = np.flatnonzero(rows.early < rows.done)
    if not len(open_) or not len(marks):
        return
    lo, hi = rows.early[open_], rows.done[open_]
    count = np.zeros(len(open_), np.int64)
    found = np.full(len(open_), -1, np.int64)
    mark_cpu = cpu[marks]
    for c in np.unique(mark_cpu):
        on = marks[mark_cpu == c]  # sorted: rows of one CPU
        here = (cpu[lo] == c) | (cpu[hi] == c)
        a = np.searchsorted(on, lo, "right")
        b = np.searchsorted(on, hi, "left")
        n = np.where(here, b - a, 0)
        count += n
        found = np.where(here & (n == 1), on[np.minimum(a, len(on) - 1)], found)
    one = count == 1
    sel, mark = open_[one], found[one]
    if not len(sel):
        return
    other = _partner(mark, cpu, partners, side)
    if side == "before":  # hyp_enter: the change follows it, certain at the next hyp_exit
        rows.early[sel] = mark
        rows.done[sel] = np.where((other >= 0) & (other < rows.done[sel]), other, rows.done[sel])
    else:  # host_hcall: written after the handler ran
        rows.done[sel] = mark
        rows.early[sel] = np.where(other > rows.early[sel], other, rows.early[sel])
    codes = rows.basis[sel]
    for code in np.unique(codes):
        was = base if code < 0 else texts.texts[code]
        text = (
            f"trace: the hypervisor's {desc}"
            if was == "trace"
            else f"{was}; at the hypervisor's {desc}"
        )
        rows.basis[sel[codes == code]] = texts.code(text)


def _partner(mark: np.ndarray, cpu: np.ndarray, partners: np.ndarray, side: str) -> np.ndarray:
    """For each mark, the nearest partner event of its CPU after (``before``) or before
    (``after``) it (-1: none)."""
    out = np.full(len(mark), -1, np.int64)
    if not len(partners):
        return out
    pc = cpu[partners]
    for c in np.unique(cpu[mark]):
        on = partners[pc == c]
        sel = np.flatnonzero(cpu[mark] == c)
        if not len(on):
            continue
        if side == "before":
            i = np.searchsorted(on, mark[sel], "right")
            out[sel] = np.where(i < len(on), on[np.minimum(i, len(on) - 1)], -1)
        else:
            i = np.searchsorted(on, mark[sel], "left") - 1
            out[sel] = np.where(i >= 0, on[np.maximum(i, 0)], -1)
    return out
