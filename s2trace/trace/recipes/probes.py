"""The kprobes whose events the host-side recipes read (``s2trace probes --kernel VERSION``).

:func:`probe_lines` gives the ``kprobe_events`` definitions for a kernel: ``p:`` entry probes
with their arguments fetched from the AAPCS64 argument registers (``%x0``...), ``r:`` return
probes with ``$retval``, and memory fetches (``+24(%x0):u64``) where the recipe needs a field
of a structure.  Event names are ``s2_`` + the function name without leading underscores
(``_ret`` for the return probe), as in ``../shared/capture/init.sh``, which the two real
samples were captured with: the lines for 6.12 and 7.3 produce exactly the fields of
``../shared/samples/*/ftrace.txt``.

Which functions exist depends on the kernel and on inlining, so write the lines one at a time
and skip those whose symbol is not in ``/proc/kallsyms`` (:func:`probe_script` does that).
Void functions get no return probe (a BTF kernel refuses ``$retval`` there).
``alloc_pages_exact``, ``get_free_pages`` and ``free_pages`` are hot: filter them to the VMM's task
(``echo 'comm == "qemu-system-aar"' > events/kprobes/s2_alloc_pages_exact/filter``).
"""

from __future__ import annotations

from dataclasses import dataclass

from s2trace.pkvm.rules import parse_kernel

__all__ = ["PROBES", "Probe", "probe_lines", "probe_script"]

Version = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Probe:
    """One probed function: entry arguments, whether to add a return probe, and the kernel
    versions it applies to (``since`` inclusive, ``until`` exclusive)."""

    function: str
    args: str
    ret: bool
    since: Version = (5, 17)
    until: Version | None = None
    why: str = ""

    @property
    def event(self) -> str:
        """``s2_`` + the function without leading underscores; alloc_pages_exact_noprof (6.10+)
        keeps the name ``s2_alloc_pages_exact``, as in init.sh and the recipes."""
        if self.function.startswith("alloc_pages_exact"):
            return "s2_alloc_pages_exact"
        if self.function.lstrip("_").startswith("get_free_pages"):
            return "s2_get_free_pages"
        return "s2_" + self.function.lstrip("_")

    def applies_to(self, version: Version) -> bool:
        return self.since <= version and (self.until is None or version < self.until)


# Version bounds: arch/arm64/kvm/pkvm.c and mmu.c (docs/kernel-facts.md §KF-2.1, §KF-3.4,
# §KF-3.5) and the capture README (6.1 has no
# pkvm_create_hyp_vm; alloc_pages_exact is alloc_pages_exact_noprof from 6.10).  The 6.14
# bounds (np-guest stage-2 helpers, separate hyp vCPU creation) and 6.16 (nr_pages in
# struct pkvm_mapping) come from mem_protect.c (docs/kernel-facts.md §KF-3.2, §KF-3.5) and were
# checked on 7.3 only.
_MAPPING_6_14 = "gfn=+24(%x0):u64 pfn=+32(%x0):u64"
PROBES: tuple[Probe, ...] = (
    Probe("kvm_arch_init_vm", "kvm=%x0 type=%x1", True, why="VM type (bit 31: protected)"),
    Probe("kvm_share_hyp", "from=%x0 to=%x1", True, why="host->hyp share (counted)"),
    Probe("kvm_unshare_hyp", "from=%x0 to=%x1", False, why="host->hyp unshare (void)"),
    Probe("kvm_arch_vcpu_run_pid_change", "vcpu=%x0", True, why="first vCPU run"),
    Probe("pkvm_init_host_vm", "host_kvm=%x0", True, (6, 2)),
    Probe("pkvm_create_hyp_vm", "host_kvm=%x0", True, (6, 2), why="context of VM donations"),
    Probe("pkvm_destroy_hyp_vm", "host_kvm=%x0", False, (6, 2), why="teardown"),
    Probe("pkvm_create_hyp_vcpu", "vcpu=%x0", True, (6, 14), why="context of vCPU donations"),
    Probe("topup_hyp_memcache", "mc=%x0 min_pages=%x1", True, (6, 2)),
    Probe("free_hyp_memcache", "mc=%x0", False, (6, 2)),
    Probe("hyp_mc_alloc_fn", "arg=%x0", True, (6, 2), why="memcache page (may be inlined)"),
    Probe("hyp_mc_free_fn", "addr=%x0", False, (6, 2), why="memcache page back (may be inlined)"),
    Probe("alloc_pages_exact", "size=%x0 gfp=%x1", True, (5, 17), (6, 10), "donated pages"),
    Probe("alloc_pages_exact_noprof", "size=%x0 gfp=%x1", True, (6, 10), why="donated pages"),
    # hyp_mc_alloc_fn is inlined into topup_hyp_memcache on 7.3 (verified on the lifecycle
    # capture, sample-traces/qemu-pkvm-7.3-lifecycle): the memcache pages are only visible as
    # get_free_pages returns whose caller is topup_hyp_memcache.  The name before the _noprof
    # rename (6.10) is __get_free_pages (not checked on a capture).
    Probe("__get_free_pages", "gfp=%x0 order=%x1", True, (6, 2), (6, 10), "memcache pages"),
    Probe("get_free_pages_noprof", "gfp=%x0 order=%x1", True, (6, 10), why="memcache pages"),
    Probe(
        "free_pages",
        "addr=%x0 order=%x1 caller=%x30:symbol",
        False,
        (6, 2),
        why="pages back from a memcache (caller free_hyp_memcache)",
    ),
    Probe("unshare_pfn_hyp", "pfn=%x0", True, (7, 0), why="per-page unshare"),
    Probe(
        "pkvm_pgtable_stage2_map",
        "pgt=%x0 addr=%x1 size=%x2 phys=%x3 prot=%x4",
        True,
        (6, 14),
        why="host->guest share or donation",
    ),
    Probe("pkvm_mapping_remove", _MAPPING_6_14, False, (6, 14), (6, 16), "guest unshare"),
    Probe(
        "pkvm_mapping_remove",
        _MAPPING_6_14 + " nr_pages=+40(%x0):u64",
        False,
        (6, 16),
        why="guest unshare",
    ),
)


def probe_lines(kernel: str) -> list[str]:
    """``kprobe_events`` lines for ``kernel`` (e.g. ``"6.12"``, ``"7.3.4+deb13-arm64"``)."""
    version = parse_kernel(kernel)
    lines = []
    for p in PROBES:
        if not p.applies_to(version):
            continue
        name = p.event
        lines.append(f"p:{name} {p.function} {p.args}")
        if p.ret:
            lines.append(f"r:{name}_ret {p.function} ret=$retval")
    return lines


def probe_script(kernel: str, comm: str | None = None, tracefs: str = "/sys/kernel/tracing") -> str:
    """A POSIX shell script that adds :func:`probe_lines` for the functions present in
    ``/proc/kallsyms``, optionally filters the hot allocator probes to task ``comm``, and
    enables the kprobe and kvm events (as ``capture/init.sh`` does)."""
    out = ["#!/bin/sh", f"# s2trace probes for Linux {kernel}", f"T={tracefs}"]
    for line in probe_lines(kernel):
        function = line.split()[1]
        out.append(
            f"grep -q ' [tT] {function}$' /proc/kallsyms && "
            f"echo '{line}' >> $T/kprobe_events || echo 'skipped: {line}' >&2"
        )
    if comm is not None:
        for event in (
            "s2_alloc_pages_exact",
            "s2_alloc_pages_exact_ret",
            "s2_free_pages",
            "s2_get_free_pages",
            "s2_get_free_pages_ret",
        ):
            out.append(
                f"[ -d $T/events/kprobes/{event} ] && "
                f"echo 'comm == \"{comm}\"' > $T/events/kprobes/{event}/filter"
            )
    out += ["echo 1 > $T/events/kprobes/enable", "echo 1 > $T/events/kvm/enable 2>/dev/null", ""]
    return "\n".join(out)
