"""Property tests: schema round trips, engine agreement, builder inverse (hypothesis)."""

from __future__ import annotations

import itertools
import struct

import numpy as np
import pandas as pd
import pytest
from conftest import _plain
from hypothesis import given, settings
from hypothesis import strategies as st

from s2trace.arch.geometry import Geometry, Granule
from s2trace.arch.schema import descriptor_schema
from s2trace.decode import decode, decode_array, decode_ownership
from s2trace.decode.build import build_descriptor
from s2trace.decode.explain import explain, explain_text
from s2trace.decode.numpy_engine import decode_fields, res0_masks
from s2trace.pkvm.profiles import profile_names

GEOMETRIES = [
    Geometry(Granule.K4),
    Geometry(Granule.K4, ds=True),
    Geometry(Granule.K16),
    Geometry(Granule.K16, ds=True),
    Geometry(Granule.K64),
    Geometry(Granule.K64, lpa=True),
]
CASES = [(g, lv) for g in GEOMETRIES for lv in g.levels]
CASE_IDS = [f"{g.label}-L{lv}" for g, lv in CASES]

# Random 64-bit values, biased towards the shapes that matter: zero, small annotations,
# real-looking leaves and tables, and fully random words.
u64 = st.integers(0, (1 << 64) - 1)
descriptor = st.one_of(
    u64,
    st.integers(0, 0xFFFF),
    st.builds(lambda hi, lo: hi << 48 | lo, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)),
    st.builds(
        lambda a, low: (a << 12) | low,
        st.integers(0, (1 << 36) - 1),
        st.sampled_from([0x7FF, 0x7FD, 0x7C7, 0x3, 0x4FD, 0x7DF, 0x4, 0x0]),
    ),
)


@pytest.mark.parametrize(("geometry", "level"), CASES, ids=CASE_IDS)
@settings(max_examples=150, deadline=None)
@given(raw=descriptor)
def test_schema_round_trip(geometry, level, raw):
    """build(parse(x)) == x for every 64-bit x: every bit sits in exactly one field."""
    schema = descriptor_schema(geometry, level)
    data = struct.pack("<Q", raw)
    parsed = schema.parse(data)
    assert schema.build({"kind": parsed.kind, "body": parsed.body}) == data


@pytest.mark.parametrize(("geometry", "level"), CASES, ids=CASE_IDS)
@settings(max_examples=25, deadline=None)
@given(
    values=st.lists(descriptor, min_size=1, max_size=40),
    profile=st.sampled_from(profile_names()),
    fwb=st.booleans(),
)
def test_engines_agree(geometry, level, values, profile, fwb):
    """The numpy engine equals the Construct engine on every field, value and type."""
    frame = decode_array(np.array(values, dtype=np.uint64), geometry, level, profile, fwb)
    rows = frame.astype(object).to_dict("records")
    for raw, row in zip(values, rows, strict=True):
        ref = decode(raw, geometry, level, profile, fwb).to_dict()
        got = {k: _plain(v) for k, v in row.items()}
        assert got == ref, hex(raw)
        assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in ref.items()}


@pytest.mark.parametrize(("geometry", "level"), CASES, ids=CASE_IDS)
@settings(max_examples=25, deadline=None)
@given(
    values=st.lists(descriptor, min_size=1, max_size=40), profile=st.sampled_from(profile_names())
)
def test_fast_path_agrees(geometry, level, values, profile):
    """decode_ownership (the walk's path) gives the same kind/address/owner/state."""
    codes = decode_ownership(np.array(values, dtype=np.uint64), geometry, level, profile)
    for i, raw in enumerate(values):
        ref = decode(raw, geometry, level, profile)
        assert ("table", "block", "page", "invalid", "reserved")[codes.kind[i]] == ref.kind
        expect_addr = ref.oa if ref.oa is not None else ref.next_table or 0
        assert int(codes.addr[i]) == expect_addr
        owner = codes.owner_names[codes.owner[i]] if codes.owner[i] >= 0 else None
        state = codes.state_names[codes.state[i]] if codes.state[i] >= 0 else None
        assert (owner, state) == (ref.owner, ref.page_state), hex(raw)


@pytest.mark.parametrize(("geometry", "level"), CASES, ids=CASE_IDS)
@settings(max_examples=25, deadline=None)
@given(
    values=st.lists(descriptor, min_size=1, max_size=40),
    profile=st.sampled_from(profile_names()),
    fwb=st.booleans(),
    data=st.data(),
)
def test_fields_from_codes_equal_the_full_decode(geometry, level, values, profile, fwb, data):
    """decode_fields (the walk's map: the fast path's codes plus the other fields of the kept
    rows) equals decode_array on every column, value, null, dtype and category list, for
    any subset of rows taken from the codes."""
    raw = np.array(values, dtype=np.uint64)
    codes = decode_ownership(raw, geometry, level, profile, ids=True)
    rows = np.array(
        sorted(data.draw(st.sets(st.integers(0, len(values) - 1), min_size=1))), dtype=np.intp
    )
    want = decode_array(raw[rows], geometry, level, profile, fwb)
    got = decode_fields(raw[rows], codes.take(rows), geometry, level, profile, fwb)
    assert list(got) == list(want.columns)
    for name, column in got.items():
        ref = want[name]
        if isinstance(column, np.ndarray):
            assert column.dtype == ref.dtype and np.array_equal(column, ref.to_numpy()), name
        else:
            assert column.dtype == ref.dtype, name
            assert pd.Series(column).equals(ref), name


def test_fields_need_the_owner_ids():
    raw = np.array([0x4393D7FF], dtype=np.uint64)
    with pytest.raises(ValueError, match="ids=True"):
        decode_fields(raw, decode_ownership(raw))
    with pytest.raises(ValueError, match="length"):
        decode_fields(raw[:0], decode_ownership(raw, ids=True))


@pytest.mark.parametrize(("geometry", "level"), CASES, ids=CASE_IDS)
@settings(max_examples=40, deadline=None)
@given(raw=descriptor, profile=st.sampled_from(profile_names()), fwb=st.booleans())
def test_explain_covers_every_bit(geometry, level, raw, profile, fwb):
    """--explain never fails: its fields tile bits 63..0 once each, their values rebuild the
    word, and the text names the decoded record (all profiles, granules, levels, FWB)."""
    fields = explain(raw, geometry, level, profile, fwb)
    assert fields[0].hi == 63 and fields[-1].lo == 0
    assert all(a.lo == b.hi + 1 for a, b in itertools.pairwise(fields))
    assert sum(f.value << f.lo for f in fields) == raw
    assert "decoded: " in explain_text(raw, geometry, level, profile, fwb)


@pytest.mark.parametrize("profile", profile_names())
def test_explain_invalid_annotations_with_high_bits(profile):
    """Regression: a 7.1-style invalid entry with bits 63:1 >= 16 (the hyp donation
    s2trace build writes) once indexed MemAttr names with the whole software field."""
    for raw in (0x2000000000010004, 0x2000000000000002, (1 << 64) - 2):
        assert explain(raw, profile=profile)[0].name == "software"


@pytest.mark.parametrize(("geometry", "level"), CASES, ids=CASE_IDS)
def test_res0_masks_match_schema(geometry, level):
    """The numpy engine's RES0 masks equal the RES0 fields of the Construct layouts."""
    masks = res0_masks(geometry, level)
    kinds = ["table" if level < 3 else "page"]
    if level in geometry.block_levels and level < 3:
        kinds.append("block")
    for kind in kinds:
        for bit in range(2, 64):  # bits 1:0 choose the kind
            raw = (1 << bit) | (0b11 if kind in ("table", "page") else 0b01)
            ref = decode(raw, geometry, level)
            assert ref.kind == kind
            assert bool(ref.res0 >> bit & 1) == bool(masks[kind] >> bit & 1), (kind, bit)


@pytest.mark.parametrize(("geometry", "level"), CASES, ids=CASE_IDS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_builder_inverts_decoder(geometry, level, data):
    """build_descriptor(fields) decodes back to the same fields."""
    kinds = ["invalid"]
    kinds.append("page" if level == 3 else "table")
    if level != 3 and level in geometry.block_levels:
        kinds.append("block")
    kind = data.draw(st.sampled_from(kinds))
    if kind == "invalid":
        owner = data.draw(st.sampled_from(["host", "hyp", "ffa", "id:7"]))
        raw = build_descriptor(kind, level=level, geometry=geometry, owner=owner)
        assert decode(raw, geometry, level).owner == owner
        return
    leaf = kind != "table"
    align = geometry.span(level) if kind == "block" else geometry.granule.value
    addr = data.draw(st.integers(0, (1 << geometry.oa_bits) // align - 1)) * align
    if kind == "table":
        raw = build_descriptor(kind, level=level, geometry=geometry, next_table=addr)
        assert decode(raw, geometry, level).next_table == addr
        return
    fields = dict(
        memattr=data.draw(st.integers(0, 15)),
        s2ap=data.draw(st.sampled_from(["none", "ro", "wo", "rw"])),
        af=data.draw(st.booleans()),
        xn=data.draw(st.integers(0, 3)),
        contiguous=data.draw(st.booleans()),
        dbm=data.draw(st.booleans()),
        pbha=data.draw(st.integers(0, 15)),
        state=data.draw(st.sampled_from(["owned", "shared_owned", "shared_borrowed"])),
    )
    raw = build_descriptor(kind, level=level, geometry=geometry, oa=addr, **fields)
    rec = decode(raw, geometry, level)
    assert leaf and rec.kind == kind and rec.oa == addr and rec.res0 == 0
    assert (
        rec.memattr,
        rec.s2ap,
        rec.af,
        rec.xn,
        rec.contiguous,
        rec.dbm,
        rec.pbha,
        rec.page_state,
    ) == (
        fields["memattr"],
        fields["s2ap"],
        fields["af"],
        fields["xn"],
        fields["contiguous"],
        fields["dbm"],
        fields["pbha"],
        fields["state"],
    )


def test_guest_donation_round_trip():
    raw = build_descriptor(
        "invalid", owner="guest", vm_handle=0x1000, gfn=0x12345, profile="linux-7.1"
    )
    rec = decode(raw, profile="linux-7.1")
    assert (rec.owner, rec.vm_handle, rec.gfn, rec.inv_type) == (
        "guest",
        0x1000,
        0x12345,
        "donation",
    )
    assert raw == 0x2000_0000_0001_0004 | 0x12345 << 20
