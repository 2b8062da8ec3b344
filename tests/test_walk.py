"""Walking dumps built by ``s2trace.walk.build`` (expected maps come from the builder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from s2trace.arch.geometry import Geometry, Granule
from s2trace.columns import MAP
from s2trace.decode.build import build_descriptor
from s2trace.errors import StrictError
from s2trace.io import open_memory
from s2trace.jobs.walk import walk_dump, walk_request
from s2trace.walk.build import Stage2Builder
from s2trace.walk.ownership import coalesce, summarize, totals
from s2trace.walk.ptdump import ptdump_lines, size_label
from s2trace.walk.walker import walk


def _walk(builder, tmp_path, fmt="elf", **kw):
    if fmt == "elf":
        path = builder.write_elf(tmp_path / "dump.elf")
        memory = open_memory([str(path)])
    else:
        base = builder.write_raw(tmp_path / "dump.bin")
        memory = open_memory([f"{tmp_path / 'dump.bin'}@{base:#x}"])
    with memory:
        return walk(memory, builder.config, builder.profile, **kw)


def assert_same_map(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    MAP.check(got)
    assert len(got) == len(expected)
    a = got.reset_index(drop=True).astype(object).where(got.notna().to_numpy(), None)
    b = expected.reset_index(drop=True).astype(object).where(expected.notna().to_numpy(), None)
    for col in MAP.names:
        assert list(a[col]) == list(b[col]), col


FORMATS = [
    (Geometry(Granule.K4), 48),
    (Geometry(Granule.K4), 40),
    (Geometry(Granule.K4), 44),
    (Geometry(Granule.K16), 40),
    (Geometry(Granule.K16), 47),
    (Geometry(Granule.K64), 42),
    (Geometry(Granule.K64), 48),
    (Geometry(Granule.K4, ds=True), 52),
    (Geometry(Granule.K16, ds=True), 52),
    (Geometry(Granule.K64, lpa=True), 52),
]


@pytest.mark.parametrize("fmt", ["elf", "raw"])
@pytest.mark.parametrize(
    ("geometry", "ia_bits"), FORMATS, ids=[f"{g.label}-{ia}" for g, ia in FORMATS]
)
def test_walk_matches_builder(tmp_path, geometry, ia_bits, fmt):
    """Blocks at every level that allows them, pages, owners and states, every granule."""
    b = Stage2Builder(geometry, ia_bits=ia_bits)
    page = geometry.granule.value
    for level in sorted(geometry.block_levels):
        span = geometry.span(level)
        if level >= b.start_level and span <= (1 << ia_bits) // 4:
            b.map(span, span, level=level)  # one block of each size at IPA = its size
    top = (1 << ia_bits) // 2
    b.map(top, 4 * page)
    b.map(top + 4 * page, page, state="shared_owned")
    b.map(top + 5 * page, page, state="shared_borrowed", s2ap="ro", xn=2)
    b.map(top + 6 * page, page, memattr="Device-nGnRE", xn=2)
    b.annotate(top + 8 * page, 3 * page, owner="hyp")
    b.annotate(top + 11 * page, page, owner="ffa")
    b.annotate(top + 12 * page, page, owner="id:9")
    b.map(top + 16 * page, 16 * page, contiguous=True)
    result = _walk(b, tmp_path, fmt)
    assert not result.problems.problems
    assert_same_map(result.map, b.expected_map())
    assert result.meta["vtcr_el2"] == f"{b.vtcr:#x}"


def test_concatenated_start_tables(tmp_path):
    """4K with a 40-bit IPA starts at level 1 with two concatenated tables (§KF-1.7)."""
    b = Stage2Builder(Geometry(Granule.K4), ia_bits=40)
    assert (b.start_level, b.config.concatenated) == (1, 2)
    b.map(0x100_0000_0000 - 0x4000_0000, 0x4000_0000)  # last GiB: in the second table
    b.map(0x4000_0000, 0x1000)
    result = _walk(b, tmp_path)
    assert_same_map(result.map, b.expected_map())
    assert int(result.map["table_pa"].iloc[-1]) == b.root + 0x1000


@pytest.mark.parametrize(
    "profile", ["linux-7.1", "linux-6.14", "android", "linux-5.13", "rfc-v4-owner-hi32"]
)
def test_profiles_walk(tmp_path, profile):
    b = Stage2Builder(profile=profile)
    b.map(0x4000_0000, 0x20_0000)
    b.annotate(0x7F00_0000, 0x4000, owner="hyp")
    if profile == "linux-7.1":
        b.annotate(0x4500_0000, 0x3000, owner="guest", vm_handle=0x1000, gfn=0x10)
    result = _walk(b, tmp_path)
    assert_same_map(result.map, b.expected_map())
    if profile == "linux-7.1":
        guest = result.map[result.map["owner"] == "guest"]
        assert list(guest["gfn"]) == [0x10, 0x11, 0x12]
        assert set(guest["vm_handle"]) == {0x1000}


def test_include_zero(tmp_path):
    b = Stage2Builder()
    b.map(0x4000_0000, 0x1000)
    result = _walk(b, tmp_path, include_zero=True)
    zero = result.map[result.map["raw"] == 0]
    # The whole level-3 table around the page is listed, and the untouched upper levels.
    assert len(zero) > 500 and set(zero["owner"]) == {"host"}
    assert set(zero["page_state"]) == {"owned"}


def _damaged(tmp_path, kind):
    b = Stage2Builder()
    b.map(0x4000_0000, 0x1000)
    g = b.geometry
    if kind == "loop":
        table, _ = b._slot(0x4000_0000, 3)
        b.set_raw(0x4020_0000, 2, build_descriptor("table", level=2, geometry=g, next_table=b.root))
    elif kind == "table_outside_dump":
        b.set_raw(
            0x8000_0000, 1, build_descriptor("table", level=1, geometry=g, next_table=0x1_0000_0000)
        )
    elif kind == "reserved_encoding":
        b.set_raw(0x4000_1000, 3, 0x4000_1000 | 0x7FD)
        b.set_raw(0x80_0000_0000, 0, 0x7FD)
    elif kind == "table_reused":
        table, _ = b._slot(0x4000_0000, 3)
        b.set_raw(0x4020_0000, 2, build_descriptor("table", level=2, geometry=g, next_table=table))
    elif kind == "res0_set":
        b.set_raw(0x4000_2000, 3, 0x4000_2000 | 0x7FF | 1 << 50)
    elif kind == "not_identity":
        b.map(0x4000_3000, 0x1000, oa=0x5000_0000)
    return b


@pytest.mark.parametrize(
    "kind",
    ["loop", "table_outside_dump", "reserved_encoding", "table_reused", "res0_set", "not_identity"],
)
def test_damage_is_recorded_and_walk_goes_on(tmp_path, kind):
    b = _damaged(tmp_path, kind)
    result = _walk(b, tmp_path)
    counts = result.problems.counts()
    assert counts[kind] >= 1, counts
    # the healthy page is still in the map
    assert 0x4000_0000 in set(int(x) for x in result.map["ipa_start"])
    with pytest.raises(StrictError, match=kind):
        _walk(b, tmp_path, strict=True)


def test_loop_detail_names_ancestor(tmp_path):
    result = _walk(_damaged(tmp_path, "loop"), tmp_path)
    (p,) = [p for p in result.problems if p.kind == "loop"]
    assert p.level == 2 and "ancestor" in p.detail


def test_misaligned_root(tmp_path):
    b = Stage2Builder()
    b.map(0x4000_0000, 0x1000)
    path = b.write_elf(tmp_path / "d.elf")
    from s2trace.arch.registers import config_from_registers

    config = config_from_registers(b.vttbr | 0x800, b.vtcr)
    with open_memory([str(path)]) as memory:
        result = walk(memory, config)
    assert result.problems.counts()["root_misaligned"] == 1
    assert len(result.map) == 1


def test_coalesce_merges_equal_neighbours(tmp_path):
    b = Stage2Builder()
    b.map(0x4000_0000, 0x10_0000)  # 256 pages? no: 1 MiB is not a block: 256 pages
    b.map(0x4010_0000, 0x1000, state="shared_owned")
    b.map(0x4010_1000, 0x3000)
    b.annotate(0x4010_4000, 0x2000, owner="hyp")
    b.map(0x4020_0000, 0x20_0000)  # a block right after a hole
    result = _walk(b, tmp_path)
    merged = coalesce(result.map)
    assert [(int(r.ipa_start), int(r.size), r.page_state) for r in merged.itertuples()] == [
        (0x4000_0000, 0x10_0000, "owned"),
        (0x4010_0000, 0x1000, "shared_owned"),
        (0x4010_1000, 0x3000, "owned"),
        (0x4010_4000, 0x2000, "nopage"),
        (0x4020_0000, 0x20_0000, "owned"),
    ]
    assert int(merged["size"].sum()) == int(result.map["size"].sum())


def test_coalesce_keeps_oa_discontinuity(tmp_path):
    b = Stage2Builder()
    b.map(0x4000_0000, 0x1000, oa=0x4000_0000)
    b.map(0x4000_1000, 0x1000, oa=0x4000_3000)
    result = _walk(b, tmp_path, identity=False)
    assert len(coalesce(result.map)) == 2


def test_summary(tmp_path):
    b = Stage2Builder()
    b.map(0x4000_0000, 0x20_0000)
    b.annotate(0x7F20_0000, 0x3000, owner="hyp")
    s = summarize(_walk(b, tmp_path))
    by = {(r.owner, r.page_state): int(r.bytes) for r in s.by_state.itertuples()}
    assert by == {("host", "owned"): 0x20_0000, ("hyp", "nopage"): 0x3000}
    assert dict(zip(s.tables_per_level["level"], s.tables_per_level["tables"], strict=True)) == {
        0: 1,
        1: 1,
        2: 1,
        3: 1,
    }  # both in the 1-2 GiB L2 table
    assert "problems: none" in s.text()


def test_ptdump_lines(tmp_path):
    b = Stage2Builder()
    b.map(0x4000_0000, 0x40_0000)  # two 2 MiB blocks -> one line
    b.map(0x4040_0000, 0x2000)
    b.map(0x4040_2000, 0x1000, state="shared_owned")  # never merged with owned
    b.annotate(0x4040_3000, 0x1000, owner="hyp")
    lines = ptdump_lines(_walk(b, tmp_path).map)
    assert lines[0] == "---[ Host IPA ]---"
    assert lines[1] == (
        "0x0000000040000000-0x0000000040400000           4M 2     R W px ux  AF BLK host owned"
    )
    assert lines[2].startswith("0x0000000040400000-0x0000000040402000           8K 3")
    assert lines[3].endswith("host shared_owned")
    assert "   F " in lines[4] and lines[4].endswith("hyp nopage")
    assert size_label(1 << 30) == "        1G" and size_label(12 << 10) == "       12K"


def test_walk_is_vectorised_over_a_level(tmp_path):
    """64 level-3 tables are read by one gather call per level."""
    b = Stage2Builder()
    for i in range(64):
        b.map(0x4000_0000 + i * 0x20_0000, 0x1000)
    path = b.write_elf(tmp_path / "d.elf")
    calls = []
    with open_memory([str(path)]) as memory:
        real = memory.gather

        def counting(pas, nbytes):
            calls.append(len(pas))
            return real(pas, nbytes)

        memory.gather = counting  # type: ignore[method-assign]
        result = walk(memory, b.config)
    assert calls == [1, 1, 1, 64]
    assert len(result.map) == 64
    assert np.all(np.diff(result.map["ipa_start"].to_numpy().astype(np.int64)) > 0)


def test_scan_ranks_the_builder_root_first(tmp_path):
    from s2trace.walk.scan import scan

    b = Stage2Builder()
    b.map(0x0, 0x4000_0000)  # 1 GiB block at 0, like the real host
    b.map(0x4000_0000, 0x20_0000)
    b.map(0x4020_0000, 0x8000)
    b.annotate(0x4030_0000, 0x4000, owner="hyp")
    # a decoy: a page of table pointers into the same tables, not an identity map
    decoy = b._alloc()
    b._tables[decoy][3] = b._tables[b.root][0]
    path = b.write_elf(tmp_path / "d.elf")
    with open_memory([str(path)]) as memory:
        found = scan(memory, top=3)
    assert int(found["root"].iloc[0], 16) == b.root
    assert found["vttbr"].iloc[0] == f"{b.root | 1:#x}"
    assert found["identity"].iloc[0] == 1 + 1 + 8


@pytest.mark.parametrize("profile", ["linux-5.15", "linux-7.1"])
def test_coalesce_while_walking_equals_coalesce_after(tmp_path, profile):
    """walk(coalesce=True) gives exactly coalesce(walk()): blocks, page runs, states,
    annotations, guest donations with consecutive gfns, an OA jump and a hole."""
    b = Stage2Builder(profile=profile)
    b.map(0x4000_0000, 0x40_0000)
    b.map(0x4040_0000, 0x3000)
    b.map(0x4040_3000, 0x1000, state="shared_owned" if profile == "linux-5.15" else None)
    b.map(0x4040_4000, 0x2000, s2ap="ro")
    b.map(0x4040_6000, 0x1000, oa=0x5000_0000)
    b.map(0x4040_7000, 0x1000)
    b.annotate(0x4040_9000, 0x4000, owner="hyp")
    if profile == "linux-7.1":
        b.annotate(0x4041_0000, 0x3000, owner="guest", vm_handle=0x1000, gfn=0x20)
    b.map(0x4060_0000, 0x20_0000)
    b.map(0x4080_0000, 0x1000)
    early = _walk(b, tmp_path, coalesce=True, identity=False).map
    late = coalesce(_walk(b, tmp_path, identity=False).map)
    assert_same_map(early, late)
    assert len(early) < 12


def _groupby_totals(m: pd.DataFrame, keys: list[str], dropna: bool) -> pd.DataFrame:
    out = m.groupby(keys, observed=True, dropna=dropna)["size"].agg(["sum", "count"])
    return out.rename(columns={"sum": "bytes", "count": "ranges"}).reset_index()


@pytest.mark.parametrize(
    "capture",
    ["qemu-pkvm-6.12", "qemu-pkvm-7.3", "qemu-pkvm-7.3-lifecycle", "synthetic/buggy"],
)
def test_totals_equal_pandas_groupby(capture):
    """The summary's totals, computed on category codes, equal pandas' groupby: same groups in
    the same order, same dtypes (categories kept), also with missing owners and states (both
    dropna settings) and on an empty map."""
    root = Path(__file__).resolve().parents[1] / "sample-traces"
    m = walk_dump(walk_request(root / capture, coalesce=True)).map
    holes = m.copy()
    holes.loc[holes.index[::3], "page_state"] = None
    holes.loc[holes.index[1::4], "owner"] = None
    assert holes["page_state"].isna().any() and holes["owner"].isna().any()
    for frame in (m, holes, m.iloc[:0]):
        for keys in (["owner"], ["owner", "page_state"], ["page_state"]):
            for dropna in (True, False):
                pd.testing.assert_frame_equal(
                    totals(frame, keys, "ranges", dropna), _groupby_totals(frame, keys, dropna)
                )
