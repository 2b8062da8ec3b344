"""Errors and recorded problems.

Two kinds of trouble, kept apart on purpose (the project's "nothing is lost" rule):

* :class:`InputError` -- input that cannot be used at all (missing or truncated file, a value
  that is not a descriptor, an impossible register combination).  The CLI prints its message
  as one line on stderr and exits with status 2.  The message names the file, offset or line
  and says what was expected.
* :class:`Problem` -- damage *inside* usable input (a table pointer outside the dump, a loop,
  a reserved encoding, a malformed trace line).  Problems are recorded in a :class:`ProblemLog`,
  counted and reported; the work goes on.  ``strict=True`` turns the first one into a
  :class:`StrictError`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["CacheWarning", "InputError", "Problem", "ProblemLog", "StrictError"]


class InputError(Exception):
    """Input that cannot be used at all; its ``str()`` is the one line the user sees."""


class StrictError(InputError):
    """A recorded problem that ``--strict`` made fatal."""


class CacheWarning(UserWarning):
    """A cache entry did not match its checksum, version or options and was rebuilt (issued
    with :func:`warnings.warn`; the CLI prints it as one ``s2trace: warning:`` line)."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One piece of damage found inside otherwise usable input.

    ``kind`` is a short stable identifier (``table_outside_dump``, ``loop``,
    ``reserved_encoding``, ``malformed_line`` ...); ``where`` is an address or line number;
    ``level`` is the page-table level where it applies (``None`` elsewhere).
    """

    kind: str
    where: int
    detail: str
    level: int | None = None
    source: str = ""

    @property
    def is_line(self) -> bool:
        """``where`` is a line number (trace and region-list problems), not an address."""
        return self.kind.endswith("_line")

    def __str__(self) -> str:
        lvl = "" if self.level is None else f" level {self.level}"
        src = f"{self.source}: " if self.source else ""
        at = f"line {self.where}" if self.is_line else f"{self.where:#x}"
        return f"{src}{self.kind} at {at}{lvl}: {self.detail}"


@dataclass
class ProblemLog:
    """Collects :class:`Problem` records; raises at the first one when ``strict``."""

    strict: bool = False
    problems: list[Problem] = field(default_factory=list)

    def add(self, problem: Problem) -> None:
        if self.strict:
            raise StrictError(f"--strict: {problem}")
        self.problems.append(problem)

    def extend(self, problems: Iterable[Problem]) -> None:
        for p in problems:
            self.add(p)

    def __len__(self) -> int:
        return len(self.problems)

    def __iter__(self) -> Iterator[Problem]:
        return iter(self.problems)

    def counts(self) -> Counter[str]:
        """Number of problems by kind."""
        return Counter(p.kind for p in self.problems)

    def by_kind(self) -> str:
        """``kind: n, kind: n`` sorted by kind (empty when there are none): the one summary
        line every command and report prints."""
        return ", ".join(f"{k}: {n}" for k, n in sorted(self.counts().items()))

    def summary(self, where: str = "") -> str | None:
        """``N problem(s) in WHERE (kind: n, ...); first: ...`` -- the one line a command
        prints about recorded damage (None when there is none)."""
        if not self.problems:
            return None
        at = f" in {where}" if where else ""
        return f"{len(self)} problem(s){at} ({self.by_kind()}); first: {self.problems[0]}"

    def frame(self) -> pd.DataFrame:
        """The problems as a DataFrame (columns ``kind, where, level, detail, source``)."""
        import pandas as pd

        return pd.DataFrame(
            {
                "kind": [p.kind for p in self.problems],
                "where": [p.where for p in self.problems],
                "level": pd.array([p.level for p in self.problems], dtype="Int8"),
                "detail": [p.detail for p in self.problems],
                "source": [p.source for p in self.problems],
            }
        )
