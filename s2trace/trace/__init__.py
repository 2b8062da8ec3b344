"""Trace lines -> events -> transitions -> ownership timeline -> queries.

* :func:`read_trace` parses ftrace text, trace-cmd reports, hypervisor trace buffers and the
  canonical tabular formats into the events table (cached as Parquet);
* :func:`to_transitions` applies the recipes (TOML data) that say how events become
  ownership transitions;
* :func:`replay` runs the pKVM ownership state machine into intervals and violations;
* :func:`owner_at`, :func:`history`, :func:`snapshot`, :func:`explain`, :func:`diff_maps`
  answer questions about the timeline;
* the whole pipeline for a trace file or a capture folder is the job
  :func:`s2trace.jobs.analyze`.
"""

from s2trace.trace.parse.cache import read_events, write_events
from s2trace.trace.parse.readers import (
    LOST_EVENT,
    TRACE_FORMATS,
    Trace,
    detect_format,
    fields,
    parse_uint,
    read_trace,
)
from s2trace.trace.queries import (
    MAP_DIFF,
    OwnerAnswer,
    diff_maps,
    explain,
    history,
    owner_at,
    snapshot,
)
from s2trace.trace.recipes import Recipe, RecipeSet, load_recipes, to_transitions
from s2trace.trace.recipes.hypercalls import hypercall_names, hypercall_table, parse_kvm_asm_h
from s2trace.trace.recipes.probes import probe_lines, probe_script
from s2trace.trace.replay import InitialRange, Timeline, replay
from s2trace.trace.synth_helpers import make_transitions, transitions_frame

__all__ = [
    "LOST_EVENT",
    "MAP_DIFF",
    "TRACE_FORMATS",
    "InitialRange",
    "OwnerAnswer",
    "Recipe",
    "RecipeSet",
    "Timeline",
    "Trace",
    "detect_format",
    "diff_maps",
    "explain",
    "fields",
    "history",
    "hypercall_names",
    "hypercall_table",
    "load_recipes",
    "make_transitions",
    "owner_at",
    "parse_kvm_asm_h",
    "parse_uint",
    "probe_lines",
    "probe_script",
    "read_events",
    "read_trace",
    "replay",
    "snapshot",
    "to_transitions",
    "transitions_frame",
    "write_events",
]
