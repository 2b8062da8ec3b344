"""Workload patterns, each vectorised over all its events (numpy, no loop per event).

* :func:`boot` -- the hypervisor carve-out and kernel sections handed over at boot;
* :func:`vm_lifecycle` -- VMs created (struct kvm and vCPUs shared with the hypervisor, the
  hyp VM, stage-2 pgd and hyp vCPUs donated), run (memcache pages donated for the guest's
  stage 2, host faults on its own memory) and torn down (donations reclaimed, vCPUs then
  struct kvm unshared: arch/arm64/kvm/pkvm.c v6.2+; docs/kernel-facts.md §KF-3.5);
* :func:`churn` -- buffers shared and unshared over and over (virtio-style with the
  hypervisor, or FF-A memory shares with the Secure world);
* :func:`faults` -- ownership faults planted into a VM lifecycle, each with the VIOLATIONS
  check the replay must report.

Times are integer microseconds (ftrace prints microseconds).  Every pattern keeps a page's
own events strictly increasing in time, so sorting all parts by time never reorders them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from s2trace.errors import InputError
from s2trace.synth.layout import (
    BOOT_SECTIONS,
    HOST_POOL,
    PAGE,
    SECTION_OPS,
    VM_POOL,
    Region,
)
from s2trace.synth.plan import ABORT, COMPONENTS, OPS, TRANSITION, Part

__all__ = ["VmTemplate", "boot", "churn", "faults", "vm_lifecycle"]

_OP = {name: i for i, name in enumerate(OPS)}
_CO = {name: i for i, name in enumerate(COMPONENTS)}
#: ESR_EL2 of a host data abort, write, translation fault level 3: EC 0x24 (DABT_LOW) << 26,
#: IL (bit 25), WnR (bit 6), DFSC 0b000111 (Arm ARM D24.2.40, ISS encoding for data aborts).
ESR_DABT_L3_WRITE = 0x24 << 26 | 1 << 25 | 1 << 6 | 0x07


def boot(t0_us: int = 300_000, step_us: int = 40) -> Part:
    """The boot-time ownership of :data:`~s2trace.synth.layout.BOOT_SECTIONS`, one
    transition per range, as if ``fix_host_ownership`` had emitted the tracepoint."""
    n = len(BOOT_SECTIONS)
    ops = [SECTION_OPS[s[1]] for s in BOOT_SECTIONS]
    cols = {
        "t_us": t0_us + step_us * np.arange(n),
        "kind": TRANSITION,
        "op": [_OP[o[0]] for o in ops],
        "initiator": [_CO[o[1]] for o in ops],
        "completer": [_CO[o[2]] for o in ops],
        "addr": [s[2] for s in BOOT_SECTIONS],
        "pages": [s[3] for s in BOOT_SECTIONS],
        "cpu": 0,
        "task": 0,
    }
    final = [(s[2], s[3], "hyp_owned" if s[1] == "donate" else "shared_hyp") for s in BOOT_SECTIONS]
    return Part(cols, [("swapper/0", 1)], final)


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VmTemplate:
    """The pages one VM uses, as offsets (pages) inside its slot of :data:`VM_POOL`.

    Sizes follow the 6.12 capture: struct kvm shared as one page, each vCPU struct as three
    (``from=...b720 to=...d2b0``, arch/arm64/kvm/mmu.c v5.17+; docs/kernel-facts.md §KF-3.4); the
    hyp VM, the stage-2 pgd and each hyp vCPU donated at ``pkvm_create_hyp_vm`` time; ``memcache``
    single pages donated while the guest runs (its stage-2 table pages).
    """

    vcpus: int = 2
    memcache: int = 8
    kvm_pages: int = 1
    vcpu_pages: int = 3
    hyp_vm_pages: int = 2
    pgd_pages: int = 2
    hyp_vcpu_pages: int = 2

    def rows(self) -> tuple[list[tuple[str, int, int]], list[tuple[str, int, int]], int]:
        """(shares, donations, slot pages): (what, page offset, pages) rows."""
        off = 0
        shares, donations = [], []
        shares.append(("struct kvm", off, self.kvm_pages))
        off += self.kvm_pages
        donations.append(("hyp VM", off, self.hyp_vm_pages))
        off += self.hyp_vm_pages
        donations.append(("stage-2 pgd", off, self.pgd_pages))
        off += self.pgd_pages
        for i in range(self.vcpus):
            shares.append((f"vcpu{i}", off, self.vcpu_pages))
            off += self.vcpu_pages
            donations.append((f"hyp vcpu{i}", off, self.hyp_vcpu_pages))
            off += self.hyp_vcpu_pages
        memcache = [(f"memcache{i}", off + i, 1) for i in range(self.memcache)]
        off += self.memcache
        return shares, donations + memcache, off

    def events_per_vm(self) -> int:
        shares, donations, _ = self.rows()
        return 2 * (len(shares) + len(donations))


def _slot_pages(template: VmTemplate) -> int:
    used = template.rows()[2]
    return -(-used // 16) * 16


def vm_windows(n_vms: int, slots: int, t0_us: int, t1_us: int) -> tuple[int, int]:
    """(window length, start stagger between slots): slot ``s`` starts its ``w``-th VM at
    ``t0 + w * length + s * stagger``, and the last window still ends before ``t1``."""
    windows = -(-n_vms // slots)
    length = (t1_us - t0_us) * 4 // (4 * windows + 1)
    return length, length // (4 * slots)


def vm_lifecycle(
    n_vms: int,
    t0_us: int,
    t1_us: int,
    rng: np.random.Generator,
    *,
    template: VmTemplate = VmTemplate(),
    slots: int = 8,
    alive: int = 1,
    host_faults: int = 0,
    pool: Region = VM_POOL,
) -> Part:
    """``n_vms`` VMs over ``[t0_us, t1_us)``; the last ``alive`` are never torn down.

    VM ``v`` lives in slot ``v % slots`` (a fixed set of pages), in the ``v // slots``-th of
    that slot's consecutive time windows, so VMs of one slot never overlap and reuse pages.
    Create takes the first 10 % of the window, teardown the last 10 %, memcache donations and
    ``host_faults`` benign host aborts (on :data:`HOST_POOL`) fall in between.
    """
    slots = max(1, min(slots, n_vms))
    slot_pages = _slot_pages(template)
    if slots * slot_pages * PAGE > pool.size:
        raise ValueError(f"vm_lifecycle: {slots} slots of {slot_pages} pages exceed the pool")
    shares, donations, _ = template.rows()
    n_mc = template.memcache
    fixed_don = donations[: len(donations) - n_mc]
    # One row per event of one VM: (phase, order, op, initiator, completer, page offset, pages)
    # phase 0 create (in order), 1 run (random times), 2 teardown (in order).
    rows: list[tuple[int, int, str, str, str, int, int]] = [
        (0, 0, "share", "host", "hyp", *shares[0][1:]),  # struct kvm
        (0, 1, "donate", "host", "hyp", *fixed_don[0][1:]),  # hyp VM
        (0, 2, "donate", "host", "hyp", *fixed_don[1][1:]),  # stage-2 pgd
    ]
    for i in range(template.vcpus):
        rows.append((0, 3 + 2 * i, "share", "host", "hyp", *shares[1 + i][1:]))
        rows.append((0, 4 + 2 * i, "donate", "host", "hyp", *fixed_don[2 + i][1:]))
    rows += [(1, 0, "donate", "host", "hyp", off, n) for _, off, n in donations[len(fixed_don) :]]
    k = 0
    for _, first, n in reversed(donations):
        rows.append((2, k, "reclaim", "hyp", "host", first, n))
        k += 1
    for _, first, n in reversed(shares):  # vCPUs first, then struct kvm
        rows.append((2, k, "unshare", "host", "hyp", first, n))
        k += 1
    tmpl = np.array([(r[0], r[1], _OP[r[2]], _CO[r[3]], _CO[r[4]], r[5], r[6]) for r in rows])
    phase, order, op, ini, com, off, npg = (tmpl[:, i] for i in range(7))

    vm = np.arange(n_vms)
    slot = vm % slots
    window = vm // slots
    length, stagger = vm_windows(n_vms, slots, t0_us, t1_us)
    if length < 40 * len(tmpl):
        raise InputError(
            f"synth: {n_vms} VMs in {slots} slots leave {length} us per VM, less than the "
            f"{40 * len(tmpl)} us one lifecycle needs: give a longer duration or a smaller size"
        )
    start = t0_us + window * length + slot * stagger
    torn = vm < n_vms - alive
    # events of every VM: tile the template, drop teardown rows of VMs that stay alive
    e_vm = np.repeat(vm, len(tmpl))
    e_row = np.tile(np.arange(len(tmpl)), n_vms)
    keep = torn[e_vm] | (phase[e_row] != 2)
    e_vm, e_row = e_vm[keep], e_row[keep]
    step = max(1, length // (20 * len(tmpl)))
    base = start[e_vm]
    ph = phase[e_row]
    run_lo = base + length // 10 + 1
    run_span = max(1, length * 8 // 10 - 2)
    t = np.where(
        ph == 0,
        base + order[e_row] * step,
        np.where(
            ph == 1,
            run_lo + rng.integers(0, run_span, len(e_row)),
            base + length - length // 10 + order[e_row] * step,
        ),
    )
    addr = (pool.base + slot[e_vm] * slot_pages * PAGE + off[e_row] * PAGE).astype(np.uint64)
    cols = {
        "t_us": t,
        "kind": TRANSITION,
        "op": op[e_row],
        "initiator": ini[e_row],
        "completer": com[e_row],
        "addr": addr,
        "pages": npg[e_row],
        "vm": 0,  # host<->hyp transitions carry no VM (the tracepoint's vm=0)
        "cpu": (slot[e_vm] % 2),
        "task": slot[e_vm],
    }
    tasks = [("crosvm", 300 + 10 * s) for s in range(slots)]
    part = Part(cols, tasks)
    if host_faults:
        pages = rng.choice(HOST_POOL.pages, size=host_faults, replace=False)
        fault = Part(
            {
                "t_us": rng.integers(t0_us, t1_us, host_faults),
                "kind": ABORT,
                "addr": HOST_POOL.base + pages.astype(np.uint64) * PAGE,
                "pages": 1,
                "cpu": rng.integers(0, 2, host_faults),
                "task": 0,
            },
            [("kworker/0:1", 17)],
        )
        part = _concat(part, fault)
    # final state: the slots whose last VM is alive keep its shares and donations
    last_alive = vm[~torn]
    final: list[tuple[int, int, str]] = []
    for s in range(slots):
        slot_base = pool.base + s * slot_pages * PAGE
        live = s in set(slot[last_alive].tolist())
        for _, o, n in shares:
            final.append((slot_base + o * PAGE, n, "shared_hyp" if live else "host_owned"))
        for _, o, n in donations:
            final.append((slot_base + o * PAGE, n, "hyp_owned" if live else "host_owned"))
    part.final = final
    return part


def _concat(a: Part, b: Part) -> Part:
    ntask = len(a.tasks)
    cols = {
        name: np.concatenate([a.cols[name], b.cols[name] + (ntask if name == "task" else 0)])
        for name in a.cols
    }
    return Part(cols, a.tasks + b.tasks, a.final + b.final, a.planted + b.planted)


# ---------------------------------------------------------------------------------------------
def churn(
    n_events: int,
    t0_us: int,
    t1_us: int,
    rng: np.random.Generator,
    *,
    pool: Region,
    buffers: int,
    completer: str = "hyp",
    max_pages: int = 1,
    task: tuple[str, int] = ("vhost-210", 211),
    cpus: int = 2,
) -> Part:
    """``n_events`` shares and unshares of ``buffers`` buffers (1..``max_pages`` pages each,
    one free page between buffers), alternating per buffer and starting with a share; a
    buffer with an odd number of events ends shared."""
    buffers = max(1, min(buffers, pool.pages // (max_pages + 1)))
    npages = rng.integers(1, max_pages + 1, buffers)
    offsets = np.concatenate([[0], np.cumsum(npages + 1)[:-1]])
    counts = rng.multinomial(n_events, np.full(buffers, 1.0 / buffers))
    buf = np.repeat(np.arange(buffers), counts)
    span = max(1, (t1_us - t0_us) - int(counts.max(initial=0)))
    t = t0_us + rng.integers(0, span, n_events)
    order = np.lexsort((t, buf))
    buf, t = buf[order], t[order]
    first = np.repeat(np.cumsum(counts) - counts, counts)
    rank = np.arange(n_events) - first
    t = t + rank  # strictly increasing within a buffer
    is_share = rank % 2 == 0
    cols = {
        "t_us": t,
        "kind": TRANSITION,
        "op": np.where(is_share, _OP["share"], _OP["unshare"]),
        "initiator": _CO["host"],
        "completer": _CO[completer],
        "addr": (pool.base + offsets[buf] * PAGE).astype(np.uint64),
        "pages": npages[buf],
        "cpu": rng.integers(0, cpus, n_events),
        "task": 0,
    }
    shared_state = f"shared_{completer}"
    final = [
        (pool.base + int(o) * PAGE, int(n), shared_state if c % 2 else "host_owned")
        for o, n, c in zip(offsets, npages, counts, strict=True)
        if c
    ]
    return Part(cols, [task], final)


# ---------------------------------------------------------------------------------------------
def faults(
    n_vms: int, t0_us: int, t1_us: int, *, template: VmTemplate = VmTemplate(), slots: int = 8
) -> Part:
    """Three ownership faults planted into :func:`vm_lifecycle` made with the same arguments
    (``n_vms`` >= 2, the last VM alive), each with the check the replay must report:

    1. in VM 0's run, the host donates its (shared) struct kvm page to the hypervisor:
       ``shared_page_donated`` (§KF-3.1: donate needs the initiator OWNED);
    2. after VM 0's teardown and before its slot is reused, struct kvm is unshared again:
       ``double_unshare`` (unshare needs SHARED_OWNED);
    3. at the end, the host touches the stage-2 pgd donated for the VM still alive:
       ``host_access_not_owned`` (a host abort on an annotated entry, §KF-2.6: up to at least
       v6.16 the hypervisor BUGs, so this is the last event of the trace).
    """
    if n_vms < 2:
        raise ValueError("faults: need at least two VMs (one torn down, one alive)")
    slots = max(1, min(slots, n_vms))
    slot_pages = _slot_pages(template)
    # VM 0: slot 0, window 0, of the length vm_lifecycle gives it
    t0 = t0_us
    length, _ = vm_windows(n_vms, slots, t0_us, t1_us)
    kvm_page = VM_POOL.base
    last = n_vms - 1
    pgd_off = template.rows()[1][1][1]
    pgd = VM_POOL.base + (last % slots) * slot_pages * PAGE + pgd_off * PAGE
    times = [t0 + length // 2, t0 + length - length // 40, t1_us + 1000]
    cols = {
        "t_us": times,
        "kind": [TRANSITION, TRANSITION, ABORT],
        "op": [_OP["donate"], _OP["unshare"], 0],
        "initiator": [_CO["host"], _CO["host"], 0],
        "completer": [_CO["hyp"], _CO["hyp"], 0],
        "addr": [kvm_page, kvm_page, pgd],
        "pages": 1,
        "cpu": [0, 0, 1],
        "task": [0, 0, 1],
    }
    planted = [
        {"row": 0, "check": "shared_page_donated",
         "what": "the host donates VM 0's struct kvm page to the hypervisor while sharing it"},
        {"row": 1, "check": "double_unshare",
         "what": "VM 0's struct kvm page is unshared a second time after teardown"},
        {"row": 2, "check": "host_access_not_owned",
         "what": "the host writes to the stage-2 pgd page donated for the live VM (fatal)"},
    ]  # fmt: skip
    return Part(cols, [("crosvm", 300), ("crosvm", 300 + 10 * (last % slots))], [], planted)
