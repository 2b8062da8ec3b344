"""The whole trace pipeline in one call: trace lines -> events -> transitions -> timeline.

:func:`analyze` is what the CLI's ``timeline``/``owner``/``explain``/``violations``/``plot``
commands and the notebooks call.  It accepts a trace file or a capture folder (whose
``capture.toml`` names the trace, the kernel version and the linear-map offset), and keeps
every stage's output and every problem found on the way, so nothing is dropped silently.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from s2trace.allocator import release_memory
from s2trace.errors import InputError, ProblemLog
from s2trace.jobs.grounds import boot_evidence, dump_map
from s2trace.jobs.inputs import Inputs, resolve
from s2trace.numbers import quoted
from s2trace.trace.family import (
    choose_kernel,
    confirm_alike,
    ignored_events,
    linear_map_from_trace,
    stated_version,
)
from s2trace.trace.parse.formats import TEXT_FORMATS, detect_format
from s2trace.trace.parse.merge import merge_events
from s2trace.trace.parse.readers import read_trace
from s2trace.trace.recipes import load_recipes, to_transitions
from s2trace.trace.recipes.engine import transitions_of_table
from s2trace.trace.recipes.hypercalls import hypercall_table
from s2trace.trace.recipes.settle import UNCERTAIN_PREFIX, settle_by_map
from s2trace.trace.replay import Timeline, chunks, replay
from s2trace.trace.spill import TransitionStore
from s2trace.trace.stream import StreamedTrace, spill_safe, stream_trace, transition_store

__all__ = ["Analysis", "analyze", "parse_time"]


@dataclass
class Analysis:
    """Every stage of one trace analysis.

    ``events``: the EVENTS table; a trace read in bounded memory (:mod:`s2trace.trace.stream`)
    is parsed again, whole, the first time they are asked for (``_events`` is then how).
    ``transitions``: the TRANSITIONS table; a streamed trace's are on disk
    (:class:`~s2trace.trace.spill.TransitionStore`) and loaded whole the first time they are
    asked for (``meta["transitions"]`` counts them without loading).
    """

    source: Path
    _events: pd.DataFrame | Callable[[], pd.DataFrame] = field(repr=False)
    _transitions: pd.DataFrame | TransitionStore = field(repr=False)
    timeline: Timeline
    problems: ProblemLog
    kernel: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def events(self) -> pd.DataFrame:
        if callable(self._events):
            self._events = self._events()
        return self._events

    @property
    def transitions(self) -> pd.DataFrame:
        if isinstance(self._transitions, TransitionStore):
            self._transitions = self._transitions.frame()
        return self._transitions

    @property
    def intervals(self) -> pd.DataFrame:
        return self.timeline.intervals

    @property
    def violations(self) -> pd.DataFrame:
        return self.timeline.violations


_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
_TIME = re.compile(
    r"[ \t]*(?P<num>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|0x[0-9a-fA-F]+)"
    r"[ \t]*(?P<unit>s|ms|us|ns)?[ \t]*",
    re.ASCII,
)


def parse_time(text: str | None) -> float | None:
    """A time in the trace's units (seconds, as ftrace prints them), or with a unit suffix
    (``18.5``, ``18537023us``, ``0x10`` for hex seconds); finite, ASCII digits."""
    if text is None:
        return None
    m = _TIME.fullmatch(str(text))
    value = None
    if m is not None:
        num = m.group("num")
        value = float(int(num, 16) if num.startswith("0x") else float(num))
        value *= _UNITS[m.group("unit") or "s"]
    if value is None or not math.isfinite(value):
        raise InputError(
            f"time {quoted(text)}: expected seconds like 18.537023 (finite; or with s/ms/us/ns)"
        )
    return value


def _grounds(
    capture: Inputs | None,
    dump: tuple[str, ...],
    boot: tuple[str | Path | None, str | Path | None, str | Path | None],
    page_size: int,
    use_dump: bool,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """The replay's ``at_end`` (a dump) and ``boot`` (dmesg carve-out, kallsyms hyp sections
    placed by iomem: ``boot`` is (dmesg, kallsyms, iomem)) arguments, noted in ``meta``."""
    out: dict[str, Any] = {}
    if not use_dump:
        return out
    if dump or capture is not None:
        try:
            frame, basis, notes = dump_map(capture=None if dump else capture, specs=dump)
        except InputError as exc:
            if dump:  # named by the user: its failure is theirs to see
                raise
            meta["dump"] = f"not used: {exc}"
        else:
            out.update(at_end=frame, end_basis=basis)
            meta["dump"] = basis + "".join(f"; {n}" for n in notes)
    if any(x is not None for x in boot[:2]):
        ranges, notes, problems = boot_evidence(*boot, page_size=page_size)
        if len(ranges):
            out.update(boot=ranges, boot_basis="boot evidence")
        said = list(dict.fromkeys(ranges["basis"])) + notes
        if said:
            meta["boot_evidence"] = "; ".join(said)
        if problems:
            meta["boot_evidence_not_used"] = "; ".join(problems)
    return out


def analyze(
    path: str | Path | Inputs,
    *,
    recipes: Sequence[str | Path] = (),
    kernel: str | None = None,
    linear_map: tuple[int, int] | None = None,
    page_size: int = 4096,
    strict: bool = False,
    initial: pd.DataFrame | None = None,
    progress: bool | None = None,
    use_cache: bool = True,
    dump: Sequence[str] = (),
    dmesg: str | Path | None = None,
    grounds: bool = True,
    kallsyms: str | Path | None = None,
    iomem: str | Path | None = None,
    hyp_trace: str | Path | None = None,
    hypercalls: str | Path | None = None,
    stream: bool | None = None,
) -> Analysis:
    """Read a trace (a file, a capture folder, or resolved
    :class:`~s2trace.jobs.inputs.Inputs`), derive transitions and replay them.

    ``kernel`` picks the hypercall table, the recipes' version conditions and the replay's
    rules (default: the capture's kernel, a dmesg's or the trace header's ``Linux version``,
    else the version the events need, :func:`~s2trace.trace.family.choose_kernel`; evidence
    that contradicts itself or fits families that replay the trace differently is an
    InputError); ``linear_map`` converts kernel
    linear-map addresses (default: the capture's); ``initial`` is an ownership map at the
    start of the trace, when the caller knows it.

    What every state rests on (the intervals' ``basis``): a page some transition changes
    starts in the state that transition requires; a page none changes has the state of the
    dump taken after the trace (``dump`` files, else the capture folder's), else of boot
    evidence (the hyp carve-out in ``dmesg``, and the hyp image sections that ``kallsyms``
    bounds, placed by ``iomem``; else the capture's files), else the host's by assumption.
    The replayed end state of changed pages is checked against the dump
    (``timeline.meta["end_check"]``).  ``grounds=False`` uses neither dump nor boot evidence
    (to compare the trace with the dump, or to plot what the trace did).

    ``hyp_trace``: the hypervisor's own trace buffer, on the same clock (the host traced with
    ``trace_clock=boot``), merged into the events in time order: its hypercall events pin the
    transitions the host only brackets (:mod:`s2trace.trace.recipes.pin`).  ``hypercalls``: the
    kernel's ``arch/arm64/include/asm/kvm_asm.h`` (or a TOML ``names = [...]``), needed to
    name ACK ``host_hcall`` ids (ACK numbers its hypercalls its own way).

    ``stream``: read the trace in bounded memory (:mod:`s2trace.trace.stream`: parse and
    row-local recipes chunk by chunk, the other recipes over compact rows, the replay in
    chunks of :data:`~s2trace.trace.replay.chunks.REPLAY_CHUNK` transitions; same results, the
    parse cache unused; ``events`` parsed again when asked for).  Default: for text traces of
    :data:`STREAM_BYTES` or more, without ``hyp_trace``.
    """

    inputs = path if isinstance(path, Inputs) else resolve([str(path)], role="trace")
    source = inputs.need_trace("a trace analysis")
    meta: dict[str, Any] = {}
    capture = None
    named = inputs.kernel if inputs.origin.get("kernel") == "--kernel" else None
    given, stated = kernel or named, None
    linear_map = linear_map or inputs.linear_map
    dmesg = dmesg or inputs.evidence.dmesg
    kallsyms = kallsyms or inputs.evidence.kallsyms
    iomem = iomem or inputs.evidence.iomem
    if inputs.capture is not None:
        meta["capture"] = str(inputs.capture.folder)
        capture = inputs
        stated = inputs.capture.kernel
    every = load_recipes(list(recipes))
    streamed: StreamedTrace | None = None
    stream_replay = _streams(source, stream, hyp_trace)
    given_map = linear_map  # what the row-local recipes were read with
    if stream_replay:
        streamed = stream_trace(
            source, every, strict=strict, progress=progress, linear_map=linear_map,
            page_size=page_size, spill=True,
        )  # fmt: skip
        trace_problems, notes, fmt, lines = (
            streamed.problems,
            streamed.notes,
            streamed.fmt,
            streamed.lines,
        )
        events = streamed.events  # the compact rows: what the recipes and kernel choice read
        n_events = streamed.n_events
        whole: pd.DataFrame | Callable[[], pd.DataFrame] = partial(
            _events_of, source, strict, use_cache
        )
    else:
        trace = read_trace(source, strict=strict, progress=progress, use_cache=use_cache)
        trace_problems, notes, fmt, lines = trace.problems, trace.notes, trace.fmt, trace.lines
        events = whole = trace.events
        n_events = len(events)
    release_memory()  # each stage's freed temporaries: not held into the next stage's peak
    problems = ProblemLog(strict=strict)
    problems.extend(trace_problems)
    if hyp_trace is not None:
        hyp = read_trace(hyp_trace, strict=strict, progress=progress, use_cache=use_cache)
        problems.extend(hyp.problems)
        events = whole = merge_events(events, hyp.events)
        n_events = len(events)
        meta["hyp_trace"] = f"{hyp_trace} ({len(hyp.events)} events, merged by time)"
    table = hypercall_table(path=hypercalls) if hypercalls is not None else None
    if table is None and (events["event"] == "host_hcall").any():
        meta["hypercall_pins"] = (
            "host_hcall events not used to time transitions: their ids need the kernel's own "
            "kvm_asm.h (hypercalls=...)"
        )
    if notes:
        meta["trace_notes"] = "; ".join(notes)
    choice = choose_kernel(
        events,
        every,
        given=given,
        capture=stated,
        dmesg=stated_version(dmesg),
        header=stated_version(source, head_only=True),
    )
    kernel = choice.kernel
    meta["kernel_family"] = choice.header()
    meta["kernel_source"] = choice.source
    recipe_set = every.for_kernel(kernel)
    ignored = ignored_events(
        events, every, recipe_set, counts=streamed.counts if streamed is not None else None
    )
    if ignored:
        meta["ignored_events"] = ", ".join(f"{e} x{n}" for e, n in sorted(ignored.items()))
    if linear_map is None:
        linear_map, how = linear_map_from_trace(events, page_size)
        if linear_map is not None:
            meta["linear_map_source"] = f"inferred from the trace: {how}"
    transitions: pd.DataFrame | TransitionStore
    if streamed is not None:
        if page_size <= 0 or page_size & (page_size - 1):
            raise InputError(f"page size {page_size}: expected a power of two")
        chosen = recipe_set.for_kernel(kernel)
        if not spill_safe(streamed, chosen):  # a pass reads the spilled rows: keep them
            streamed = stream_trace(
                source, every, strict=strict, progress=progress, linear_map=given_map,
                page_size=page_size,
            )  # fmt: skip
        frame, recipe_problems = transitions_of_table(
            streamed.table(),
            chosen,
            local=streamed.local,
            linear_map=linear_map,
            page_size=page_size,
            strict=strict,
            hypercalls=table,
            progress=progress,
        )
        transitions = (
            frame if streamed.spilled is None else transition_store(frame, streamed, every, chosen)
        )
        streamed = None  # the compact rows: not held into the replay
        del events, frame
    else:
        transitions, recipe_problems = to_transitions(
            events,
            recipe_set,
            kernel=kernel,
            linear_map=linear_map,
            page_size=page_size,
            strict=strict,
            hypercalls=table,
            progress=progress,
        )
    problems.extend(recipe_problems)
    confirm_alike(choice, transitions)
    release_memory()
    found = _grounds(capture, tuple(dump), (dmesg, kallsyms, iomem), page_size, grounds, meta)
    if "at_end" in found:  # what the trace leaves uncertain, the dump may settle
        if isinstance(transitions, TransitionStore) and any(
            c.startswith(UNCERTAIN_PREFIX) for c in transitions.basis
        ):
            transitions = transitions.frame()  # rows to settle: the whole table (not bounded)
        settled = {"dropped": 0}
        if not isinstance(transitions, TransitionStore):
            transitions, settled = settle_by_map(
                transitions, found["at_end"], found["end_basis"], page_size
            )
        if any(settled.values()):
            meta["settled_by_dump"] = (
                f"{settled['dropped']} uncertain row(s) never happened, "
                f"{settled['confirmed']} happened, {settled['left']} left uncertain"
            )
    timeline = replay(
        transitions,
        initial=initial,
        page_size=page_size,
        kernel=kernel,
        strict=strict,
        precondition=True,
        chunk=chunks.REPLAY_CHUNK if stream_replay else None,
        progress=progress,
        **found,
    )
    release_memory()
    meta.update(
        kernel=kernel,
        trace=str(source),
        format=fmt,
        lines=lines,
        events=n_events,
        transitions=len(transitions),
        intervals=timeline.meta["intervals"],
        violations=len(timeline.violations),
    )
    if linear_map:
        meta["linear_map"] = f"{linear_map[0]:#x}={linear_map[1]:#x}"
    check = timeline.meta.get("end_check")
    if check:
        meta["end_check"] = (
            f"{check['pages_checked']} changed page(s) compared with the dump: "
            f"{check['pages_disagreeing']} disagree"
        )
    return Analysis(source, whole, transitions, timeline, problems, kernel, meta)


#: Text traces of this size or more are read in bounded memory by default (``stream``).
STREAM_BYTES = 256 << 20


def _streams(source: Path, stream: bool | None, hyp_trace: str | Path | None) -> bool:
    """Whether to read ``source`` with :func:`~s2trace.trace.stream.stream_trace`."""
    if stream is False or hyp_trace is not None or not os.path.isfile(source):
        return False  # a FIFO or device is refused by read_trace, before anything opens it
    if detect_format(source) not in TEXT_FORMATS:
        return False
    return bool(stream) or source.stat().st_size >= STREAM_BYTES


def _events_of(source: Path, strict: bool, use_cache: bool) -> pd.DataFrame:
    """The whole EVENTS table of a streamed trace, when asked for."""
    return read_trace(source, strict=strict, progress=False, use_cache=use_cache).events
