"""Recipes: which trace events are page-ownership transitions, as data.

A recipe (TOML, see ``docs/recipes.md``) names one event and says how it becomes a row of
TRANSITIONS (``s2trace.columns.TRANSITIONS``): the operation and the two components, which
fields hold the address and the size (or an end address, or a page count), the address space
of the address (physical, page frame number, or kernel linear-map virtual address), whether
the host counts shares per PFN, conditions, and how to find related events:

* ``pair`` -- the matching entry/return probe on the same task (a return follows its entry;
  calls may nest: matching is by nesting depth, so an interrupt that makes the same call
  between an entry and its return does not steal the return);
* ``context`` -- the latest earlier event of a kind on the same task (e.g. the
  ``pkvm_create_hyp_vm`` call an allocation happens under), optionally closed by ``until``
  events;
* ``covered_by`` -- rows another recipe already accounts for (per-PFN probes inside a
  ``kvm_share_hyp`` call) are dropped.

Everything is vectorised over the events of one recipe: field extraction is one RE2 pass per
field, pairing and context are ``merge_asof`` joins by task, conditions are array operations.
Built-in recipes ship in ``s2trace/trace/recipes/*.toml``; users add files with the same keys.

Lost-event markers always become ``lost`` rows (address 0, size 0), timed at the previous
event of the same CPU (the gap starts after it), so the replay can mark what follows as
possibly incomplete.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from s2trace.columns import EVENTS, TRANSITIONS
from s2trace.errors import InputError, Problem, ProblemLog
from s2trace.trace.readers import LOST_EVENT, extract_fields, parse_uint
from s2trace.trace.rules import COMPONENTS, OPS, parse_kernel

__all__ = [
    "RECIPE_OPS",
    "Condition",
    "Context",
    "Override",
    "Pair",
    "Recipe",
    "RecipeSet",
    "builtin_paths",
    "describe",
    "load_recipes",
    "to_transitions",
]

#: Operations a recipe may produce (``lost`` comes from the markers only).
RECIPE_OPS: tuple[str, ...] = tuple(op for op in OPS if op != "lost")
SPACES: tuple[str, ...] = ("phys", "pfn", "linear")
_OPS_RE = r"==|!=|=~|!~|!&|&"
_COND_RE = re.compile(rf"^\s*(?P<ref>\S+)\s+(?P<op>{_OPS_RE})\s+(?P<lit>.+?)\s*$")
_REF_RE = re.compile(r"^(?:(?P<src>pair|ctx)\.)?(?P<name>@func|@caller|[A-Za-z_][\w.]*)$")
_VERSION_RE = re.compile(r"^\s*(?P<op>>=|<=|==|<|>)?\s*(?P<ver>\d+\.\d+)\s*$")


# ==============================================================================================
# the recipe model
# ==============================================================================================
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
class Override:
    """Values that replace the recipe's when all ``where`` conditions hold (first match wins)."""

    where: tuple[Condition, ...]
    values: Mapping[str, Any]


@dataclass(frozen=True)
class Recipe:
    """One event -> transition rule (see the module docstring and docs/recipes.md)."""

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
    kernels: str = ""
    doc: str = ""
    source: str = ""

    def applies_to(self, version: tuple[int, int]) -> bool:
        """Whether ``kernels`` (e.g. ``">=6.14, <7.1"``) admits ``version`` (empty: all)."""
        for part in filter(None, (p.strip() for p in self.kernels.split(","))):
            m = _VERSION_RE.match(part)
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


# ==============================================================================================
# loading
# ==============================================================================================
_KEYS = {
    "name",
    "event",
    "op",
    "initiator",
    "completer",
    "addr",
    "space",
    "end",
    "size",
    "nr_pages",
    "pages",
    "order",
    "counted",
    "vm",
    "vm_space",
    "vm_none",
    "gfn",
    "gfn_space",
    "where",
    "pair",
    "context",
    "covered_by",
    "when",
    "kernels",
    "doc",
}
_OVERRIDABLE = {"op", "initiator", "completer", "counted"}


def builtin_paths() -> list[Path]:
    """The recipe files shipped with s2trace."""
    folder = resources.files("s2trace.trace") / "recipes"
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".toml"))


def load_recipes(
    paths: Iterable[str | Path] = (),
    kernel: str | tuple[int, int] | None = None,
    *,
    builtins: bool = True,
) -> RecipeSet:
    """The built-in recipes plus those in ``paths`` (a recipe named like an earlier one
    replaces it), keeping those that apply to ``kernel`` (all when None).

    Raises InputError naming the file and recipe for anything malformed.
    """
    files = [*(builtin_paths() if builtins else []), *(Path(p) for p in paths)]
    recipes: dict[str, Recipe] = {}
    for path in files:
        for r in _load_file(path):
            recipes.pop(r.name, None)
            recipes[r.name] = r
    rs = RecipeSet(tuple(recipes.values()))
    for r in rs:
        if r.covered_by is not None and r.covered_by not in recipes:
            raise InputError(
                f"{r.source}: recipe {r.name}: covered_by {r.covered_by!r} is not a recipe"
            )
    rs.ordered()  # cycles
    return rs.for_kernel(kernel)


def _load_file(path: Path) -> list[Recipe]:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise InputError(f"{path}: cannot read recipes ({e.strerror})") from e
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{path}: not valid TOML ({e})") from e
    extra = set(data) - {"recipe"}
    if extra:
        raise InputError(f"{path}: unknown top-level keys {sorted(extra)} (expected [[recipe]])")
    items = data.get("recipe", [])
    if not isinstance(items, list):
        raise InputError(f"{path}: 'recipe' must be an array of tables ([[recipe]])")
    return [_recipe(item, path, i) for i, item in enumerate(items)]


def _recipe(item: Mapping[str, Any], path: Path, index: int) -> Recipe:
    name = item.get("name")
    where = f"{path}: recipe {name or f'#{index + 1}'}"
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][\w.-]*", name):
        raise InputError(f"{where}: needs a 'name' (letters, digits, _ . -)")
    unknown = set(item) - _KEYS
    if unknown:
        raise InputError(f"{where}: unknown keys {sorted(unknown)}")

    def text(key: str, default: str | None = None, choices: Sequence[str] | None = None) -> Any:
        value = item.get(key, default)
        if value is None:
            return None
        if not isinstance(value, str):
            raise InputError(f"{where}: {key} must be a string")
        if choices is not None and value not in choices and not value.startswith("$"):
            raise InputError(f"{where}: {key} {value!r}: expected one of {', '.join(choices)}")
        if value.startswith("$"):
            Ref.parse(value[1:], where)
        return value

    def ref(key: str) -> Ref | None:
        value = item.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise InputError(f"{where}: {key} must be a field reference string")
        return Ref.parse(value, where)

    def integer(key: str) -> int | None:
        value = item.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InputError(f"{where}: {key} must be a non-negative integer")
        return value

    def conditions(value: Any, key: str) -> tuple[Condition, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InputError(f"{where}: {key} must be a list of condition strings")
        return tuple(Condition.parse(v, where) for v in value)

    event = text("event")
    if event is None:
        raise InputError(f"{where}: needs an 'event'")
    op = text("op", choices=RECIPE_OPS)
    if op is None:
        raise InputError(f"{where}: needs an 'op' ({', '.join(RECIPE_OPS)} or $field)")
    recipe = Recipe(
        name=name,
        event=event,
        op=op,
        initiator=text("initiator", choices=COMPONENTS),
        completer=text("completer", choices=COMPONENTS),
        addr=ref("addr"),
        space=text("space", "phys", SPACES),
        end=ref("end"),
        size=ref("size"),
        nr_pages=ref("nr_pages"),
        pages=integer("pages"),
        order=ref("order"),
        counted=_bool(item.get("counted", False), where, "counted"),
        vm=ref("vm"),
        vm_space=text("vm_space", "raw", ("raw", "linear", "phys")),
        vm_none=integer("vm_none"),
        gfn=ref("gfn"),
        gfn_space=text("gfn_space", "gfn", ("gfn", "ipa")),
        where=conditions(item.get("where", []), "where"),
        pair=_pair(item.get("pair"), where),
        context=_context(item.get("context"), where),
        covered_by=text("covered_by"),
        when=tuple(_override(o, where) for o in _list(item.get("when", []), where, "when")),
        kernels=text("kernels", "") or "",
        doc=text("doc", "") or "",
        source=str(path),
    )
    _check(recipe, where)
    return recipe


def _bool(value: Any, where: str, key: str) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"{where}: {key} must be true or false")
    return value


def _list(value: Any, where: str, key: str) -> list[Any]:
    if not isinstance(value, list):
        raise InputError(f"{where}: {key} must be an array of tables")
    return value


def _pair(value: Any, where: str) -> Pair | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"event", "side", "required"}:
        raise InputError(f"{where}: pair must be a table with event, side, required")
    if not isinstance(value.get("event"), str):
        raise InputError(f"{where}: pair needs an event")
    side = value.get("side", "after")
    if side not in ("before", "after"):
        raise InputError(f"{where}: pair side {side!r}: expected before or after")
    return Pair(value["event"], side, _bool(value.get("required", True), where, "pair.required"))


def _context(value: Any, where: str) -> Context | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"event", "until", "required"}:
        raise InputError(f"{where}: context must be a table with event, until, required")
    until = value.get("until", [])
    if isinstance(until, str):
        until = [until]
    if not isinstance(value.get("event"), str) or not all(isinstance(u, str) for u in until):
        raise InputError(f"{where}: context needs an event (and until: event names)")
    required = _bool(value.get("required", False), where, "context.required")
    return Context(value["event"], tuple(until), required)


def _override(value: Any, where: str) -> Override:
    if not isinstance(value, dict) or "where" not in value:
        raise InputError(f"{where}: each [[recipe.when]] needs 'where' and values to replace")
    extra = set(value) - _OVERRIDABLE - {"where"}
    if extra:
        raise InputError(
            f"{where}: [[recipe.when]] can replace {sorted(_OVERRIDABLE)}, not {sorted(extra)}"
        )
    conds = value["where"]
    if isinstance(conds, str):
        conds = [conds]
    values = {k: v for k, v in value.items() if k != "where"}
    for k, v in values.items():
        allowed = {"op": RECIPE_OPS, "initiator": COMPONENTS, "completer": COMPONENTS}.get(k)
        if k == "counted":
            _bool(v, where, "when.counted")
        elif not isinstance(v, str) or (v not in allowed and not v.startswith("$")):
            raise InputError(f"{where}: when.{k} {v!r}: expected one of {', '.join(allowed or ())}")
    return Override(tuple(Condition.parse(c, where) for c in conds), values)


def _check(r: Recipe, where: str) -> None:
    for part in filter(None, (p.strip() for p in r.kernels.split(","))):
        if not _VERSION_RE.match(part):
            raise InputError(f"{where}: kernels {r.kernels!r}: expected e.g. '>=6.14, <7.1'")
    if r.addr is None:
        raise InputError(f"{where}: needs 'addr' (the field holding the address)")
    sizes = [k for k in ("end", "size", "nr_pages", "order") if getattr(r, k) is not None]
    if len(sizes) > 1 or (not sizes and r.pages is None):
        raise InputError(
            f"{where}: give exactly one of end, size, nr_pages, order (or pages = N; pages is "
            "also the default of nr_pages)"
        )
    if r.pages is not None and sizes and sizes[0] != "nr_pages":
        raise InputError(f"{where}: pages combines only with nr_pages (as its default)")
    sources = {ref.source for ref in r.refs()}
    if "pair" in sources and r.pair is None:
        raise InputError(f"{where}: uses pair.* fields but has no [recipe.pair]")
    if "ctx" in sources and r.context is None:
        raise InputError(f"{where}: uses ctx.* fields but has no [recipe.context]")


# ==============================================================================================
# applying recipes
# ==============================================================================================
@dataclass
class _Events:
    """The columns of EVENTS the engine needs, as numpy/Arrow (positional rows)."""

    frame: pd.DataFrame
    codes: np.ndarray
    code_of: dict[str, int]
    key: np.ndarray
    line: np.ndarray
    ts: np.ndarray
    text: pa.ChunkedArray

    @staticmethod
    def of(events: pd.DataFrame) -> _Events:
        EVENTS.check(events)
        cat = events["event"].astype("category")
        pid = events["pid"].to_numpy(dtype="float64", na_value=np.nan)
        cpu = events["cpu"].to_numpy(dtype="float64", na_value=np.nan)
        # the task that made the call: its pid; for hypervisor traces (no pid) the CPU
        key = np.where(np.isnan(pid), -1 - cpu, pid)
        key = np.where(np.isnan(key), -(1 << 40), key).astype(np.int64)
        return _Events(
            frame=events,
            codes=cat.cat.codes.to_numpy(),
            code_of={str(c): i for i, c in enumerate(cat.cat.categories)},
            key=key,
            line=events["line"].to_numpy(np.int64),
            ts=events["ts"].to_numpy(np.float64),
            text=_chunked(events["fields"]),
        )

    def rows(self, event: str) -> np.ndarray:
        code = self.code_of.get(event)
        return np.zeros(0, np.int64) if code is None else np.flatnonzero(self.codes == code)

    def values(self, rows: np.ndarray, names: Sequence[str]) -> dict[str, pa.Array]:
        if not names or not len(rows):
            return {n: pa.nulls(len(rows), pa.string()) for n in names}
        return extract_fields(self.text.take(pa.array(rows)), names)


def _chunked(values: pd.Series) -> pa.ChunkedArray:
    """The Arrow data of a string Series without copying it (take() works on chunks)."""
    arr = pa.array(values.astype("string"), from_pandas=True)
    return arr if isinstance(arr, pa.ChunkedArray) else pa.chunked_array([arr])


@dataclass
class _Rows:
    """Transition rows of one recipe (positional arrays)."""

    anchor: np.ndarray
    done: np.ndarray
    key: np.ndarray
    start: np.ndarray
    stop: np.ndarray
    op: np.ndarray
    initiator: np.ndarray
    completer: np.ndarray
    vm: np.ndarray
    vm_ok: np.ndarray
    gfn: np.ndarray
    gfn_ok: np.ndarray
    counted: np.ndarray

    def take(self, sel: np.ndarray) -> _Rows:
        return _Rows(*(getattr(self, f)[sel] for f in self.__dataclass_fields__))


def to_transitions(
    events: pd.DataFrame,
    recipes: RecipeSet | None = None,
    *,
    kernel: str | tuple[int, int] | None = None,
    linear_map: tuple[int, int] | None = None,
    page_size: int = 4096,
    strict: bool = False,
) -> tuple[pd.DataFrame, ProblemLog]:
    """Ownership transitions (TRANSITIONS) from EVENTS, by recipes, and the problems found.

    ``recipes`` defaults to the built-ins (:func:`load_recipes`); ``kernel`` keeps only the
    recipes that apply to it.  ``linear_map=(va, pa)`` converts kernel linear-map addresses
    (``pa = addr - va + pa``; e.g. ``(0xffff000000000000, 0x40000000)`` on the samples).
    ``page_size`` is the kernel's PAGE_SIZE.  Events no recipe names are not transitions.
    ``event_index`` is the positional row of the completing event in ``events``.
    """
    if page_size <= 0 or page_size & (page_size - 1):
        raise InputError(f"page size {page_size}: expected a power of two")
    rs = (recipes if recipes is not None else load_recipes()).for_kernel(kernel)
    log = ProblemLog(strict=strict)
    ev = _Events.of(events)
    done: dict[str, _Rows] = {}
    for recipe in rs.ordered():
        rows = _apply(recipe, ev, linear_map, page_size, log)
        if recipe.covered_by is not None and recipe.covered_by in done and len(rows.anchor):
            rows = rows.take(~_covered(rows, done[recipe.covered_by]))
        done[recipe.name] = rows
    return _assemble(ev, rs, done), log


def _problem(log: ProblemLog, ev: _Events, rows: np.ndarray, kind: str, detail: str) -> None:
    """One problem per row (rows are few: the damaged ones)."""
    for line in ev.line[rows].tolist():
        log.add(Problem(kind, line, detail))


def _apply(
    r: Recipe, ev: _Events, linear_map: tuple[int, int] | None, page: int, log: ProblemLog
) -> _Rows:
    """The transition rows of one recipe."""
    anchor = _prefilter(r, ev, ev.rows(r.event))
    anchor, partner, ctx = _related(r, ev, anchor, log)
    n = len(anchor)
    values = _values(ev, r.refs(), anchor, partner, ctx)
    keep = np.ones(n, bool)
    for c in r.where:
        if c.ref.source == "event":
            continue  # already applied
        holds = _holds(c, values[c.ref])
        if c.ref.source == "pair" and r.pair is not None and not r.pair.required:
            holds |= partner < 0  # an optional partner that is absent does not veto
        keep &= holds
    # the page range
    addr, ok_a = _address(values[r.addr], r.space, linear_map, page)  # type: ignore[index]
    start = addr & ~np.uint64(page - 1)
    stop, ok_s = _stop(r, values, addr, start, linear_map, page)
    bad = keep & ~(ok_a & ok_s)
    if bad.any():
        _report_bad(log, ev, anchor[bad], r, linear_map)
    keep &= ok_a & ok_s & (stop > start)
    # operation, components and the host-side count, with the overrides
    codes, counted = _labels(r, values, n)
    for key, vocab in (("op", RECIPE_OPS), ("initiator", COMPONENTS), ("completer", COMPONENTS)):
        wrong = keep & ((codes[key] == _BAD) | ((codes[key] == _NONE) & (key == "op")))
        if wrong.any():
            _problem(
                log,
                ev,
                anchor[wrong],
                "bad_field",
                f"recipe {r.name}: {key} is not one of {', '.join(vocab)}",
            )
            keep &= ~wrong
    vm, vm_ok = _vm(r, values, linear_map, n)
    gfn, gfn_ok = _gfn(r, values, page, n)
    guest = COMPONENTS.index("guest")
    gfn_ok &= (codes["initiator"] == guest) | (codes["completer"] == guest)
    done = np.where(partner > anchor, partner, anchor)
    op = np.where(codes["op"] >= 0, np.asarray(_OP_CODES)[np.maximum(codes["op"], 0)], _NONE)
    rows = _Rows(
        anchor,
        done,
        ev.key[anchor],
        start,
        stop,
        op.astype(np.int8),
        codes["initiator"],
        codes["completer"],
        vm,
        vm_ok,
        gfn,
        gfn_ok,
        counted,
    )
    return rows.take(np.flatnonzero(keep))


def _prefilter(r: Recipe, ev: _Events, anchor: np.ndarray) -> np.ndarray:
    """The events that pass the recipe's conditions on their own fields: related events are
    looked up (and missing ones reported) only for events that can still become transitions."""
    own = [c for c in r.where if c.ref.source == "event"]
    if not own or not len(anchor):
        return anchor
    values = _values(ev, [c.ref for c in own], anchor, anchor, anchor)
    keep = np.ones(len(anchor), bool)
    for c in own:
        keep &= _holds(c, values[c.ref])
    return anchor[keep]


def _related(
    r: Recipe, ev: _Events, anchor: np.ndarray, log: ProblemLog
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(anchor, partner, context) rows (-1: none), without the anchors whose required
    partner or context is missing (each one a problem)."""
    partner = np.full(len(anchor), -1, np.int64)
    if r.pair is not None and len(anchor):
        partner = _pair_rows(ev, r.event, anchor, r.pair)
        missing = partner < 0
        if r.pair.required and missing.any():
            _problem(
                log,
                ev,
                anchor[missing],
                "unpaired_event",
                f"recipe {r.name}: no matching {r.pair.event} on the same task",
            )
            anchor, partner = anchor[~missing], partner[~missing]
    ctx = np.full(len(anchor), -1, np.int64)
    if r.context is not None and len(anchor):
        ctx = _context_rows(ev, anchor, r.context)
        if r.context.required and (ctx < 0).any():
            _problem(
                log,
                ev,
                anchor[ctx < 0],
                "no_context",
                f"recipe {r.name}: no earlier {r.context.event} on the same task",
            )
            keep = ctx >= 0
            anchor, partner, ctx = anchor[keep], partner[keep], ctx[keep]
    return anchor, partner, ctx


_NONE, _BAD = -1, -2
#: recipe operation index -> index in OPS (the TRANSITIONS categories)
_OP_CODES = tuple(OPS.index(op) for op in RECIPE_OPS)


def _labels(
    r: Recipe, values: Mapping[Ref, pa.Array], n: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Codes of op (in RECIPE_OPS), initiator and completer (in COMPONENTS) per row, after the
    ``when`` overrides (first match wins), and the counted flags.  _NONE: no value, _BAD: a
    value outside the vocabulary."""
    vocab = {"op": RECIPE_OPS, "initiator": COMPONENTS, "completer": COMPONENTS}
    codes = {k: _codes(getattr(r, k), values, n, vocab[k]) for k in vocab}
    counted = np.full(n, r.counted)
    chosen = np.zeros(n, bool)
    for o in r.when:
        hit = ~chosen
        for c in o.where:
            hit &= _holds(c, values[c.ref])
        for k, v in o.values.items():
            if k == "counted":
                counted = np.where(hit, bool(v), counted)
            else:
                codes[k] = np.where(hit, _codes(v, values, n, vocab[k]), codes[k])
        chosen |= hit
    return codes, counted


def _codes(
    spec: str | None, values: Mapping[Ref, pa.Array], n: int, vocab: Sequence[str]
) -> np.ndarray:
    """A literal label for every row, or a field's values (``$name``), as codes in
    ``vocab``; the field's distinct values are looked up once each."""
    if spec is None:
        return np.full(n, _NONE, np.int8)
    if not spec.startswith("$"):
        return np.full(n, vocab.index(spec), np.int8)
    enc = values[Ref.parse(spec[1:], "")].dictionary_encode()
    lut = [vocab.index(v) if v in vocab else _BAD for v in enc.dictionary.to_pylist()]
    lut_arr = np.array([*lut, _NONE], np.int8)
    idx = pc.fill_null(enc.indices, len(lut)).to_numpy(zero_copy_only=False)
    return lut_arr[idx]


def _values(
    ev: _Events, refs: Sequence[Ref], anchor: np.ndarray, partner: np.ndarray, ctx: np.ndarray
) -> dict[Ref, pa.Array]:
    """Every referenced field of the anchor, pair and context rows (null where absent)."""
    out: dict[Ref, pa.Array] = {}
    for source, rows in (("event", anchor), ("pair", partner), ("ctx", ctx)):
        names = sorted({r.name for r in refs if r.source == source})
        if not names:
            continue
        found = rows >= 0
        got = ev.values(rows[found], names)
        # rows without a related event read as null: take with null indices
        idx = pa.array(np.cumsum(found) - 1, mask=~found)
        for name in names:
            out[Ref(source, name)] = got[name] if found.all() else got[name].take(idx)
    return out


def _holds(c: Condition, value: pa.Array) -> np.ndarray:
    """Where condition ``c`` holds (false where the value is absent)."""
    present = value.is_valid().to_numpy(zero_copy_only=False)
    if c.op in ("=~", "!~"):
        m = pc.fill_null(pc.match_substring_regex(value, c.text), False)
        m = m.to_numpy(zero_copy_only=False)
        return present & (m if c.op == "=~" else ~m)
    if c.number is not None:
        num, ok = parse_uint(value)
        lit = np.uint64(c.number)
        res = {
            "==": num == lit,
            "!=": num != lit,
            "&": (num & lit) != 0,
            "!&": (num & lit) == 0,
        }[c.op]
        return present & ok & res
    text = pc.fill_null(pc.equal(value, c.text), False).to_numpy(zero_copy_only=False)
    return present & (text if c.op == "==" else ~text)


def _address(
    value: pa.Array, space: str, linear_map: tuple[int, int] | None, page: int
) -> tuple[np.ndarray, np.ndarray]:
    """Physical address from a field in ``space``: (address, valid)."""
    raw, ok = parse_uint(value)
    if space == "pfn":
        shift = np.uint64(page.bit_length() - 1)
        return raw << shift, ok & (raw < (np.uint64(1) << (np.uint64(64) - shift)))
    if space == "linear":
        if linear_map is None:
            return raw, np.zeros(len(raw), bool)
        va, pa_ = (np.uint64(x) for x in linear_map)
        return raw - va + pa_, ok & (raw >= va)
    return raw, ok


def _stop(
    r: Recipe,
    values: Mapping[Ref, pa.Array],
    addr: np.ndarray,
    start: np.ndarray,
    linear_map: tuple[int, int] | None,
    page: int,
) -> tuple[np.ndarray, np.ndarray]:
    """End (exclusive, page aligned) of the range: (stop, valid)."""
    mask = np.uint64(page - 1)
    pg = np.uint64(page)
    if r.end is not None:
        end, ok = _address(values[r.end], r.space, linear_map, page)
        return (end + mask) & ~mask, ok & (end >= addr)
    if r.size is not None:
        size, ok = parse_uint(values[r.size])
        return (addr + size + mask) & ~mask, ok & (size < np.uint64(1 << 48))
    if r.order is not None:
        order, ok = parse_uint(values[r.order])
        ok &= order < np.uint64(32)
        return start + (pg << np.minimum(order, np.uint64(31))), ok
    count = np.full(len(addr), np.uint64(r.pages or 0))
    ok = np.full(len(addr), r.pages is not None)
    if r.nr_pages is not None:
        num, num_ok = parse_uint(values[r.nr_pages])
        count = np.where(num_ok, num, count)
        ok = num_ok | ok
        ok &= count < np.uint64(1 << 36)
    return start + count * pg, ok


def _report_bad(
    log: ProblemLog, ev: _Events, rows: np.ndarray, r: Recipe, linear_map: tuple[int, int] | None
) -> None:
    if r.space == "linear" and linear_map is None:
        log.add(
            Problem(
                "no_linear_map",
                int(ev.line[rows[0]]),
                f"recipe {r.name}: {len(rows)} event(s) give kernel linear-map addresses; "
                "pass linear_map=(va, pa) (--linear-map VA:PA)",
            )
        )
        return
    wanted = [str(x) for x in (r.addr, r.end, r.size, r.nr_pages, r.order) if x is not None]
    _problem(
        log,
        ev,
        rows,
        "bad_field",
        f"recipe {r.name}: {', '.join(wanted)} missing, not a number, or out of range",
    )


def _vm(
    r: Recipe, values: Mapping[Ref, pa.Array], linear_map: tuple[int, int] | None, n: int
) -> tuple[np.ndarray, np.ndarray]:
    if r.vm is None:
        return np.zeros(n, np.int64), np.zeros(n, bool)
    raw, ok = parse_uint(values[r.vm])
    if r.vm_space == "linear":
        if linear_map is None:
            return np.zeros(n, np.int64), np.zeros(n, bool)
        va, pa_ = (np.uint64(x) for x in linear_map)
        ok &= raw >= va
        raw = raw - va + pa_
    if r.vm_none is not None:
        ok &= raw != np.uint64(r.vm_none)
    ok &= raw < np.uint64(1 << 63)
    return raw.astype(np.int64), ok


def _gfn(
    r: Recipe, values: Mapping[Ref, pa.Array], page: int, n: int
) -> tuple[np.ndarray, np.ndarray]:
    if r.gfn is None:
        return np.zeros(n, np.uint64), np.zeros(n, bool)
    raw, ok = parse_uint(values[r.gfn])
    if r.gfn_space == "ipa":
        raw = raw >> np.uint64(page.bit_length() - 1)
    return raw, ok


# -- related events -------------------------------------------------------------------------------
def _pair_rows(ev: _Events, event: str, anchor: np.ndarray, pair: Pair) -> np.ndarray:
    """For each anchor row (a subset of the ``event`` rows), the row of its matching
    entry/return probe (-1: none).

    Entries and returns of the same task are a bracket sequence: depth = running count of
    entries minus returns per task; an entry at depth d (after it) matches the first later
    return that brings the depth back from d (before it) -- nested calls match inside out,
    and a lost entry or return leaves only its own partner unmatched.
    """
    other = ev.rows(pair.event)
    if not len(other):
        return np.full(len(anchor), -1, np.int64)
    every = ev.rows(event)  # all of them: filtered-out calls still nest
    entries, returns = (other, every) if pair.side == "before" else (every, other)
    rows = np.concatenate([entries, returns])
    step = np.concatenate([np.ones(len(entries), np.int64), -np.ones(len(returns), np.int64)])
    key = ev.key[rows]
    order = np.lexsort((rows, key))
    rows, step, key = rows[order], step[order], key[order]
    depth = np.cumsum(step)
    first = np.r_[True, key[1:] != key[:-1]]
    base = np.maximum.accumulate(np.where(first, np.arange(len(rows)), 0))
    start_depth = (depth - step)[base]  # depth before each task's first event
    depth = depth - start_depth
    level = np.where(step > 0, depth, depth + 1)
    entry = step > 0
    ent = pd.DataFrame({"row": rows[entry], "key": key[entry], "level": level[entry]})
    ret = pd.DataFrame({"row": rows[~entry], "key": key[~entry], "level": level[~entry]})
    if pair.side == "before":  # anchor = return: the latest entry before it at its level
        left, right, direction = ret, ent, "backward"
    else:  # anchor = entry: the first return after it at its level
        left, right, direction = ent, ret, "forward"
    right = right.assign(match=right["row"])
    m = pd.merge_asof(
        left.sort_values("row"),
        right.sort_values("row"),
        on="row",
        by=["key", "level"],
        direction=direction,
        allow_exact_matches=False,
    )
    got_rows = m["row"].to_numpy(np.int64)
    got = m["match"].fillna(-1).to_numpy(np.int64)
    order = np.argsort(got_rows)
    pos = np.searchsorted(got_rows[order], anchor)
    return got[order][pos]


def _context_rows(ev: _Events, anchor: np.ndarray, ctx: Context) -> np.ndarray:
    """For each anchor row, the latest earlier ``ctx.event`` row on the same task (-1: none,
    or an ``until`` event came after it)."""
    found = _latest_before(ev, anchor, ev.rows(ctx.event))
    if ctx.until:
        closers = np.concatenate([ev.rows(u) for u in ctx.until])
        closed = _latest_before(ev, anchor, np.sort(closers))
        found = np.where(closed > found, -1, found)
    return found


def _latest_before(ev: _Events, anchor: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """For each anchor row, the latest of ``rows`` before it on the same task (-1: none)."""
    pos = _latest_before_keyed(anchor, ev.key[anchor], rows, ev.key[rows])
    return np.where(pos >= 0, rows[np.maximum(pos, 0)] if len(rows) else -1, -1)


def _latest_before_keyed(
    rows: np.ndarray, keys: np.ndarray, others: np.ndarray, other_keys: np.ndarray
) -> np.ndarray:
    """For each of ``rows``, the index into ``others`` of the latest one before it with the
    same key (-1: none) -- a backward as-of join by key."""
    if not len(others) or not len(rows):
        return np.full(len(rows), -1, np.int64)
    left = pd.DataFrame({"row": rows, "key": keys, "pos": np.arange(len(rows))})
    right = pd.DataFrame({"row": others, "key": other_keys, "match": np.arange(len(others))})
    m = pd.merge_asof(
        left.sort_values("row"),
        right.sort_values("row"),
        on="row",
        by="key",
        direction="backward",
        allow_exact_matches=False,
    )
    out = np.full(len(rows), -1, np.int64)
    out[m["pos"].to_numpy()] = m["match"].fillna(-1).to_numpy(np.int64)
    return out


def _covered(rows: _Rows, cover: _Rows) -> np.ndarray:
    """Rows whose pages lie inside the range of the latest earlier covering row of the same
    task (the covering call made them)."""
    if not len(cover.anchor) or not len(rows.anchor):
        return np.zeros(len(rows.anchor), bool)
    pos = _latest_before_keyed(rows.anchor, rows.key, cover.anchor, cover.key)
    found = pos >= 0
    c = np.maximum(pos, 0)
    return found & (cover.start[c] <= rows.start) & (rows.stop <= cover.stop[c])


# -- output -----------------------------------------------------------------------------------
def _assemble(ev: _Events, rs: RecipeSet, done: Mapping[str, _Rows]) -> pd.DataFrame:
    """TRANSITIONS rows of every recipe plus the lost markers, in event order (ties in recipe
    order)."""
    names = [n for n in rs.names if n in done]
    parts = [done[n] for n in names]
    lost = ev.rows(LOST_EVENT)
    n_rec = sum(len(p.anchor) for p in parts)
    recipe = np.concatenate(
        [np.full(len(p.anchor), i, np.int32) for i, p in enumerate(parts)]
        + [np.full(len(lost), len(names), np.int32)]
    )

    def col(name: str, fill: Any, dtype: Any) -> np.ndarray:
        vals = [getattr(p, name) for p in parts] + [np.full(len(lost), fill, dtype=dtype)]
        return np.concatenate(vals).astype(dtype)

    row = col("done", 0, np.int64)
    row[n_rec:] = lost
    ts = ev.ts[row].copy()
    ts[n_rec:] = _lost_times(ev, lost)
    op = col("op", OPS.index("lost"), np.int8)
    start, stop = col("start", 0, np.uint64), col("stop", 0, np.uint64)
    df = pd.DataFrame(
        {
            "ts": ts,
            "line": ev.line[row],
            "event_index": row,
            "op": pd.Categorical.from_codes(op, categories=OPS),
            "initiator": pd.Categorical.from_codes(col("initiator", _NONE, np.int8), COMPONENTS),
            "completer": pd.Categorical.from_codes(col("completer", _NONE, np.int8), COMPONENTS),
            "addr": start,
            "size": stop - start,
            "vm": pd.arrays.IntegerArray(col("vm", 0, np.int64), ~col("vm_ok", False, bool)),
            "gfn": pd.arrays.IntegerArray(col("gfn", 0, np.uint64), ~col("gfn_ok", False, bool)),
            "counted": pd.arrays.BooleanArray(
                col("counted", False, bool), np.zeros(len(row), bool)
            ),
            "recipe": pd.Categorical.from_codes(recipe, categories=[*names, LOST_EVENT]),
        }
    )
    order = np.lexsort((recipe, row))
    df = df.iloc[order].reset_index(drop=True)
    TRANSITIONS.check(df)
    return df


def _lost_times(ev: _Events, lost: np.ndarray) -> np.ndarray:
    """When each lost-events gap began: the previous event of the marker's CPU (-inf if
    none; the ring buffer may have dropped everything before)."""
    if not len(lost):
        return np.zeros(0)
    cpu = ev.frame["cpu"].to_numpy(dtype="float64", na_value=-1.0)
    ts = pd.Series(ev.ts)
    prev = ts.groupby(cpu).ffill().to_numpy()  # markers have no ts: they take the previous
    out = prev[lost]
    return np.where(np.isnan(out), -np.inf, out)


def describe(rs: RecipeSet) -> pd.DataFrame:
    """A table of the recipes (name, event, op, components, kernels, doc) for listings."""
    return pd.DataFrame(
        [
            {
                "name": r.name,
                "event": r.event,
                "op": r.op,
                "initiator": r.initiator,
                "completer": r.completer,
                "kernels": r.kernels,
                "doc": r.doc,
                "source": r.source,
            }
            for r in rs
        ]
    )
