"""Memcache top-ups: a page goes to the hypervisor when a refill takes it, not when allocated.

``topup_hyp_memcache(mc, min_pages)`` pushes freshly allocated pages onto a host-side memcache
(a stack: ``push_hyp_memcache`` puts a page on top) until it holds ``min_pages``; the pages stay
the host's.  The hypervisor takes pages from the top of that stack only when a hypercall refills
its own memcache from it (``refill_memcache`` -> ``admit_host_page`` -> ``__pkvm_host_donate_hyp``
for each page, in ``arch/arm64/kvm/hyp/nvhe/mm.c``; called by the guest-share and guest-donate
hypercalls with the host vCPU's memcache, ``hyp-main.c``); ``free_hyp_memcache`` hands whatever
is left back to the page allocator (docs/kernel-facts.md §KF-3.9).

What the trace can say, per memcache (the ``mc`` field of the fill call):

* a top-up that allocates ``a > 0`` pages found the memcache holding ``min_pages - a``; as the
  replay knows how many it held after the previous top-up, the difference is how many pages
  refills took in between -- the top ones of the stack.  Those pages are *taken*, at one of the
  refill calls between the two top-ups (``t_earliest`` the first's entry, ``ts`` the last's
  return);
* after the last top-up, a refill may or may not have taken pages: those still on the stack are
  *uncertain* (basis says so; a dump can settle it, :func:`s2trace.jobs.analyze.analyze`),
  unless no refill call came after it (the refill probe being in the trace): then they were
  never taken;
* at ``free_hyp_memcache`` of the memcache, pages whose ``free_pages`` the trace shows were never
  taken (their reclaim rows become ``confirm``: the host frees its own page); with that probe in
  the trace, the others on the stack were taken.

Pages never taken are no transition: their rows are dropped.  The model needs every top-up of a
memcache from its first allocating one on: a lost-events marker after that, a top-up that finds
more pages gone than the stack held, or a page of more than one stack entry makes the rest of
that memcache *uncertain*.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from s2trace.pkvm.rules import COMPONENTS, OPS
from s2trace.trace.parse.field_access import extract_rows, parse_uint
from s2trace.trace.parse.formats import LOST_EVENT
from s2trace.trace.recipes.model import Memcache, RecipeSet
from s2trace.trace.recipes.related import EventTable, latest_before_keyed, nearest_keyed
from s2trace.trace.recipes.rowset import BasisTexts, RowSet

__all__ = ["TAKEN", "UNCERTAIN", "settle_memcaches"]

TAKEN = (
    "rule: a memcache page is the hypervisor's once a refill takes it; the next top-up shows "
    "how many refills took, from the top of the stack"
)
UNCERTAIN = (
    "uncertain: a memcache page is the hypervisor's only if a refill took it; the trace cannot "
    "tell whether one did (if so, between t_earliest and this line)"
)
_NEVER, _TAKEN, _UNCERTAIN = 0, 1, 2


@dataclass
class _Pushes:
    """Every pushed page (one row of a memcache recipe), across the recipes of one fill."""

    recipe: list[str]
    index: np.ndarray  # row within its recipe's RowSet
    part: np.ndarray  # which recipe (index into ``recipe``)
    anchor: np.ndarray
    page: np.ndarray  # first page (start address)
    fill: np.ndarray  # the fill call (event row) it was pushed by, -1: none


def settle_memcaches(
    ev: EventTable, rs: RecipeSet, done: dict[str, RowSet], texts: BasisTexts, page_size: int
) -> None:
    """Re-time (in place, in ``done``) the rows of every recipe with ``memcache``: see the
    module docstring."""
    groups: dict[Memcache, list[str]] = {}
    for r in rs:
        if r.memcache is not None and r.name in done and len(done[r.name]):
            groups.setdefault(r.memcache, []).append(r.name)
    for mc, names in groups.items():
        _settle(ev, mc, names, done, texts, page_size, {r.name for r in rs if r.scope != "pages"})


def _settle(
    ev: EventTable,
    mc: Memcache,
    names: list[str],
    done: dict[str, RowSet],
    texts: BasisTexts,
    page_size: int,
    scoped: set[str],
) -> None:
    fills = ev.rows(mc.fill)
    if not len(fills):
        return
    push = _pushes(ev, mc, names, done, fills)
    fill_mc, ok_mc = _uint_field(ev, fills, mc.key)
    fill_mc = np.where(ok_mc, fill_mc, np.uint64(0)).astype(np.uint64)
    # the page count matters only where a top-up allocated (few): read it there only
    fill_min = np.full(len(fills), 1 << 62, np.int64)  # unread: inexact
    pushing = np.flatnonzero(np.isin(fills, push.fill))
    got, ok_min = _uint_field(ev, fills[pushing], mc.min)
    fill_min[pushing[ok_min]] = got[ok_min].astype(np.int64)
    refill = _refills(ev, mc, fills, fill_mc)
    frees, free_mc = _frees(ev, mc)
    page_rows = {n: rows for n, rows in done.items() if n not in scoped}
    freed = _freed_pages(ev, page_rows, frees, set(fill_mc[ok_mc].tolist()), free_mc)
    lost = ev.rows(LOST_EVENT)
    kind = np.full(len(push.anchor), -1, np.int8)
    early = push.anchor.copy()
    last = push.anchor.copy()
    sizes = np.concatenate([done[n].stop - done[n].start for n in names])
    multi = sizes > np.uint64(page_size)  # one stack entry is one page
    for m in np.unique(fill_mc[ok_mc]):
        _one_memcache(
            int(m), fills, fill_mc, fill_min, push, refill, frees, free_mc, freed, lost, multi,
            kind, early, last,
        )  # fmt: skip
    _apply(push, kind, early, last, done, texts, freed)


def _pushes(
    ev: EventTable, mc: Memcache, names: list[str], done: dict[str, RowSet], fills: np.ndarray
) -> _Pushes:
    parts = [done[n] for n in names]
    anchor = np.concatenate([p.anchor for p in parts])
    key = np.concatenate([p.key for p in parts])
    pos = latest_before_keyed(anchor, key, fills, ev.key[fills])
    fill = np.where(pos >= 0, fills[np.maximum(pos, 0)], -1)
    rets = ev.rows(mc.fill + "_ret")
    if len(rets):  # a push after its fill call returned is not part of it
        back = latest_before_keyed(anchor, key, rets, ev.key[rets])
        ret_row = np.where(back >= 0, rets[np.maximum(back, 0)], -1)
        fill = np.where(ret_row > fill, -1, fill)
    return _Pushes(
        recipe=names,
        index=np.concatenate([np.arange(len(p)) for p in parts]),
        part=np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)]),
        anchor=anchor,
        page=np.concatenate([p.start for p in parts]),
        fill=fill,
    )


@dataclass
class _Refills:
    """Refill calls (entry rows, sorted) with the memcache they refill from and their end."""

    entry: np.ndarray
    end: np.ndarray  # the return probe's row, else the entry
    mc: np.ndarray
    traced: bool  # the refill probe is in the trace at all


def _refills(ev: EventTable, mc: Memcache, fills: np.ndarray, fill_mc: np.ndarray) -> _Refills:
    entry = np.sort(np.concatenate([ev.rows(e) for e in mc.refill]))
    rets = np.sort(np.concatenate([ev.rows(e + "_ret") for e in mc.refill]))
    key = ev.key[entry]
    fwd = nearest_keyed(entry, key, rets, ev.key[rets], "forward")
    end = np.where(fwd >= 0, rets[np.maximum(fwd, 0)] if len(rets) else 0, entry)
    back = latest_before_keyed(entry, key, fills, ev.key[fills])
    of = np.where(back >= 0, fill_mc[np.maximum(back, 0)], np.uint64(0))
    return _Refills(entry, end.astype(np.int64), of.astype(np.uint64), bool(len(entry)))


def _frees(ev: EventTable, mc: Memcache) -> tuple[np.ndarray, np.ndarray]:
    if mc.free is None:
        return np.zeros(0, np.int64), np.zeros(0, np.uint64)
    rows = ev.rows(mc.free)
    values, ok = _uint_field(ev, rows, mc.key)
    return rows[ok], values[ok]


def _uint_field(ev: EventTable, rows: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A number field of ``rows``, read once per distinct text: a vCPU's top-ups all print the
    same fields (tens of thousands of calls, a handful of memcaches), and the rows' text is
    taken first (the field reader's cost grows with the whole table, not with ``rows``)."""
    if not len(rows):
        return np.zeros(0, np.uint64), np.zeros(0, bool)
    coded = pc.dictionary_encode(ev.text.take(pa.array(rows)))
    chunks = coded.chunks if isinstance(coded, pa.ChunkedArray) else [coded]
    if len(chunks) != 1:  # the dictionary is per chunk: one chunk after combining
        coded = pa.chunked_array(chunks).combine_chunks()
        chunks = [coded]
    uniq = chunks[0].dictionary
    values, ok = parse_uint(extract_rows(uniq, None, [name])[name])
    index = chunks[0].indices.to_numpy(zero_copy_only=False)
    return values[index], ok[index]


@dataclass
class _Freed:
    """``free_pages`` seen inside frees: per reclaim row (recipe, index), its free and page."""

    recipe: np.ndarray  # object: recipe name
    index: np.ndarray
    free: np.ndarray  # the free event row it happened under
    page: np.ndarray
    evidence: bool  # some free in the trace shows its pages (the probe is in the trace)


def _freed_pages(
    ev: EventTable,
    done: dict[str, RowSet],
    frees: np.ndarray,
    tracked: set[int],
    free_mc: np.ndarray,
) -> _Freed:
    """Reclaim rows (hyp -> host) of single pages under a free of a tracked memcache: the
    latest free event of their task (rows of ``scope = "vm"`` recipes are left out: a teardown
    is no page handed back by a free)."""
    hyp, host = COMPONENTS.index("hyp"), COMPONENTS.index("host")
    reclaim = OPS.index("reclaim")
    names, idx, anchors, keys, pages = [], [], [], [], []
    for name, rows in done.items():
        sel = np.flatnonzero(
            (rows.op == reclaim) & (rows.initiator == hyp) & (rows.completer == host)
        )
        if len(sel):
            names.append(np.full(len(sel), name, dtype=object))
            idx.append(sel)
            anchors.append(rows.anchor[sel])
            keys.append(rows.key[sel])
            pages.append(rows.start[sel])
    if not names or not len(frees):
        empty = np.zeros(0, np.int64)
        return _Freed(np.zeros(0, object), empty, empty, np.zeros(0, np.uint64), False)
    anchor = np.concatenate(anchors)
    pos = latest_before_keyed(anchor, np.concatenate(keys), frees, ev.key[frees])
    under = pos >= 0
    free = np.where(under, frees[np.maximum(pos, 0)], -1)
    evidence = bool(under.any())
    keep = under & np.isin(free_mc[np.maximum(pos, 0)], np.array(sorted(tracked), np.uint64))
    return _Freed(
        np.concatenate(names)[keep], np.concatenate(idx)[keep], free[keep],
        np.concatenate(pages)[keep], evidence,
    )  # fmt: skip


def _window(refill: _Refills, m: int, lo: int, hi: int) -> tuple[int, int] | None:
    """First refill entry and last refill end of memcache ``m`` strictly between rows lo and
    hi (None: no refill call there)."""
    a = int(np.searchsorted(refill.entry, lo, "right"))
    b = int(np.searchsorted(refill.entry, hi, "left"))
    mine = np.flatnonzero(refill.mc[a:b] == np.uint64(m))
    if not len(mine):
        return None
    return int(refill.entry[a + mine[0]]), int(refill.end[a + mine[-1]])


def _one_memcache(
    m: int,
    fills: np.ndarray,
    fill_mc: np.ndarray,
    fill_min: np.ndarray,
    push: _Pushes,
    refill: _Refills,
    frees: np.ndarray,
    free_mc: np.ndarray,
    freed: _Freed,
    lost: np.ndarray,
    multi: np.ndarray,
    kind: np.ndarray,
    early: np.ndarray,
    last: np.ndarray,
) -> None:
    """Replay one memcache's stack (a loop over its allocating top-ups and frees: few)."""
    calls = fills[fill_mc == np.uint64(m)]
    mins = fill_min[fill_mc == np.uint64(m)]
    mine = np.flatnonzero(np.isin(push.fill, calls))
    by_call = {int(c): mine[push.fill[mine] == c] for c in np.unique(push.fill[mine])}
    by_call = {c: p[np.argsort(push.anchor[p], kind="stable")] for c, p in by_call.items()}
    my_frees = frees[free_mc == np.uint64(m)]
    steps = sorted([(int(c), 0) for c in by_call] + [(int(f), 1) for f in my_frees])
    stack: list[int] = []  # push indices; -1: a page pushed before the trace showed it
    started, exact = False, True
    for row, what in steps:
        prev = calls[calls < row]
        lo = int(prev[-1]) if len(prev) else -1
        if exact and len(lost) and ((lost > lo) & (lost < row)).any() and started:
            exact = False
        if what == 0:
            pages = by_call[row]
            need = int(mins[np.searchsorted(calls, row)])
            if exact and multi[pages].any():
                exact = False
            if not started:
                held = need - len(pages)
                stack = [-1] * held if 0 <= held < 1 << 20 else []
                exact = exact and 0 <= held < 1 << 20
                started = True
            elif exact:
                gone = len(stack) - (need - len(pages))
                if not 0 <= gone <= len(stack):
                    exact = False
                else:
                    win = _window(refill, m, lo, row) or (lo, row)
                    _decide(stack[len(stack) - gone :], _TAKEN, win, kind, early, last)
                    del stack[len(stack) - gone :]
            stack += pages.tolist()
        else:  # the host frees what is left
            _settle_rest(stack, m, lo, row, exact, refill, freed, push, kind, early, last)
            stack, started, exact = [], True, True
    if stack:
        _settle_rest(stack, m, int(calls.max()), 1 << 62, exact, refill, None, push,
                     kind, early, last)  # fmt: skip


def _settle_rest(
    stack: list[int],
    m: int,
    lo: int,
    hi: int,
    exact: bool,
    refill: _Refills,
    freed: _Freed | None,
    push: _Pushes,
    kind: np.ndarray,
    early: np.ndarray,
    last: np.ndarray,
) -> None:
    """Pages on the stack after the last top-up before ``hi`` (a free, or the trace's end)."""
    win = _window(refill, m, lo, hi)
    if exact and win is None and refill.traced:
        _decide(stack, _NEVER, (lo, lo), kind, early, last)
        return
    if exact and freed is not None and freed.evidence and win is not None:
        gone = set(freed.page[freed.free == hi].tolist())
        known = [p for p in stack if p >= 0]
        _decide([p for p in known if push.page[p] in gone], _NEVER, win, kind, early, last)
        _decide([p for p in known if push.page[p] not in gone], _TAKEN, win, kind, early, last)
        return
    if exact:
        _decide(stack, _UNCERTAIN, win or (lo, lo), kind, early, last)
        return
    for p in stack:  # the count is lost: any refill since the page's own top-up may have taken it
        if p >= 0:
            own = _window(refill, m, int(push.fill[p]), hi)
            _decide([p], _UNCERTAIN, own or (int(push.anchor[p]),) * 2, kind, early, last)


def _decide(
    entries: list[int], what: int, win: tuple[int, int], kind: np.ndarray,
    early: np.ndarray, last: np.ndarray,
) -> None:  # fmt: skip
    sel = np.array([e for e in entries if e >= 0], np.int64)
    if len(sel):
        kind[sel] = what
        early[sel] = np.maximum(early[sel], win[0])
        last[sel] = np.maximum(last[sel], win[1])


def _apply(
    push: _Pushes,
    kind: np.ndarray,
    early: np.ndarray,
    last: np.ndarray,
    done: dict[str, RowSet],
    texts: BasisTexts,
    freed: _Freed,
) -> None:
    """Write the decisions back: drop never-taken rows, re-time the others, and turn the
    reclaims under a free of a host memcache into ``confirm`` rows (the host frees its own
    pages: the hypervisor never had them)."""
    codes = {_TAKEN: texts.code(TAKEN), _UNCERTAIN: texts.code(UNCERTAIN)}
    confirm = OPS.index("confirm")
    for name in set(freed.recipe.tolist()):
        done[name].op[freed.index[freed.recipe == name]] = confirm
    for i, name in enumerate(push.recipe):
        sel = np.flatnonzero(push.part == i)
        rows = done[name]
        k = kind[sel]
        idx = push.index[sel]
        decided = k >= 0
        rows.early[idx[decided]] = early[sel][decided]
        rows.done[idx[decided]] = last[sel][decided]
        for what, code in codes.items():
            rows.basis[idx[k == what]] = code
        if (k == _NEVER).any():
            done[name] = rows.take(np.setdiff1d(np.arange(len(rows)), idx[k == _NEVER]))
