"""The synthetic machine: where things live in physical memory, as data.

Modelled on the real QEMU captures in ``sample-traces/`` (``-M virt -m 1024``, Linux 6.12):
RAM at 0x40000000 (1 GiB), the 10 MiB hypervisor carve-out at 0x7f200000 (dmesg of the 6.12
capture: ``kvm [0]: Reserved 10 MiB at 0x7f200000``), the host stage-2 tables inside it.  The
kernel-image sections below are illustrative: the 6.12 capture's dump shows hyp-owned runs of
this kind inside the kernel image (the nVHE ``.hyp.*`` sections and per-CPU areas that
``fix_host_ownership`` hands to the hypervisor at boot, nvhe/setup.c v5.15+; docs/kernel-facts.md
§KF-3.3) and shared read-only data (host SHARED_OWNED, hyp SHARED_BORROWED).  The pools for VMs,
virtio buffers and FF-A buffers are ranges of ordinary RAM, far from each other so that scenarios
never collide.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BOOT_SECTIONS",
    "CARVEOUT",
    "FFA_POOL",
    "HOST_POOL",
    "KERNEL",
    "PAGE",
    "RAM",
    "SECTION_OPS",
    "TABLE_BASE",
    "VIRTIO_POOL",
    "VM_POOL",
    "Region",
]

PAGE = 4096


@dataclass(frozen=True, slots=True)
class Region:
    """A physical range ``[base, base + size)``."""

    base: int
    size: int

    @property
    def end(self) -> int:
        return self.base + self.size

    @property
    def pages(self) -> int:
        return self.size // PAGE


RAM = Region(0x4000_0000, 0x4000_0000)
CARVEOUT = Region(0x7F20_0000, 0x00A0_0000)
#: Host stage-2 tables are allocated from the carve-out (the builder's default table base).
TABLE_BASE = 0x7F70_0000
KERNEL = Region(0x4020_0000, 0x0200_0000)
VM_POOL = Region(0x4400_0000, 0x0200_0000)  # pages of VM slots (struct kvm, vCPUs, donations)
VIRTIO_POOL = Region(0x4800_0000, 0x0100_0000)  # virtqueue / bounce buffers
FFA_POOL = Region(0x4C00_0000, 0x0100_0000)  # FF-A memory-share buffers
HOST_POOL = Region(0x5000_0000, 0x1000_0000)  # ordinary host memory (benign host faults)

#: Boot-time ownership (what ``fix_host_ownership`` sets up), one row per range:
#: (what, op, addr, pages).  ``donate``: hyp OWNED, host NOPAGE; ``share``: host
#: SHARED_OWNED, hyp SHARED_BORROWED.
BOOT_SECTIONS: tuple[tuple[str, str, int, int], ...] = (
    ("hypervisor carve-out (hyp stage 1, vmemmap, host stage 2, pools)", "donate",
     CARVEOUT.base, CARVEOUT.pages),
    (".hyp.text/.hyp.data of the kernel image", "donate", 0x4113_6000, 21),
    ("nVHE per-CPU areas", "donate", 0x4216_B000, 3),
    (".hyp.bss", "donate", 0x42C2_C000, 2),
    (".hyp.rodata (shared with the hypervisor)", "share", 0x4180_0000, 16),
)  # fmt: skip

#: The tracepoint's op, initiator and completer for each boot op.
SECTION_OPS = {"donate": ("donate", "host", "hyp"), "share": ("share", "host", "hyp")}
