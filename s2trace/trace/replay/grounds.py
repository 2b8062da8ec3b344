"""Replay, grounds: what each page's state rests on before its first transition, and the check
of the replayed end state against a map taken after the trace.

Internal to :mod:`s2trace.trace.replay`.  Sources, strongest first:

* an explicit initial map or ranges (the state at the start of the trace, as the caller says);
* for a page some transition changes: that transition's precondition (the state the kernel
  requires before it, :attr:`~s2trace.pkvm.rules.RuleTable.pre`), when asked for;
* for a page no transition changes: a map taken after the trace (a dump), then boot
  evidence (the hypervisor carve-out in dmesg, kallsyms sections), then the assumption that
  the host owns it (pKVM hands the host all memory at boot).

A page that transitions change is compared, at the end, with the map taken after the trace:
the replay either agrees with it or the disagreement is reported.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from s2trace.pkvm.rules import RuleTable
from s2trace.trace.replay.engines import _Outcome
from s2trace.trace.replay.initial import _Initial, _lookup
from s2trace.trace.replay.rows import _Rows
from s2trace.trace.replay.segments import _Entries

#: Basis of a page's state before a transition that requires it.
PRECONDITION = "rule: the state its first transition requires (the kernel refuses it otherwise)"
#: Basis of a page nothing speaks for.
ASSUMED = "assumed: pKVM gives the host all memory at boot; not seen in the trace"


def first_changes(ent: _Entries, rows: _Rows, table: RuleTable) -> tuple[np.ndarray, np.ndarray]:
    """(segments, precondition state) of every touched page that some transition changes:
    the state its first state-changing transition requires."""
    rid = rows.rid[ent.seq]
    pre = table.pre[rid]
    first = np.flatnonzero(table.mutates[rid] & (pre >= 0))
    segs = ent.seg[first]
    head = np.r_[True, segs[1:] != segs[:-1]] if len(segs) else np.zeros(0, dtype=bool)
    return segs[head], pre[first[head]].astype(np.int64)


def starting_states(
    ent: _Entries,
    rows: _Rows,
    table: RuleTable,
    explicit: _Initial,
    ground: _Initial,
    *,
    precondition: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """(state, basis index) of every segment before its first transition (a segment's pages
    share one range of every source, so its first page speaks for all).

    ``ground`` is the overlay of every range source with ``explicit`` on top (so explicit
    ranges have the same basis indices in both); basis indices past ``ground.texts`` are
    :data:`PRECONDITION` (``len(ground.texts)``) and the default (``+ 1``).
    """
    pages = ent.seg_page
    state, basis, covered = _lookup(pages, ground)
    default = len(ground.texts) + 1
    basis = np.where(covered, basis, default)
    segs, pre = first_changes(ent, rows, table)
    if precondition:
        x_state, x_basis, x_cov = _lookup(pages[segs], explicit)
        state[segs] = np.where(x_cov, x_state, pre)
        basis[segs] = np.where(x_cov, x_basis, len(ground.texts))
    return state, basis


def end_check(
    ent: _Entries, rows: _Rows, out: _Outcome, table: RuleTable, end: _Initial, page_size: int
) -> dict[str, Any]:
    """Compare the replayed end state of every page transitions changed with ``end`` (a map
    taken after the trace): owner, and host state where the map knows it."""
    if len(end.start) == 0:
        return {}
    segs, _ = first_changes(ent, rows, table)
    pages = ent.seg_page[segs]  # a segment's pages share one initial range of every map
    counts = ent.seg_len[segs]
    last = ent.seg_start[1:][segs] - 1
    final = out.after[last].astype(np.int64)
    return end_compare(pages, counts, final, table, end, page_size)


def end_compare(
    pages: np.ndarray,
    counts: np.ndarray,
    final: np.ndarray,
    table: RuleTable,
    end: _Initial,
    page_size: int,
) -> dict[str, Any]:
    """:func:`end_check` of page runs [pages, pages + counts) (sorted, disjoint, each in one
    range of ``end``) whose replayed end state is ``final``."""
    state, _, covered = _lookup(pages, end)
    i = np.maximum(np.searchsorted(end.start, pages, "right") - 1, 0)
    unknown = covered & end.unk[i]
    owner = np.array([s.owner for s in table.states], dtype=object)
    host = np.array([s.host_state for s in table.states], dtype=object)
    # a page the map has no entry for is the host's (not mapped yet)
    differs = (owner[final] != owner[state]) | ((host[final] != host[state]) & ~unknown)
    bad = np.flatnonzero(differs)
    ranges = []
    if len(bad):
        p, n, f, s = pages[bad], counts[bad], final[bad], state[bad]
        head = np.flatnonzero(np.r_[True, (p[1:] != p[:-1] + n[:-1]) | (f[1:] != f[:-1])
                                    | (s[1:] != s[:-1])])  # fmt: skip
        size = np.add.reduceat(n, head)
        for j, a in enumerate(head[:50]):
            ranges.append(
                {
                    "addr": int(p[a]) * page_size,
                    "size": int(size[j]) * page_size,
                    "replayed": table.states[int(f[a])].describe(),
                    "map": table.states[int(s[a])].describe(),
                }
            )
    return {
        "pages_checked": int(counts.sum()),
        "pages_disagreeing": int(counts[bad].sum()),
        "disagreements": ranges,
    }
