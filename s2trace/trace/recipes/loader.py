"""Loading recipe files: TOML ``[[recipe]]`` tables, checked into :class:`Recipe` objects.

Every mistake is an :class:`~s2trace.errors.InputError` naming the file and the recipe.  The
built-in files ship in ``s2trace/trace/recipes/recipe_data/*.toml`` (package data); users add files
with the same keys (``docs/recipes.md``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from s2trace.errors import InputError
from s2trace.files import parse_toml, read_text, shown
from s2trace.pkvm.rules import COMPONENTS
from s2trace.trace.recipes.model import (
    RECIPE_OPS,
    SPACES,
    VERSION_RE,
    Complete,
    Condition,
    Context,
    Memcache,
    Override,
    Pair,
    Recipe,
    RecipeSet,
    Ref,
)

__all__ = ["builtin_paths", "load_recipes"]

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
    "complete",
    "scope",
    "basis",
    "runs",
    "hypercall",
    "memcache",
}
_OVERRIDABLE = {"op", "initiator", "completer", "counted"}


def builtin_paths() -> list[Path]:
    """The recipe files shipped with s2trace."""
    folder = resources.files("s2trace.trace.recipes") / "recipe_data"
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
    text = read_text(path, "a recipes file (UTF-8 TOML)", limit=16 << 20)
    data = parse_toml(text, shown(path))
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
        complete=_complete(item.get("complete"), where),
        runs=_runs(item.get("runs", []), where),
        hypercall=_names(item.get("hypercall", []), where, "hypercall"),
        memcache=_memcache(item.get("memcache"), where),
        scope=text("scope", "pages", ("pages", "vm")),
        basis=text("basis", "trace") or "trace",
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


def _complete(value: Any, where: str) -> Complete | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"events", "unless"}:
        raise InputError(f"{where}: complete must be a table with events (and unless)")
    events, unless = value.get("events"), value.get("unless", [])
    events = [events] if isinstance(events, str) else events
    unless = [unless] if isinstance(unless, str) else unless
    if not events or not all(isinstance(e, str) for e in [*events, *unless]):
        raise InputError(f"{where}: complete needs events (event names)")
    return Complete(tuple(events), tuple(unless))


def _runs(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 1 << 20 for v in value
    ):
        raise InputError(f"{where}: runs must be a list of positive integers (e.g. [2, 1])")
    return tuple(value)


def _names(value: Any, where: str, key: str) -> tuple[str, ...]:
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InputError(f"{where}: {key} must be a name or a list of names")
    return tuple(value)


def _memcache(value: Any, where: str) -> Memcache | None:
    if value is None:
        return None
    keys = {"fill", "refill", "free", "key", "min"}
    if not isinstance(value, dict) or set(value) - keys:
        raise InputError(f"{where}: memcache must be a table with {', '.join(sorted(keys))}")
    fill, free = value.get("fill"), value.get("free")
    refill = _names(value.get("refill", []), where, "memcache.refill")
    texts = [fill, value.get("key", "mc"), value.get("min", "min_pages")]
    if not all(isinstance(t, str) and t for t in texts) or not refill:
        raise InputError(f"{where}: memcache needs fill (an event) and refill (events)")
    if free is not None and not (isinstance(free, str) and free):
        raise InputError(f"{where}: memcache.free must be an event name")
    return Memcache(str(fill), refill, free, str(texts[1]), str(texts[2]))


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
        allowed = {"op": RECIPE_OPS, "initiator": COMPONENTS, "completer": COMPONENTS}.get(k, ())
        if k == "counted":
            _bool(v, where, "when.counted")
        elif not isinstance(v, str) or (v not in allowed and not v.startswith("$")):
            raise InputError(f"{where}: when.{k} {v!r}: expected one of {', '.join(allowed)}")
    return Override(tuple(Condition.parse(c, where) for c in conds), values)


def _check(r: Recipe, where: str) -> None:
    for part in filter(None, (p.strip() for p in r.kernels.split(","))):
        if not VERSION_RE.match(part):
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
    if r.runs and r.complete is None:
        raise InputError(f"{where}: runs needs complete (the call the allocations are made in)")
    if r.scope == "vm" and r.vm is None:
        raise InputError(f"{where}: scope = \"vm\" needs 'vm' (the VM whose pages it returns)")
