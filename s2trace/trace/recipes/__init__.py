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
Built-in recipes ship in ``s2trace/trace/recipes/recipe_data/*.toml``; users add files with
the same keys.

Lost-event markers always become ``lost`` rows (address 0, size 0), timed at the previous
event of the same CPU (the gap starts after it), so the replay can mark what follows as
possibly incomplete.

The code: :mod:`~s2trace.trace.recipes.model` (the dataclasses),
:mod:`~s2trace.trace.recipes.loader` (loading and checking files),
:mod:`~s2trace.trace.recipes.engine` (the engine, with :mod:`~s2trace.trace.recipes.related` and
:mod:`~s2trace.trace.recipes.evaluate`).  This module is the public face: their public names are
re-exported here, with :func:`describe` for listings.
"""

from __future__ import annotations

import pandas as pd

from s2trace.trace.recipes.engine import to_transitions
from s2trace.trace.recipes.loader import builtin_paths, load_recipes
from s2trace.trace.recipes.model import (
    RECIPE_OPS,
    SPACES,
    Condition,
    Context,
    Override,
    Pair,
    Recipe,
    RecipeSet,
    Ref,
)

__all__ = [
    "RECIPE_OPS",
    "SPACES",
    "Condition",
    "Context",
    "Override",
    "Pair",
    "Recipe",
    "RecipeSet",
    "Ref",
    "builtin_paths",
    "describe",
    "load_recipes",
    "to_transitions",
]


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
