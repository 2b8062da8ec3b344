"""Recover the EL2 registers from a RAM dump: pKVM's per-CPU ``struct kvm_nvhe_init_params``.

At pKVM init the host fills one ``struct kvm_nvhe_init_params`` per CPU; ``___kvm_hyp_init``
loads the EL2 registers from it, and ``__pkvm_prot_finalize`` later stores the host stage 2's
VTTBR/VTCR into it.  It stays in memory, so a full RAM dump carries the registers a walk needs
(arch/arm64/include/asm/kvm_asm.h; docs/kernel-facts.md §KF-2.9).  Two ways to find the copies:

* **kallsyms** (:func:`recover_registers` with ``kallsyms=``): the per-CPU areas are at the
  addresses in ``__kvm_nvhe_kvm_arm_hyp_percpu_base[]`` and the struct sits at
  ``__kvm_nvhe_kvm_init_params - __kvm_nvhe___per_cpu_start`` inside each;
* **scan** (no symbols): a vectorised pass over RAM for the word pattern the struct has, each
  hit then validated (the VTCR decodes, the VTTBR root is a readable stage-2 table).

What was verified, and against what:

* Layout (8-byte fields from offset 0): ``mair_el2, tcr_el2, tpidr_el2, stack_hyp_va,
  stack_pa, pgd_pa, hcr_el2, vttbr, vtcr`` -- ``kvm_asm.h`` as changed by the patches that
  added ``hcr_el2/vttbr/vtcr`` (Quentin Perret, host stage 2, v5.13) and ``stack_pa`` (Kalesh
  Singh, hypervisor stack guard pages, about v5.19: the release was not checked); later
  fields (``stacktrace_hyp_va`` ...) vary and are not read.  Found at exactly these offsets
  in the 6.12 and 7.3 sample dumps.  Older kernels (no ``stack_pa``) are not handled.
* ``kvm_arm_hyp_percpu_base[cpu]`` holds ``page_address()`` of the pages ``init_hyp_mode``
  allocated for the CPU and into which it ``memcpy``'d the hyp per-CPU section: a linear-map
  virtual address (arch/arm64/kvm/arm.c, read through the search tool).  In the samples:
  ``0xffff000003878000`` (6.12 cpu0), i.e. PA ``0x43878000`` with the linear map at
  ``0xffff000000000000`` for PA ``0x40000000``.  The image's own copy of the section is not
  used (it holds ``0xcc`` poison in both samples).
* ``tpidr_el2 = per_cpu_ptr(__per_cpu_start, cpu) - kvm_ksym_ref(__per_cpu_start)``
  (``cpu_prepare_hyp_mode``), i.e. the CPU's base minus the linear alias of the image's
  ``__per_cpu_start``.  This identity is what accepts a (kernel image offset, linear offset)
  pair: a wrong pair would have to find this exact value at the place it points to.
* Kernel image VA -> PA: ``/proc/iomem``'s ``Kernel code`` starts at ``__pa_symbol(_text)``
  and ``Kernel data`` at ``__pa_symbol(_sdata)`` (arch/arm64/kernel/setup.c; some 5.x kernels
  used ``_stext`` for ``Kernel code``, which is tried too).  A candidate offset is confirmed
  when the word at ``PA(kimage_voffset)`` holds it: ``kimage_voffset`` *is* the image's VA-PA
  offset.  Without iomem, RAM is searched for that self-describing word.
* ``TTBR0_EL2``: ``hyp-init.S`` writes ``phys_to_ttbr(pgd_pa)``, ORed with ``TTBR_CNP_BIT``
  when the CPU has ``ARM64_HAS_CNP``; ``kvm_get_vttbr`` sets VTTBR's CnP from the same
  capability (``system_supports_cnp``).  So TTBR0_EL2 = pgd_pa | VTTBR_EL2.CnP; both samples'
  gdb values (``0x7f301001``, ``0x7f201001``) agree.
* ``HCR_EL2``: the stored value is what pKVM writes (``HCR_HOST_NVHE_PROTECTED_FLAGS`` | E2H
  for hVHE | VM | FWB ...).  ``HCR_HOST_NVHE_FLAGS`` includes ``HCR_ATA`` (bit 56); ATA, DCT and
  TID5 (bits 56-58) are RES0 without FEAT_MTE2 (the kernel's own RES0 table for nested
  HCR_EL2), and QEMU's ``-cpu max`` on ``virt`` without ``mte=on`` has no MTE: the live
  register in ``gdb-regs.txt`` lacks bit 56 (6.12) and bit 58 (7.3), everything else equal.
* ``TCR_EL2``: kernels before the LPA2 series (v6.9) inserted TCR_EL2.PS in ``hyp-init.S``
  (``tcr_compute_pa_size``), so the stored nVHE ``tcr_el2`` has PS=0 (§KF-2.9, 6.1:
  stored ``0x80803510``, live ``0x80853510``).  For an nVHE value with PS=0, PS is taken from
  VTCR_EL2.PS (both derive from ID_AA64MMFR0_EL1.PARange) and the source says so.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from s2trace.arch.registers import (
    HCR_EL2,
    VTCR_EL2,
    Stage2Config,
    config_from_registers,
    hcr_e2h,
    hcr_fwb,
)
from s2trace.arch.stage1 import TCR_EL2_NVHE
from s2trace.errors import InputError
from s2trace.hyp import evidence
from s2trace.intervals import distinct
from s2trace.io.memory import MemoryFault, PhysicalMemory
from s2trace.pkvm.kallsyms import Kallsyms, read_kallsyms

__all__ = [
    "INIT_PARAMS_FIELDS",
    "REGISTERS",
    "RecoveredRegisters",
    "consistent_registers",
    "kernel_resources",
    "recover_registers",
    "registers_from_memory",
    "scan_init_params",
    "summary_line",
]

MASK64 = (1 << 64) - 1

#: ``struct kvm_nvhe_init_params`` up to ``vtcr`` (v5.19+), one 64-bit word each.
INIT_PARAMS_FIELDS: tuple[str, ...] = (
    "mair_el2",
    "tcr_el2",
    "tpidr_el2",
    "stack_hyp_va",
    "stack_pa",
    "pgd_pa",
    "hcr_el2",
    "vttbr",
    "vtcr",
)
_IX = {name: i for i, name in enumerate(INIT_PARAMS_FIELDS)}
PARAMS_BYTES = 8 * len(INIT_PARAMS_FIELDS)

#: The registers reported, in print order.
REGISTERS: tuple[str, ...] = (
    "VTTBR_EL2",
    "VTCR_EL2",
    "TTBR0_EL2",
    "TCR_EL2",
    "MAIR_EL2",
    "HCR_EL2",
    "TPIDR_EL2",
)
#: Registers every CPU must agree on (TPIDR_EL2 is per CPU by design).
_SHARED = REGISTERS[:-1]

PARAMS_SYMBOL = "__kvm_nvhe_kvm_init_params"
PERCPU_START_SYMBOL = "__kvm_nvhe___per_cpu_start"
PERCPU_BASE_SYMBOL = "__kvm_nvhe_kvm_arm_hyp_percpu_base"

_HCR_VM_RW = HCR_EL2.encode(VM=1, RW=1)
_HCR_MTE2_ONLY = HCR_EL2.encode(ATA=1, DCT=1, TID5=1)
_TTBR_CNP = 1
#: Largest NR_CPUS read from kvm_arm_hyp_percpu_base[] (arm64 allows up to 4096).
MAX_CPUS = 4096
#: arm64 VA_BITS choices; PAGE_OFFSET is -(1 << VA_BITS).
_VA_BITS = (48, 52, 47, 42, 39, 36)
_CHUNK_WORDS = 1 << 22  # 32 MiB of RAM per vectorised step


def _phys_to_ttbr(pa: int) -> int:
    """The kernel's ``phys_to_ttbr``: PA[51:48] move to bits 5:2 (52-bit PA), else as is."""
    return (pa & ((1 << 48) - 1)) | ((pa >> 48) & 0xF) << 2


@dataclass(frozen=True)
class RecoveredRegisters:
    """EL2 registers of one CPU as saved in its ``kvm_nvhe_init_params``.

    ``cpu`` is the kernel CPU number (kallsyms path) or None (scan: copies are ordered by PA,
    which need not be CPU order).  ``sources`` says where each register's value came from;
    ``notes`` explain where a value may differ from the live register; ``problem`` is set
    when this copy cannot be used (and says why).
    """

    cpu: int | None
    params_pa: int
    method: str
    mair_el2: int
    tcr_el2: int
    tpidr_el2: int
    stack_hyp_va: int
    stack_pa: int
    pgd_pa: int
    hcr_el2: int
    vttbr_el2: int
    vtcr_el2: int
    ttbr0_el2: int
    sources: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    notes: tuple[str, ...] = ()
    problem: str | None = None

    @property
    def label(self) -> str:
        """``cpu0`` (kallsyms) or ``copy@0x43879a80`` (scan)."""
        return f"cpu{self.cpu}" if self.cpu is not None else f"copy@{self.params_pa:#x}"

    @property
    def fwb(self) -> bool:
        """HCR_EL2.FWB: stage-2 MemAttr has the FWB meaning."""
        return hcr_fwb(self.hcr_el2)

    def values(self) -> dict[str, int]:
        """Register name -> value, in :data:`REGISTERS` order."""
        return {
            "VTTBR_EL2": self.vttbr_el2,
            "VTCR_EL2": self.vtcr_el2,
            "TTBR0_EL2": self.ttbr0_el2,
            "TCR_EL2": self.tcr_el2,
            "MAIR_EL2": self.mair_el2,
            "HCR_EL2": self.hcr_el2,
            "TPIDR_EL2": self.tpidr_el2,
        }

    def config(self) -> Stage2Config:
        """The host stage-2 walk configuration (InputError if VTTBR/VTCR are unusable)."""
        return config_from_registers(self.vttbr_el2, self.vtcr_el2)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: numbers as hex strings."""
        return {
            "cpu": self.cpu,
            "params_pa": f"{self.params_pa:#x}",
            "method": self.method,
            "registers": {k: f"{v:#x}" for k, v in self.values().items()},
            "pgd_pa": f"{self.pgd_pa:#x}",
            "stack_pa": f"{self.stack_pa:#x}",
            "stack_hyp_va": f"{self.stack_hyp_va:#x}",
            "sources": dict(self.sources),
            "notes": list(self.notes),
            "problem": self.problem,
        }


# -- building and checking one copy --------------------------------------------------------


def _from_row(
    row: np.ndarray, pa: int, cpu: int | None, method: str, located: str = ""
) -> RecoveredRegisters:
    """A :class:`RecoveredRegisters` from the struct's words read at physical ``pa``;
    ``located`` says how the struct was found (kept as ``sources["located"]``)."""
    f = {name: int(row[i]) for i, name in enumerate(INIT_PARAMS_FIELDS)}

    def at(name: str) -> str:
        return f"kvm_nvhe_init_params.{name} at PA {pa + 8 * _IX[name]:#x}"

    notes: list[str] = []
    cnp = f["vttbr"] & _TTBR_CNP
    ttbr0 = _phys_to_ttbr(f["pgd_pa"]) | cnp
    ttbr_src = at("pgd_pa") + f" ({f['pgd_pa']:#x}) | CnP={cnp} copied from VTTBR_EL2.CnP"
    if cnp:
        notes.append(
            f"TTBR0_EL2 = pgd_pa {f['pgd_pa']:#x} with CnP (bit 0) set: pgd_pa holds no CnP "
            "bit; hyp-init.S sets it when the CPU has CnP, like VTTBR_EL2.CnP"
        )
    tcr = f["tcr_el2"]
    tcr_src = at("tcr_el2")
    ps = VTCR_EL2.get(f["vtcr"], "PS")
    if not hcr_e2h(f["hcr_el2"]) and TCR_EL2_NVHE.get(tcr, "PS") == 0 and ps:
        tcr |= TCR_EL2_NVHE["PS"].put(ps, "TCR_EL2")
        tcr_src += f" with PS={ps} from VTCR_EL2.PS"
        notes.append(
            "TCR_EL2.PS was 0 in memory (kernels before v6.9 set it in hyp-init.S from "
            f"ID_AA64MMFR0_EL1.PARange); PS={ps} taken from VTCR_EL2, which derives from it too"
        )
    if f["hcr_el2"] & _HCR_MTE2_ONLY:
        notes.append(
            "HCR_EL2 is the value pKVM writes for the host; bits 56-58 (ATA, DCT, TID5) read "
            "back as 0 from a CPU without FEAT_MTE2"
        )
    sources = {
        "VTTBR_EL2": at("vttbr"),
        "VTCR_EL2": at("vtcr"),
        "TTBR0_EL2": ttbr_src,
        "TCR_EL2": tcr_src,
        "MAIR_EL2": at("mair_el2"),
        "HCR_EL2": at("hcr_el2"),
        "TPIDR_EL2": at("tpidr_el2"),
    }
    if located:
        sources["located"] = located
    return RecoveredRegisters(
        cpu=cpu,
        params_pa=pa,
        method=method,
        mair_el2=f["mair_el2"],
        tcr_el2=tcr,
        tpidr_el2=f["tpidr_el2"],
        stack_hyp_va=f["stack_hyp_va"],
        stack_pa=f["stack_pa"],
        pgd_pa=f["pgd_pa"],
        hcr_el2=f["hcr_el2"],
        vttbr_el2=f["vttbr"],
        vtcr_el2=f["vtcr"],
        ttbr0_el2=ttbr0,
        sources=sources,
        notes=tuple(notes),
    )


def _problem(memory: PhysicalMemory, regs: RecoveredRegisters) -> str | None:
    """Why this copy cannot give a host stage-2 walk, or None when it can.

    Checks: pKVM finalised it (VTTBR non-zero, HCR_EL2.VM), the VTCR/VTTBR pair decodes, the
    root table(s) are in the dump and hold at least one table descriptor, every table
    descriptor there points into the dump, and pgd_pa (the hyp stage 1 root) is in the dump.
    """
    if regs.vttbr_el2 == 0:
        return "vttbr is 0: pKVM never installed the host stage 2 on this CPU"
    if not HCR_EL2.flag(regs.hcr_el2, "VM"):
        return f"hcr_el2 {regs.hcr_el2:#x} has VM=0: stage 2 was not enabled"
    try:
        cfg = regs.config()
    except InputError as e:
        return str(e)
    if not memory.holds(cfg.root, cfg.root_bytes):
        return f"VTTBR_EL2 root {cfg.root:#x} (+{cfg.root_bytes:#x}) is not in the dump"
    if not memory.holds(regs.pgd_pa, 8):
        return f"pgd_pa {regs.pgd_pa:#x} (TTBR0_EL2 root) is not in the dump"
    raw = np.asarray(memory.u64(cfg.root, cfg.root_bytes // 8))
    g = cfg.geometry
    if cfg.start_level >= 3:
        return None if np.any(raw) else f"root table at {cfg.root:#x} is all zero"
    table = (raw & np.uint64(3)) == np.uint64(3)
    if not table.any():
        return f"root table at {cfg.root:#x} holds no table descriptor"
    t = raw[table]
    nxt = t & np.uint64(g.address_mask(cfg.start_level, leaf=False))
    if g.lpa:
        nxt |= ((t >> np.uint64(12)) & np.uint64(0xF)) << np.uint64(48)
    elif g.ds:
        nxt |= ((t >> np.uint64(8)) & np.uint64(3)) << np.uint64(50)
    _, inside = memory.gather(nxt, 8)
    if not inside.all():
        bad = int(nxt[np.flatnonzero(~inside)[0]])
        return f"root table at {cfg.root:#x} points to {bad:#x}, outside the dump"
    return None


def _checked(memory: PhysicalMemory, regs: RecoveredRegisters) -> RecoveredRegisters:
    why = _problem(memory, regs)
    if why is None:
        return regs
    return replace(regs, problem=why)


# -- scan --------------------------------------------------------------------------------------


def _word_chunks(memory: PhysicalMemory, overlap: int) -> Iterator[tuple[int, np.ndarray, int]]:
    """``(pa of words[0], words, first new index)`` over every region, in 32 MiB steps.

    Each step repeats the last ``overlap`` words of the previous one (same region), so a
    pattern ``overlap + 1`` words long is seen whole exactly once.  Steps that lie wholly in
    a hole of a sparse dump file are skipped (a hole reads as zeros: no pattern with a
    non-zero word is in it), and every step's pages are unmapped after it, so the time goes
    with the data the dump holds and the memory with the step size, not the dump's size.
    """
    for r in memory.regions:
        first = -(-r.pa // 8) * 8
        n = (r.end - first) // 8
        s = 0
        while s < n:
            data = memory.data_from(first + 8 * s)
            if data >= first + 8 * min(n, s + _CHUNK_WORDS):  # the whole step is a hole
                s = max(s + _CHUNK_WORDS, (data - first) // 8 // _CHUNK_WORDS * _CHUNK_WORDS)
                continue
            lo = max(0, s - overlap)
            hi = min(n, s + _CHUNK_WORDS)
            try:
                yield first + 8 * lo, memory.u64(first + 8 * lo, hi - lo), s - lo
            finally:
                memory.release()
            s += _CHUNK_WORDS


# Filters on the raw words (the scan's first pass; validation is _problem):
# vtcr: RES1 bit 31 set, bits 63:46 clear (no VTCR_EL2 field up there is used by pKVM);
# vttbr: BADDR (bits 47:1) non-zero; hcr_el2: VM and RW set (RW is RES1 for an AArch64 host);
# pgd_pa, stack_pa: non-zero, 4 KiB aligned, below 2**52.
_VTCR_MASK = np.uint64((MASK64 >> 46 << 46) | 1 << 31)
_VTCR_WANT = np.uint64(1 << 31)
_PAGE_PA_BAD = np.uint64((MASK64 >> 52 << 52) | 0xFFF)
_SCAN_HOW = (
    "scan of RAM: a VTCR_EL2-shaped word after VTTBR, HCR (VM, RW), page-aligned pgd_pa/stack_pa"
)


def scan_init_params(memory: PhysicalMemory) -> list[RecoveredRegisters]:
    """Every copy of ``kvm_nvhe_init_params`` in ``memory`` that validates, ordered by PA.

    One vectorised pass: a mask over each 32 MiB of words for VTCR-shaped words, then the
    words before each hit (VTTBR, HCR, pgd_pa, stack_pa) checked on the hits only; the few
    survivors are read whole and validated like the kallsyms path.
    """
    vi = _IX["vtcr"]
    starts: list[np.ndarray] = []
    tmp = np.empty(_CHUNK_WORDS + vi, dtype=np.uint64)
    hit = np.empty(_CHUNK_WORDS + vi, dtype=bool)
    for pa, words, new in _word_chunks(memory, vi):
        n = words.shape[0]
        np.bitwise_and(words, _VTCR_MASK, out=tmp[:n])
        np.equal(tmp[:n], _VTCR_WANT, out=hit[:n])
        idx = np.flatnonzero(hit[:n])
        idx = idx[idx >= max(vi, new)]
        if not idx.size:
            continue
        vttbr = words[idx - (vi - _IX["vttbr"])]
        hcr = words[idx - (vi - _IX["hcr_el2"])]
        pgd = words[idx - (vi - _IX["pgd_pa"])]
        stack = words[idx - (vi - _IX["stack_pa"])]
        ok = (vttbr & np.uint64(0xFFFFFFFFFFFE)) != 0
        ok &= (hcr & np.uint64(_HCR_VM_RW)) == np.uint64(_HCR_VM_RW)
        ok &= (pgd != 0) & ((pgd & _PAGE_PA_BAD) == 0)
        ok &= (stack != 0) & ((stack & _PAGE_PA_BAD) == 0)
        if ok.any():
            starts.append(np.uint64(pa) + (idx[ok] - vi).astype(np.uint64) * np.uint64(8))
    if not starts:
        return []
    pas = distinct(np.concatenate(starts))
    rows, _ = memory.gather(pas, PARAMS_BYTES)
    found = [
        _checked(memory, _from_row(rows[i], int(pas[i]), None, "scan", _SCAN_HOW))
        for i in range(pas.size)
    ]
    return [r for r in found if r.problem is None]


# -- kallsyms -------------------------------------------------------------------------------


def kernel_resources(iomem: str | Path) -> dict[str, int]:
    """Start PAs of ``Kernel code`` and ``Kernel data`` in a ``/proc/iomem`` copy (a path, or
    the text itself): :func:`s2trace.hyp.evidence.kernel_resources`."""
    return evidence.kernel_resources(iomem)


def _voffset_holds(memory: PhysicalMemory, kv_va: int, voff: int) -> bool:
    pa = (kv_va - voff) & MASK64
    return memory.holds(pa, 8) and int(memory.u64(pa, 1)[0]) == voff


def _search_voffset(memory: PhysicalMemory, kv_va: int) -> list[int]:
    """Image VA-PA offsets ``o`` such that the word at ``PA(kimage_voffset) = kv_va - o``
    equals ``o`` (``kimage_voffset`` holds the image's own offset); vectorised over RAM."""
    kv = np.uint64(kv_va)
    found: set[int] = set()
    above = np.empty(_CHUNK_WORDS, dtype=bool)
    below = np.empty(_CHUNK_WORDS, dtype=bool)
    for pa, words, new in _word_chunks(memory, 0):
        n = words.shape[0]
        lo = np.uint64((kv_va - (pa + 8 * (n - 1))) & MASK64)
        hi = np.uint64((kv_va - pa) & MASK64)
        if lo > hi:  # the window wraps: no kernel address does
            continue
        np.greater_equal(words, lo, out=above[:n])
        np.less_equal(words, hi, out=below[:n])
        np.logical_and(above[:n], below[:n], out=above[:n])
        idx = np.flatnonzero(above[:n])
        idx = idx[idx >= new]
        addr = np.uint64(pa) + idx.astype(np.uint64) * np.uint64(8)
        good = (words[idx] + addr) == kv
        found.update(int(v) for v in (kv - addr[good]))
    return sorted(found)


def _image_offsets(
    memory: PhysicalMemory, syms: Kallsyms, kernel: dict[str, int]
) -> list[tuple[int, str]]:
    """Candidate kernel-image VA-PA offsets (:func:`s2trace.hyp.evidence.image_offsets`),
    those ``kimage_voffset`` confirms first, each with how it was got."""
    cands = dict(evidence.image_offsets(syms.address, kernel))
    kv = syms.address("kimage_voffset")
    if kv is None:
        if not cands:
            raise InputError(
                f"{syms.source}: no kimage_voffset symbol and no --iomem 'Kernel code' line: "
                "cannot place the kernel image in the dump"
            )
        return list(cands.items())
    checked = [(o, f"{h}, confirmed by kimage_voffset") for o, h in cands.items()]
    checked = [(o, h) for o, h in checked if _voffset_holds(memory, kv, o)]
    if checked:
        return checked
    found = _search_voffset(memory, kv)
    how = "kimage_voffset found in RAM (the word at its PA holds the image VA-PA offset)"
    unconfirmed = [(o, f"{h} (kimage_voffset does not confirm it)") for o, h in cands.items()]
    out = [(o, how) for o in found] + unconfirmed
    if not out:
        raise InputError(
            f"{syms.source}: no word of the dump holds kimage_voffset at the place its symbol "
            "says (kallsyms of another boot, or the kernel image is not in the dump)"
        )
    return out


def _linear_offsets(
    memory: PhysicalMemory, syms: Kallsyms, image_off: int
) -> list[tuple[int, str]]:
    """Candidate linear-map VA-PA offsets: PAGE_OFFSET for each arm64 VA size, minus
    ``memstart_addr`` (read from the dump when kallsyms has it; tried first) or a RAM region
    start.  Debian's kernels are built for 52-bit VAs: on 48-bit hardware PAGE_OFFSET is
    ``0xfff0000000000000`` and ``memstart_addr`` is adjusted to match (the samples hold
    ``0xfff1000040000000``), so the linear map still starts at ``0xffff000000000000``.
    The tpidr_el2 check in the caller picks the right candidate."""
    starts: dict[int, str] = {}
    ms = syms.address("memstart_addr")
    if ms is not None and memory.holds((ms - image_off) & MASK64, 8):
        value = int(memory.u64((ms - image_off) & MASK64, 1)[0])
        starts[value] = f"memstart_addr {value:#x}"
    for r in memory.regions:
        for s in (r.pa, r.pa & ~((1 << 30) - 1)):
            starts.setdefault(s, f"RAM start {s:#x}")
    out: dict[int, str] = {}
    for s, how in starts.items():
        for bits in _VA_BITS:
            page_offset = (MASK64 + 1) - (1 << bits)
            out.setdefault((page_offset - s) & MASK64, f"PAGE_OFFSET {page_offset:#x} - {how}")
    return list(out.items())


def _percpu_bases(memory: PhysicalMemory, pa: int) -> np.ndarray:
    """The non-zero prefix of ``kvm_arm_hyp_percpu_base[]`` at ``pa`` (KASAN tags cleared)."""
    parts: list[np.ndarray] = []
    step = 64
    for k in range(0, MAX_CPUS, step):
        try:
            w = np.array(memory.u64(pa + 8 * k, step))
        except MemoryFault:
            if k == 0:
                raise
            break
        zero = np.flatnonzero(w == 0)
        parts.append(w[: zero[0]] if zero.size else w)
        if zero.size:
            break
    bases = np.concatenate(parts) if parts else np.empty(0, dtype=np.uint64)
    # A tag-based KASAN kernel keeps a tag in bits 63:56; the mapping uses 0xff there.
    return bases | np.uint64(0xFF << 56)


def _from_kallsyms(
    memory: PhysicalMemory, syms: Kallsyms, kernel: dict[str, int]
) -> list[RecoveredRegisters]:
    if syms.hidden:
        raise InputError(
            f"{syms.source}: every address is 0 (hidden by kptr_restrict); copy /proc/kallsyms "
            "as root with kernel.kptr_restrict=1 (or 0)"
        )
    need = syms.require(
        (PARAMS_SYMBOL, PERCPU_START_SYMBOL, PERCPU_BASE_SYMBOL), "finding kvm_nvhe_init_params"
    )
    inside = (need[PARAMS_SYMBOL] - need[PERCPU_START_SYMBOL]) & MASK64
    if inside >= 1 << 20:
        raise InputError(
            f"{syms.source}: {PARAMS_SYMBOL} is not inside the hyp per-CPU section "
            f"(offset {inside:#x} from {PERCPU_START_SYMBOL})"
        )
    tpidr = _IX["tpidr_el2"]
    failures: list[str] = []
    for image_off, image_how in _image_offsets(memory, syms, kernel):
        base_pa = (need[PERCPU_BASE_SYMBOL] - image_off) & MASK64
        try:
            bases = _percpu_bases(memory, base_pa)
        except MemoryFault:
            failures.append(f"{PERCPU_BASE_SYMBOL} (PA {base_pa:#x}) is not in the dump")
            continue
        if not bases.size:
            failures.append(f"{PERCPU_BASE_SYMBOL}[] at PA {base_pa:#x} is empty")
            continue
        section_pa = (need[PERCPU_START_SYMBOL] - image_off) & MASK64
        best: tuple[int, int, str, np.ndarray, np.ndarray, np.ndarray] | None = None
        for lin_off, lin_how in _linear_offsets(memory, syms, image_off):
            pas = bases - np.uint64(lin_off) + np.uint64(inside)
            rows, ok = memory.gather(pas, PARAMS_BYTES)
            expect = bases - np.uint64((section_pa + lin_off) & MASK64)
            good = ok & (rows[:, tpidr] == expect)
            score = int(good.sum())
            if score and (best is None or score > best[0]):
                best = (score, lin_off, lin_how, pas, rows, good)
        if best is None:
            failures.append(
                f"no linear-map offset puts tpidr_el2 where {PERCPU_BASE_SYMBOL}[] says "
                f"(image offset {image_off:#x} from {image_how})"
            )
            continue
        _, lin_off, lin_how, pas, rows, good = best
        where = (
            f"{PERCPU_BASE_SYMBOL}[cpu] + {inside:#x} ({PARAMS_SYMBOL}); image VA-PA "
            f"{image_off:#x} from {image_how}; linear map VA-PA {lin_off:#x} = {lin_how}"
        )
        out: list[RecoveredRegisters] = []
        for cpu in range(bases.size):
            regs = _from_row(rows[cpu], int(pas[cpu]), cpu, "kallsyms", where)
            if not good[cpu]:
                why = f"tpidr_el2 at PA {int(pas[cpu]) + 8 * tpidr:#x} is not this CPU's offset"
                out.append(replace(regs, problem=why))
            else:
                out.append(_checked(memory, regs))
        return out
    raise InputError(f"{syms.source}: kvm_nvhe_init_params not found: {failures[0]}")


# -- public entry points ------------------------------------------------------------------


def recover_registers(
    memory: PhysicalMemory,
    kallsyms: Kallsyms | str | os.PathLike[str] | None = None,
    iomem: str | os.PathLike[str] | None = None,
) -> list[RecoveredRegisters]:
    """The EL2 registers saved in ``memory``, one entry per CPU (or per copy found).

    With ``kallsyms`` (a :class:`Kallsyms` or a file), every CPU of
    ``kvm_arm_hyp_percpu_base[]`` gets an entry; those that cannot be used carry a
    ``problem``.  ``iomem`` (a ``/proc/iomem`` copy) places the kernel image; without it RAM is
    searched for ``kimage_voffset``.  Without ``kallsyms``, RAM is scanned and only validated
    copies are returned (possibly none); ``iomem`` is then not needed.  InputError when the
    symbols are unusable (missing, hidden, or pointing outside the dump).
    """
    if kallsyms is None:
        return scan_init_params(memory)
    syms = kallsyms if isinstance(kallsyms, Kallsyms) else read_kallsyms(kallsyms)
    kernel = kernel_resources(Path(iomem)) if iomem is not None else {}
    return _from_kallsyms(memory, syms, kernel)


def consistent_registers(
    found: Sequence[RecoveredRegisters], label: str = "the dump"
) -> RecoveredRegisters:
    """The one register set every usable copy agrees on (the first of them).

    InputError (one line) when there is no usable copy, or when two disagree on any register
    but TPIDR_EL2 (which is per CPU by design).
    """
    usable = [r for r in found if r.problem is None]
    if not usable:
        why = f" ({found[0].label}: {found[0].problem})" if found else ""
        raise InputError(
            f"{label}: no usable struct kvm_nvhe_init_params in memory{why}; give "
            "--vttbr X --vtcr Y, or --kallsyms FILE of the dumped boot"
        )
    first = usable[0]
    ref = first.values()
    for other in usable[1:]:
        vals = other.values()
        diff = [k for k in _SHARED if vals[k] != ref[k]]
        if diff:
            what = ", ".join(f"{k} {ref[k]:#x} vs {vals[k]:#x}" for k in diff)
            raise InputError(
                f"{label}: saved EL2 registers disagree between {first.label} and "
                f"{other.label}: {what}; give --vttbr X --vtcr Y (see `s2trace regs`)"
            )
    return first


def summary_line(found: Sequence[RecoveredRegisters], chosen: RecoveredRegisters) -> str:
    """One line saying which registers were recovered, from where and how."""
    usable = [r for r in found if r.problem is None]
    how = "through kallsyms" if chosen.method == "kallsyms" else "by a scan of RAM"
    fwb = " HCR_EL2.FWB=1" if chosen.fwb else ""
    return (
        f"registers recovered from memory {how}: struct kvm_nvhe_init_params of "
        f"{len(usable)} CPU(s) agree ({chosen.label} at PA {chosen.params_pa:#x}): "
        f"VTTBR_EL2={chosen.vttbr_el2:#x} VTCR_EL2={chosen.vtcr_el2:#x}{fwb}"
    )


def registers_from_memory(
    memory: PhysicalMemory,
    kallsyms: Kallsyms | str | os.PathLike[str] | None = None,
    iomem: str | os.PathLike[str] | None = None,
    label: str = "the dump",
) -> tuple[RecoveredRegisters, str]:
    """For commands that need registers the user did not give: the agreed set and the
    one-line note to print (InputError when none or when CPUs disagree)."""
    found = recover_registers(memory, kallsyms, iomem)
    chosen = consistent_registers(found, label)
    return chosen, summary_line(found, chosen)
