"""Replay pKVM ownership transitions into an ownership timeline (INTERVALS + VIOLATIONS).

The state of a page is a :class:`~s2trace.pkvm.rules.PageState` (owner, host state, peer and
its state) plus two counters: the host's ``kvm_share_hyp`` count (``counted`` transitions,
arch/arm64/kvm/mmu.c v5.17+; docs/kernel-facts.md §KF-3.4) and the hypervisor's
``host_share_guest_count`` (np-guest shares, mem_protect.c v6.14-7.1; docs/kernel-facts.md §KF-3.2).
Transitions are applied in time order (``ts``, then ``event_index``, then input order) with the
rules of :mod:`s2trace.pkvm.rules`; a transition the kernel refuses becomes a VIOLATIONS row
and leaves the page as it was.

How it stays vectorised (no Python loop per page or per transition), and bounded by the rows
rather than the pages they name:

1. page space is cut at every row's first and stop page and at every boundary of the initial
   ranges; the pages between two cuts (a segment) are covered whole or missed by every row and
   lie in one initial range, so they replay alike and one entry per (segment, row) stands for
   them all (a line over 2^26 pages is one entry).  Every step below works on segments; "page"
   means any page of one.  The one place a segment's pages part ways -- ``kvm_share_hyp``
   stopping at a failure on the first page of a segment of several -- splits it (step 4);
2. the ``kvm_share_hyp`` count does not depend on the page state: ``share_pfn_hyp`` records
   the PFN (count 1) before it issues ``__pkvm_host_share_hyp`` and ``unshare_pfn_hyp`` erases
   it before it issues the unshare, whatever the hypercall returns (checked in the Dec 2021
   kvmarm patches that added the count and the unshare, v5.17; a later tree seen only in a
   third-party copy -- ``kvm_call_pkvm`` -- inserts after success and restores the count on a
   failed unshare: not modelled).  So the count is a per-page walk clamped at 0 (an unshare at
   0 is the WARN_ON), computed with segmented prefix sums and minima; it decides which counted
   entries reach the hypervisor;
3. the page state machine is finite once ``host_share_guest_count`` is capped: every rule is a
   map state -> state (a row of a lookup table), and the state after every entry is a segmented
   parallel prefix composition of those maps (Hillis-Steele, log2(longest page history) numpy
   steps).  The cap is an upper bound of the count computed beforehand (a clamped walk over the
   guest shares), so it cannot overflow; an overflow state is still kept and checked, and pages
   whose bound exceeds ``_SCAN_COUNT_CAP`` take an exact engine that loops over the k-th entry of
   every page (pathological: a page shared with hundreds of guest IPAs at once);
4. multi-page transitions couple pages: a hypercall over a range is refused as a whole when one
   page fails (``atomic``), and ``kvm_share_hyp`` stops at the first page that fails
   (``prefix``); ``kvm_unshare_hyp`` goes on (``each``).  Pages are first replayed
   independently, which is exact as long as every multi-page transition is accepted or refused
   on all its pages.  When one is not, a forward sweep over the multi-page transitions finds
   from which transition each page's history may differ, and only those entries are replayed
   again, row by row in time order (a Python loop, reached only around such refusals:
   ``meta["sequential_rows"]`` counts the rows).

Lost-events markers (``op == "lost"``) with size 0 concern every page; with a size, only that
range.  An interval alive at a marker is flagged ``incomplete``.

Modules: :mod:`~s2trace.trace.replay.rows` (rows), :mod:`~s2trace.trace.replay.segments`
(entries per segment and row), :mod:`~s2trace.trace.replay.splits` (segments split apart),
:mod:`~s2trace.trace.replay.initial` (the initial state), :mod:`~s2trace.trace.replay.engines`
(steps 2 and 3: every page on its own), :mod:`~s2trace.trace.replay.coupled` (step 4) and
:mod:`~s2trace.trace.replay.tables` (INTERVALS and VIOLATIONS); this module holds the entry
point.  Every name these modules held when they were one module is still importable from here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from s2trace.columns import TRANSITIONS
from s2trace.errors import InputError, ProblemLog, StrictError
from s2trace.pkvm.rules import kernel_family, parse_kernel, rule_table
from s2trace.trace.replay.chunks import replay_chunks
from s2trace.trace.replay.coupled import _coupled_rows, _resolve, _sequential, _taint
from s2trace.trace.replay.engines import (
    _carry,
    _counted,
    _guest_bound,
    _loop_engine,
    _lut,
    _Outcome,
    _reflected,
    _run,
    _scan_engine,
    _segments_of,
)
from s2trace.trace.replay.grounds import ASSUMED, PRECONDITION, end_check, starting_states
from s2trace.trace.replay.initial import (
    _BORROWED_FROM,
    _SHARED_WITH,
    InitialRange,
    _Initial,
    _initial,
    _initial_of,  # noqa: F401 (re-exported for code that imported it from here)
    _initial_state_name,
    _overlay,
    _unify,
)
from s2trace.trace.replay.rows import (
    _ATOMIC,
    _EACH,
    _END,
    _HOST_OWNED,
    _MAX_ENTRIES,
    _PREFIX,
    _SHARED_GUEST,
    _SHARED_HYP,
    _STATE_INDEX,
    TRACE_BASIS,
    _codes,
    _problem,
    _Rows,
    _rows,
    _rule_ids,
    _sorted,
    _str_array,
)
from s2trace.trace.replay.segments import _Entries, _explode
from s2trace.trace.replay.tables import (
    _intervals,
    _lost_between,
    _merge,
    _page_pieces,
    _Pieces,
    _state_columns,
    _subtract_pages,
    _untouched_pieces,
    _violations,
)
from s2trace.trace.spill import SortedRuns, TransitionStore

__all__ = ["ASSUMED", "PRECONDITION", "InitialRange", "Timeline", "replay"]

#: Guest-share count bound above which a page takes the exact loop engine.  Read at every call
#: of :func:`replay` (tests lower it to send every page through the loop engine).
_SCAN_COUNT_CAP = 255

#: Names of the one-module replay, re-exported for code that imported them from here.
_PRE_SPLIT_NAMES = (
    _ATOMIC, _BORROWED_FROM, _EACH, _END, _HOST_OWNED, _MAX_ENTRIES, _PREFIX, _SHARED_GUEST,
    _SHARED_HYP, _SHARED_WITH, _STATE_INDEX, _Entries, _Initial, _Outcome, _Pieces, _Rows,
    _carry, _codes, _counted, _coupled_rows, _explode, _guest_bound, _initial_state_name,
    _intervals, _lost_between, _loop_engine, _lut, _merge, _page_pieces, _problem,
    _reflected, _rule_ids, _run, _scan_engine, _segments_of, _sequential, _state_columns,
    _str_array, _subtract_pages, _taint, _untouched_pieces,
)  # fmt: skip


@dataclass(frozen=True, eq=False)
class Timeline:
    """Result of :func:`replay`: the ownership timeline of every page a transition touched.

    ``intervals`` (INTERVALS) and ``violations`` (VIOLATIONS) are the tables; ``transitions``
    is the replayed TRANSITIONS frame in replay order (for source lines and explanations).
    Pages never mentioned are host owned throughout and have no rows.  ``meta`` holds the
    kernel, the initial-state source, counts, the lost-events markers (``lost``: list of dicts
    with ts, event_index, line, addr, size), initial ranges whose state was ``unknown``
    (``initial_unknown_state``: (addr, size) pairs, replayed as owned) and recorded problems.
    """

    _intervals: pd.DataFrame | SortedRuns = field(repr=False)
    violations: pd.DataFrame
    page_size: int
    meta: dict[str, Any] = field(default_factory=dict)
    _transitions: pd.DataFrame | TransitionStore | None = field(default=None, repr=False)

    @property
    def intervals(self) -> pd.DataFrame:
        """INTERVALS (a replay in chunks keeps them on disk: loaded whole when first asked)."""
        if isinstance(self._intervals, SortedRuns):
            frame = self._intervals.frame()
            self._intervals.close()
            object.__setattr__(self, "_intervals", frame)
        assert isinstance(self._intervals, pd.DataFrame)
        return self._intervals

    def interval_pieces(self) -> Iterator[pd.DataFrame]:
        """INTERVALS in order, a window at a time when they are on disk (never whole: for
        writing them out), else the loaded table as one piece."""
        if isinstance(self._intervals, SortedRuns):
            yield from self._intervals.frames()
        else:
            yield self.intervals

    @property
    def transitions(self) -> pd.DataFrame | None:
        """The replayed TRANSITIONS in replay order (loaded whole when first asked if they
        are on disk)."""
        if isinstance(self._transitions, TransitionStore):
            object.__setattr__(self, "_transitions", self._transitions.replay_frame())
        assert not isinstance(self._transitions, TransitionStore)
        return self._transitions


def replay(
    transitions: pd.DataFrame | TransitionStore,
    *,
    initial: pd.DataFrame | Sequence[InitialRange] | None = None,
    page_size: int = 4096,
    kernel: str = "6.12",
    strict: bool = False,
    precondition: bool = False,
    at_end: pd.DataFrame | None = None,
    end_basis: str = "map taken after the trace",
    boot: pd.DataFrame | Sequence[InitialRange] | None = None,
    boot_basis: str = "boot evidence",
    initial_basis: str = "initial map",
    chunk: int | None = None,
    progress: bool | None = None,
) -> Timeline:
    """Replay TRANSITIONS with the pKVM state machine of ``kernel``; see the module docstring.

    What each page's state before its first transition rests on (:mod:`.grounds`; the
    INTERVALS ``basis`` column says it for every interval):

    ``initial``: the state at the start of the trace as the caller knows it, winning over
    everything else: an ownership map (MAP columns ``ipa_start, size, owner, page_state`` and
    optionally ``kind`` and ``basis``; the host stage 2 is an identity map, so IPA == PA) or
    a list of ``(addr, size, owner, host_state[, peer])``.  ``precondition``: a page some
    transition changes starts in the state that transition requires.  ``at_end``: a map
    taken after the trace (a dump): pages no transition changes have its state throughout,
    and the replayed end state of the others is compared with it (``meta["end_check"]``).
    ``boot``: ranges known at boot (hyp carve-out, hyp image sections ...), for pages nothing
    else speaks for -- and for dump rows whose host state the dump does not hold (a valid
    6.14+ leaf): the hyp ``.text`` is hyp-owned yet stays mapped read-only in the host from
    about 6.17 (docs/kernel-facts.md §KF-2.8), and boot evidence knows the owner there.
    Pages no source covers are the host's (an assumption, and their basis says so).  The
    ``*_basis`` texts name each source (a map's own ``basis`` column wins).
    ``counted`` is honoured for host->hyp share/unshare from Linux 5.17 and ignored elsewhere;
    ``vm`` and ``gfn`` are not used (the guest-IPA side is not modelled).
    ``strict``: the first recorded problem (malformed transition) or violation raises
    :class:`~s2trace.errors.StrictError`.  Raises :class:`~s2trace.errors.InputError` for
    unusable input (wrong columns, unaligned or overlapping initial ranges, unknown kernel).

    ``chunk``: replay that many transitions at a time, carrying every page's state, counters
    and open interval from chunk to chunk (:mod:`~s2trace.trace.replay.chunks`): the same
    INTERVALS, VIOLATIONS, problems and end check in bounded working memory (a tqdm bar on
    standard error when it is a TTY, or ``progress=True``); ``None``: all at once.  The
    INTERVALS of a replay in chunks stay on disk until asked for (``meta["intervals"]`` counts
    them).  ``transitions`` may be a :class:`~s2trace.trace.spill.TransitionStore` (already in
    replay order, read a chunk at a time; ``chunk`` None: loaded whole).
    """
    if page_size <= 0 or page_size & (page_size - 1):
        raise InputError(f"page size {page_size}: expected a power of two")
    version = parse_kernel(kernel)
    log = ProblemLog(strict=strict)
    init = _initial(initial, page_size, initial_basis)
    end = _initial(at_end, page_size, end_basis)
    boot_init = _initial(boot, page_size, boot_basis)
    init, end, _ = _unify(init, end)
    init, boot_init, extras = _unify(init, boot_init)
    end, boot_init, _ = _unify(end, boot_init)
    ground = _overlay(init, _overlay(end, boot_init, vague_under=True))
    table = rule_table(version, extras)
    if isinstance(transitions, TransitionStore) and chunk is None:
        transitions = transitions.frame()
    default = (
        f"{end_basis} (no entry: the host's, not mapped yet)" if at_end is not None else ASSUMED
    )
    texts = _replace_texts(ground, (*ground.texts, PRECONDITION, default))
    if chunk is not None:
        kept: pd.DataFrame | TransitionStore = transitions
        if isinstance(transitions, TransitionStore):
            src: pd.DataFrame | TransitionStore = transitions
            row_texts = list(transitions.basis)
        else:
            kept = _sorted(transitions)
            src, row_texts = _categorical_basis(kept)
        intervals, violations, counts = replay_chunks(
            src, table, page_size, log, explicit=init, ground=ground, end=end, texts=texts,
            row_texts=row_texts, precondition=precondition, chunk=chunk,
            scan_cap=_SCAN_COUNT_CAP, kernel=str(kernel), strict=strict, progress=progress,
        )  # fmt: skip
        check = counts.pop("end_check", None)
        lost_rows = counts.pop("lost_rows")
        if lost_rows is None:
            lost_rows = TRANSITIONS.empty() if isinstance(src, TransitionStore) else src.iloc[:0]
        meta = _meta(kernel, version, init, len(src), lost_rows, counts.pop("intervals"),
                     violations, log, default, counts)  # fmt: skip
        if at_end is not None:
            meta["end_check"] = {"map": end_basis, **(check or {})}
        return Timeline(intervals, violations, page_size, meta, kept)
    assert isinstance(transitions, pd.DataFrame)
    tr = _sorted(transitions)
    rows = _rows(tr, table, page_size, log)
    cuts = np.concatenate([ground.start, ground.stop, init.start, init.stop, end.start, end.stop])
    ent = _explode(rows, cuts)
    states = starting_states(ent, rows, table, init, ground, precondition=precondition)
    ent, out, start = _resolve(ent, rows, states, table, _SCAN_COUNT_CAP)
    intervals = _intervals(ent, rows, out, start, texts, table, page_size)
    violations = _violations(ent, rows, out, tr, table, page_size, str(kernel))
    if strict and len(violations):
        v = violations.iloc[0]
        raise StrictError(f"--strict: violation at line {v['line']}: {v['check']}: {v['detail']}")
    meta = _meta(
        kernel, version, init, len(tr), _lost_rows(tr), len(intervals), violations, log, default,
        {"pages": ent.pages, "sequential_rows": out.sequential_rows,
         "loop_engine_pages": out.loop_pages},
    )  # fmt: skip
    if at_end is not None:
        meta["end_check"] = {"map": end_basis, **end_check(ent, rows, out, table, end, page_size)}
    return Timeline(intervals, violations, page_size, meta, tr)


def _lost_rows(tr: pd.DataFrame) -> pd.DataFrame:
    return tr[(tr["op"] == "lost").to_numpy(dtype=bool, na_value=False)]


def _categorical_basis(tr: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """``tr`` with a categorical ``basis`` (every chunk's codes then index the same texts),
    and those texts (:data:`~.rows.TRACE_BASIS` last when some row has none)."""
    if not isinstance(tr["basis"].dtype, pd.CategoricalDtype):
        tr = tr.assign(basis=tr["basis"].astype("category"))
    texts = [str(c) for c in tr["basis"].cat.categories]
    if bool(tr["basis"].isna().any()):
        texts.append(TRACE_BASIS)
    return tr, texts


def _meta(
    kernel: str,
    version: tuple[int, int],
    init: _Initial,
    n: int,
    lost_rows: pd.DataFrame,
    n_intervals: int,
    violations: pd.DataFrame,
    log: ProblemLog,
    default: str,
    counts: dict[str, Any],
) -> dict[str, Any]:
    """The timeline's ``meta`` (:class:`Timeline`); ``counts``: pages, sequential rows, loop
    engine pages (and, in chunks, how many)."""
    return {
        "kernel": str(kernel),
        "version": f"{version[0]}.{version[1]}",
        "family": kernel_family(version),
        "initial": init.source,
        "initial_unknown_state": init.unknown,
        "initial_rows_skipped": init.skipped,
        "transitions": n,
        "pages": counts.pop("pages"),
        "intervals": n_intervals,
        "violations": len(violations),
        "violations_by_check": violations["check"].value_counts().loc[lambda s: s > 0].to_dict(),
        "lost": [
            {
                "ts": float(r["ts"]),
                "event_index": int(r["event_index"]),
                "line": int(r["line"]),
                "addr": int(r["addr"]),
                "size": int(r["size"]),
            }
            for r in lost_rows.to_dict("records")
        ],
        "problems": list(log),
        **counts,
        "default_basis": default,
    }


def _replace_texts(init: _Initial, texts: tuple[str, ...]) -> _Initial:
    return dataclasses.replace(init, texts=texts)
