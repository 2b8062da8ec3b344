"""Every answer says its basis; VM pages are timed where the kernel moves them (issue 15).

Hand-checked on the bundled captures:

* 6.12: 0x7f200000 is the start of the 10 MiB hyp carve-out (dmesg.txt line 12, "kvm [0]:
  Reserved 10 MiB at 0x7f200000"); the trace never touches it, the dump says hyp owns it.
* 7.3 lifecycle: VM 2 (struct kvm 0xffff00000611e000 = PA 0x4611e000) is destroyed at line 195
  (pkvm_destroy_hyp_vm at 43.156459, first free_hyp_memcache at 43.157400).  Donated for it:
  hyp VM pgd 0x44ef2000 (1 page) and VM 0x4445e000 (2), vCPU 0x44f78000 (3) and three memcache
  top-up pages (0x45591000, 0x46145000, 0x44f48000): 9 pages.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from s2trace.cli.main import main
from s2trace.jobs.analyze import analyze
from s2trace.trace.queries import explain, owner_at
from s2trace.trace.replay import ASSUMED, PRECONDITION, replay
from s2trace.trace.synth_helpers import make_transitions

REPO = Path(__file__).resolve().parents[1]
S612 = REPO / "sample-traces" / "qemu-pkvm-6.12"
LIFE = REPO / "sample-traces" / "qemu-pkvm-7.3-lifecycle"
VM2_PAGES = [0x44EF2000, 0x4445E000, 0x4445F000, 0x44F78000, 0x44F79000, 0x44F7A000,
             0x45591000, 0x46145000, 0x44F48000]  # fmt: skip
TEARDOWN_CERTAIN, TEARDOWN_EARLIEST = 43.157400, 43.156459


def test_carve_out_answers_hyp_naming_the_dump():
    a = analyze(S612, use_cache=False)
    ans = owner_at(a.timeline, 0x7F200000)
    assert (ans.owner, ans.host_state, ans.since) == ("hyp", "nopage", -math.inf)
    assert ans.basis.startswith("dump host-s2.elf.zst") and "after the trace" in ans.basis
    assert "basis: dump host-s2.elf.zst" in explain(a.timeline, 0x7F200000)
    check = a.timeline.meta["end_check"]
    assert check["pages_checked"] == 8 and check["pages_disagreeing"] == 0


def test_carve_out_from_dmesg_without_a_dump():
    a = analyze(S612, use_cache=False, dump=(), dmesg=S612 / "dmesg.txt", grounds=True)
    b = analyze(S612 / "ftrace.txt", use_cache=False, kernel="6.12", dmesg=S612 / "dmesg.txt",
                linear_map=(0xFFFF000000000000, 0x40000000))  # fmt: skip
    for r in (b,):
        ans = owner_at(r.timeline, 0x7F200000 + 0x9FF000)  # last page of the carve-out
        assert ans.owner == "hyp"
        assert ans.basis == "evidence dmesg.txt line 12: hyp carve-out"
        assert owner_at(r.timeline, 0x7F200000 + 0xA00000).basis == ASSUMED
    assert owner_at(a.timeline, 0x7F200000).owner == "hyp"


def test_touched_page_starts_in_its_first_precondition():
    rows = [dict(op="unshare", addr=0x40000000, ts=1.0), dict(op="reclaim", addr=0x40001000)]
    tl = replay(make_transitions(rows), kernel="6.12", precondition=True)
    assert tl.violations.empty
    first = owner_at(tl, 0x40000000, 0.5)
    assert (first.host_state, first.peer) == ("shared_owned", "hyp")
    assert first.basis.startswith(PRECONDITION) and "trace line 1" in first.basis
    assert owner_at(tl, 0x40001000, 0.5).owner == "hyp"
    legacy = replay(make_transitions(rows), kernel="6.12")  # without: the host's, refused
    assert len(legacy.violations) == 2


def _without_free_pages(tmp_path: Path) -> Path:
    folder = tmp_path / "life"
    shutil.copytree(LIFE, folder)
    trace = folder / "ftrace.txt"
    lines = trace.read_text().splitlines(keepends=True)
    trace.write_text("".join(x for x in lines if " s2_free_pages:" not in x))
    return folder


@pytest.mark.parametrize("free_pages", [True, False], ids=["free_pages", "no_free_pages"])
def test_teardown_gives_every_donated_page_back(tmp_path, free_pages):
    folder = LIFE if free_pages else _without_free_pages(tmp_path)
    a = analyze(folder, use_cache=False, grounds=False)
    assert a.violations.empty
    for pa in VM2_PAGES:
        before = owner_at(a.timeline, pa, TEARDOWN_CERTAIN - 1e-6)
        after = owner_at(a.timeline, pa, TEARDOWN_CERTAIN)
        assert before.owner == "hyp", hex(pa)
        assert (after.owner, after.host_state) == ("host", "owned"), hex(pa)
        assert after.since == TEARDOWN_CERTAIN and after.t_earliest == TEARDOWN_EARLIEST
        assert after.basis.startswith("rule: the teardown hypercall gives back")
    tr = a.transitions
    confirm = tr[tr["op"].astype(str) == "confirm"]
    assert len(confirm) == (9 if free_pages else 0)


def test_vm_donation_is_bracketed_by_create_hyp_vm():
    a = analyze(S612, use_cache=False, grounds=False)
    ans = owner_at(a.timeline, 0x48115000)
    # the pgd, allocated at 18.548758 (line 28), is donated by __pkvm_init_vm after the hyp VM's
    # allocation returned (18.548803, line 30) and before the first vCPU's allocation starts
    # (18.549583, line 31: 6.12 allocates the vCPUs in the same call, §KF-3.7)
    assert (ans.since, ans.t_earliest, ans.cause) == (18.549583, 18.548803, 31)
    assert owner_at(a.timeline, 0x48115000, 18.549).owner == "host"
    iv = a.intervals
    hyp = iv[iv["owner"].astype(str) == "hyp"]
    assert np.all(hyp["t_earliest"].to_numpy() <= hyp["t_start"].to_numpy())


# -- the kernel family ---------------------------------------------------------------------------
def test_bare_lifecycle_trace_infers_its_family(tmp_path, capsys):
    bare = tmp_path / "ftrace.txt"
    shutil.copy(LIFE / "ftrace.txt", bare)
    a = analyze(bare, use_cache=False)
    folder = analyze(LIFE, use_cache=False)
    assert (
        a.kernel == "7.0"
        and "unshare_pfn_hyp (10 events) exists from 7.0" in (a.meta["kernel_family"])
    )
    assert a.meta["linear_map"] == "0xffff000000000000=0x40000000"  # from the trace itself
    # the folder's dump and dmesg add rows for pages the trace never touches, and settle the
    # memcache pages the trace leaves uncertain (the bare trace says uncertain there); the rest
    # agree
    own = folder.intervals[~folder.intervals["basis"].astype(str).str.match("dump|evidence")]
    settled = own["basis"].astype(str).str.contains("the trace alone could not tell")
    assert settled.sum() == 6  # VM 1's and VM 3's three memcache pages each
    bare_basis = a.intervals["basis"].astype(str).reset_index(drop=True)
    assert bare_basis[settled.to_numpy()].str.startswith("uncertain:").all()
    own = own.assign(basis=pd.Categorical(np.where(settled, bare_basis, own["basis"].astype(str))))
    pd.testing.assert_frame_equal(
        a.intervals.reset_index(drop=True),
        own.reset_index(drop=True),
        check_categorical=False,
    )
    main(["timeline", str(bare)])
    out = capsys.readouterr().out
    assert out.startswith("# kernel_family: 6.14-7.0") and "or 7.1+" in out.splitlines()[0]


def test_kernel_contradicting_the_events_exits_2(tmp_path, capsys):
    bare = tmp_path / "ftrace.txt"
    shutil.copy(LIFE / "ftrace.txt", bare)
    assert main(["owner", str(bare), "0x40000000", "--kernel", "6.12"]) == 2
    err = capsys.readouterr().err
    assert "--kernel says Linux 6.12" in err and "unshare_pfn_hyp" in err


def test_families_that_replay_differently_exit_2(tmp_path, capsys):
    # a protected VM's guest page is a donation, which only 7.1+ has: 6.14-7.0 would refuse it
    text = (REPO / "sample-traces" / "qemu-pkvm-7.3" / "ftrace.txt").read_text()
    bare = tmp_path / "ftrace.txt"
    bare.write_text(text.replace(" type=0x0", " type=0x80000000"))
    assert main(["timeline", str(bare)]) == 2
    assert "give --kernel" in capsys.readouterr().err
    assert main(["timeline", str(bare), "--kernel", "7.3"]) == 0


def test_ignored_events_are_named(tmp_path, capsys):
    line = (
        "  kvmpoke-196 [000] d..1.    43.090626: s2_pkvm_pgtable_stage2_map: pgt=0x1 "
        "addr=0x0 size=0x1000 phys=0x483dd000 prot=0xf\n"
    )
    bare = tmp_path / "t.txt"
    bare.write_text("# tracer: nop\n" + line)
    assert main(["timeline", str(bare), "--kernel", "6.12"]) == 0
    err = capsys.readouterr().err
    assert "ignored for Linux 6.12" in err and "s2_pkvm_pgtable_stage2_map x1" in err


def test_diff_bare_trace_with_a_7_3_dump_detects_the_profile(tmp_path, capsys):
    import zstandard

    s73 = REPO / "sample-traces" / "qemu-pkvm-7.3"
    shutil.copy(s73 / "ftrace.txt", tmp_path / "ftrace.txt")
    dump = tmp_path / "host-s2.elf"
    dump.write_bytes(zstandard.ZstdDecompressor().decompressobj().decompress(
        (s73 / "host-s2.elf.zst").read_bytes()))  # fmt: skip
    lm = "0xffff000000000000=0x40000000"
    rc = main(["diff", str(tmp_path / "ftrace.txt"), str(dump), "--linear-map", lm])
    out = capsys.readouterr()
    assert rc == 0, out.out + out.err
    assert out.out.startswith("agree") and "try --profile" not in out.err


# -- boot evidence from kallsyms -----------------------------------------------------------------
# Hand-checked on the 6.12 capture: iomem.txt "Kernel code" starts at 0x40200000 (_text is at
# 0xffffb0998ee00000) and "Kernel data" at 0x42870000 (_sdata 0xffffb09991470000): both give the
# image offset VA - PA = 0xffffb0994ec00000.  kallsyms-subset.txt line 46 puts
# __kvm_nvhe___hyp_text_start at ...8fd3ad04 (PA 0x4113ad04: its page 0x4113a000 holds the
# end of .hyp.idmap.text too) and line 387 __kvm_nvhe___hyp_text_end at ...8fd4f000 (PA
# 0x4114f000); .rodata lines 397/412 -> 0x41eef000-0x41ef5000; .bss lines 443/483 ->
# 0x42c2c000-0x42c2e000.  The dump annotates exactly these pages as hyp-owned.
IMAGE_OFFSET_612 = 0xFFFFB0994EC00000
SECTIONS_612 = {
    ".text": (0x4113A000, 0x4114F000, 46, 387),
    ".rodata": (0x41EEF000, 0x41EF5000, 397, 412),
    ".bss": (0x42C2C000, 0x42C2E000, 443, 483),
}
# 7.3 (_text 0xffffa2d8e5800000 at 0x40200000, _sdata ...e8300000 at 0x42d00000): .text lines
# 68/504, .rodata 514/537, .bss 574/632; .hyp.data is empty (lines 568/569 at one address).
SECTIONS_73 = {
    ".text": (0x414BF000, 0x414DA000, 68, 504),
    ".rodata": (0x428E8000, 0x428F0000, 514, 537),
    ".bss": (0x43340000, 0x43342000, 574, 632),
}


def _bare_612(tmp_path: Path) -> Path:
    """The 6.12 trace on its own, with kallsyms and iomem but no dump and no dmesg."""
    for name in ("ftrace.txt", "kallsyms-subset.txt", "iomem.txt"):
        shutil.copy(S612 / name, tmp_path / name)
    return tmp_path / "ftrace.txt"


def test_kallsyms_hyp_text_is_hyp_without_dump_or_dmesg(tmp_path, capsys):
    trace = _bare_612(tmp_path)
    a = analyze(trace, use_cache=False, kernel="6.12",
                kallsyms=tmp_path / "kallsyms-subset.txt", iomem=tmp_path / "iomem.txt",
                linear_map=(0xFFFF000000000000, 0x40000000))  # fmt: skip
    for section, (lo, hi, l0, l1) in SECTIONS_612.items():
        for pa in (lo, hi - 0x1000):
            ans = owner_at(a.timeline, pa + 0x10)
            assert (ans.owner, ans.host_state, ans.since) == ("hyp", "nopage", -math.inf)
            assert ans.basis == (
                f"evidence kallsyms-subset.txt lines {l0} and {l1} (placed by iomem.txt): "
                f"hyp {section}, the hypervisor's from boot"
            )
        assert owner_at(a.timeline, hi).basis == ASSUMED  # the page after the section
        assert owner_at(a.timeline, lo - 0x1000).basis == ASSUMED
    assert "'Kernel code' = _text and iomem 'Kernel data' = _sdata" in a.meta["boot_evidence"]
    args = ["owner", str(trace), "0x4113b000", "--kernel", "6.12", "--json",
            "--kallsyms", str(tmp_path / "kallsyms-subset.txt"),
            "--iomem", str(tmp_path / "iomem.txt")]  # fmt: skip
    assert main(args) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["owner"] == "hyp" and "kallsyms-subset.txt lines 46 and 387" in record["basis"]


def test_kallsyms_without_iomem_claims_nothing_and_says_why(tmp_path, capsys):
    trace = _bare_612(tmp_path)
    args = ["owner", str(trace), "0x4113b000", "--kernel", "6.12",
            "--kallsyms", str(tmp_path / "kallsyms-subset.txt")]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr()
    assert "basis: " + ASSUMED in out.out
    assert "hyp sections not used: no iomem copy to place the kernel image" in out.err


def test_kallsyms_sections_agree_with_the_dump():
    """The capture's dump (taken later) annotates the same pages hyp-owned: its basis wins,
    and the kallsyms ranges are exactly the dump's hyp runs there."""
    a = analyze(S612, use_cache=False)
    iv = a.intervals
    for lo, hi, _, _ in SECTIONS_612.values():
        rows = iv[(iv["addr_start"] == lo)]
        assert len(rows) == 1 and int(rows["size"].iloc[0]) == hi - lo
        assert str(rows["owner"].iloc[0]) == "hyp"
        assert str(rows["basis"].iloc[0]).startswith("dump host-s2.elf.zst")
    assert "kallsyms-subset.txt lines 46 and 387" in a.meta["boot_evidence"]


@pytest.mark.parametrize(("folder", "expected"), [
    (S612, SECTIONS_612), (REPO / "sample-traces" / "qemu-pkvm-7.3", SECTIONS_73)])  # fmt: skip
def test_hyp_owned_sections_on_both_kernels(folder, expected):
    from s2trace.hyp.boot_sections import hyp_owned_sections
    from s2trace.hyp.evidence import KernelImage, read_iomem, read_kallsyms

    ks = read_kallsyms(folder / "kallsyms-subset.txt")
    image = KernelImage.from_evidence(ks, read_iomem(folder / "iomem.txt"))
    found, notes = hyp_owned_sections(ks, image)
    assert notes == []  # 7.3's empty .hyp.data is no section, and no complaint
    got = {r.section: (int(r.pa_start), int(r.pa_end), r.start_line, r.end_line)
           for r in found.itertuples()}  # fmt: skip
    assert got == expected


def test_hyp_owned_sections_claim_only_what_the_symbols_support():
    from s2trace.hyp.boot_sections import hyp_owned_sections
    from s2trace.hyp.evidence import KernelImage, read_kallsyms

    ks = read_kallsyms(
        "ffff800080010000 T __kvm_nvhe___hyp_text_start\n"  # no _end: not claimed
        "ffff800080200000 D __hyp_rodata_start\n"  # unprefixed aliases are read too
        "ffff800080201800 D __hyp_rodata_end\n"
        "ffff800080300000 B __kvm_nvhe___hyp_bss_start\n"
        "ffff8000802ff000 B __kvm_nvhe___hyp_bss_end\n"  # below its start
        "ffff800090000000 D __kvm_nvhe___hyp_data_start\n"
        "ffff800090001000 D __kvm_nvhe___hyp_data_end\n"  # outside the image bounds
    )
    image = KernelImage(0xFFFF800080000000, 0x40000000)
    found, notes = hyp_owned_sections(ks, image, bounds=(0x40000000, 0x41000000))
    assert [(r.section, int(r.pa_start), int(r.pa_end), r.start_line, r.end_line)
            for r in found.itertuples()] == [(".rodata", 0x40200000, 0x40202000, 2, 3)]  # fmt: skip
    assert len(notes) == 3
    assert "only one of __hyp_text_start/__hyp_text_end" in notes[0]
    assert ".data would be at 0x50000000-0x50001000, outside the kernel image" in notes[1]
    assert "__hyp_bss_end is below __hyp_bss_start" in notes[2]


def test_carve_out_wins_where_kallsyms_overlaps_it(tmp_path):
    from s2trace.jobs.grounds import boot_evidence

    dmesg = tmp_path / "dmesg.txt"
    dmesg.write_text("x\nkvm [0]: Reserved 1 MiB at 0x4113c000\n")
    frame, notes, problems = boot_evidence(dmesg, S612 / "kallsyms-subset.txt", S612 / "iomem.txt")
    rows = list(zip(frame["ipa_start"], frame["size"], frame["basis"].str[:24], strict=True))
    assert rows[:3] == [
        (0x4113A000, 0x2000, "evidence kallsyms-subset"),  # .text before the carve-out
        (0x4113C000, 0x100000, "evidence dmesg.txt line "),
        (0x41EEF000, 0x6000, "evidence kallsyms-subset"),  # .text inside it went to dmesg
    ]
    assert problems == [] and "placed by iomem.txt" in notes[0]


def test_one_image_placement_for_labels_and_register_recovery():
    from s2trace.hyp.evidence import (
        KernelImage,
        image_offsets,
        kernel_resources,
        read_iomem,
        read_kallsyms,
    )
    from s2trace.pkvm.kallsyms import read_kallsyms as read_syms

    ks, io = read_kallsyms(S612 / "kallsyms-subset.txt"), read_iomem(S612 / "iomem.txt")
    resources = kernel_resources(io)
    syms = read_syms(S612 / "kallsyms-subset.txt")
    found = image_offsets(syms.address, resources)
    both = "iomem 'Kernel code' = _text and iomem 'Kernel data' = _sdata"
    assert found[0] == (IMAGE_OFFSET_612, both)
    assert found[1][1] == "iomem 'Kernel code' = _stext"  # one anchor only: ranked last
    image = KernelImage.from_evidence(ks, io)
    assert (image.text_va - image.text_pa) & ((1 << 64) - 1) == IMAGE_OFFSET_612
    data_only = KernelImage.from_evidence(ks, io[io["name"] != "Kernel code"])
    assert int(data_only.pa(0xFFFFB0998FD3AD04)) == 0x4113AD04 and "_sdata" in data_only.how


def test_7_3_hyp_text_mapped_read_only_is_still_the_hypervisors():
    """On 7.3 the hyp .text keeps a read-only host mapping (its vmemmap state is hyp-owned,
    docs/kernel-facts.md §KF-2.8): the dump's leaf holds no host state there, so the kallsyms
    section decides; the .rodata next door is annotated in the dump, which keeps its word."""
    a = analyze(REPO / "sample-traces" / "qemu-pkvm-7.3", use_cache=False)
    text = owner_at(a.timeline, 0x414C0000)
    assert (text.owner, text.host_state) == ("hyp", "nopage")
    assert text.basis.startswith("evidence kallsyms-subset.txt lines 68 and 504")
    rodata = owner_at(a.timeline, 0x428E9000)
    assert rodata.owner == "hyp" and rodata.basis.startswith("dump host-s2.elf.zst")
    assert owner_at(a.timeline, 0x414BE000).basis.startswith("dump")  # kernel text: host


def test_boot_evidence_decides_only_where_the_dump_lacks_the_host_state():
    pg = 0x1000
    dump = pd.DataFrame({
        "ipa_start": np.array([0x40000000, 0x40002000], dtype=np.uint64),
        "size": np.array([2 * pg, 2 * pg], dtype=np.uint64),
        "owner": ["host", "host"],
        "page_state": ["unknown", "owned"],  # a 6.14+ valid leaf, then a 6.12 one
    })  # fmt: skip
    boot = [(0x40001000, 2 * pg, "hyp", "owned")]
    tl = replay(make_transitions([]), at_end=dump, end_basis="dump D", boot=boot,
                boot_basis="evidence K")  # fmt: skip
    got = [(owner_at(tl, 0x40000000 + i * pg).owner, owner_at(tl, 0x40000000 + i * pg).basis)
           for i in range(4)]  # fmt: skip
    assert got == [("host", "dump D"), ("hyp", "evidence K"), ("host", "dump D"),
                   ("host", "dump D")]  # fmt: skip
