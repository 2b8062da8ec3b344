"""The recipe model: what a recipe says, as frozen dataclasses.

A :class:`Recipe` names one event and how it becomes a TRANSITIONS row (see
:mod:`s2trace.trace.recipes` and ``docs/recipes.md``); its field references (:class:`Ref`),
conditions (:class:`Condition`), related events (:class:`Pair`, :class:`Context`) and
overrides (:class:`Override`) are parsed and checked when a file is loaded
(:mod:`s2trace.trace.recipes.loader`), so the engine (:mod:`s2trace.trace.recipes.engine`) can
trust them.  A :class:`RecipeSet` is an ordered collection of recipes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from s2trace.errors import InputError
from s2trace.pkvm.rules import OPS, parse_kernel

__all__ = [
    "RECIPE_OPS",
    "SPACES",
    "VERSION_RE",
    "Complete",
    "Condition",
    "Context",
    "Memcache",
    "Override",
    "Pair",
    "Recipe",
    "RecipeSet",
    "Ref",
]
#: Operations a recipe may produce (``lost`` comes from the markers only).
RECIPE_OPS: tuple[str, ...] = tuple(op for op in OPS if op != "lost")
SPACES: tuple[str, ...] = ("phys", "pfn", "linear")
_OPS_RE = r"==|!=|=~|!~|!&|&"
_COND_RE = re.compile(rf"^\s*(?P<ref>\S+)\s+(?P<op>{_OPS_RE})\s+(?P<lit>.+?)\s*$")
_REF_RE = re.compile(r"^(?:(?P<src>pair|ctx)\.)?(?P<name>@func|@caller|[A-Za-z_][\w.]*)$")
VERSION_RE = re.compile(r"^\s*(?P<op>>=|<=|==|<|>)?\s*(?P<ver>\d+\.\d+)\s*$")


@dataclass(frozen=True, slots=True)
class Ref:
    """A field reference: ``name``, ``pair.name`` or ``ctx.name`` (``@func``/``@caller``
    read the kprobe header)."""

    source: str  # "event", "pair" or "ctx"
    name: str

    @staticmethod
    def parse(text: str, where: str) -> Ref:
        m = _REF_RE.match(text.strip())
        if m is None:
            raise InputError(
                f"{where}: {text!r} is not a field reference (name, pair.name, ctx.name)"
            )
        return Ref(m.group("src") or "event", m.group("name"))

    def __str__(self) -> str:
        return self.name if self.source == "event" else f"{self.source}.{self.name}"


@dataclass(frozen=True, slots=True)
class Condition:
    """``<ref> <op> <literal>``: ``==``/``!=`` (numeric when the literal is an integer, else
    text), ``=~``/``!~`` (RE2 search), ``&``/``!&`` (some / none of the literal's bits set).
    A condition on a value the event does not have is false."""

    ref: Ref
    op: str
    text: str
    number: int | None

    @staticmethod
    def parse(text: str, where: str) -> Condition:
        m = _COND_RE.match(text)
        if m is None:
            raise InputError(
                f"{where}: condition {text!r}: expected '<field> <op> <value>' with op one of "
                "== != =~ !~ & !&"
            )
        lit = m.group("lit")
        if len(lit) >= 2 and lit[0] == lit[-1] and lit[0] in "\"'":
            lit = lit[1:-1]
        number = _int_literal(lit)
        op = m.group("op")
        if op in ("&", "!&") and number is None:
            raise InputError(f"{where}: condition {text!r}: {op} needs an integer mask")
        if op in ("=~", "!~"):
            try:
                re.compile(lit)
            except re.error as e:
                raise InputError(f"{where}: condition {text!r}: bad regex ({e})") from e
        return Condition(Ref.parse(m.group("ref"), where), op, lit, number)


def _int_literal(text: str) -> int | None:
    try:
        value = int(text, 0)
    except ValueError:
        return None
    return value & ((1 << 64) - 1)


@dataclass(frozen=True, slots=True)
class Pair:
    """The matching entry (``side="before"``) or return (``side="after"``) probe event."""

    event: str
    side: str = "after"
    required: bool = True


@dataclass(frozen=True, slots=True)
class Context:
    """The latest earlier ``event`` on the same task, unless an ``until`` event came after it."""

    event: str
    until: tuple[str, ...] = ()
    required: bool = False


@dataclass(frozen=True, slots=True)
class Complete:
    """The transition has certainly happened by the first later ``events`` event on the same
    task (a return that follows the hypercall), unless an ``unless`` event comes first."""

    events: tuple[str, ...]
    unless: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Memcache:
    """The rows' pages go into a host-side memcache (a stack), not to the hypervisor: the
    hypervisor takes pages from its top only when a hypercall refills from it.

    ``fill``: the call that pushes the pages (its ``key`` field names the memcache, its ``min``
    field the page count it tops the memcache up to); ``refill``: calls (entry probes, with
    their ``_ret`` return probes when traced) inside which a hypercall may take pages from the
    task's latest filled memcache; ``free``: the call that hands the pages still in a memcache
    (``key`` field) back to the page allocator (the host's own pages, never donated).
    See :mod:`s2trace.trace.recipes.memcache`.
    """

    fill: str
    refill: tuple[str, ...]
    free: str | None = None
    key: str = "mc"
    min: str = "min_pages"


@dataclass(frozen=True, slots=True)
class Override:
    """Values that replace the recipe's when all ``where`` conditions hold (first match wins)."""

    where: tuple[Condition, ...]
    values: Mapping[str, Any]


@dataclass(frozen=True)
class Recipe:
    """One event -> transition rule (see :mod:`s2trace.trace.recipes` and docs/recipes.md)."""

    name: str
    event: str
    op: str
    initiator: str | None = None
    completer: str | None = None
    addr: Ref | None = None
    space: str = "phys"
    end: Ref | None = None
    size: Ref | None = None
    nr_pages: Ref | None = None
    pages: int | None = None
    order: Ref | None = None
    counted: bool = False
    vm: Ref | None = None
    vm_space: str = "raw"
    vm_none: int | None = None
    gfn: Ref | None = None
    gfn_space: str = "gfn"
    where: tuple[Condition, ...] = ()
    pair: Pair | None = None
    context: Context | None = None
    covered_by: str | None = None
    when: tuple[Override, ...] = ()
    complete: Complete | None = None
    runs: tuple[int, ...] = ()
    hypercall: tuple[str, ...] = ()
    memcache: Memcache | None = None
    scope: str = "pages"
    basis: str = "trace"
    kernels: str = ""
    doc: str = ""
    source: str = ""

    def applies_to(self, version: tuple[int, int]) -> bool:
        """Whether ``kernels`` (e.g. ``">=6.14, <7.1"``) admits ``version`` (empty: all)."""
        for part in filter(None, (p.strip() for p in self.kernels.split(","))):
            m = VERSION_RE.match(part)
            assert m is not None  # checked at load time
            bound = tuple(int(x) for x in m.group("ver").split("."))
            op = m.group("op") or "=="
            ok = {
                ">=": version >= bound,
                "<=": version <= bound,
                ">": version > bound,
                "<": version < bound,
                "==": version == bound,
            }[op]
            if not ok:
                return False
        return True

    def refs(self) -> list[Ref]:
        """Every field reference the recipe reads."""
        out = [
            r
            for r in (self.addr, self.end, self.size, self.nr_pages, self.order, self.vm, self.gfn)
            if r is not None
        ]
        out += [c.ref for c in self.where]
        for o in self.when:
            out += [c.ref for c in o.where]
            out += [
                Ref.parse(v[1:], self.name)
                for v in o.values.values()
                if isinstance(v, str) and v.startswith("$")
            ]
        out += [
            Ref.parse(v[1:], self.name)
            for v in (self.op, self.initiator, self.completer)
            if isinstance(v, str) and v.startswith("$")
        ]
        return out


@dataclass(frozen=True)
class RecipeSet:
    """An ordered set of recipes (later files override earlier recipes of the same name)."""

    recipes: tuple[Recipe, ...] = ()

    def __iter__(self) -> Iterator[Recipe]:
        return iter(self.recipes)

    def __len__(self) -> int:
        return len(self.recipes)

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.recipes]

    def get(self, name: str) -> Recipe:
        for r in self.recipes:
            if r.name == name:
                return r
        raise KeyError(name)

    def for_kernel(self, kernel: str | tuple[int, int] | None) -> RecipeSet:
        """The recipes whose ``kernels`` admit ``kernel`` (all when None)."""
        if kernel is None:
            return self
        version = parse_kernel(kernel)
        return RecipeSet(tuple(r for r in self.recipes if r.applies_to(version)))

    def ordered(self) -> list[Recipe]:
        """Recipes with every ``covered_by`` target before the recipes it covers."""
        by_name = {r.name: r for r in self.recipes}
        done: list[Recipe] = []
        seen: set[str] = set()

        def visit(r: Recipe, stack: tuple[str, ...]) -> None:
            if r.name in seen:
                return
            if r.name in stack:
                raise InputError(f"recipe {r.name}: covered_by cycle {' -> '.join(stack)}")
            if r.covered_by is not None and r.covered_by in by_name:
                visit(by_name[r.covered_by], (*stack, r.name))
            seen.add(r.name)
            done.append(r)

        for r in self.recipes:
            visit(r, ())
        return done
