"""The labels job: every evidence file a capture has (kallsyms, /proc/iomem, dmesg, the trace)
turned into labelled physical ranges (LABELS schema).

It sits in ``jobs`` because a trace's labels need the whole trace pipeline
(:func:`s2trace.jobs.analyze.analyze`), while the label makers themselves
(:mod:`s2trace.hyp.symbols`) only read frames.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from s2trace.errors import InputError, ProblemLog
from s2trace.hyp.evidence import KernelImage, LinearMap, read_iomem, read_kallsyms
from s2trace.hyp.hyp_view import image_from_hyp_idmap
from s2trace.hyp.symbols import collect_labels, label_map
from s2trace.jobs.analyze import analyze
from s2trace.jobs.inputs import Inputs
from s2trace.walk.tables import Memory

__all__ = ["evidence_labels", "input_labels", "labelled"]


def evidence_labels(
    *,
    kallsyms: str | Path | None = None,
    iomem: str | Path | None = None,
    dmesg: str | Path | None = None,
    trace: str | Path | None = None,
    kernel: str | None = None,
    linear_map: tuple[int, int] | None = None,
    memory: Memory | None = None,
    image: KernelImage | None = None,
    hyp_map: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, ProblemLog | None]:
    """Labels from a dump's evidence files (LABELS schema) and the trace's problems (None
    without a trace).  The kernel image is placed by ``image``, else through the hyp stage 1's
    idmap (``hyp_map``), else by /proc/iomem; the trace's addresses use the dump's
    ``memstart_addr`` when ``memory`` and the image are known, else ``linear_map``."""
    ks = read_kallsyms(kallsyms) if kallsyms else None
    io = read_iomem(iomem) if iomem else None
    if image is None and ks is not None:
        if hyp_map is not None:
            try:
                image = image_from_hyp_idmap(ks, hyp_map)
            except InputError:
                image = None
        elif io is not None:
            image = KernelImage.from_evidence(ks, io)
    transitions = problems = None
    if trace:
        if memory is not None and ks is not None and image is not None:
            linear_map = LinearMap.from_dump(memory, ks, image).pair()
        analysis = analyze(trace, kernel=kernel, linear_map=linear_map, grounds=False)
        transitions, problems = analysis.transitions, analysis.problems
    return collect_labels(memory, ks, image, io, dmesg, transitions), problems


def input_labels(
    inputs: Inputs,
    *,
    memory: Memory | None = None,
    image: KernelImage | None = None,
    hyp_map: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, ProblemLog | None]:
    """:func:`evidence_labels` of resolved inputs: their evidence files, trace, kernel and
    linear map (``memory``, ``image`` and ``hyp_map`` as there)."""
    ev = inputs.evidence
    return evidence_labels(
        kallsyms=ev.kallsyms,
        iomem=ev.iomem,
        dmesg=ev.dmesg,
        trace=inputs.trace,
        kernel=inputs.kernel,
        linear_map=inputs.linear_map,
        memory=memory,
        image=image,
        hyp_map=hyp_map,
    )


def labelled(frame: pd.DataFrame, inputs: Inputs) -> pd.DataFrame:
    """``frame`` (an ownership map) with a ``label`` column: what each range is, from the
    inputs' evidence files and the trace's ownership transitions."""
    labels, _ = input_labels(inputs)
    return label_map(frame, labels)
