"""Evidence files as labelled physical ranges, and the interval join that labels a map."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import REAL, real_core, real_dir
from hypothesis import given, settings
from hypothesis import strategies as st

from s2trace.errors import InputError
from s2trace.hyp.evidence import (
    KernelImage,
    LinearMap,
    dmesg_labels,
    hex_values,
    read_iomem,
    read_kallsyms,
)
from s2trace.hyp.evidence import _symbols as _symbols
from s2trace.hyp.symbols import (
    LABELS,
    collect_labels,
    image_labels,
    label_map,
    percpu_labels,
    trace_labels,
)
from s2trace.hyp.symbols import _hex_text as _hex_text
from s2trace.io import open_memory
from s2trace.jobs.analyze import analyze
from s2trace.jobs.capture import load_capture
from s2trace.trace.synth_helpers import make_transitions

KALLSYMS = """\
ffffb0998ee00000 T _text
ffffb0998fd3a000 T __kvm_nvhe___hyp_idmap_text_start
ffffb0998fd3ad04 T __kvm_nvhe___hyp_idmap_text_end
ffffb0998fd50000 D _etext
ffffb0999182c000 B __kvm_nvhe___hyp_bss_start
ffffb0999182c078 B __kvm_nvhe___hyp_vmemmap
ffffb0999182e000 B __kvm_nvhe___hyp_bss_end
ffffffffc0001000 t helper\t[some_module]
"""
IOMEM = """\
09000000-09000fff : pl011@9000000
  09000000-09000fff : 9000000.pl011 pl011@9000000
40000000-7fffffff : System RAM
  40200000-41efffff : Kernel code
"""


def test_read_kallsyms():
    ks = read_kallsyms(KALLSYMS)
    assert ks["name"].tolist()[-1] == "helper" and ks["type"].tolist()[0] == "T"
    assert int(ks["addr"].iloc[0]) == 0xFFFFB0998EE00000
    with pytest.raises(InputError, match="line 2"):
        read_kallsyms("ffff0000 T ok\nnot-an-address T bad\n")


@given(st.lists(st.integers(0, 2**64 - 1), max_size=50), st.booleans())
def test_hex_values_match_int(values, prefix):
    text = [(f"{v:#x}" if prefix else f"{v:X}") for v in values]
    assert hex_values(text).tolist() == values


def test_hex_values_refuses_non_hex():
    with pytest.raises(ValueError, match="hex"):
        hex_values(["12g4"])


def test_read_iomem():
    io = read_iomem(IOMEM)
    assert io["name"].tolist() == [
        "pl011@9000000",
        "9000000.pl011 pl011@9000000",
        "System RAM",
        "Kernel code",
    ]
    assert io["depth"].tolist() == [0, 1, 0, 1]
    assert (int(io["start"].iloc[3]), int(io["end"].iloc[3])) == (0x40200000, 0x41F00000)
    with pytest.raises(InputError, match="line 1"):
        read_iomem("garbage\n")


def test_dmesg_labels():
    text = (
        "[    0.000000] kvm [0]: Reserved 10 MiB at 0x7f200000\n"
        "[    0.000000] cma: Reserved 64 MiB at 0x000000007a200000 on node -1\n"
    )
    d = dmesg_labels(text)
    LABELS.check(d)
    assert d[["start", "end"]].to_numpy().tolist() == [
        [0x7F200000, 0x7FC00000],
        [0x7A200000, 0x7E200000],
    ]
    assert d["label"].tolist() == ["hyp carve-out (dmesg)", "CMA area (dmesg)"]
    assert dmesg_labels("nothing here\n").empty


def test_kernel_image_and_sections():
    ks, io = read_kallsyms(KALLSYMS), read_iomem(IOMEM)
    image = KernelImage.from_evidence(ks, io)
    assert (image.text_va, image.text_pa) == (0xFFFFB0998EE00000, 0x40200000)
    assert int(image.pa(0xFFFFB0999182C078)) == 0x42C2C078  # __hyp_vmemmap (6.12)
    labels = image_labels(ks, image).set_index("label")
    assert (int(labels.loc["hyp .bss", "start"]), int(labels.loc["hyp .bss", "end"])) == (
        0x42C2C000,
        0x42C2E000,
    )
    assert int(labels.loc["hyp .idmap.text", "start"]) == 0x4113A000
    with pytest.raises(InputError, match="Kernel code"):
        KernelImage.from_evidence(ks, io[io["name"] != "Kernel code"])
    with pytest.raises(InputError, match="_text"):
        KernelImage.from_evidence(ks[ks["name"] != "_text"], io)


@pytest.mark.parametrize(
    ("memstart", "va", "pa"),
    [
        (0xFFF1000040000000, 0xFFFF000005134000, 0x45134000),  # VA_BITS=52 kernel run at 48
        (0x40000000, 0xFFFF000005134000, 0x45134000),  # VA_BITS=48
        (0x40000000, 0xFFF0000005134000, 0x45134000),  # VA_BITS=52 with LVA/LPA2
    ],
)
def test_linear_map(memstart, va, pa):
    assert int(LinearMap(memstart).pa(va)) == pa


def test_label_map_by_hand():
    labels = pd.DataFrame(
        {
            "start": np.array([0x1000, 0x1800, 0x0, 0x5000], np.uint64),
            "end": np.array([0x3000, 0x1900, 0x40000000, 0x6000], np.uint64),
            "label": pd.array(["object", "tiny", "RAM", "other"], dtype="string"),
            "source": pd.Categorical(["kallsyms"] * 4),
        }
    )
    frame = pd.DataFrame(
        {"pa": np.array([0x1000, 0x3000, 0x5800, 0x4000_0000], np.uint64), "size": 0x1000}
    )
    got = label_map(frame, labels, start="pa")["label"].tolist()
    assert got == ["tiny; object; RAM", "RAM", "other; RAM", pd.NA]
    assert label_map(frame, LABELS.empty(), start="pa")["label"].isna().all()


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(
        st.tuples(st.integers(0, 1 << 26), st.integers(1, 1 << 26)), min_size=1, max_size=30
    ),
    rows=st.lists(
        st.tuples(st.integers(0, 1 << 27), st.integers(1, 1 << 22)), min_size=1, max_size=30
    ),
)
def test_label_map_matches_brute_force(labels, rows):
    lab = pd.DataFrame(
        {
            "start": np.array([s for s, _ in labels], np.uint64),
            "end": np.array([s + w for s, w in labels], np.uint64),
            "label": pd.array([f"L{i}" for i in range(len(labels))], dtype="string"),
            "source": pd.Categorical(["trace"] * len(labels)),
        }
    )
    frame = pd.DataFrame(
        {
            "ipa_start": np.array([s for s, _ in rows], np.uint64),
            "size": np.array([w for _, w in rows], np.uint64),
        }
    )
    got = label_map(frame, lab)["label"].tolist()
    spans = [(s, s + w, i) for i, (s, w) in enumerate(labels)]
    for (rs, rw), text in zip(rows, got, strict=True):
        hits = [(e - s, s, i) for s, e, i in spans if s < rs + rw and e > rs]
        if hits:
            assert text == "; ".join(f"L{i}" for _, _, i in sorted(hits))
        else:
            assert pd.isna(text)


def test_trace_labels_from_the_612_trace():
    """Ranges derived by hand from ftrace.txt (README: linear VA 0xffff000000000000 is PA
    0x40000000): shares of the struct kvm and the vCPU, pkvm_create_hyp_vm's allocations
    (VM = the struct kvm's PA).  kvm_s2_zalloc_pages_exact's page (0x48095000) is the host's
    own guest stage-2 pgd, no ownership transition, so it has no label any more."""
    transitions = analyze(real_dir("6.12"), use_cache=False).transitions
    got = trace_labels(transitions)
    LABELS.check(got)
    rows = sorted(
        zip(got["start"].tolist(), got["end"].tolist(), got["label"].tolist(), strict=True)
    )
    assert rows == [
        (0x438F6000, 0x438F8000, "donated to hyp (hyp_vm_donation, VM 0x4393d000)"),
        (0x438F8000, 0x438FA000, "donated to hyp (hyp_vm_donation, VM 0x4393d000)"),
        (0x4393D000, 0x4393E000, "shared with hyp (kvm_share_hyp)"),
        (0x44C38000, 0x44C3A000, "shared with hyp (kvm_share_hyp)"),
        (0x48115000, 0x48116000, "donated to hyp (hyp_vm_donation, VM 0x4393d000)"),
    ]
    assert set(got["source"].astype(str)) == {"trace"}


def test_trace_labels_guest_page_73():
    transitions = analyze(real_dir("7.3"), use_cache=False).transitions
    got = trace_labels(transitions)
    guest = got[got["label"].str.startswith("guest")]
    assert guest[["start", "end"]].to_numpy().tolist() == [[0x42C99000, 0x42C9A000]]
    assert guest["label"].tolist() == ["guest memory (shared, guest_map, gfn 0x0)"]
    vcpu = got[got["label"].str.contains("hyp_vcpu_donation")]
    assert vcpu[["start", "end"]].to_numpy().tolist() == [[0x4611C000, 0x4611F000]]
    # the label names the VM the pages were donated for (its struct kvm)
    assert vcpu["label"].tolist() == ["donated to hyp (hyp_vcpu_donation, VM 0x45134000)"]


def test_trace_labels_by_hand():
    """Every op's wording, VM and gfn in hex, lost markers skipped, rows kept in order."""
    tr = make_transitions(
        [
            {"op": "share", "addr": 0x1000, "size": 0x2000, "recipe": "kvm_share_hyp"},
            {"op": "lost"},
            {"op": "donate", "addr": 0x8000, "vm": 0xABC, "recipe": "hyp_vm_donation"},
            {"op": "share", "addr": 0x9000, "completer": "guest", "vm": 3, "gfn": 0x1F},
            {"op": "donate", "addr": 0xA000, "completer": "guest", "recipe": "guest_map"},
            {"op": "reclaim", "addr": 0xB000, "recipe": "hyp_memcache_free"},
            {"op": "donate", "addr": 0xC000, "initiator": "hyp", "completer": "host"},
            {"op": "unshare", "addr": 0xD000, "recipe": "kvm_unshare_hyp"},
        ]
    )
    got = trace_labels(tr)
    LABELS.check(got)
    assert got["start"].tolist() == [0x1000, 0x8000, 0x9000, 0xA000, 0xB000, 0xC000, 0xD000]
    assert got["end"].tolist() == [0x3000, 0x9000, 0xA000, 0xB000, 0xC000, 0xD000, 0xE000]
    assert got["label"].tolist() == [
        "shared with hyp (kvm_share_hyp)",
        "donated to hyp (hyp_vm_donation, VM 0xabc)",
        "guest memory (shared, synthetic, VM 0x3, gfn 0x1f)",
        "guest memory (donated, guest_map)",
        "reclaim hyp -> host (hyp_memcache_free)",
        "donated to host by hyp (synthetic)",
        "unshare host -> hyp (kvm_unshare_hyp)",
    ]
    assert trace_labels(make_transitions([{"op": "lost"}])).empty
    with pytest.raises(InputError, match="transitions frame"):
        trace_labels(tr.drop(columns=["recipe"]))


@given(st.lists(st.integers(0, 2**64 - 1), max_size=40))
def test_hex_text_round_trips(values):
    text = _hex_text(np.array(values, dtype=np.uint64))
    assert list(text) == [f"{v:#x}" for v in values]
    assert hex_values(list(text)).tolist() == values


@pytest.mark.parametrize(
    ("memstart", "page_offset", "pair"),
    [
        (0xFFF1000040000000, None, (0xFFFF000000000000, 0x40000000)),  # 52-bit kernel at 48
        (0x40000000, None, (0xFFFF000000000000, 0x40000000)),
        (0x40000000, 0xFFF0000000000000, (0xFFF0000000000000, 0x40000000)),  # LVA
    ],
)
def test_linear_map_pair_agrees_with_pa(memstart, page_offset, pair):
    lm = LinearMap(memstart, page_offset)
    assert lm.pair() == pair
    va = np.array([pair[0], pair[0] + 0x5134000], dtype=np.uint64)
    assert (va - np.uint64(pair[0]) + np.uint64(pair[1])).tolist() == lm.pa(va).tolist()


def test_collect_labels_with_transitions_only():
    tr = make_transitions([{"op": "share", "addr": 0x4000, "recipe": "kvm_share_hyp"}])
    got = collect_labels(transitions=tr)
    LABELS.check(got)
    assert got["label"].tolist() == ["shared with hyp (kvm_share_hyp)"]
    assert collect_labels().empty


@pytest.mark.parametrize("version", ["6.12", "7.3"])
def test_load_capture(version):
    cap = load_capture(real_dir(version))
    info = REAL[version]
    assert cap.kernel.startswith(version)
    assert cap.registers["vttbr_el2"] == info["vttbr"] and cap.registers["vtcr_el2"] == info["vtcr"]
    assert cap.registers["ttbr0_el2"] == info["ttbr0"] and cap.registers["tcr_el2"] == info["tcr"]
    assert len(cap.dump) == 1 and cap.dump[0].endswith("host-s2.elf.zst")
    assert cap.linear_map == (0xFFFF000000000000, 0x40000000)
    assert cap.kallsyms.name == "kallsyms-subset.txt" and cap.trace.name == "ftrace.txt"
    with pytest.raises(InputError, match="not a capture folder"):
        load_capture(real_dir(version) / "README.md")


@pytest.mark.slow
def test_percpu_areas_612():
    """Two CPUs (-smp 2 in the README); each area is the hyp per-CPU template rounded up to
    pages, at the linear addresses kvm_arm_hyp_percpu_base[] holds in the dump."""
    d = real_dir("6.12")
    ks, io = read_kallsyms(d / "kallsyms-subset.txt"), read_iomem(d / "iomem.txt")
    image = KernelImage.from_evidence(ks, io)
    first = ks.drop_duplicates("name").set_index("name")["addr"]
    template = int(first["__kvm_nvhe___per_cpu_end"]) - int(first["__kvm_nvhe___per_cpu_start"])
    with open_memory([str(real_core("6.12"))]) as memory:
        linear = LinearMap.from_dump(memory, ks, image)
        areas = percpu_labels(memory, ks, image, linear)
        labels = collect_labels(memory, ks, image, io, d / "dmesg.txt", None)
    assert linear.phys_offset == 0xFFF1000040000000  # memstart_addr of a VA_BITS=52 kernel
    assert areas["label"].tolist() == ["hyp per-CPU area, CPU 0", "hyp per-CPU area, CPU 1"]
    size = (areas["end"] - areas["start"]).tolist()
    assert size == [-(-template // 4096) * 4096] * 2
    assert ((areas["start"] % 4096) == 0).all()
    assert (areas["start"] >= 0x40000000).all() and (areas["end"] <= 0x80000000).all()
    assert {"kallsyms", "percpu", "iomem", "dmesg"} <= set(labels["source"].astype(str))


def test_symbol_table_takes_each_names_first_line():
    """A name kallsyms lists twice (static functions of two files) resolves to its first
    line, as ``drop_duplicates("name")`` keeps it."""
    from s2trace.hyp.evidence import _symbols

    frame = pd.DataFrame(
        {
            "addr": np.array([0x10, 0x20, 0x30, 0x40], np.uint64),
            "type": ["t", "t", "T", "t"],
            "name": ["a", "b", "a", "c"],
            "line": [1, 2, 3, 4],
        }
    )
    assert _symbols(frame) == {"a": 0x10, "b": 0x20, "c": 0x40}
