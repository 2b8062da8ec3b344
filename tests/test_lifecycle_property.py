"""Property: random legal VM lifecycles, traced as the host kprobes show them, replay to the state
a slow one-event-at-a-time model of the kernel gives, at every event time.

The generator writes 6.12-style ftrace text: concurrent VMs (one VMM task each, steps
interleaved), vCPU structs packed back to back so that one page holds parts of two vCPUs (of the
same or of different VMs: the host's per-PFN share count, docs/kernel-facts.md §KF-3.4), struct
kvm and donated pages reused after a teardown, and teardowns traced with and without the
``free_pages`` probe. The model below is written from the kernel's behaviour (§KF-3.4, §KF-3.5),
not from s2trace's code: a page is "host", "shared" (share count > 0) or "hyp"; a share counts
at its return probe, an unshare at its entry; pages allocated under ``pkvm_create_hyp_vm`` are
the hypervisor's once the hypercall that takes them has certainly returned: the pgd and hyp VM
(the first two allocations, ``__pkvm_init_vm``) from the first vCPU allocation's entry, each
6.12 hyp vCPU (``__pkvm_init_vcpu``) from the next allocation's entry, else from the return;
every page donated for a ``struct kvm`` is the host's again from the first ``free_hyp_memcache``
after ``pkvm_destroy_hyp_vm`` (the teardown hypercall returned); ``free_pages`` changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from s2trace.jobs.analyze import analyze
from s2trace.trace.queries import owner_at

PAGE = 0x1000
LM_VA, LM_PA = 0xFFFF000000000000, 0x40000000
VCPU_SIZE = 0x1B90  # a 6.12 struct kvm_vcpu is about this size (the sample: 0x...b720-0x...d2b0)


def va(pa: int) -> int:
    return pa - LM_PA + LM_VA


@dataclass
class _Vm:
    pid: int
    kvm: int  # PA of its struct kvm
    vcpus: list[tuple[int, int]]  # [from, to) PAs of each vCPU struct
    steps: list[list[tuple[str, str]]] = field(default_factory=list)


@dataclass
class _Gen:
    rng: np.random.Generator
    free_pages: bool
    lines: list[str] = field(default_factory=list)
    ts: float = 10.0
    pool: list[int] = field(default_factory=list)  # free pages for donations (PAs)
    kvm_pool: list[int] = field(default_factory=list)
    handed: set[int] = field(default_factory=set)  # every page ever donated (PAs)
    vcpu_next: int = 0x48000000 + 0x40

    def emit(self, pid: int, event: str, fields: str) -> None:
        self.ts += float(self.rng.integers(1, 50)) * 1e-6
        head = f"{'vmm':>12}-{pid:<7} [{pid % 2:03d}] d.... {self.ts:12.6f}"
        self.lines.append(f"{head}: {event}: {fields}\n")

    def pages(self, n: int) -> int:
        """n contiguous free pages (first-fit over a sorted pool, else fresh ones: never a
        page handed out before, whether it is back in the pool or still donated, as the page
        allocator never returns a page twice without a free)."""
        self.pool.sort()
        for i in range(len(self.pool) - n + 1):
            run = self.pool[i : i + n]
            if run[-1] - run[0] == (n - 1) * PAGE:
                del self.pool[i : i + n]
                return run[0]
        base = 0x50000000 + 0x1000 * int(self.rng.integers(0, 1 << 12)) * 64
        while any(base + i * PAGE in self.handed for i in range(n)):
            base += 64 * PAGE
        self.handed.update(base + i * PAGE for i in range(n))
        return base


# kprobe headers as the 6.12 capture prints them (probed function, or caller <- callee)
_H = {
    "init": "(kvm_arch_init_vm+0x0/0x198)",
    "share": "(kvm_share_hyp+0x0/0x298)",
    "share_ret_vm": "(kvm_arch_init_vm+0x54/0x198 <- kvm_share_hyp) ret=0",
    "share_ret_vcpu": "(kvm_arch_vcpu_create+0xb0/0xf8 <- kvm_share_hyp) ret=0",
    "create": "(pkvm_create_hyp_vm+0x0/0x298)",
    "alloc": "(alloc_pages_exact_noprof+0x0/0xc8)",
    "alloc_ret": "(pkvm_create_hyp_vm+0xb4/0x298 <- alloc_pages_exact_noprof)",
    "create_ret": "(kvm_arch_vcpu_run_pid_change+0x2a4/0x358 <- pkvm_create_hyp_vm) ret=0",
    "destroy": "(pkvm_destroy_hyp_vm+0x0/0xa8)",
    "free_mc": "(free_hyp_memcache+0x0/0xf8)",
    "free": "(free_pages+0x0/0x50)",
    "unshare": "(kvm_unshare_hyp+0x0/0x110)",
}


def _vm_steps(g: _Gen, vm: _Vm, destroy: bool) -> list:
    """The VM's events as steps (each a list of (event, fields) emitted together)."""
    k = va(vm.kvm)
    kvm_range = f"from={k:#x} to={k + 0xF70:#x}"
    steps = [
        [
            ("s2_kvm_arch_init_vm", f"{_H['init']} kvm={k:#x} type=0x0"),
            ("s2_kvm_share_hyp", f"{_H['share']} {kvm_range}"),
        ],
        [("s2_kvm_share_hyp_ret", _H["share_ret_vm"])],
    ]
    for a, b in vm.vcpus:
        steps.append([("s2_kvm_share_hyp", f"{_H['share']} from={va(a):#x} to={va(b):#x}")])
        steps.append([("s2_kvm_share_hyp_ret", _H["share_ret_vcpu"])])
    create = [("s2_pkvm_create_hyp_vm", f"{_H['create']} host_kvm={k:#x}")]
    donated = []
    for n in [1, 2] + [2] * len(vm.vcpus):  # pgd, hyp VM, one hyp vCPU each (6.12)
        pa = g.pages(n)
        donated.append((pa, n))
        create.append(("s2_alloc_pages_exact", f"{_H['alloc']} size={n * PAGE:#x} gfp=0x400cc0"))
        create.append(("s2_alloc_pages_exact_ret", f"{_H['alloc_ret']} ret={va(pa):#x}"))
    steps.append(create)
    steps.append([("s2_pkvm_create_hyp_vm_ret", _H["create_ret"])])
    if destroy:
        steps.append([("s2_pkvm_destroy_hyp_vm", f"{_H['destroy']} host_kvm={k:#x}")])
        tear = [("s2_free_hyp_memcache", f"{_H['free_mc']} mc={k + 0xE80:#x}")]
        if g.free_pages:
            caller = "caller=free_hyp_memcache+0x68/0xf8"
            for pa, n in donated:
                for i in range(n):
                    addr = va(pa + i * PAGE)
                    tear.append(
                        ("s2_free_pages", f"{_H['free']} addr={addr:#x} order=0x0 {caller}")
                    )
        steps.append(tear)
        for a, b in vm.vcpus:
            steps.append([("s2_kvm_unshare_hyp", f"{_H['unshare']} from={va(a):#x} to={va(b):#x}")])
        steps.append([("s2_kvm_unshare_hyp", f"{_H['unshare']} {kvm_range}")])
        steps.append([("__release__", "")])
    vm.donated = donated  # type: ignore[attr-defined]
    return steps


def lifecycle_trace(seed: int, nvms: int, free_pages: bool) -> tuple[str, int]:
    """The ftrace text of ``nvms`` interleaved VM lifecycles (some never destroyed)."""
    rng = np.random.default_rng(seed)
    g = _Gen(rng, free_pages, kvm_pool=[0x43900000 + i * 0x2000 for i in range(3)])
    live: list[_Vm] = []
    started = 0
    pid = 100
    while started < nvms or live:
        if started < nvms and (not live or rng.random() < 0.3) and g.kvm_pool:
            kvm = g.kvm_pool.pop(int(rng.integers(0, len(g.kvm_pool))))
            vcpus = []
            for _ in range(int(rng.integers(1, 4))):
                a = g.vcpu_next
                g.vcpu_next += VCPU_SIZE  # packed: neighbours share pages
                vcpus.append((a, a + VCPU_SIZE))
            pid += 1
            vm = _Vm(pid, kvm, vcpus)
            vm.steps = _vm_steps(g, vm, destroy=bool(rng.random() < 0.8))
            live.append(vm)
            started += 1
            continue
        if not live:
            g.kvm_pool.append(0x43900000 + 0x2000 * len(g.kvm_pool) + 0x100000)
            continue
        vm = live[int(rng.integers(0, len(live)))]
        for event, fields in vm.steps.pop(0):
            if event == "__release__":  # its struct kvm and pages may be reused
                g.kvm_pool.append(vm.kvm)
                for pa, n in vm.donated:  # type: ignore[attr-defined]
                    g.pool += [pa + i * PAGE for i in range(n)]
                continue
            g.emit(vm.pid, event, fields)
        if not vm.steps:
            live.remove(vm)
    return "# tracer: nop\n" + "".join(g.lines), len(g.lines)


# -- the slow model -----------------------------------------------------------------------------
def _num(fields: str, name: str) -> int:
    return int(fields.split(f"{name}=")[1].split()[0], 0)


def slow_model(text: str) -> tuple[list[float], dict[int, list[tuple[float, str]]]]:
    """Event times, and per page the (time, state) after every change, one event at a time."""
    count: dict[int, int] = {}
    state: dict[int, str] = {}
    history: dict[int, list[tuple[float, str]]] = {}
    share_from: dict[int, tuple[int, int]] = {}  # pid -> pending kvm_share_hyp range
    creating: dict[int, list[int]] = {}  # pid -> pages allocated under pkvm_create_hyp_vm
    creating_kvm: dict[int, int] = {}
    donated: dict[int, list[int]] = {}  # struct kvm -> pages donated for it
    tearing: dict[int, int] = {}  # pid -> struct kvm being destroyed
    alloc_size: dict[int, int] = {}
    times = []

    def put(page: int, ts: float, new: str) -> None:
        if state.get(page, "host") != new:
            state[page] = new
            history.setdefault(page, []).append((ts, new))

    runs: dict[int, int] = {}  # pid -> allocations begun under pkvm_create_hyp_vm

    def give(pid: int, ts: float) -> None:
        """The pages allocated so far in this call go to the hypervisor (their hypercall)."""
        pages, creating[pid] = creating[pid], []
        donated.setdefault(creating_kvm[pid], []).extend(pages)
        for p in pages:
            put(p, ts, "hyp")

    def pa_pages(lo: int, hi: int) -> range:
        lo, hi = lo - LM_VA + LM_PA, hi - LM_VA + LM_PA
        return range(lo - lo % PAGE, -(-hi // PAGE) * PAGE, PAGE)

    for line in text.splitlines():
        if line.startswith("#"):
            continue
        head, event, fields = line.split(": ", 2)
        pid, ts = int(head.split("-")[1].split()[0]), float(head.split()[-1])
        times.append(ts)
        if event == "s2_kvm_share_hyp":
            share_from[pid] = (_num(fields, "from"), _num(fields, "to"))
        elif event == "s2_kvm_share_hyp_ret":
            for p in pa_pages(*share_from.pop(pid)):
                count[p] = count.get(p, 0) + 1
                put(p, ts, "shared")
        elif event == "s2_kvm_unshare_hyp":
            for p in pa_pages(_num(fields, "from"), _num(fields, "to")):
                count[p] -= 1
                if count[p] == 0:
                    put(p, ts, "host")
        elif event == "s2_pkvm_create_hyp_vm":
            creating[pid], creating_kvm[pid] = [], _num(fields, "host_kvm")
            runs[pid] = 0
        elif event == "s2_alloc_pages_exact":
            alloc_size[pid] = _num(fields, "size")
            runs[pid] = runs.get(pid, 0) + 1
            if runs[pid] > 2:  # __pkvm_init_vm / the previous __pkvm_init_vcpu has returned
                give(pid, ts)
        elif event == "s2_alloc_pages_exact_ret":
            start = _num(fields, "ret")
            creating[pid] += list(pa_pages(start, start + alloc_size.pop(pid)))
        elif event == "s2_pkvm_create_hyp_vm_ret":
            give(pid, ts)
            creating.pop(pid)
            runs.pop(pid, None)
        elif event == "s2_pkvm_destroy_hyp_vm":
            tearing[pid] = _num(fields, "host_kvm")
        elif event == "s2_free_hyp_memcache" and pid in tearing:
            for p in donated.pop(tearing.pop(pid), []):
                put(p, ts, "host")
    return times, history


def _answer(tl, page: int, t: float) -> str:
    a = owner_at(tl, page, t)
    if a.owner == "hyp":
        return "hyp"
    return "shared" if a.host_state == "shared_owned" else "host"


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(seed=st.integers(0, 2**32 - 1), nvms=st.integers(1, 7), free_pages=st.booleans())
@example(seed=2579, nvms=2, free_pages=False)  # drew a page still donated, before `handed`
def test_random_lifecycles_match_the_slow_model(tmp_path_factory, seed, nvms, free_pages):
    text, _ = lifecycle_trace(seed, nvms, free_pages)
    path: Path = tmp_path_factory.mktemp("life") / "ftrace.txt"
    path.write_text(text)
    a = analyze(path, kernel="6.12", linear_map=(LM_VA, LM_PA), use_cache=False)
    assert a.violations.empty, a.violations.head().to_string()
    assert not len(a.problems), list(a.problems)[:3]
    times, history = slow_model(text)
    for page, changes in history.items():
        expect = "host"
        j = 0
        for t in times:
            while j < len(changes) and changes[j][0] <= t:
                expect = changes[j][1]
                j += 1
            assert _answer(a.timeline, page, t) == expect, (hex(page), t, seed)
        before = owner_at(a.timeline, page, times[0] - 1)
        assert before.owner == "host"


def test_generator_makes_shared_vcpu_pages_and_reuse():
    text, _ = lifecycle_trace(7, 6, True)
    _, history = slow_model(text)
    assert any(len(c) > 2 for c in history.values())  # a page that changed hands again
    assert "s2_free_pages" in text


@pytest.mark.parametrize("free_pages", [True, False])
def test_teardown_returns_every_donated_page_in_a_big_mix(tmp_path, free_pages):
    text, _ = lifecycle_trace(11, 7, free_pages)
    path = tmp_path / "ftrace.txt"
    path.write_text(text)
    a = analyze(path, kernel="6.12", linear_map=(LM_VA, LM_PA), use_cache=False)
    _, history = slow_model(text)
    end = {p: c[-1][1] for p, c in history.items()}
    for p, s in end.items():
        assert _answer(a.timeline, p, None) == s
