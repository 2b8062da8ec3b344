"""The recipe engine: EVENTS -> TRANSITIONS (:func:`to_transitions`).

For each recipe (covering recipes first), the events it names are filtered by their own
conditions, joined to their related events (:mod:`.related`), and evaluated into
page ranges, labels, VM and GFN (:mod:`.evaluate`); rows that another recipe's
range already covers (``covered_by``) are dropped.  Damaged events become problems.  Lost-event
markers always become ``lost`` rows (address 0, size 0), timed at the previous event of the
same CPU (the gap starts after it), so the replay can mark what follows as possibly incomplete.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from s2trace.columns import TRANSITIONS
from s2trace.errors import InputError, Problem, ProblemLog
from s2trace.pkvm.rules import COMPONENTS, OPS
from s2trace.trace.parse.formats import LOST_EVENT
from s2trace.trace.recipes.evaluate import (
    BAD,
    NONE,
    OP_CODES,
    address,
    condition_holds,
    fields_read,
    gfns,
    labels,
    range_stop,
    vm_ids,
)
from s2trace.trace.recipes.loader import load_recipes
from s2trace.trace.recipes.memcache import settle_memcaches
from s2trace.trace.recipes.model import RECIPE_OPS, Recipe, RecipeSet
from s2trace.trace.recipes.pin import pin_to_hypervisor
from s2trace.trace.recipes.related import (
    EventTable,
    complete_rows,
    context_rows,
    field_values,
    latest_before_keyed,
    pair_rows,
)
from s2trace.trace.recipes.rowset import BasisTexts, RowSet
from s2trace.trace.recipes.runs import run_windows
from s2trace.trace.recipes.teardown import expand_vm_scope

__all__ = ["LocalRows", "is_row_local", "to_transitions", "transitions_of_table"]


def to_transitions(
    events: pd.DataFrame,
    recipes: RecipeSet | None = None,
    *,
    kernel: str | tuple[int, int] | None = None,
    linear_map: tuple[int, int] | None = None,
    page_size: int = 4096,
    strict: bool = False,
    hypercalls: Mapping[int, str] | None = None,
    progress: bool | None = None,
) -> tuple[pd.DataFrame, ProblemLog]:
    """Ownership transitions (TRANSITIONS) from EVENTS, by recipes, and the problems found.

    ``recipes`` defaults to the built-ins (:func:`load_recipes`); ``kernel`` keeps only the
    recipes that apply to it.  ``linear_map=(va, pa)`` converts kernel linear-map addresses
    (``pa = addr - va + pa``; e.g. ``(0xffff000000000000, 0x40000000)`` on the samples).
    ``page_size`` is the kernel's PAGE_SIZE.  Events no recipe names are not transitions.
    ``event_index`` is the positional row of the completing event in ``events``.

    Timing (docs/recipes.md "Timing"): ``runs`` narrow allocations to the hypercall that takes
    them (:mod:`.runs`); memcache pages go to the hypervisor only when a refill takes them
    (:mod:`.memcache`); hypervisor events in ``events`` pin a bracketed transition to the
    hypercall that made it (:mod:`.pin`; ``hypercalls`` names ACK ``host_hcall`` ids, else the
    built-in table of ``kernel`` when there is one).

    ``progress`` shows a bar on stderr (events evaluated, recipe by recipe); None: only when
    stderr is a terminal.
    """
    if page_size <= 0 or page_size & (page_size - 1):
        raise InputError(f"page size {page_size}: expected a power of two")
    rs = (recipes if recipes is not None else load_recipes()).for_kernel(kernel)
    return transitions_of_table(
        EventTable.of(events),
        rs,
        linear_map=linear_map,
        page_size=page_size,
        strict=strict,
        hypercalls=hypercalls,
        progress=progress,
    )


def transitions_of_table(
    ev: EventTable,
    rs: RecipeSet,
    *,
    local: Mapping[int, LocalRows] | None = None,
    linear_map: tuple[int, int] | None = None,
    page_size: int = 4096,
    strict: bool = False,
    hypercalls: Mapping[int, str] | None = None,
    progress: bool | None = None,
) -> tuple[pd.DataFrame, ProblemLog]:
    """:func:`to_transitions` over an :class:`EventTable` and the recipes ``rs`` (already for
    one kernel).  ``local`` holds, by ``id()`` of the recipe, the rows and problems of
    row-local recipes already evaluated chunk by chunk (:func:`is_row_local`,
    :mod:`s2trace.trace.stream`): they are taken as they are, in the same order.
    ``progress``: as for :func:`to_transitions`."""
    log = ProblemLog(strict=strict)
    done: dict[str, RowSet] = {}
    ordered = rs.ordered()
    per_code = np.bincount(ev.codes[ev.codes >= 0], minlength=len(ev.code_of))
    count = {name: int(per_code[code]) for name, code in ev.code_of.items()}
    local_ids = set(local) if local is not None else set()
    todo = [0 if id(r) in local_ids else count.get(r.event, 0) for r in ordered]  # bar units
    show = sys.stderr.isatty() if progress is None else bool(progress)
    with tqdm(
        total=sum(todo), unit="ev", unit_scale=True, desc="recipes", file=sys.stderr,
        disable=not show, leave=False,
    ) as bar:  # fmt: skip
        for recipe, size in zip(ordered, todo, strict=True):
            bar.set_postfix_str(recipe.name, refresh=False)
            pre = local.get(id(recipe)) if local is not None else None
            if pre is not None:
                rows = pre.rows
                for p in pre.problems():
                    log.add(p)
            else:
                rows = _apply(recipe, ev, linear_map, page_size, log)
            if recipe.covered_by is not None and recipe.covered_by in done and len(rows.anchor):
                rows = rows.take(~_covered(rows, done[recipe.covered_by]))
            done[recipe.name] = rows
            bar.update(size)
        texts = BasisTexts()
        bar.set_postfix_str("memcaches, hypervisor pins", refresh=False)
        settle_memcaches(ev, rs, done, texts, page_size)
        pin_to_hypervisor(ev, rs, done, texts, hypercalls)
        frame = _assemble(ev, rs, done, texts)
    return expand_vm_scope(frame, [r.name for r in rs if r.scope == "vm"], page_size), log


def _problem(log: ProblemLog, ev: EventTable, rows: np.ndarray, kind: str, detail: str) -> None:
    """One problem per row (rows are few: the damaged ones)."""
    for line in ev.line[rows].tolist():
        log.add(Problem(kind, line, detail))


def is_row_local(r: Recipe, linear_map: tuple[int, int] | None) -> bool:
    """Whether a recipe's rows depend on its own event alone (no pair, context, completion,
    covering, runs, memcache, VM scope or hypercall pin; no linear-map address still to be
    inferred), so that evaluating it over any cut of the events into chunks gives the same
    rows and problems, in the same order per problem group."""
    linear = "linear" in (r.space, r.vm_space)
    return (
        r.pair is None
        and r.context is None
        and r.complete is None
        and r.covered_by is None
        and not r.runs
        and r.memcache is None
        and r.scope != "vm"
        and not r.hypercall
        and not (linear and linear_map is None)
    )


@dataclass
class LocalRows:
    """The rows of one row-local recipe gathered chunk by chunk, and its problems by group
    (the order :func:`_apply` records them in: damaged ranges, then each label)."""

    parts: list[RowSet] = field(default_factory=list)
    groups: list[list[Problem]] = field(default_factory=lambda: [[] for _ in range(4)])

    @property
    def rows(self) -> RowSet:
        return RowSet.concat(self.parts) if self.parts else RowSet.empty()

    def problems(self) -> list[Problem]:
        return [p for g in self.groups for p in g]

    def add(
        self,
        r: Recipe,
        ev: EventTable,
        linear_map: tuple[int, int] | None,
        page: int,
        remap: np.ndarray | None,
    ) -> RowSet:
        """Evaluate ``r`` over one chunk's table; anchors become ``remap[anchor]`` and the rows
        are kept; with ``remap`` None they are returned (rows of the chunk's table) instead."""
        logs = [ProblemLog() for _ in range(4)]
        rows = _apply(r, ev, linear_map, page, logs[0], label_logs=logs[1:])
        for g, lg in zip(self.groups, logs, strict=True):
            g.extend(lg)
        if len(rows) and remap is not None:
            rows.anchor = remap[rows.anchor]
            rows.done = remap[rows.done]
            rows.early = remap[rows.early]
            self.parts.append(rows)
        return rows


#: Rows evaluated at once: field text is held only for one batch (bounded memory).
_EVAL_BATCH = 1 << 20
_COMPONENTS = pd.CategoricalDtype(list(COMPONENTS))


def _apply(
    r: Recipe,
    ev: EventTable,
    linear_map: tuple[int, int] | None,
    page: int,
    log: ProblemLog,
    label_logs: Sequence[ProblemLog] = (),
) -> RowSet:
    """The transition rows of one recipe.

    Field values are read and evaluated in batches of :data:`_EVAL_BATCH` rows (every step is
    row-wise); problems are reported after all batches, in the same order as one pass.
    """
    anchor = _prefilter(r, ev, ev.rows(r.event))
    anchor, partner, ctx = _related(r, ev, anchor, log)
    n = len(anchor)
    finish = (
        complete_rows(ev, anchor, r.complete)
        if r.complete is not None and n
        else np.full(n, -1, np.int64)
    )
    parts = [
        _evaluate(r, ev, anchor[i : i + _EVAL_BATCH], partner[i : i + _EVAL_BATCH],
                  ctx[i : i + _EVAL_BATCH], linear_map, page, finish[i : i + _EVAL_BATCH])
        for i in range(0, max(n, 1), _EVAL_BATCH)
    ]  # fmt: skip
    ev_rows, keep, bad, wrong = (
        RowSet.concat([p[0] for p in parts]),
        *(np.concatenate([p[k] for p in parts]) for k in (1, 2)),
        {key: np.concatenate([p[3][key] for p in parts]) for key in parts[0][3]},
    )
    del parts
    if bad.any():
        _report_bad(log, ev, anchor[bad], r, linear_map)
    labelled = (("op", RECIPE_OPS), ("initiator", COMPONENTS), ("completer", COMPONENTS))
    for k, (key, vocab) in enumerate(labelled):
        if wrong[key].any():
            _problem(
                label_logs[k] if label_logs else log,
                ev,
                anchor[wrong[key]],
                "bad_field",
                f"recipe {r.name}: {key} is not one of {', '.join(vocab)}",
            )
    if not keep.all():
        ev_rows, finish = ev_rows.take(np.flatnonzero(keep)), finish[keep]
    return run_windows(ev_rows, finish, r.runs) if r.runs else ev_rows


def _evaluate(
    r: Recipe,
    ev: EventTable,
    anchor: np.ndarray,
    partner: np.ndarray,
    ctx: np.ndarray,
    linear_map: tuple[int, int] | None,
    page: int,
    finish: np.ndarray,
) -> tuple[RowSet, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """One batch of a recipe's rows: (rows, keep, damaged range, {label: not in vocabulary}).

    A row is timed at its completing event: the later of the anchor and its pair, or the
    recipe's ``complete`` event when one follows; it cannot have happened before the anchor.
    """
    n = len(anchor)
    text_refs, uint_refs = fields_read(r)
    values = field_values(ev, list(text_refs), anchor, partner, ctx, uint_refs)
    keep = np.ones(n, bool)
    for c in r.where:
        if c.ref.source == "event":
            continue  # already applied
        holds = condition_holds(c, values[c.ref])
        if c.ref.source == "pair" and r.pair is not None and not r.pair.required:
            holds |= partner < 0  # an optional partner that is absent does not veto
        keep &= holds
    # the page range
    addr, ok_a = address(values[r.addr], r.space, linear_map, page)  # type: ignore[index]
    start = addr & ~np.uint64(page - 1)
    stop, ok_s = range_stop(r, values, addr, start, linear_map, page)
    bad = keep & ~(ok_a & ok_s)
    keep &= ok_a & ok_s & (stop > start)
    # operation, components and the host-side count, with the overrides
    codes, counted = labels(r, values, n)
    wrong = {}
    for key in ("op", "initiator", "completer"):
        wrong[key] = keep & ((codes[key] == BAD) | ((codes[key] == NONE) & (key == "op")))
        keep &= ~wrong[key]
    vm, vm_ok = vm_ids(r, values, linear_map, n)
    gfn, gfn_ok = gfns(r, values, page, n)
    del values
    guest = COMPONENTS.index("guest")
    gfn_ok &= (codes["initiator"] == guest) | (codes["completer"] == guest)
    done = np.where(partner > anchor, partner, anchor)
    done = np.where(finish > done, finish, done)
    op = np.where(codes["op"] >= 0, np.asarray(OP_CODES)[np.maximum(codes["op"], 0)], NONE)
    rows = RowSet(
        anchor,
        done,
        anchor,
        ev.key[anchor],
        start,
        stop,
        op.astype(np.int8),
        codes["initiator"],
        codes["completer"],
        vm,
        vm_ok,
        gfn,
        gfn_ok,
        counted,
        partner,
        np.full(n, -1, np.int32),
    )
    return rows, keep, bad, wrong


def _prefilter(r: Recipe, ev: EventTable, anchor: np.ndarray) -> np.ndarray:
    """The events that pass the recipe's conditions on their own fields: related events are
    looked up (and missing ones reported) only for events that can still become transitions."""
    own = [c for c in r.where if c.ref.source == "event"]
    if not own or not len(anchor):
        return anchor
    text_refs, uint_refs = fields_read(r, own)
    values = field_values(ev, list(text_refs), anchor, anchor, anchor, uint_refs)
    keep = np.ones(len(anchor), bool)
    for c in own:
        keep &= condition_holds(c, values[c.ref])
    return anchor[keep]


def _related(
    r: Recipe, ev: EventTable, anchor: np.ndarray, log: ProblemLog
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(anchor, partner, context) rows (-1: none), without the anchors whose required
    partner or context is missing (each one a problem)."""
    partner = np.full(len(anchor), -1, np.int64)
    if r.pair is not None and len(anchor):
        partner = pair_rows(ev, r.event, anchor, r.pair)
        missing = partner < 0
        if r.pair.required and missing.any():
            _problem(
                log,
                ev,
                anchor[missing],
                "unpaired_event",
                f"recipe {r.name}: no matching {r.pair.event} on the same task",
            )
            anchor, partner = anchor[~missing], partner[~missing]
    ctx = np.full(len(anchor), -1, np.int64)
    if r.context is not None and len(anchor):
        ctx = context_rows(ev, anchor, r.context)
        if r.context.required and (ctx < 0).any():
            _problem(
                log,
                ev,
                anchor[ctx < 0],
                "no_context",
                f"recipe {r.name}: no earlier {r.context.event} on the same task",
            )
            keep = ctx >= 0
            anchor, partner, ctx = anchor[keep], partner[keep], ctx[keep]
    return anchor, partner, ctx


def _report_bad(
    log: ProblemLog, ev: EventTable, rows: np.ndarray, r: Recipe, linear_map: tuple[int, int] | None
) -> None:
    if r.space == "linear" and linear_map is None:
        log.add(
            Problem(
                "no_linear_map",
                int(ev.line[rows[0]]),
                f"recipe {r.name}: {len(rows)} event(s) give kernel linear-map addresses; "
                "pass linear_map=(va, pa) (--linear-map VA:PA)",
            )
        )
        return
    wanted = [str(x) for x in (r.addr, r.end, r.size, r.nr_pages, r.order) if x is not None]
    _problem(
        log,
        ev,
        rows,
        "bad_field",
        f"recipe {r.name}: {', '.join(wanted)} missing, not a number, or out of range",
    )


def _covered(rows: RowSet, cover: RowSet) -> np.ndarray:
    """Rows whose pages lie inside the range of the latest earlier covering row of the same
    task (the covering call made them)."""
    if not len(cover.anchor) or not len(rows.anchor):
        return np.zeros(len(rows.anchor), bool)
    pos = latest_before_keyed(rows.anchor, rows.key, cover.anchor, cover.key)
    found = pos >= 0
    c = np.maximum(pos, 0)
    return found & (cover.start[c] <= rows.start) & (rows.stop <= cover.stop[c])


def _assemble(
    ev: EventTable, rs: RecipeSet, done: Mapping[str, RowSet], texts: BasisTexts
) -> pd.DataFrame:
    """TRANSITIONS rows of every recipe plus the lost markers, in event order (ties in recipe
    order); ``texts`` are the bases the timing passes gave single rows."""
    names = [n for n in rs.names if n in done]
    parts = [done[n] for n in names]
    lost = ev.rows(LOST_EVENT)
    n_rec = sum(len(p.anchor) for p in parts)
    recipe = np.concatenate(
        [np.full(len(p.anchor), i, np.int32) for i, p in enumerate(parts)]
        + [np.full(len(lost), len(names), np.int32)]
    )

    def col(name: str, fill: Any, dtype: Any) -> np.ndarray:
        vals = [getattr(p, name) for p in parts] + [np.full(len(lost), fill, dtype=dtype)]
        return np.concatenate(vals).astype(dtype)

    row = col("done", 0, np.int64)
    row[n_rec:] = lost
    ts = ev.ts[row].copy()
    ts[n_rec:] = _lost_times(ev, lost) if ev.lost_ts is None else ev.lost_ts
    early = col("early", 0, np.int64)
    t_earliest = ev.ts[early]
    t_earliest[n_rec:] = ts[n_rec:]
    basis_names = [rs.get(n).basis for n in names]
    basis_cats = list(dict.fromkeys([*basis_names, "trace", *texts.texts]))
    extra = np.array([basis_cats.index(t) for t in texts.texts] or [0], np.int32)
    basis = np.concatenate(
        [np.where(p.basis >= 0, extra[np.maximum(p.basis, 0)], basis_cats.index(b))
         for p, b in zip(parts, basis_names, strict=True)]
        + [np.full(len(lost), basis_cats.index("trace"), np.int32)]
    ).astype(np.int32)  # fmt: skip
    op = col("op", OPS.index("lost"), np.int8)
    start, stop = col("start", 0, np.uint64), col("stop", 0, np.uint64)
    df = pd.DataFrame(
        {
            "ts": ts,
            "line": ev.line[row],
            "event_index": row if ev.index is None else ev.index[row],
            "op": pd.Categorical.from_codes(op, dtype=pd.CategoricalDtype(list(OPS))),
            "initiator": pd.Categorical.from_codes(
                col("initiator", NONE, np.int8), dtype=_COMPONENTS
            ),
            "completer": pd.Categorical.from_codes(
                col("completer", NONE, np.int8), dtype=_COMPONENTS
            ),
            "addr": start,
            "size": stop - start,
            "vm": pd.arrays.IntegerArray(col("vm", 0, np.int64), ~col("vm_ok", False, bool)),
            "gfn": pd.arrays.IntegerArray(col("gfn", 0, np.uint64), ~col("gfn_ok", False, bool)),
            "counted": pd.arrays.BooleanArray(
                col("counted", False, bool), np.zeros(len(row), bool)
            ),
            "recipe": pd.Categorical.from_codes(
                recipe, dtype=pd.CategoricalDtype([*names, LOST_EVENT])
            ),
            "t_earliest": t_earliest,
            "basis": pd.Categorical.from_codes(basis, dtype=pd.CategoricalDtype(basis_cats)),
        }
    )
    order = np.lexsort((recipe, row))
    if not np.array_equal(order, np.arange(len(order))):  # usually in order already: no copy
        df = df.iloc[order].reset_index(drop=True)
    TRANSITIONS.check(df)
    return df


def _lost_times(ev: EventTable, lost: np.ndarray) -> np.ndarray:
    """When each lost-events gap began: the previous event of the marker's CPU (-inf if
    none; the ring buffer may have dropped everything before)."""
    if not len(lost):
        return np.zeros(0)
    cpu = ev.frame["cpu"].to_numpy(dtype="float64", na_value=-1.0)
    ts = pd.Series(ev.ts)
    prev = ts.groupby(cpu).ffill().to_numpy()  # markers have no ts: they take the previous
    out = prev[lost]
    return np.where(np.isnan(out), -np.inf, out)
