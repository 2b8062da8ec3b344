"""Hand-checked descriptor vectors, run on both engines (the ``engine`` fixture).

Each vector carries its check: the bits that make the answer, from the Arm ARM stage-2
descriptor formats (Arm ARM D8.3; docs/kernel-facts.md §KF-1.1 to §KF-1.6) and the pKVM
encodings (hyp/pgtable.c, mem_protect.c v5.13-7.1; docs/kernel-facts.md §KF-2.2 to §KF-2.4,
§KF-2.8).
"""

from __future__ import annotations

import pytest

from s2trace.arch.geometry import Geometry, Granule

G4, G16, G64 = Geometry(Granule.K4), Geometry(Granule.K16), Geometry(Granule.K64)
G4DS, G16DS = Geometry(Granule.K4, ds=True), Geometry(Granule.K16, ds=True)
G64LPA = Geometry(Granule.K64, lpa=True)

# (raw, geometry, level, expected fields, the check)
VECTORS = [
    # --- 4K ---------------------------------------------------------------------------------
    (
        0x4393D7FF,
        G4,
        3,
        dict(
            kind="page",
            oa=0x4393D000,
            memattr=0xF,
            memattr_name="Normal-WB",
            s2ap="rw",
            sh="inner",
            af=True,
            xn=0,
            sw=0,
            size=4096,
        ),
        "bits[1:0]=11 at L3 = page; 0x7ff = valid|page|MemAttr 1111|S2AP 11|SH 11|AF (§KF-1.9)",
    ),
    (
        0x400007FD,
        G4,
        2,
        dict(kind="block", oa=0x40000000, size=2 << 20, nt=False),
        "bits[1:0]=01 at L2 = 2 MiB block; OA = bits[47:21]",
    ),
    (
        0x40000000 | 0x7FD,
        G4,
        1,
        dict(kind="block", oa=0x40000000, size=1 << 30),
        "L1 allows 1 GiB blocks with 4K; OA = bits[47:30]",
    ),
    (
        0x7FD,
        G4,
        0,
        dict(kind="reserved", oa=None),
        "4K L0 block needs DS=1: bits 01 at L0 is reserved",
    ),
    (
        0x40001000 | 0x7FD,
        G4,
        3,
        dict(kind="reserved"),
        "bits[1:0]=01 at L3 is reserved (Arm ARM D8.3; kernel-facts.md §KF-1.1)",
    ),
    (
        0x7F70A003,
        G4,
        0,
        dict(kind="table", next_table=0x7F70A000, oa=None, memattr=None),
        "bits[1:0]=11 below L3 = table; NLTA bits[47:12]",
    ),
    (
        0x4393D000 | 0x7FF | 1 << 55,
        G4,
        3,
        dict(kind="page", sw=1, page_state="shared_owned"),
        "SW0 (bit 55) = SHARED_OWNED, ≤v6.13 (kernel-facts.md §KF-2.4, §KF-1.9)",
    ),
    (
        0x4393D000 | 0x7FF | 1 << 56,
        G4,
        3,
        dict(sw=2, page_state="shared_borrowed"),
        "SW1 (bit 56) = SHARED_BORROWED",
    ),
    (
        0x9000000 | 0x0040_0000_0000_07C7,
        G4,
        3,
        dict(memattr=1, memattr_name="Device-nGnRE", xn=2, xn_name="XN", s2ap="rw"),
        "host MMIO: MemAttr 0001 = Device-nGnRE, XN bit 54 (kernel-facts.md §KF-1.5)",
    ),
    (
        0x40000000 | 0x7FD | 1 << 16 | 1 << 52 | 1 << 51,
        G4,
        2,
        dict(nt=True, contiguous=True, dbm=True, res0=0),
        "block: nT bit 16, Contiguous bit 52, DBM bit 51",
    ),
    (
        0x40000000 | 0x7FD | 1 << 20,
        G4,
        2,
        dict(res0=1 << 20, oa=0x40000000),
        "2 MiB block: bits 20:17 are RES0, not OA",
    ),
    (0x4393D000 | 0x7FF | 1 << 50, G4, 3, dict(res0=1 << 50), "bit 50 is RES0 at stage 2"),
    (
        0x4393D000 | 0x43F,
        G4,
        3,
        dict(s2ap="none", sh="non", af=True),
        "S2AP 00 = no access, SH 00 = non-shareable",
    ),
    (
        0x4393D000 | 0x75F,
        G4,
        3,
        dict(s2ap="ro", memattr=7, memattr_name="Normal-oNC-iWB"),
        "S2AP 01 = read-only; MemAttr 0111 without FWB: outer NC, inner WB",
    ),
    (0x4393D000 | 0x7BF, G4, 3, dict(s2ap="wo"), "S2AP 10 = write-only"),
    (0x4393D000 | 0x6FF, G4, 3, dict(sh="outer"), "SH 10 = outer shareable"),
    (0x4393D000 | 0x5FF, G4, 3, dict(sh="reserved"), "SH 01 is reserved"),
    (
        0x4393D000 | 0x7FF | 1 << 53,
        G4,
        3,
        dict(xn=1, xn_name="PXN"),
        "XN[1:0]=01: EL1 may not execute (FEAT_XNX)",
    ),
    (
        0x4393D000 | 0x7FF | 3 << 53,
        G4,
        3,
        dict(xn=3, xn_name="UXN"),
        "XN[1:0]=11: EL0 may not execute",
    ),
    (
        0x4393D000 | 0x7FF | 0xA << 59 | 1 << 63,
        G4,
        3,
        dict(pbha=0xA),
        "PBHA[3:0] = bits 62:59; bit 63 is ignored",
    ),
    (0x4393D000 | 0x7FF | 1 << 11, G4, 3, dict(fnxs=True), "FnXS = bit 11"),
    # --- 4K, DS=1 (FEAT_LPA2) -----------------------------------------------------------------
    (
        0x30000123457FF,
        G4DS,
        3,
        dict(kind="page", oa=0xF000012345000, sh=None),
        "DS=1: OA[49:48] in place, OA[51:50] in bits 9:8, no SH (kernel-facts.md §KF-1.3)",
    ),
    (
        0x8000000000 | 0x4FD,
        G4DS,
        0,
        dict(kind="block", oa=0x8000000000, size=512 << 30),
        "DS=1 allows a 512 GiB block at L0",
    ),
    (
        0x7F70A003,
        G4DS,
        -1,
        dict(kind="table", next_table=0x7F70A000, size=1 << 48),
        "level -1 exists with 4K+DS; shift (12-3)*5+3 = 48",
    ),
    (0x7FD, G4DS, -1, dict(kind="reserved"), "no blocks at level -1"),
    # --- 16K --------------------------------------------------------------------------------------
    (
        0x40004000 | 0x7FF,
        G16,
        3,
        dict(kind="page", oa=0x40004000, size=16384, res0=0),
        "16K page: OA bits[47:14]",
    ),
    (0x40001000 | 0x7FF, G16, 3, dict(oa=0x40000000, res0=0x1000), "16K page: bits 13:12 are RES0"),
    (
        0x42000000 | 0x7FD,
        G16,
        2,
        dict(kind="block", oa=0x42000000, size=32 << 20),
        "16K L2 block = 32 MiB",
    ),
    (0x7FD, G16, 1, dict(kind="reserved"), "16K L1 block only with DS=1"),
    (
        0x1000000000 | 0x4FD,
        G16DS,
        1,
        dict(kind="block", oa=0x1000000000, size=64 << 30),
        "16K+DS: 64 GiB block at L1",
    ),
    (0x7F708003, G16, 1, dict(kind="table", next_table=0x7F708000), "16K table, NLTA[47:14]"),
    (
        0x4,
        G16,
        3,
        dict(kind="invalid", owner="hyp", oa=None, size=16384),
        "bit 0 clear = invalid at any granule; owner in bits 9:2 (kernel-facts.md §KF-2.2)",
    ),
    (
        0x7F70A003,
        G16DS,
        0,
        dict(kind="table", next_table=0x7F708000, res0=0x2000),
        "16K+DS level 0 table: NLTA[47:14]; bit 13 of 0x..a003 sits in RES0 bits 13:12",
    ),
    # --- 64K --------------------------------------------------------------------------------------
    (
        0x40010000 | 0x7FF,
        G64,
        3,
        dict(kind="page", oa=0x40010000, size=65536),
        "64K page: OA bits[47:16]",
    ),
    (
        0x40010000 | 0x7FF | 0x3000,
        G64,
        3,
        dict(oa=0x40010000, res0=0x3000),
        "64K without LPA: bits 15:12 RES0",
    ),
    (
        0x40010000 | 0x7FF | 0x3000,
        G64LPA,
        3,
        dict(oa=0x3000040010000, res0=0),
        "64K with LPA: bits 15:12 = OA[51:48] (kernel-facts.md §KF-1.3)",
    ),
    (
        0x40000000 | 0x7FD,
        G64,
        2,
        dict(kind="block", oa=0x40000000, size=512 << 20),
        "64K L2 block = 512 MiB",
    ),
    (0x7FD, G64, 1, dict(kind="reserved"), "64K L1 block needs a 52-bit OA"),
    (
        0x40000000000 | 0x7FD,
        G64LPA,
        1,
        dict(kind="block", oa=0x40000000000, size=4 << 40),
        "64K+LPA: 4 TiB block at L1",
    ),
    (
        0x7F700003 | 0x2000,
        G64LPA,
        2,
        dict(kind="table", next_table=0x2_0000_7F70_0000),
        "64K+LPA table: NLTA[51:48] in bits 15:12",
    ),
]


@pytest.mark.parametrize(
    ("raw", "geometry", "level", "expected", "why"),
    VECTORS,
    ids=[f"{v[1].label}-L{v[2]}-{v[0]:#x}" for v in VECTORS],
)
def test_vector(engine, raw, geometry, level, expected, why):
    got = engine(raw, geometry, level)
    assert {k: got[k] for k in expected} == expected, why


FWB = [
    (0x4393D000 | 0x7DF, "S1-wins", "MemAttr 0111 with FWB = stage 1 wins (7.0+ host, §KF-1.5)"),
    (0x4393D000 | 0x7DB, "Normal-WB", "MemAttr 0110 with FWB = forced Normal-WB"),
    (0x4393D000 | 0x7D7, "Normal-NC", "MemAttr 0101 with FWB = Normal-NC"),
    (0x4393D000 | 0x7C7, "Device-nGnRE", "MemAttr 0001 with FWB = Device-nGnRE"),
    (0x4393D000 | 0x7D3, "reserved", "MemAttr 0100 with FWB is reserved"),
]


@pytest.mark.parametrize(("raw", "name", "why"), FWB)
def test_fwb_memattr(engine, raw, name, why):
    assert engine(raw, G4, 3, fwb=True)["memattr_name"] == name, why


# (profile, raw, expected, check)
PROFILE_VECTORS = [
    (
        "linux-5.13",
        0x0100_0000_0000_0000,
        dict(owner="hyp", owner_id=1, page_state=None),
        "5.13: owner << 56, hyp = 1 (kernel-facts.md §KF-2.2)",
    ),
    (
        "linux-5.13",
        0x4393D7FF | 1 << 55,
        dict(owner="host", page_state=None),
        "5.13 has no page states: SW bits are not read",
    ),
    (
        "linux-5.15",
        0x4,
        dict(owner="hyp", owner_id=1, page_state="nopage", locked=False),
        "5.15+: owner in bits 9:2, hyp = 0x4",
    ),
    ("linux-5.15", 0x8, dict(owner="ffa", owner_id=2), "6.5-6.13: PKVM_ID_FFA = 2"),
    ("linux-5.15", 0x3FC, dict(owner="id:255", owner_id=255), "unknown ids read id:N"),
    (
        "linux-5.15",
        0x400,
        dict(owner="host", locked=True, page_state="owned"),
        "6.2+: KVM_INVALID_PTE_LOCKED = bit 10",
    ),
    (
        "linux-5.15",
        0,
        dict(owner="host", owner_id=0, page_state="owned"),
        "zero = host-owned, not mapped yet",
    ),
    (
        "linux-5.15",
        0x4393D7FF | 3 << 55,
        dict(page_state="reserved"),
        "SW0|SW1 = __PKVM_PAGE_RESERVED (5.17-6.13)",
    ),
    (
        "linux-6.14",
        0x4393D7FF | 1 << 55,
        dict(owner="host", page_state="unknown"),
        "6.14+: host state is in the vmemmap, never 'owned' from the PTE",
    ),
    ("linux-6.14", 0x8, dict(owner="guest"), "6.14+: PKVM_ID_GUEST = 2"),
    (
        "linux-6.14",
        0,
        dict(owner="host", page_state="unknown"),
        "6.14+: a zero entry may hide a shared page (kernel-facts.md §KF-2.8)",
    ),
    (
        "linux-7.1",
        0x2000_0000_0000_0002,
        dict(owner="hyp", owner_id=1, inv_type="donation", locked=False, vm_handle=None),
        "7.1: type 2 (donation) in 63:60, owner HYP=1 in 3:1 (§KF-2.2, seen on 7.3)",
    ),
    (
        "linux-7.1",
        0x2000_0000_0001_0004,
        dict(owner="guest", owner_id=2, vm_handle=0x1000, gfn=0, page_state="nopage"),
        "7.1 guest donation: handle 0x1000 in bits 19:4, gfn 0 in 59:20 (seen on 7.3)",
    ),
    (
        "linux-7.1",
        0x2000_0123_4561_0004,
        dict(owner="guest", vm_handle=0x1000, gfn=0x1234561 >> 4),
        "gfn = bits 59:20",
    ),
    (
        "linux-7.1",
        0x1000_0000_0000_0000,
        dict(inv_type="locked", locked=True, owner=None),
        "7.1: type 1 = locked (replaces bit 10)",
    ),
    (
        "linux-7.1",
        0x3000_0000_0000_0000,
        dict(inv_type="poisoned", owner=None),
        "7.1: type 3 = poisoned (guest S2)",
    ),
    (
        "linux-7.1",
        0x4,
        dict(owner=None, inv_type="none"),
        "7.1: a 6.x-style 0x4 is not an owner annotation (type 0)",
    ),
    (
        "linux-7.1",
        0x414BF75F | 1 << 54,
        dict(owner="host", page_state="unknown", s2ap="ro"),
        "7.3: hyp .text stays valid RO in the host S2 (kernel-facts.md §KF-2.8)",
    ),
    ("android", 0x10, dict(owner="protected", owner_id=4), "ACK: PKVM_ID_PROTECTED = 4"),
    ("android", 0x800, dict(owner="host", note=True), "ACK: MMIO note bit 11"),
    (
        "android",
        0x4393D7FF | 3 << 55,
        dict(page_state="mmio_dma"),
        "ACK: 0b11 = PKVM_PAGE_MMIO_DMA in some branches",
    ),
    (
        "rfc-v3-prot-none",
        0x0080_0000_0000_0000,
        dict(owner="inaccessible", page_state="prot_none"),
        "RFC v3: invalid + SW bit 55 = PROT_NONE (kernel-facts.md §KF-2.7)",
    ),
    (
        "rfc-v3-prot-none,prot_none_bit=58",
        0x0400_0000_0000_0000,
        dict(owner="inaccessible", page_state="prot_none"),
        "RFC v3 variant on bit 58",
    ),
    (
        "rfc-v3-prot-none,prot_none_bit=58",
        0x0080_0000_0000_0000,
        dict(owner=None),
        "with bit 58 chosen, bit 55 means nothing",
    ),
    (
        "rfc-v4-owner-hi32",
        0x1_0000_0000,
        dict(owner="hyp", owner_id=1),
        "RFC v4: owner in bits 63:32",
    ),
    ("rfc-v4-owner-hi32", 0x5_0000_0000, dict(owner="id:5", owner_id=5), "unknown id"),
]


@pytest.mark.parametrize(
    ("profile", "raw", "expected", "why"),
    PROFILE_VECTORS,
    ids=[f"{v[0]}-{v[1]:#x}" for v in PROFILE_VECTORS],
)
def test_profile_vector(engine, profile, raw, expected, why):
    got = engine(raw, G4, 3, profile)
    assert {k: got[k] for k in expected} == expected, why


def test_record_str():
    from s2trace.decode import decode

    text = str(decode(0x4393D7FF | 1 << 55))
    assert text == "page oa=0x4393d000 Normal-WB rw inner AF sw=0x1 | pKVM: host, shared_owned"
    assert str(decode(0x7F70A003, level=0)) == "table next=0x7f70a000"
    assert "vm=0x1000" in str(decode(0x2000_0000_0001_0004, profile="linux-7.1"))
