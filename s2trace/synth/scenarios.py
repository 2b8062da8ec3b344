"""The named scenarios, as data: which patterns, with which share of the ``size``.

``size`` is the approximate number of trace events (the boot's few events come on top);
``duration`` the seconds the workload spans after boot; ``seed`` makes the run
reproducible.  Each :class:`Scenario` lists its pieces: a pattern name from
:data:`PATTERNS` with its weight (share of ``size``) and fixed keyword arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from s2trace.errors import InputError
from s2trace.synth import patterns
from s2trace.synth.layout import FFA_POOL, VIRTIO_POOL
from s2trace.synth.plan import Part, Plan, merge

__all__ = ["KERNEL", "SCENARIOS", "Piece", "Scenario", "plan"]

#: Kernel the synthetic traces and dumps are for (host page states in the PTE; the
#: pkvm_mem_transition generic rules of v5.17-v6.13, mem_protect.c,
#: docs/kernel-facts.md §KF-3.1; FF-A shares from 6.5).
KERNEL = "6.12"
T_WORKLOAD_US = 2_000_000  # the workload starts 2 s after boot


@dataclass(frozen=True)
class Piece:
    """One pattern of a scenario: its name in :data:`PATTERNS`, share of the size, kwargs."""

    pattern: str
    weight: float = 0.0
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Scenario:
    """A named workload (see the module docstring)."""

    name: str
    doc: str
    pieces: tuple[Piece, ...]
    size: int = 400  # default size
    duration: float = 10.0  # default seconds


def _vm_count(events: int, kw: dict[str, Any]) -> int:
    tmpl = kw.get("template", patterns.VmTemplate())
    return max(2, round(events / tmpl.events_per_vm()))


def _slots(n_vms: int, kw: dict[str, Any]) -> int:
    """More slots (concurrent VMs) for big runs, so each VM keeps a realistic lifetime."""
    return min(128, max(int(kw.get("slots", 4)), -(-n_vms // 256)))


def _boot(events: int, t0: int, t1: int, rng: np.random.Generator, **kw: Any) -> Part:
    return patterns.boot()


def _vms(events: int, t0: int, t1: int, rng: np.random.Generator, **kw: Any) -> Part:
    n = _vm_count(events, kw)
    return patterns.vm_lifecycle(n, t0, t1, rng, **{**kw, "slots": _slots(n, kw)})


def _faults(events: int, t0: int, t1: int, rng: np.random.Generator, **kw: Any) -> Part:
    # events: the size share of the VM piece it plants into (same count, same window)
    n = _vm_count(events, kw)
    template = kw.get("template", patterns.VmTemplate())
    return patterns.faults(n, t0, t1, template=template, slots=_slots(n, kw))


def _churn(events: int, t0: int, t1: int, rng: np.random.Generator, **kw: Any) -> Part:
    return patterns.churn(max(1, events), t0, t1, rng, **kw)


PATTERNS: dict[str, Callable[..., Part]] = {
    "boot": _boot,
    "vms": _vms,
    "faults": _faults,
    "churn": _churn,
}

_VIRTIO = {"pool": VIRTIO_POOL, "buffers": 64, "completer": "hyp", "max_pages": 1}
_FFA = {
    "pool": FFA_POOL,
    "buffers": 16,
    "completer": "ffa",
    "max_pages": 16,
    "task": ("tee-supplicant", 412),
}
_VMS = {"slots": 4, "alive": 1, "host_faults": 4}

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "boot",
            "Boot only: the hypervisor carve-out and the .hyp sections donated, .hyp.rodata "
            "shared.",
            (Piece("boot"),),
            size=0,
        ),
        Scenario(
            "vm-lifecycle",
            "Boot, then VMs created (struct kvm and vCPUs shared, hyp VM, pgd and hyp vCPUs "
            "donated), run (memcache donations, host faults on host memory) and torn down "
            "(donations reclaimed, shares dropped); the last VM stays alive.",
            (Piece("boot"), Piece("vms", 1.0, _VMS)),
        ),
        Scenario(
            "virtio-churn",
            "Boot, then single-page buffers shared with the hypervisor and unshared over and "
            "over (virtio-style churn); some end shared.",
            (Piece("boot"), Piece("churn", 1.0, _VIRTIO)),
        ),
        Scenario(
            "ffa",
            "Boot, then FF-A memory shares of 1-16 page buffers with the Secure world and "
            "their reclaims; some end shared.",
            (Piece("boot"), Piece("churn", 1.0, _FFA)),
        ),
        Scenario(
            "buggy",
            "The VM lifecycle with virtio churn, and three planted ownership faults: a shared "
            "page donated, a double unshare, and (last, fatal on 6.x) a host access to a page "
            "donated to the hypervisor.",
            (
                Piece("boot"),
                Piece("vms", 0.6, _VMS),
                Piece("faults", 0.6, {"slots": _VMS["slots"]}),
                Piece("churn", 0.4, _VIRTIO),
            ),
        ),
    )
}


def plan(
    name: str, *, size: int | None = None, seed: int = 0, duration: float | None = None
) -> Plan:
    """The events, final ownership and planted faults of scenario ``name``."""

    if name not in SCENARIOS:
        raise InputError(f"scenario {name!r}: expected one of {', '.join(SCENARIOS)}")
    sc = SCENARIOS[name]
    size = sc.size if size is None else size
    duration = sc.duration if duration is None else duration
    if size < 0 or duration <= 0:
        raise InputError("synth: size must be >= 0 and duration > 0")
    rng = np.random.default_rng(seed)
    t0 = T_WORKLOAD_US
    t1 = t0 + round(duration * 1e6)
    parts = [
        PATTERNS[p.pattern](round(size * p.weight), t0, t1, rng, **p.kwargs) for p in sc.pieces
    ]
    return merge(parts)
