"""Consistency checks on synthetic machines (both tables and the vmemmap built by the
project's builders), each invariant broken on purpose, and on the real captures."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import REAL, real_core, real_dir

from s2trace.arch.registers import config_from_registers
from s2trace.cli.main import cli, main
from s2trace.columns import BREACHES
from s2trace.hyp.build import HypStage1Builder, VmemmapBuilder, write_machine
from s2trace.hyp.check import check_dump
from s2trace.hyp.enrich import enrich_with_vmemmap
from s2trace.hyp.host_state import HOST_STATE_MAP, apply_states, page_states
from s2trace.hyp.invariants import INVARIANTS
from s2trace.hyp.kernel_guess import guess_kernel
from s2trace.hyp.vmemmap import kernel_layout
from s2trace.io import open_memory
from s2trace.walk.build import Stage2Builder
from s2trace.walk.walker import walk

RAM, RAM_SIZE = 0x40000000, 0x800000  # 8 MiB of "RAM": every page of the dump is checked
CARVE = 0x40700000  # the last MiB: host S2 tables, hyp tables, vmemmap (hyp-owned)
LINEAR = 0x8000_0000_0000  # hyp VA = PA + LINEAR
VMEMMAP_VA = 0x600000000000
PAGE = 0x1000


def pa(i: int) -> int:
    return RAM + i * PAGE


# Page roles (index from the start of RAM).
HYP_OWNED = range(0x10, 0x20)
SHARE_TO_HYP = 0x20  # host -> hyp share
SHARE_TO_HOST = 0x21  # hyp -> host share
GUEST_SHARE = 0x410  # host -> np-guest share, inside the host's 2 MiB block at 0x40400000
GUEST_DONATED = 0x40  # 7.1: donated to a protected guest
HYP_TEXT = 0x50  # >= 6.17: hyp text, read-only in the host
PLAIN = 0x60  # a plain host page, mapped


@dataclass
class Machine:
    path: object
    vttbr: int
    vtcr: int
    ttbr0: int
    tcr: int
    hcr: int
    kernel: str


def build(tmp_path, kernel: str, breaks: tuple[str, ...] = (), name: str = "m.elf") -> Machine:
    """A consistent machine for ``kernel``, then the ``breaks`` applied."""
    lay = kernel_layout(kernel)
    pte_host, pte_hyp = lay.host_states == "pte", lay.hyp_states == "pte"
    vm_states = lay.hyp_page.host_state is not None
    host = Stage2Builder(profile=lay.host_profile, table_base=CARVE)
    hyp = HypStage1Builder(e2h=True, table_base=CARVE + 0x40000)
    vm = VmemmapBuilder(lay.hyp_page, VMEMMAP_VA, RAM >> 12, RAM_SIZE >> 12, CARVE + 0x80000)

    def vmset(i: int, n: int = 1, host_state=None, hyp_state=None, **kw) -> None:
        f = dict(kw)
        if vm_states:
            f["host_state"] = host_state
        if lay.hyp_page.hyp_state is not None:
            f["hyp_state"] = hyp_state
        vm.set_range((RAM >> 12) + i, n, **f)

    def hyp_own(first: int, n: int) -> None:
        host.annotate(pa(first), n * PAGE, "hyp")
        hyp.map(LINEAR + pa(first), n * PAGE, pa(first))
        vmset(first, n, "nopage", "owned")

    # The carve-out: everything the hypervisor keeps there is hyp-owned (kernel-facts.md §KF-2.8).
    hyp_own(0x700, 0x100)
    vm.map_into(hyp)
    hyp_own(HYP_OWNED.start, len(HYP_OWNED))
    # host -> hyp share (a struct kvm) and hyp -> host share (kvm_vgic_global_state, 6.12).
    host.map(pa(SHARE_TO_HYP), PAGE, state="shared_owned" if pte_host else None)
    hyp.map(LINEAR + pa(SHARE_TO_HYP), PAGE, pa(SHARE_TO_HYP),
            state="shared_borrowed" if pte_hyp else "owned")  # fmt: skip
    vmset(SHARE_TO_HYP, 1, "shared_owned", "shared_borrowed", refcount=1)
    host.map(pa(SHARE_TO_HOST), PAGE, state="shared_borrowed" if pte_host else None)
    hyp.map(LINEAR + pa(SHARE_TO_HOST), PAGE, pa(SHARE_TO_HOST), perm="ro",
            state="shared_owned" if pte_hyp else "owned")  # fmt: skip
    vmset(SHARE_TO_HOST, 1, "shared_borrowed", "shared_owned")
    host.map(pa(PLAIN), 0x10 * PAGE)
    host.map(pa(0x400), 0x200000)  # one 2 MiB block
    vmset(0, 0x700, "owned", "nopage")
    for i in (*HYP_OWNED, SHARE_TO_HYP, SHARE_TO_HOST):
        vmset(i, 1, *{SHARE_TO_HYP: ("shared_owned", "shared_borrowed"),
                      SHARE_TO_HOST: ("shared_borrowed", "shared_owned")}.get(
            i, ("nopage", "owned")), refcount=int(i == SHARE_TO_HYP))  # fmt: skip
    if vm_states:
        vmset(GUEST_SHARE, 1, "shared_owned", "nopage", count=1)
    if lay.host_profile == "linux-7.1":
        host.annotate(pa(GUEST_DONATED), PAGE, "guest", vm_handle=0x1000, gfn=0)
        vmset(GUEST_DONATED, 1, "nopage", "nopage")
    if lay.hyp_text_ro_in_host:
        host.map(pa(HYP_TEXT), PAGE, s2ap="ro", xn=2)
        hyp.map(pa(HYP_TEXT), PAGE, pa(HYP_TEXT), perm="rx")  # the idmap alias
        vmset(HYP_TEXT, 1, "nopage", "owned")

    for b in breaks:
        BREAKS[b](host, hyp, vm, vmset, lay)
    pages = {**host.table_pages(), **hyp.table_pages(), **vm.pages()}
    path = write_machine(tmp_path / name, pages, ram=(RAM, RAM_SIZE))
    return Machine(path, host.vttbr, host.vtcr, hyp.ttbr0, hyp.tcr, hyp.hcr, kernel)


def _set_host_raw(host, i, raw):
    host.set_raw(pa(i), 3, raw)


BREAKS = {
    # hyp owns page 0x70 (stage-1 SW bits), the host stage 2 does not say so
    "A1_pte": lambda h, y, v, vs, lay: y.map(LINEAR + pa(0x70), PAGE, pa(0x70)),
    # 7.x: the vmemmap says hyp-owned, the host entry is not annotated
    "A1_vm": lambda h, y, v, vs, lay: vs(0x70, 1, "nopage", "owned"),
    # the host is annotated hyp, but the hyp does not own the page
    "A2_pte": lambda h, y, v, vs, lay: h.annotate(pa(0x71), PAGE, "hyp"),
    "A2_vm": lambda h, y, v, vs, lay: (
        h.annotate(pa(0x71), PAGE, "hyp"),
        vs(0x71, 1, "nopage", "nopage"),
    ),
    "B1": lambda h, y, v, vs, lay: y.map(
        LINEAR + pa(0x72), PAGE, pa(0x72), perm="ro", state="shared_owned"
    ),
    "B2": lambda h, y, v, vs, lay: h.map(pa(0x73), PAGE, state="shared_borrowed"),
    "C1": lambda h, y, v, vs, lay: y.map(
        LINEAR + pa(0x74), PAGE, pa(0x74), state="shared_borrowed"
    ),
    "C2_pte": lambda h, y, v, vs, lay: h.map(pa(0x75), PAGE, state="shared_owned"),
    "C2_vm": lambda h, y, v, vs, lay: vs(0x75, 1, "shared_owned", "nopage"),
    "D": lambda h, y, v, vs, lay: h.map(pa(0x76), PAGE, oa=pa(0x77)),
    # 7.x: a page given to a protected guest (host nopage, hyp nopage) still host-mapped
    "E1": lambda h, y, v, vs, lay: (h.map(pa(0x78), PAGE), vs(0x78, 1, "nopage", "nopage")),
    # the hyp owns a page the host still maps (also breaks the annotation invariant)
    "E2": lambda h, y, v, vs, lay: (
        h.map(pa(0x79), PAGE),
        y.map(LINEAR + pa(0x79), PAGE, pa(0x79)),
    ),
    # 6.14: host stage-2 SW0 set (shared_owned) while the vmemmap says owned
    "F1": lambda h, y, v, vs, lay: _set_host_raw(h, 0x7A, pa(0x7A) | 0x7FF | 1 << 55),
    # 6.16+: hyp stage-1 SW1 (shared_borrowed) on a page the vmemmap says the hyp owns
    "F2": lambda h, y, v, vs, lay: (
        h.annotate(pa(0x7B), PAGE, "hyp"),
        vs(0x7B, 1, "nopage", "owned"),
        y.map(LINEAR + pa(0x7B), PAGE, pa(0x7B), state="shared_borrowed"),
    ),
    # 6.16+: the hyp maps a page it neither owns nor borrows
    "F3": lambda h, y, v, vs, lay: y.map(LINEAR + pa(PLAIN), PAGE, pa(PLAIN)),
    # one page, two hyp VAs, two states
    "G": lambda h, y, v, vs, lay: y.map(
        LINEAR + pa(0x10) + 0x10000000, PAGE, pa(0x10), state="shared_owned"
    ),
    # 7.x: the hyp text made writable in the host
    "text_rw": lambda h, y, v, vs, lay: h.map(pa(HYP_TEXT), PAGE, s2ap="rw", xn=2),
}


def run(m: Machine, kernel: str | None = "given", **kw):
    with open_memory([str(m.path)]) as memory:
        return check_dump(
            memory, m.vttbr, m.vtcr, m.ttbr0, m.tcr,
            kernel=m.kernel if kernel == "given" else kernel,
            hcr=m.hcr, vmemmap_va=kw.pop("vmemmap_va", VMEMMAP_VA), **kw,
        )  # fmt: skip


KERNELS = ["6.12", "6.14", "6.16", "7.3"]


@pytest.mark.parametrize("kernel", KERNELS)
def test_consistent_machines(tmp_path, kernel):
    r = run(build(tmp_path, kernel))
    BREACHES.check(r.breaches)
    assert r.consistent, r.breaches.head().to_string()
    assert len(r.problems) == 0
    assert len(r.states) == RAM_SIZE // PAGE
    s = r.states
    share = s.loc[(RAM >> 12) + SHARE_TO_HYP]
    assert (share["host_state"], share["hyp_state"]) == ("shared_owned", "shared_borrowed")
    back = s.loc[(RAM >> 12) + SHARE_TO_HOST]
    assert (back["host_state"], back["hyp_state"]) == ("shared_borrowed", "shared_owned")
    owned = s.loc[(RAM >> 12) + HYP_OWNED.start]
    assert (owned["host_state"], owned["hyp_state"]) == ("nopage", "owned")
    assert int(owned["host_raw"]) in (0x4, 0x2000000000000002)  # owner HYP (§KF-2.2)
    assert r.counts()["breaches"].sum() == 0
    assert "consistent" in r.verdict()


CASES = [
    ("6.12", "A1_pte", 0x70, {"hyp_owned_vs_host_annotation"}),
    ("7.3", "A1_vm", 0x70, {"hyp_owned_vs_host_annotation"}),
    ("6.12", "A2_pte", 0x71, {"hyp_owned_vs_host_annotation"}),
    ("7.3", "A2_vm", 0x71, {"hyp_owned_vs_host_annotation"}),
    ("6.12", "B1", 0x72, {"hyp_shared_owned_vs_host_borrowed"}),
    ("6.12", "B2", 0x73, {"hyp_shared_owned_vs_host_borrowed"}),
    ("6.12", "C1", 0x74, {"hyp_borrowed_vs_host_shared_owned"}),
    ("6.12", "C2_pte", 0x75, {"hyp_borrowed_vs_host_shared_owned"}),
    ("7.3", "C2_vm", 0x75, {"hyp_borrowed_vs_host_shared_owned"}),
    ("7.3", "D", 0x76, {"host_identity"}),
    ("7.3", "E1", 0x78, {"host_maps_foreign_page"}),
    ("6.12", "E2", 0x79, {"host_maps_foreign_page", "hyp_owned_vs_host_annotation"}),
    ("6.14", "F1", 0x7A, {"vmemmap_vs_pte"}),
    ("7.3", "F2", 0x7B, {"vmemmap_vs_pte"}),
    ("7.3", "F3", PLAIN, {"vmemmap_vs_pte"}),
    ("6.12", "G", 0x10, {"hyp_alias_conflict"}),
    ("7.3", "text_rw", HYP_TEXT, {"host_maps_foreign_page", "hyp_owned_vs_host_annotation"}),
]


@pytest.mark.parametrize(("kernel", "brk", "page", "broken"), CASES, ids=[c[1] for c in CASES])
def test_each_invariant_broken_on_purpose(tmp_path, kernel, brk, page, broken):
    r = run(build(tmp_path, kernel, (brk,)))
    b = r.breaches
    BREACHES.check(b)
    assert not r.consistent and set(b["invariant"].astype(str)) == broken
    assert set(b["pa"].tolist()) == {pa(page)}
    assert "INCONSISTENT" in r.verdict()
    row = b.iloc[0]
    assert row["detail"] and row["size"] == PAGE


def test_breach_rows_carry_every_sides_raw_entry(tmp_path):
    r = run(build(tmp_path, "7.3", ("A1_vm",)))
    (row,) = r.breaches.itertuples()
    assert row.host_raw is pd.NA  # no host entry at all: the host still "owns" it
    assert row.hyp_raw is pd.NA  # and the hyp does not map it
    assert row.vmemmap_raw == 0x33 << 24  # host nopage, hyp owned (kernel-facts.md §KF-2.8)
    assert (row.host_state, row.hyp_state) == ("nopage", "owned")
    r = run(build(tmp_path, "6.12", ("E2",), name="e2.elf"))
    e2 = r.breaches[r.breaches["invariant"] == "host_maps_foreign_page"].iloc[0]
    assert int(e2["host_raw"]) == pa(0x79) | 0x7FF  # host memory page, RWX (§KF-1.9)
    assert int(e2["hyp_va"]) == LINEAR + pa(0x79) and int(e2["hyp_raw"]) & 3 == 3


def test_np_guest_share_is_not_a_breach_but_an_ffa_like_share_is(tmp_path):
    """host shared_owned with host_share_guest_count > 0 is an np-guest share (§KF-3.2)."""
    r = run(build(tmp_path, "7.3"))
    g = r.states.loc[(RAM >> 12) + GUEST_SHARE]
    assert (g["host_state"], int(g["host_share_guest_count"])) == ("shared_owned", 1)
    assert r.consistent
    r = run(build(tmp_path, "7.3", ("C2_vm",), name="c2.elf"))
    assert "FF-A" in r.breaches["detail"].iloc[0]


def test_without_the_vmemmap_state_checks_are_skipped(tmp_path):
    m = build(tmp_path, "7.3", ("D",))
    with open_memory([str(m.path)]) as memory:
        r = check_dump(memory, m.vttbr, m.vtcr, m.ttbr0, m.tcr, kernel="7.3", hcr=m.hcr)
    assert set(r.skipped) == {
        "hyp_owned_vs_host_annotation",
        "hyp_shared_owned_vs_host_borrowed",
        "hyp_borrowed_vs_host_shared_owned",
        "vmemmap_vs_pte",
    }
    assert set(r.breaches["invariant"].astype(str)) == {"host_identity"}  # still checked
    assert any("--vmemmap" in n for n in r.notes)
    counts = r.counts().set_index("invariant")
    assert counts.loc["vmemmap_vs_pte", "checked"].startswith("no:")


@pytest.mark.parametrize(
    ("kernel", "guessed"), [("6.12", "6.13"), ("6.14", "6.14"), ("6.16", "7.0"), ("7.3", "7.1")]
)
def test_guess_kernel(tmp_path, kernel, guessed):
    m = build(tmp_path, kernel)
    r = run(m, kernel=None)
    assert r.view.layout.label == guessed and r.consistent, r.kernel_reason
    with open_memory([str(m.path)]) as memory:
        host = walk(memory, config_from_registers(m.vttbr, m.vtcr))
        layout, why = guess_kernel(host.map)  # no vmemmap: 6.14+ without 7.1 entries unknown
    assert layout.label == {"6.12": "6.13", "7.3": "7.1"}.get(kernel, "6.13")
    assert why


def test_enrich_splits_the_block_around_a_guest_share(tmp_path):
    m = build(tmp_path, "7.3")
    with open_memory([str(m.path)]) as memory:
        w = walk(memory, config_from_registers(m.vttbr, m.vtcr), "linux-7.1")
        e = enrich_with_vmemmap(w, memory, m.ttbr0, m.tcr, vmemmap_va=VMEMMAP_VA, kernel="7.3")
    HOST_STATE_MAP.check(e)
    assert len(e) == len(w.map) + 2  # the 2 MiB block became three pieces
    block = e[e["kind"] == "block"].set_index("ipa_start")
    assert block["size"].tolist() == [0x10000, PAGE, 0x200000 - 0x11000]
    assert block["oa"].tolist() == block.index.tolist()  # identity kept in every piece
    piece = block.loc[pa(GUEST_SHARE)]
    assert (piece["page_state"], piece["hyp_state"]) == ("shared_owned", "nopage")
    assert int(piece["host_share_guest_count"]) == 1 and piece["level"] == 2
    assert set(block["raw"]) == {int(w.map[w.map["kind"] == "block"]["raw"].iloc[0])}
    rows = e.set_index("ipa_start")
    assert rows.loc[pa(HYP_TEXT), "page_state"] == "nopage"  # host-readable, hyp-owned text
    assert rows.loc[pa(SHARE_TO_HYP), "hyp_state"] == "shared_borrowed"
    assert set(e[e["owner"] == "hyp"]["page_state"].astype(str)) == {"nopage"}
    assert (e["page_state"].astype(str) != "unknown").all()


def test_enrich_612_takes_hyp_states_from_the_hyp_stage1(tmp_path):
    m = build(tmp_path, "6.12")
    with open_memory([str(m.path)]) as memory:
        w = walk(memory, config_from_registers(m.vttbr, m.vtcr))
        e = enrich_with_vmemmap(w, memory, m.ttbr0, m.tcr, vmemmap_va=VMEMMAP_VA)
    rows = e.set_index("ipa_start")
    assert len(e) == len(w.map)
    assert rows.loc[pa(SHARE_TO_HYP), "hyp_state"] == "shared_borrowed"
    assert rows.loc[pa(SHARE_TO_HOST), "hyp_state"] == "shared_owned"
    assert rows.loc[pa(PLAIN), "hyp_state"] == "nopage"
    assert e["host_share_guest_count"].isna().all()  # 4-byte struct hyp_page


def test_apply_states_leaves_pages_it_has_no_state_for():
    m = pd.DataFrame(
        {
            "ipa_start": np.array([0x0, 0x40000000], np.uint64),
            "size": np.array([0x200000, 0x4000], np.uint64),
            "oa": pd.array([0x0, 0x40000000], dtype="UInt64"),
            "level": np.array([2, 3], np.int8),
            "kind": pd.Categorical(["block", "page"]),
            "owner": pd.Categorical(["host", "host"]),
            "owner_id": pd.array([0, 0], dtype="UInt32"),
            "page_state": pd.Categorical(["unknown", "unknown"]),
            "s2ap": pd.Categorical(["rw", "rw"]),
            "memattr_name": pd.Categorical(["Device-nGnRE", "S1-wins"]),
            "xn": pd.array([2, 0], dtype="UInt8"),
            "contiguous": pd.array([False, False], dtype="boolean"),
            "table_pa": np.array([0x1000, 0x2000], np.uint64),
            "index": np.array([0, 0], np.uint16),
            "raw": np.array([0x40000000007C5, 0x400007DF], np.uint64),
            "locked": pd.array([None, None], dtype="boolean"),
            "inv_type": pd.Categorical([None, None]),
            "vm_handle": pd.array([None, None], dtype="UInt16"),
            "gfn": pd.array([None, None], dtype="UInt64"),
        }
    )
    layout = kernel_layout("7.3")
    from s2trace.hyp.vmemmap import HYP_PAGE_LAYOUTS, decode_entries

    vm = pd.DataFrame(
        {
            "pa": np.array([0x40001000, 0x40002000], np.uint64),
            **decode_entries(np.array([0x11 << 24, 0x0], np.uint64), HYP_PAGE_LAYOUTS["6.16"]),
            "raw": np.array([0x11 << 24, 0], np.uint64),
            "entry_va": np.array([0, 0], np.uint64),
        },
        index=pd.Index(np.array([0x40001, 0x40002], np.uint64), name="pfn"),
    )
    states = page_states(layout, vm.index.to_numpy(), m, None, vm)
    out = apply_states(m, states)
    assert out["ipa_start"].tolist() == [0x0, 0x40000000, 0x40001000, 0x40002000, 0x40003000]
    assert out["page_state"].astype(str).tolist() == [
        "unknown", "unknown", "shared_owned", "owned", "unknown",
    ]  # fmt: skip
    assert out["hyp_state"].astype(object).where(out["hyp_state"].notna(), None).tolist() == [
        None, None, "shared_borrowed", "nopage", None,
    ]  # fmt: skip
    assert out["oa"].tolist() == out["ipa_start"].tolist()


# -- the command line ---------------------------------------------------------------------------
def _args(m: Machine) -> list[str]:
    return [
        str(m.path), "--vttbr", hex(m.vttbr), "--vtcr", hex(m.vtcr), "--ttbr0-el2",
        hex(m.ttbr0), "--tcr-el2", hex(m.tcr), "--hcr-el2", hex(m.hcr), "--vmemmap",
        hex(VMEMMAP_VA), "--kernel", m.kernel,
    ]  # fmt: skip


def test_cli_check_exit_status(tmp_path, capsys):
    assert main(["check", *_args(build(tmp_path, "7.3"))]) == 0
    out = capsys.readouterr().out
    assert out.startswith("consistent") and "host_identity" in out
    # Exit status 1 for breaches: `click.exceptions.Exit(1)`, seen by a standalone run (see
    # the report: s2trace.cli.main.main drops the status click returns in non-standalone mode).
    bad = build(tmp_path, "7.3", ("D", "E1"), name="bad.elf")
    result = CliRunner().invoke(cli, ["check", *_args(bad)])
    assert result.exit_code == 1, result.output
    assert result.stdout.startswith("INCONSISTENT: 2 breach(es) of 2 invariant(s)")
    assert "not_identity" in result.stderr  # the walk problem is reported too
    assert "0x40076000" in result.output and "0x40078000" in result.output  # hex pages


def test_cli_check_json_and_bad_input(tmp_path, capsys):
    m = build(tmp_path, "6.12", ("B1",))
    result = CliRunner().invoke(cli, ["check", *_args(m), "--format", "json"])
    assert result.exit_code == 1
    rows = [json.loads(x) for x in result.stdout.splitlines()]
    assert [r["invariant"] for r in rows] == ["hyp_shared_owned_vs_host_borrowed"]
    assert rows[0]["pa"] == hex(pa(0x72)) and "INCONSISTENT" in result.stderr
    assert main(["check", str(m.path), "--vttbr", hex(m.vttbr), "--vtcr", hex(m.vtcr)]) == 2
    assert "--ttbr0-el2" in capsys.readouterr().err


def test_cli_hyp_map(tmp_path, capsys):
    m = build(tmp_path, "6.12")
    args = [str(m.path), "--ttbr0-el2", hex(m.ttbr0), "--tcr-el2", hex(m.tcr), "--format", "csv"]
    assert main(["hyp-map", *args]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("va_start,size,pa,level")
    assert any(line.startswith(f"{LINEAR + pa(SHARE_TO_HYP):#x},0x1000,") for line in lines)


def test_invariant_names_are_declared():
    assert set(BREACHES.empty().columns) == set(BREACHES.names)
    assert len(INVARIANTS) == 7


# -- the real captures ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("version", ["6.12", "7.3"])
def test_real_captures_are_consistent(version):
    info = REAL[version]
    d = real_dir(version)
    with open_memory([str(real_core(version))]) as memory:
        r = check_dump(memory, info["vttbr"], info["vtcr"], info["ttbr0"], info["tcr"],
                       kallsyms=d / "kallsyms-subset.txt", iomem=d / "iomem.txt")  # fmt: skip
    assert r.consistent, r.breaches.head().to_string()
    assert len(r.states) == 1 << 18 and len(r.problems) == 0
    expected = {"6.12": "6.13", "7.3": "7.1"}[version]  # README kernels: 6.12, 7.3
    assert r.view.layout.label == expected
    if version == "7.3":  # every state checked
        assert not r.skipped
    else:  # struct hyp_page of 6.12 is 4 bytes, no states (kernel-facts.md §KF-2.5)
        assert set(r.skipped) == {"vmemmap_vs_pte"}


@pytest.mark.slow
@pytest.mark.parametrize("version", ["6.12", "7.3"])
def test_real_capture_folder_cli(version, capsys):
    assert main(["check", str(real_dir(version)), "--limit", "5"]) == 0
    assert capsys.readouterr().out.startswith("consistent")


@pytest.mark.slow
def test_real_73_enrich_fills_the_shared_pages():
    info = REAL["7.3"]
    d = real_dir("7.3")
    trace = (d / "ftrace.txt").read_text()
    import re

    (phys,) = re.findall(r"s2_pkvm_pgtable_stage2_map: .* phys=(0x[0-9a-f]+)", trace)
    (kvm,) = re.findall(r"s2_kvm_arch_init_vm: .* kvm=(0x[0-9a-f]+)", trace)
    kvm_pa = int(kvm, 16) - 0xFFFF000000000000 + 0x40000000  # README linear map
    with open_memory([str(real_core("7.3"))]) as memory:
        w = walk(memory, config_from_registers(info["vttbr"], info["vtcr"]), "linux-7.1")
        e = enrich_with_vmemmap(w, memory, info["ttbr0"], info["tcr"],
                                kallsyms=d / "kallsyms-subset.txt")  # fmt: skip
    rows = e.set_index("ipa_start")
    guest = rows.loc[int(phys, 16)]
    assert (guest["size"], guest["page_state"]) == (PAGE, "shared_owned")
    assert int(guest["host_share_guest_count"]) == 1
    assert (rows.loc[kvm_pa, "page_state"], rows.loc[kvm_pa, "hyp_state"]) == (
        "shared_owned",
        "shared_borrowed",
    )
    assert len(e) == len(w.map) + 2  # only the block around the guest page was split
