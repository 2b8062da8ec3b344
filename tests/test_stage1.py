"""The EL2 stage 1: TCR_EL2/TTBR0_EL2 decode, descriptor fields, the hyp map walk."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s2trace.arch.geometry import Geometry, Granule
from s2trace.arch.stage1 import (
    Tcr,
    config_from_el2,
    decode_stage1,
    encode_tcr,
    leaf_fields,
    mair_attr_name,
    mair_names,
)
from s2trace.errors import InputError, StrictError
from s2trace.hyp.build import HypStage1Builder, write_machine
from s2trace.hyp.stage1_walk import HYP_MAP, translate, walk_hyp
from s2trace.io import open_memory

TCR_612 = 0x15001F5B5D53510  # 6.12 capture, gdb-regs.txt
TCR_73 = 0x5500075B5903510  # 7.3 capture, gdb-regs.txt
TCR_61_NVHE = 0x80853510  # §KF-2.9: live TCR_EL2 of the 6.1 nVHE capture


# -- registers --------------------------------------------------------------------------------
def test_tcr_hvhe_real_values():
    for value in (TCR_612, TCR_73):
        t = Tcr.decode(value)
        assert t.e2h and t.e2h_inferred
        assert (t.t0sz, t.va_bits, t.granule, t.ps_bits) == (16, 48, Granule.K4, 48)
        assert not t.hpd and not t.ds and not t.epd0
    assert Tcr.decode(TCR_612).ha and not Tcr.decode(TCR_73).ha  # bit 39


def test_tcr_nvhe_real_value():
    t = Tcr.decode(TCR_61_NVHE)
    assert not t.e2h  # bits 63:34 are RES0 in the E2H=0 layout
    assert (t.va_bits, t.granule, t.ps_bits, t.hpd, t.ds) == (48, Granule.K4, 48, False, False)


def test_tcr_format_from_hcr_overrides_inference():
    c = config_from_el2(0x7F301001, TCR_612, hcr=0)  # HCR_EL2.E2H clear: E2H=0 layout
    assert not c.e2h and not c.notes
    c = config_from_el2(0x7F301001, TCR_612, hcr=1 << 34)
    assert c.e2h


def test_config_real_612():
    c = config_from_el2(0x7F301001, TCR_612, mair=0x40044FFFF)
    assert (c.root, c.start_level, c.va_bits, c.start_entries) == (0x7F301000, 0, 48, 512)
    assert c.notes and "inferred" in c.notes[0]


@pytest.mark.parametrize(
    ("granule", "va_bits", "ds", "start"),
    [
        (Granule.K4, 48, False, 0),
        (Granule.K4, 39, False, 1),
        (Granule.K4, 25, False, 2),
        (Granule.K4, 52, True, -1),
        (Granule.K16, 48, False, 0),
        (Granule.K16, 47, False, 1),
        (Granule.K64, 42, False, 2),
        (Granule.K64, 48, False, 1),
    ],
)
def test_start_levels(granule, va_bits, ds, start):
    g = Geometry(granule, ds=ds)
    for e2h in (False, True):
        c = config_from_el2(0x40000000, encode_tcr(g, va_bits, e2h), e2h=e2h)
        assert c.start_level == start
        assert c.start_entries == 1 << (va_bits - g.shift(start))


def test_register_errors():
    with pytest.raises(InputError, match="TG0=3"):
        config_from_el2(0x40000000, 16 | 3 << 14 | 5 << 32)
    with pytest.raises(InputError, match="needs DS=1"):
        config_from_el2(0x40000000, 12 | 5 << 32 | 1 << 34, e2h=True)  # 52-bit VA, 4K, DS=0
    with pytest.raises(InputError, match="64 bits"):
        config_from_el2(0x40000000, 1 << 64)


# -- descriptors ------------------------------------------------------------------------------
def test_real_leaves_hand_decoded():
    """Leaves of the 6.12 hyp stage 1 (hVHE), decoded by hand from the bit positions."""
    cfg = config_from_el2(0x7F301001, TCR_612, mair=0x40044FFFF)
    raw = np.array([0x4113A783, 0x14000004393D703, 0xC00000418D1783], dtype=np.uint64)
    codes = decode_stage1(raw, cfg.geometry, 3)
    assert codes.kind.tolist() == [2, 2, 2]  # page
    assert codes.addr.tolist() == [0x4113A000, 0x4393D000, 0x418D1000]
    f = leaf_fields(raw, cfg)
    assert f["ap"].tolist() == [2, 0, 2]  # RO, RW, RO (E2H=1 encodings)
    assert f["sh"].tolist() == [3, 3, 3] and f["af"].all() and (f["attrindx"] == 0).all()
    assert f["uxn"].tolist() == [False, True, True]  # bit 54
    assert f["pxn"].tolist() == [False, False, False]  # bit 53 clear: pre-fix hVHE
    assert f["sw"].tolist() == [0, 2, 1]  # SW1 = shared_borrowed, SW0 = shared_owned


def test_nvhe_leaf_fields():
    cfg = config_from_el2(0x40000000, TCR_61_NVHE)
    rw_nx = (1 << 54) | 0x40001000 | 0x743  # AP=01 RW, XN
    ro_x = 0x40002000 | 0x7C3  # AP=11 RO, executable
    f = leaf_fields(np.array([rw_nx, ro_x], dtype=np.uint64), cfg)
    assert f["ap"].tolist() == [1, 3]
    assert f["pxn"].tolist() == [True, False]  # XN (bit 54) is the EL2 execute-never
    assert not f["uxn"].any() and not f["ap1_clear"].any()


def test_mair():
    assert mair_names(0x40044FFFF)[:5] == (
        "Normal-WB",
        "Normal-WB",
        "Normal-NC",
        "Device-nGnRnE",
        "Device-nGnRE",
    )
    assert mair_attr_name(0xBB) == "Normal-WT"
    assert mair_attr_name(0x4F) == "Normal-oNC-iWB"
    assert mair_attr_name(0xF0) == "Normal-Tagged"
    assert mair_attr_name(0x0C) == "Device-GRE"
    assert mair_attr_name(0x02).startswith("reserved")
    assert mair_attr_name(0x80).startswith("reserved")  # inner 0000 with a Normal outer


# -- walks of built tables -------------------------------------------------------------------
def _walk(builder: HypStage1Builder, tmp_path, extra=None, **kw):
    path = write_machine(tmp_path / "hyp.elf", {**builder.table_pages(), **(extra or {})})
    with open_memory([str(path)]) as memory:
        return walk_hyp(memory, builder.config, **kw)


def _same(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    HYP_MAP.check(got)
    assert len(got) == len(expected)
    for col in expected.columns:
        a = got[col].astype(object).where(got[col].notna(), None).tolist()
        b = expected[col].astype(object).where(expected[col].notna(), None).tolist()
        assert a == b, col


FORMATS = [
    (Geometry(Granule.K4), 48),
    (Geometry(Granule.K4), 39),
    (Geometry(Granule.K16), 47),
    (Geometry(Granule.K64), 42),
    (Geometry(Granule.K4, ds=True), 52),
]


@pytest.mark.parametrize("e2h", [False, True], ids=["nvhe", "hvhe"])
@pytest.mark.parametrize(
    ("geometry", "va_bits"), FORMATS, ids=[f"{g.label}-{v}" for g, v in FORMATS]
)
def test_walk_matches_builder(tmp_path, geometry, va_bits, e2h):
    b = HypStage1Builder(geometry, va_bits=va_bits, e2h=e2h, table_base=0x7F200000)
    page, block = geometry.granule.value, geometry.span(2)
    top = 1 << (va_bits - 1)
    b.map(top, 4 * page, 0x40000000, perm="rw")
    b.map(top + block, block, 0x40000000 + block)  # one level-2 block
    b.map(0x41000000, page, 0x41000000, perm="rx")  # identity, hyp text
    b.map(top + 8 * page, page, 0x42000000, perm="ro", state="shared_owned")
    b.map(top + 9 * page, page, 0x43000000, state="shared_borrowed", attrindx=4)
    r = _walk(b, tmp_path)
    assert len(r.problems) == 0
    _same(r.map, b.expected_map())
    names = r.map.set_index("va_start")["memattr"].astype(str)
    assert names[top + 9 * page] == "Device-nGnRE" and names[top] == "Normal-WB"


def test_pre_fix_hvhe_sets_only_uxn(tmp_path):
    b = HypStage1Builder(e2h=True, pre_fix_hvhe=True)
    b.map(0x8000_0000_0000, 0x1000, 0x40000000, perm="rw")
    row = _walk(b, tmp_path).map.iloc[0]
    assert bool(row["uxn"]) and not bool(row["pxn"])  # writable and executable at EL2


def test_vmemmap_state_source_reads_unknown(tmp_path):
    b = HypStage1Builder()
    b.map(0x8000_0000_0000, 0x1000, 0x40000000, state="shared_borrowed")
    r = _walk(b, tmp_path, hyp_states="vmemmap")
    assert r.map["hyp_state"].astype(str).tolist() == ["unknown"]
    assert r.map["sw"].tolist() == [2]


def test_translate(tmp_path):
    b = HypStage1Builder()
    b.map(0x8000_0000_0000, 0x2000, 0x40000000)
    b.map(0x8000_0020_0000, 0x200000, 0x40200000)  # a block
    r = _walk(b, tmp_path)
    va = np.array([0x8000_0000_0123, 0x8000_0000_1FFF, 0x8000_0000_2000, 0x8000_002F_FFFF])
    pa, ok = r.translate(va)
    assert ok.tolist() == [True, True, False, True]
    assert pa[ok].tolist() == [0x40000123, 0x40001FFF, 0x402FFFFF]
    empty_pa, empty_ok = translate(HYP_MAP.empty(), va)
    assert not empty_ok.any() and (empty_pa == 0).all()


def test_problems_are_recorded(tmp_path):
    b = HypStage1Builder(e2h=False)
    b.map(0x1000_0000, 0x1000, 0x40000000)
    b.set_raw(0x1000_1000, 3, 0x40001001)  # bits[1:0]=0b01 at level 3: reserved
    b.set_raw(0x1000_2000, 3, 0x40002703)  # E2H=0 page with AP[1] (bit 6) clear
    b.set_raw(0x1000_3000, 3, 0x40003743 | 1 << 53)  # PXN is RES0 with E2H=0
    b.set_raw(0x4000_0000, 1, 0x1_0000_0003)  # table outside the dump
    table, index = b._slot(0x1000_0000, 0)  # the level-0 table entry: set XNTable
    b._tables[table][index] = int(b._tables[table][index]) | 1 << 60
    r = _walk(b, tmp_path)
    kinds = r.problems.counts()
    assert kinds == {
        "reserved_encoding": 1,
        "res1_clear": 1,
        "res0_set": 1,
        "table_outside_dump": 1,
        "table_attributes": 1,
    }
    path = write_machine(tmp_path / "s.elf", b.table_pages())
    with open_memory([str(path)]) as memory, pytest.raises(StrictError):
        walk_hyp(memory, b.config, strict=True)


def test_bad_state_source():
    with pytest.raises(ValueError, match="hyp_states"):
        walk_hyp(None, config_from_el2(0x40000000, TCR_612), hyp_states="elsewhere")  # type: ignore[arg-type]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    pages=st.sets(st.integers(0, (1 << 20) - 1), min_size=1, max_size=40),
    e2h=st.booleans(),
    data=st.data(),
)
def test_random_maps_round_trip(tmp_path, pages, e2h, data):
    """Any set of 4K pages at any VAs walks back to the builder's map, and every mapped
    byte translates to where the builder put it."""
    b = HypStage1Builder(e2h=e2h)
    states = ["owned", "shared_owned", "shared_borrowed"]
    for i, vpn in enumerate(sorted(pages)):
        b.map(
            0x4000_0000_0000 + vpn * 0x1000 * 977 % (1 << 46) // 0x1000 * 0x1000,
            0x1000,
            0x40000000 + i * 0x1000,
            perm=data.draw(st.sampled_from(["rw", "ro", "rx"])),
            state=data.draw(st.sampled_from(states)),
        )
    r = _walk(b, tmp_path)
    exp = b.expected_map()
    _same(r.map, exp)
    off = data.draw(st.integers(0, 0xFFF))
    pa, ok = r.translate(exp["va_start"].to_numpy(np.uint64) + np.uint64(off))
    assert ok.all() and (pa == exp["pa"].to_numpy(np.uint64) + np.uint64(off)).all()
