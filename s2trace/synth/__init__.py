"""Synthetic pKVM workloads: a trace and the matching host stage-2 dump, for named scenarios.

``generate("buggy", "out/buggy", size=2000, seed=1, duration=5.0)`` writes ``out/buggy``:
``capture.toml``, ``trace.txt`` (ftrace text) and ``host-s2.elf``; ``SCENARIOS`` lists the names.

Traces use s2trace's ``pkvm_mem_transition`` tracepoint and ACK's ``host_mem_abort`` event
(docs/trace-format.md); the dump is built with :class:`s2trace.walk.build.Stage2Builder` from the
ownership the scenario leaves by construction, so replaying the trace and walking the dump
must agree.  Modules: :mod:`~s2trace.synth.layout` (where things are),
:mod:`~s2trace.synth.patterns` (vectorised workload patterns),
:mod:`~s2trace.synth.scenarios` (scenarios as data), :mod:`~s2trace.synth.plan` (events as
arrays), :mod:`~s2trace.synth.ftrace` (the text writer), :mod:`~s2trace.synth.dump` (the
dump), :mod:`~s2trace.synth.folder` (the capture folder).
"""

from __future__ import annotations

from pathlib import Path

from s2trace.synth.folder import write_capture
from s2trace.synth.plan import Plan
from s2trace.synth.scenarios import KERNEL, SCENARIOS, Scenario, plan

__all__ = ["KERNEL", "SCENARIOS", "Plan", "Scenario", "generate", "plan"]


def generate(
    scenario: str,
    out_dir: str | Path,
    *,
    size: int | None = None,
    seed: int = 0,
    duration: float | None = None,
    compress: bool = False,
) -> Path:
    """Write scenario ``scenario`` as a capture folder in ``out_dir``; returns the folder."""
    p = plan(scenario, size=size, seed=seed, duration=duration)
    sc = SCENARIOS[scenario]
    return write_capture(
        p,
        out_dir,
        scenario=scenario,
        doc=sc.doc,
        kernel=KERNEL,
        size=sc.size if size is None else size,
        seed=seed,
        duration=sc.duration if duration is None else duration,
        compress=compress,
    )
