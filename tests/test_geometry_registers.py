"""Granule geometry and VTCR_EL2/VTTBR_EL2 decoding (Arm ARM D8.2, D19; arch/arm64/include/asm/
kvm_arm.h; docs/kernel-facts.md §KF-1.2, §KF-1.7 to §KF-1.9)."""

from __future__ import annotations

import pytest

from s2trace.arch.geometry import Geometry, Granule
from s2trace.arch.registers import Vtcr, Vttbr, config_explicit, config_from_registers
from s2trace.errors import InputError


@pytest.mark.parametrize(
    ("geometry", "shifts"),
    [
        (Geometry(Granule.K4), {0: 39, 1: 30, 2: 21, 3: 12}),
        (Geometry(Granule.K4, ds=True), {-1: 48, 0: 39, 1: 30, 2: 21, 3: 12}),
        (Geometry(Granule.K16), {0: 47, 1: 36, 2: 25, 3: 14}),
        (Geometry(Granule.K64), {1: 42, 2: 29, 3: 16}),
    ],
)
def test_level_shifts(geometry, shifts):
    """ARM64_HW_PGTABLE_LEVEL_SHIFT: (PAGE_SHIFT-3)*(4-n)+3 (docs/kernel-facts.md §KF-1.2)."""
    assert {lv: geometry.shift(lv) for lv in geometry.levels} == shifts


@pytest.mark.parametrize(
    ("geometry", "blocks"),
    [
        (Geometry(Granule.K4), {1, 2}),
        (Geometry(Granule.K4, ds=True), {0, 1, 2}),
        (Geometry(Granule.K16), {2}),
        (Geometry(Granule.K16, ds=True), {1, 2}),
        (Geometry(Granule.K64), {2}),
        (Geometry(Granule.K64, lpa=True), {1, 2}),
    ],
)
def test_block_levels(geometry, blocks):
    assert geometry.block_levels == blocks


def test_geometry_rejects_impossible():
    with pytest.raises(InputError, match="DS=1"):
        Geometry(Granule.K64, ds=True)
    with pytest.raises(InputError, match="level 0 does not exist"):
        Geometry(Granule.K64).check_level(0)
    with pytest.raises(InputError, match="level -1"):
        Geometry(Granule.K4).check_level(-1)


def test_sample_vtcr():
    """VTCR_EL2 0x802d3590 of the real samples, decoded by hand (docs/kernel-facts.md §KF-1.9)."""
    v = Vtcr.decode(0x802D3590)
    assert (v.t0sz, v.ia_bits, v.sl0, v.granule, v.ps_bits) == (16, 48, 2, Granule.K4, 48)
    assert (v.irgn0, v.orgn0, v.sh0, v.vs, v.ha, v.hd, v.ds) == (
        "WBWA",
        "WBWA",
        "inner",
        True,
        True,
        False,
        False,
    )
    c = config_from_registers(0x7F709001, 0x802D3590)
    assert (c.start_level, c.ia_bits, c.root, c.vmid, c.concatenated) == (0, 48, 0x7F709000, 0, 1)


def test_vttbr_fields():
    t = Vttbr.decode(0x00AB_0000_7F70_9001, vs=True)
    assert (t.baddr, t.vmid, t.cnp) == (0x7F709000, 0xAB, True)
    assert Vttbr.decode(0x12AB_0000_7F70_9000, vs=False).vmid == 0xAB
    assert Vttbr.decode(0x7F70_9000 | 0b1010 << 2, pa52=True).baddr == 0xA << 48 | 0x7F709000


@pytest.mark.parametrize(
    ("vtcr", "start", "ia", "concat"),
    [
        # 4K, T0SZ=24 (40-bit), SL0=1 -> level 1 with 2 concatenated tables (kernel-facts.md
        # §KF-1.7)
        (0x80000000 | 1 << 6 | 24, 1, 40, 2),
        # 4K, T0SZ=20 (44-bit), SL0=2 -> level 0, 1 table
        (0x80000000 | 2 << 6 | 20, 0, 44, 1),
        # 16K (TG0=2), T0SZ=24 (40-bit), SL0=1 -> level 2 with 2^(40-36) = 16 tables
        # (kvm_pgd_pages; kernel-facts.md §KF-1.7)
        (0x80000000 | 2 << 14 | 1 << 6 | 24, 2, 40, 16),
        # 64K (TG0=1), T0SZ=22 (42-bit), SL0=1 -> level 2, 1 table
        (0x80000000 | 1 << 14 | 1 << 6 | 22, 2, 42, 1),
        # 64K, T0SZ=16 (48-bit), SL0=2 -> level 1, 1 table (kernel-facts.md §KF-1.7)
        (0x80000000 | 1 << 14 | 2 << 6 | 16, 1, 48, 1),
        # 4K DS=1, SL2=1, T0SZ=12 (52-bit) -> level -1
        (0x80000000 | 1 << 32 | 1 << 33 | 6 << 16 | 12, -1, 52, 1),
    ],
)
def test_start_levels(vtcr, start, ia, concat):
    c = config_from_registers(0x40000000, vtcr)
    assert (c.start_level, c.ia_bits, c.concatenated) == (start, ia, concat)


@pytest.mark.parametrize(
    ("vtcr", "message"),
    [
        (0x80000000 | 0 << 6 | 16, "concatenated"),  # 4K 48-bit from level 2: 2^18 tables
        (0x80000000 | 2 << 6 | 40, "resolves bits"),  # 4K 24-bit IPA starting at level 0
        (0x80000000 | 3 << 14, "TG0=3"),
        (0x80000000 | 1 << 14 | 3 << 6 | 16, "reserved"),  # 64K SL0=3 is reserved
        (0x80000000 | 1 << 33 | 12, "needs DS=1"),  # SL2 without DS
        (0x80000000 | 2 << 14 | 3 << 6 | 16, "needs DS=1"),  # 16K level 0 without DS
        (0x80000000 | 7 << 16 | 2 << 6 | 16, "PS=7"),
        (0x80000000 | 2 << 6 | 12, "52-bit"),  # 52-bit IPA without DS
        (0x80000000 | 1 << 14 | 1 << 32 | 2 << 6 | 16, "DS=1 is not allowed"),
    ],
)
def test_impossible_vtcr(vtcr, message):
    with pytest.raises(InputError, match=message):
        config_from_registers(0x40000000, vtcr)


def test_config_explicit():
    c = config_explicit(0x7F709000, 0, 48, "4k")
    assert (c.start_level, c.concatenated, c.root_bytes) == (0, 1, 4096)
    c = config_explicit(0x10000, 1, 40, "4k")
    assert (c.concatenated, c.root_bytes) == (2, 8192)
    with pytest.raises(InputError):
        config_explicit(0, 3, 48, "4k")
