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

The names below are looked up in their modules on first use, so that a command importing one
job (``s2trace decode`` imports :mod:`~s2trace.jobs.walk`) does not import every other one (the
trace analysis alone is ~0.15 s of start-up).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from s2trace.jobs.analyze import Analysis, analyze, parse_time
    from s2trace.jobs.batch import batch
    from s2trace.jobs.capture import Capture, is_capture, load_capture
    from s2trace.jobs.inputs import Inputs, parse_linear_map, resolve
    from s2trace.jobs.walk import DumpRequest, dump_request, walk_dump, walk_request

#: The module defining each public name.
_HOMES = {
    **dict.fromkeys(("Analysis", "analyze", "parse_time"), "s2trace.jobs.analyze"),
    "batch": "s2trace.jobs.batch",
    **dict.fromkeys(("Capture", "is_capture", "load_capture"), "s2trace.jobs.capture"),
    **dict.fromkeys(("Inputs", "parse_linear_map", "resolve"), "s2trace.jobs.inputs"),
    **dict.fromkeys(
        ("DumpRequest", "dump_request", "walk_dump", "walk_request"), "s2trace.jobs.walk"
    ),
}

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


class _Jobs(types.ModuleType):
    """This package: a public name is imported from its module when first asked for.
    ``analyze`` and ``batch`` name a function and also the module defining it; importing the
    module (which binds it on the package) leaves the function in place, as an eager
    ``from s2trace.jobs.analyze import analyze`` here would."""

    def __getattr__(self, name: str) -> Any:
        home = _HOMES.get(name)
        if home is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        super().__setattr__(name, value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _HOMES.get(name) == value.__name__:
            return  # the submodule named like its function: the function keeps the name
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Jobs
