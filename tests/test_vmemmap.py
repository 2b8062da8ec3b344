"""struct hyp_page layouts, reading hyp_vmemmap through the hyp stage 1, and the real samples."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from conftest import REAL, real_core, real_dir

from s2trace.errors import InputError
from s2trace.hyp.build import HypStage1Builder, VmemmapBuilder, write_machine
from s2trace.hyp.evidence import KernelImage, read_iomem, read_kallsyms, read_symbol_u64
from s2trace.hyp.hyp_view import load_hyp_view
from s2trace.hyp.stage1_walk import walk_hyp
from s2trace.hyp.vmemmap import (
    HYP_PAGE_LAYOUTS,
    VMEMMAP,
    decode_entries,
    kernel_layout,
    read_vmemmap,
)
from s2trace.io import open_memory

L516, L614, L616 = (HYP_PAGE_LAYOUTS[k] for k in ("5.16", "6.14", "6.16"))


def _decode(raw: list[int], layout) -> dict[str, list]:
    """decode_entries as plain lists (None for <NA>)."""
    out = {}
    for k, v in decode_entries(np.array(raw, dtype=np.uint64), layout).items():
        s = pd.Series(v)
        out[k] = [None if pd.isna(x) else (x.item() if hasattr(x, "item") else x) for x in s]
    return out


def test_616_state_byte_vectors_from_the_73_capture():
    """Facts §2.10, bytes read on the 7.3 dump: 0x11, 0x33, 0x00, 0x03 and a guest share."""
    raws = [0x11 << 24 | 1, 0x33 << 24, 0x00, 0x03 << 24, 0x0000000101000000]
    d = _decode(raws, L616)
    assert d["host_state"] == ["shared_owned", "nopage", "owned", "nopage", "shared_owned"]
    assert d["hyp_state"] == ["shared_borrowed", "owned", "nopage", "nopage", "nopage"]
    assert d["host_share_guest_count"] == [0, 0, 0, 0, 1]
    assert d["refcount"] == [1, 0, 0, 0, 0]


def test_614_state_byte():
    # u16 refcount 2, u8 order 3, host_state 4 (NOPAGE = BIT(2)), count 7
    d = _decode([7 << 32 | 4 << 24 | 3 << 16 | 2, 1 << 24, 3 << 24], L614)
    assert d["refcount"] == [2, 0, 0] and d["order"] == [3, 0, 0]
    assert d["host_state"] == ["nopage", "shared_owned", "reserved"]
    assert d["hyp_state"] == [None, None, None]  # kept in the hyp stage 1 until v6.16
    assert d["host_share_guest_count"] == [7, 0, 0]


def test_516_has_no_states_and_a_16_bit_order():
    d = _decode([0xFFFF0001, 0x00050002], L516)
    assert d["refcount"] == [1, 2] and d["order"] == [0xFFFF, 5]  # HYP_NO_ORDER = USHRT_MAX
    assert d["host_state"] == [None, None] and d["host_share_guest_count"] == [None, None]


@pytest.mark.parametrize(
    ("version", "layout", "host", "hyp", "profile", "text_ro"),
    [
        ("5.15", "5.16", "pte", "pte", "linux-5.15", False),
        ("6.12", "5.16", "pte", "pte", "linux-5.15", False),
        ("6.14", "6.14", "vmemmap", "pte", "linux-6.14", False),
        ("6.16", "6.16", "vmemmap", "vmemmap", "linux-6.14", False),
        ("linux-7.3.4", "6.16", "vmemmap", "vmemmap", "linux-7.1", True),
    ],
)
def test_kernel_layouts(version, layout, host, hyp, profile, text_ro):
    k = kernel_layout(version)
    assert (k.hyp_page.name, k.host_states, k.hyp_states) == (layout, host, hyp)
    assert (k.host_profile, k.hyp_text_ro_in_host) == (profile, text_ro)


def test_kernel_layout_errors():
    with pytest.raises(InputError, match=r"v5\.15"):
        kernel_layout("5.13")
    with pytest.raises(InputError, match="version"):
        kernel_layout("latest")


def _machine(tmp_path, layout, count=512, hole=False):
    hyp = HypStage1Builder(table_base=0x7F200000)
    vm = VmemmapBuilder(layout, va=0x600000000000, first_pfn=0x40000, count=count,
                        backing=0x7F000000)  # fmt: skip
    if hole:  # leave the second page of the array unmapped
        lo, hi = vm.va_range
        hyp.map(lo, 0x1000, 0x7F000000)
        hyp.map(lo + 0x2000, hi - lo - 0x2000, 0x7F002000)
    else:
        vm.map_into(hyp)
    return hyp, vm


@pytest.mark.parametrize("name", ["5.16", "6.14", "6.16"])
def test_read_round_trip(tmp_path, name):
    layout = HYP_PAGE_LAYOUTS[name]
    hyp, vm = _machine(tmp_path, layout)
    states = layout.host_state is not None
    expected = {}
    for i, pfn in enumerate(range(0x40000, 0x40200, 7)):
        fields = {"refcount": i % 5, "order": i % 3}
        if states:
            fields["host_state"] = ["owned", "shared_owned", "shared_borrowed", "nopage"][i % 4]
            fields["count"] = i % 2
        if layout.hyp_state is not None:
            fields["hyp_state"] = ["nopage", "owned", "shared_borrowed"][i % 3]
        expected[pfn] = (vm.set(pfn, **fields), fields)
    path = write_machine(tmp_path / "d.elf", {**hyp.table_pages(), **vm.pages()})
    with open_memory([str(path)]) as memory:
        hw = walk_hyp(memory, hyp.config)
        r = read_vmemmap(memory, hw.translate, 0x600000000000, layout,
                         np.arange(0x40000, 0x40200, dtype=np.uint64))  # fmt: skip
    VMEMMAP.check(r.frame)
    assert len(r.problems) == 0 and len(r.frame) == 0x200
    f = r.frame
    for pfn, (raw, fields) in expected.items():
        row = f.loc[pfn]
        assert int(row["raw"]) == raw and int(row["pa"]) == pfn << 12
        assert int(row["entry_va"]) == 0x600000000000 + pfn * layout.size
        assert int(row["refcount"]) == fields["refcount"] and int(row["order"]) == fields["order"]
        if states:
            assert row["host_state"] == fields["host_state"]
            assert int(row["host_share_guest_count"]) == fields["count"]
        if layout.hyp_state is not None:
            assert row["hyp_state"] == fields["hyp_state"]
    untouched = f.drop(index=list(expected))
    assert (untouched["raw"] == 0).all()
    if layout.hyp_state is not None:  # zeroed memory reads hyp NOPAGE (the XOR-3 encoding)
        assert set(untouched["hyp_state"].astype(str)) == {"nopage"}


def test_unmapped_and_missing_entries_are_problems(tmp_path):
    hyp, vm = _machine(tmp_path, L616, count=1024, hole=True)  # 2 pages of entries
    pages = vm.pages()
    pages.pop(0x7F002000 + 0x1000, None)  # does not exist: only two pages
    path = write_machine(tmp_path / "d.elf", {**hyp.table_pages(), 0x7F000000: pages[0x7F000000]})
    with open_memory([str(path)]) as memory:
        hw = walk_hyp(memory, hyp.config)
        r = read_vmemmap(memory, hw.translate, 0x600000000000, L616,
                         np.arange(0x40000, 0x40400, dtype=np.uint64))  # fmt: skip
    assert r.problems.counts() == {"vmemmap_unmapped": 1}
    assert len(r.frame) == 512  # the first page of entries only
    (p,) = list(r.problems)
    assert p.where == 0x40200 << 12 and "0x40200..0x403ff" in p.detail


def test_builder_refuses_what_the_layout_lacks():
    vm = VmemmapBuilder(L516)
    with pytest.raises(InputError, match="no host_share_guest_count"):
        vm.encode(count=1)
    with pytest.raises(InputError, match="keeps no hyp state"):
        vm.encode(hyp_state="owned")
    with pytest.raises(InputError, match="outside"):
        vm.set(0x10, refcount=1)


# -- the real captures -----------------------------------------------------------------------------
LINEAR_VA, LINEAR_PA = 0xFFFF000000000000, 0x40000000  # both READMEs


def _byte3(rows) -> list[int]:
    """The state byte (byte 3) of each entry."""
    return ((rows["raw"].to_numpy(np.uint64) >> np.uint64(24)) & np.uint64(0xFF)).tolist()


def _ftrace(version: str) -> str:
    return (real_dir(version) / "ftrace.txt").read_text()


@pytest.fixture(scope="module")
def real73():
    info = REAL["7.3"]
    d = real_dir("7.3")
    ks, io = read_kallsyms(d / "kallsyms-subset.txt"), read_iomem(d / "iomem.txt")
    with open_memory([str(real_core("7.3"))]) as memory:
        image = KernelImage.from_evidence(ks, io)
        va = read_symbol_u64(memory, ks, image, "__kvm_nvhe___hyp_vmemmap")
        view = load_hyp_view(memory, info["ttbr0"], info["tcr"], kernel_layout("7.3"),
                             kallsyms=ks, iomem=io)  # fmt: skip
    return va, view, ks, image


@pytest.mark.slow
def test_73_vmemmap_pointer(real73):
    va, view, _, _ = real73
    assert va == 0x600000000000  # kernel-facts.md §KF-2.8
    assert view.vmemmap.vmemmap_va == va and len(view.vmemmap.problems) == 0
    assert len(view.vmemmap.frame) == 1 << 18  # every page of the 1 GiB of RAM


@pytest.mark.slow
def test_73_shares_donations_and_guest_page_from_the_trace(real73):
    f = real73[1].vmemmap.frame
    trace = _ftrace("7.3")
    for lo, hi in re.findall(r"s2_kvm_share_hyp: .* from=(0x[0-9a-f]+) to=(0x[0-9a-f]+)", trace):
        first = (int(lo, 16) - LINEAR_VA + LINEAR_PA) >> 12
        last = (int(hi, 16) - 1 - LINEAR_VA + LINEAR_PA) >> 12
        rows = f.loc[first:last]
        assert set(rows["host_state"].astype(str)) == {"shared_owned"}
        assert set(rows["hyp_state"].astype(str)) == {"shared_borrowed"}
        assert set(rows["refcount"]) == {1}  # pinned by the hyp (kernel-facts.md §KF-2.8)
    (phys,) = re.findall(r"s2_pkvm_pgtable_stage2_map: .* phys=(0x[0-9a-f]+)", trace)
    guest = f.loc[int(phys, 16) >> 12]
    assert int(guest["raw"]) == 0x0000000101000000  # bytes 00 00 00 01 01 00 00 00
    sizes = re.findall(r"s2_alloc_pages_exact: .* size=(0x[0-9a-f]+)", trace)
    rets = re.findall(r"s2_alloc_pages_exact_ret: \((\w+)\+.* ret=(0x[0-9a-f]+)", trace)
    donated = 0
    for size, (caller, ret) in zip(sizes, rets, strict=True):
        if caller in ("pkvm_create_hyp_vm", "pkvm_create_hyp_vcpu"):
            first = (int(ret, 16) - LINEAR_VA + LINEAR_PA) >> 12
            rows = f.loc[first : first + int(size, 16) // 4096 - 1]
            assert set(_byte3(rows)) == {0x33}  # host nopage, hyp owned
            donated += len(rows)
    assert donated == 6  # 1 + 2 pages (hyp VM) + 3 pages (hyp vCPU)


@pytest.mark.slow
def test_73_carveout_and_hyp_text_are_hyp_owned(real73):
    f = real73[1].vmemmap.frame
    _, _, ks, image = real73
    d = real_dir("7.3")
    n, at = re.search(
        r"Reserved (\d+) MiB at (0x[0-9a-f]+)", (d / "dmesg.txt").read_text()
    ).groups()
    lo = int(at, 16) >> 12
    rows = f.loc[lo : lo + (int(n) << 8) - 1]
    assert len(rows) == int(n) << 8 and set(_byte3(rows)) == {0x33}
    first = ks.drop_duplicates("name").set_index("name")["addr"]
    t0 = int(image.pa(first["__kvm_nvhe___hyp_idmap_text_start"])) >> 12
    t1 = (int(image.pa(first["__kvm_nvhe___hyp_text_end"])) - 1) >> 12
    text = f.loc[t0:t1]
    assert set(text["host_state"].astype(str)) == {"nopage"}
    assert set(text["hyp_state"].astype(str)) == {"owned"}


@pytest.mark.slow
def test_612_vmemmap_has_the_4_byte_layout():
    info = REAL["6.12"]
    d = real_dir("6.12")
    ks, io = read_kallsyms(d / "kallsyms-subset.txt"), read_iomem(d / "iomem.txt")
    with open_memory([str(real_core("6.12"))]) as memory:
        view = load_hyp_view(memory, info["ttbr0"], info["tcr"], kernel_layout("6.12"),
                             kallsyms=ks, iomem=io)  # fmt: skip
    f = view.vmemmap.frame
    assert view.vmemmap.vmemmap_va == 0x600000000000 and len(f) == 1 << 18
    # unsigned short order: buddy orders below MAX_PAGE_ORDER+1, or HYP_NO_ORDER = USHRT_MAX
    assert set(f["order"][f["order"] > 10]) == {0xFFFF}
    assert f["host_state"].isna().all() and f["host_share_guest_count"].isna().all()
