"""Jobs: what a command does, as a function from a typed request to a typed result.

Each module runs one whole job over the lower layers (``walk``, ``trace``, ``hyp``):
:mod:`~s2trace.jobs.walk` (a dump into its ownership map), :mod:`~s2trace.jobs.analyze` (a trace
into its timeline), :mod:`~s2trace.jobs.labels` (evidence files into labelled ranges),
:mod:`~s2trace.jobs.report` (all of it for one capture folder), :mod:`~s2trace.jobs.batch` (a
fleet of captures on Dask into one dataset: ``s2trace.jobs.batch(inputs, output)``).
:mod:`~s2trace.jobs.inputs` resolves what a user names (a capture folder, dumps, registers,
evidence files, a trace, a kernel version) into the typed inputs every job takes, reading
``capture.toml`` once (:mod:`~s2trace.jobs.capture`).  The CLI and the notebooks call the same
functions.
"""

from s2trace.jobs.analyze import Analysis, analyze, parse_time
from s2trace.jobs.batch import batch
from s2trace.jobs.capture import Capture, is_capture, load_capture
from s2trace.jobs.inputs import Inputs, parse_linear_map, resolve
from s2trace.jobs.walk import DumpRequest, dump_request, walk_dump, walk_request

__all__ = [
    "Analysis",
    "Capture",
    "DumpRequest",
    "Inputs",
    "analyze",
    "batch",
    "dump_request",
    "is_capture",
    "load_capture",
    "parse_linear_map",
    "parse_time",
    "resolve",
    "walk_dump",
    "walk_request",
]
