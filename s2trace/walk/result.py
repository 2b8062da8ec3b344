"""The result of a stage-2 walk, apart from the walker so that the map's consumers
(:mod:`~s2trace.walk.ownership`, ``hyp``, ``jobs``) depend on the record, not the traversal."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from s2trace.arch.registers import Stage2Config
from s2trace.errors import ProblemLog
from s2trace.pkvm.profiles import Profile

__all__ = ["WalkResult"]


@dataclass
class WalkResult:
    """A walk's outputs: the map, the tables visited, the problems, and provenance."""

    map: pd.DataFrame
    tables: pd.DataFrame
    problems: ProblemLog
    config: Stage2Config
    profile: Profile
    fwb: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    #: Entries read, by kind (``invalid`` counts annotated ones; ``zero`` the empty ones).
    entry_counts: dict[str, int] = field(default_factory=dict)
    #: What was decided on the caller's behalf (registers recovered, profile warnings ...).
    notes: list[str] = field(default_factory=list)
