"""Register field tables (arch.fields): hand-checked against the real samples, round trips.

The sample values are those in ``sample-traces/*/capture.toml`` (gdb on the QEMU pKVM hosts).
Each field below was read off the hex by hand, nibble by nibble, not by the code under test.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from s2trace.arch.fields import Field, Layout
from s2trace.arch.geometry import Geometry, Granule
from s2trace.arch.registers import (
    HCR_EL2,
    VTCR_EL2,
    VTTBR_EL2,
    Vtcr,
    Vttbr,
    encode_vtcr,
    encode_vttbr,
    hcr_e2h,
    hcr_fwb,
)
from s2trace.arch.stage1 import MAIR_EL2, TCR_EL2_E2H, TCR_EL2_NVHE, Tcr, encode_mair, encode_tcr
from s2trace.errors import InputError

LAYOUTS = (VTCR_EL2, VTTBR_EL2, HCR_EL2, TCR_EL2_NVHE, TCR_EL2_E2H, MAIR_EL2)

# The real samples (qemu-pkvm-6.12, qemu-pkvm-7.3; the lifecycle capture repeats 7.3).
VTCR = 0x802D3590
VTTBR_612, VTTBR_73 = 0x7F709001, 0x7F609001
TCR_612, TCR_73 = 0x15001F5B5D53510, 0x5500075B5903510
HCR_612, HCR_73 = 0x30480080001, 0x430480080001
MAIR = 0x40044FFFF
TCR_61_NVHE = 0x80853510  # the 6.1 nVHE capture's live TCR_EL2 (E2H=0 layout)


def test_sample_vtcr_fields():
    # 0x802d3590: 0x90 -> T0SZ 0x10, SL0 0b10; 0x35 -> IRGN0 1, ORGN0 1, SH0 3, TG0 0;
    # 0x2d -> PS 0b101, VS 1, HA 1; bit 31 RES1.
    assert VTCR_EL2.decode(VTCR) == {
        "T0SZ": 16, "SL0": 2, "IRGN0": 1, "ORGN0": 1, "SH0": 3, "TG0": 0, "PS": 5,
        "VS": 1, "HA": 1, "HD": 0, "HWU": 0, "DS": 0, "SL2": 0,
    }  # fmt: skip
    assert VTCR & ~VTCR_EL2.defined == 0


def test_sample_vttbr_fields():
    for value, baddr in ((VTTBR_612, 0x7F709000), (VTTBR_73, 0x7F609000)):
        assert VTTBR_EL2.decode(value) == {"CnP": 1, "BADDR": baddr >> 1, "VMID": 0}
        assert encode_vttbr(baddr, 0, cnp=True) == value
        t = Vttbr.decode(value)
        assert (t.baddr, t.vmid, t.cnp) == (baddr, 0, True)


def test_sample_hcr_fields():
    # 0x30480080001: bits 0 (VM), 19 (TSC), 31 (RW), 34 (E2H), 40 (APK), 41 (API);
    # the 7.3 value adds bit 46 (FWB: v7.0+ pKVM sets it when the CPU has FEAT_S2FWB).
    set_612 = {"VM", "TSC", "RW", "E2H", "APK", "API"}
    assert {k for k, v in HCR_EL2.decode(HCR_612).items() if v} == set_612
    assert {k for k, v in HCR_EL2.decode(HCR_73).items() if v} == set_612 | {"FWB"}
    assert (hcr_fwb(HCR_612), hcr_fwb(HCR_73), hcr_fwb(None)) == (False, True, False)
    assert hcr_e2h(HCR_612) and hcr_e2h(HCR_73) and not hcr_e2h(0x80000001)
    for value in (HCR_612, HCR_73):
        assert value & ~HCR_EL2.defined == 0


def test_sample_tcr_fields_hvhe():
    # 0x0150_01f5_b5d5_3510 (6.12): 0x10 T0SZ 16; 0x35 IRGN0 1 ORGN0 1 SH0 3 TG0 0;
    # 0xd5 T1SZ 21 A1 1 EPD1 1; 0xb5 IRGN1 1 ORGN1 1 SH1 3 TG1 0b10 (4K);
    # 0xf5 IPS 5 AS TBI0 TBI1 HA; 0x01 HD; 0x50 TBID1 NFD1; 0x01 E0PD1.
    f = TCR_EL2_E2H.decode(TCR_612)
    assert {k: f[k] for k in ("T0SZ", "EPD0", "TG0", "T1SZ", "A1", "EPD1", "TG1", "IPS")} == {
        "T0SZ": 16, "EPD0": 0, "TG0": 0, "T1SZ": 21, "A1": 1, "EPD1": 1, "TG1": 2, "IPS": 5,
    }  # fmt: skip
    on = {k for k, v in f.items() if v and k not in ("T0SZ", "T1SZ", "IPS", "TG1", "SH0")}
    assert on == {"IRGN0", "ORGN0", "A1", "EPD1", "IRGN1", "ORGN1", "SH1", "AS", "TBI0",
                  "TBI1", "HA", "HD", "TBID1", "NFD1", "E0PD1"}  # fmt: skip
    # 0x0550_0075_b590_3510 (7.3): 0x90 T1SZ 16 EPD1; 0x75 IPS 5 AS TBI0 TBI1 (no HA);
    # 0x00 (no HD); 0x50 TBID1 NFD1; 0x05 E0PD1 TCMA1.
    f = TCR_EL2_E2H.decode(TCR_73)
    assert (f["T1SZ"], f["A1"], f["HA"], f["HD"], f["TCMA1"], f["E0PD1"]) == (16, 0, 0, 0, 1, 1)
    for value in (TCR_612, TCR_73):
        assert value & ~TCR_EL2_E2H.defined == 0


def test_sample_tcr_nvhe_and_encoder():
    # 0x80853510: T0SZ 16, IRGN0/ORGN0 1, SH0 3, TG0 4K, PS 5, RES1 bits 23 and 31.
    assert TCR_EL2_NVHE.decode(TCR_61_NVHE)["PS"] == 5
    assert encode_tcr(Geometry(Granule.K4), 48, e2h=False) == TCR_61_NVHE
    # E2H=1: the same walk fields, EPD1, TG1 = 4K (0b10), IPS 48 bits.
    assert encode_tcr(Geometry(Granule.K4), 48, e2h=True) == 0x5_8080_3510


def test_sample_mair():
    assert [MAIR_EL2.get(MAIR, f"Attr{n}") for n in range(8)] == [
        0xFF, 0xFF, 0x44, 0x00, 0x04, 0, 0, 0,
    ]  # fmt: skip
    assert encode_mair((0xFF, 0xFF, 0x44, 0x00, 0x04)) == MAIR


def test_encode_vtcr_sample():
    """The samples' VTCR_EL2 is this encoder's 4K/48-bit/level-0 value plus HA (bit 21)."""
    assert encode_vtcr(Geometry(Granule.K4), 48, 0) | 1 << 21 == VTCR


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda lay: f"{lay.register}")
@given(value=st.integers(0, (1 << 64) - 1))
def test_round_trip_defined_bits(layout, value):
    """encode(decode(x)) is x on the bits the table defines, RES1 bits set."""
    assert layout.encode(**layout.decode(value)) == (value & layout.defined) | layout.res1


def test_layout_rejects_bad_input():
    with pytest.raises(InputError, match="does not fit"):
        VTCR_EL2.encode(T0SZ=64)
    with pytest.raises(InputError, match="no field"):
        HCR_EL2.encode(NOPE=1)
    with pytest.raises(ValueError, match="overlaps"):
        Layout("X", (Field("A", 3, 0), Field("B", 4, 3)))


@pytest.mark.parametrize(
    "geometry",
    [
        Geometry(Granule.K4),
        Geometry(Granule.K16),
        Geometry(Granule.K64),
        Geometry(Granule.K4, ds=True),
        Geometry(Granule.K64, lpa=True),
    ],
    ids=lambda g: g.label,
)
@given(va_bits=st.integers(36, 52), e2h=st.booleans())
def test_encode_tcr_decodes_back(geometry, va_bits, e2h):
    t = Tcr.decode(encode_tcr(geometry, va_bits, e2h), e2h)
    assert (t.va_bits, t.granule, t.ds) == (va_bits, geometry.granule, geometry.ds)
    assert t.ps_bits == (52 if geometry.oa_bits == 52 else 48)
    assert Tcr.decode(encode_tcr(geometry, va_bits, e2h)).e2h == e2h  # the inference agrees


@pytest.mark.parametrize("granule", list(Granule))
@given(ia_bits=st.integers(32, 48), vs=st.booleans())
def test_encode_vtcr_decodes_back(granule, ia_bits, vs):
    geometry = Geometry(granule)
    for level in geometry.levels:
        v = Vtcr.decode(encode_vtcr(geometry, ia_bits, level, vs=vs))
        assert (v.ia_bits, v.granule, v.vs, v.ps_bits) == (ia_bits, granule, vs, 48)
