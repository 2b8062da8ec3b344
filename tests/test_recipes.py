"""Recipes: events -> TRANSITIONS, hypercall tables, probe definitions.

Expected transitions are worked out by hand from the trace text: a linear-map address VA is
physical VA - 0xffff000000000000 + 0x40000000 on the samples (their READMEs); kvm_share_hyp
covers [ALIGN_DOWN(pa(from)), PAGE_ALIGN(pa(to))) (arch/arm64/kvm/mmu.c v5.17+;
docs/kernel-facts.md §KF-3.4).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s2trace.columns import TRANSITIONS
from s2trace.errors import InputError, StrictError
from s2trace.trace.parse.readers import read_trace
from s2trace.trace.recipes import load_recipes, to_transitions
from s2trace.trace.recipes.hypercalls import hypercall_names, hypercall_table, parse_kvm_asm_h
from s2trace.trace.recipes.probes import probe_lines, probe_script

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "samples"
DATA = Path(__file__).parent / "data" / "traces"
LINEAR = (0xFFFF000000000000, 0x40000000)
K = "kvmpoke-189     [001] d....    "
ALLOC = "s2_alloc_pages_exact: (alloc_pages_exact_noprof+0x0/0xc8)"
SHARE = "s2_kvm_share_hyp: (kvm_share_hyp+0x0/0x298)"
MAP = "s2_pkvm_pgtable_stage2_map"


def ret(event: str, caller: str, callee: str, value: str) -> str:
    """A kretprobe line body: ``event: (caller <- callee) ret=value``."""
    return f"{event}: ({caller} <- {callee}) ret={value}"


def alloc_ret(caller: str, value: str) -> str:
    return ret("s2_alloc_pages_exact_ret", caller, "alloc_pages_exact_noprof", value)


def va(pa: int) -> str:
    """The linear-map address of physical ``pa`` on the samples."""
    return f"{pa - LINEAR[1] + LINEAR[0]:#x}"


def events(tmp_path: Path, *lines: str, fmt: str = "ftrace") -> pd.DataFrame:
    """EVENTS of a small host trace; each line is 'SECONDS: event: fields' after K."""
    path = tmp_path / "t.txt"
    path.write_text(
        "".join(
            ln if ln.startswith(("CPU:", " ")) else f"{K}{ln}" for ln in (x + "\n" for x in lines)
        )
    )
    t = read_trace(path, fmt=fmt, use_cache=False)
    assert len(t.problems) == 0, [str(p) for p in t.problems]
    return t.events


def check(df: pd.DataFrame) -> list[tuple]:
    TRANSITIONS.check(df)
    assert df.dtypes.astype(str).to_dict() == TRANSITIONS.dtypes()
    return [
        (
            r.op,
            None if pd.isna(r.initiator) else r.initiator,
            None if pd.isna(r.completer) else r.completer,
            int(r.addr),
            int(r.size),
            r.recipe,
        )
        for r in df.itertuples()
    ]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S2TRACE_CACHE", str(tmp_path_factory.mktemp("cache")))


def _sample(version: str) -> pd.DataFrame:
    p = SAMPLES / f"qemu-pkvm-{version}" / "ftrace.txt"
    if not p.exists():
        pytest.skip(f"{p} not available")
    return read_trace(p, use_cache=False).events


# -- the real captures ------------------------------------------------------------------------
def test_real_6_12_shares_and_donations() -> None:
    ev = _sample("6.12")
    df, log = to_transitions(ev, linear_map=LINEAR)
    assert len(log) == 0
    assert check(df) == [
        # struct kvm: from=..393d000 to=..393df70 -> one page
        ("share", "host", "hyp", 0x4393D000, 0x1000, "kvm_share_hyp"),
        # vCPU: from=..4c38000 to=..4c39b90 -> two pages
        ("share", "host", "hyp", 0x44C38000, 0x2000, "kvm_share_hyp"),
        # alloc_pages_exact under pkvm_create_hyp_vm (size from the entry probe)
        ("donate", "host", "hyp", 0x48115000, 0x1000, "hyp_vm_donation"),
        ("donate", "host", "hyp", 0x438F6000, 0x2000, "hyp_vm_donation"),
        ("donate", "host", "hyp", 0x438F8000, 0x2000, "hyp_vm_donation"),
    ]  # and not the kvm_s2_zalloc_pages_exact page 0x48095000
    # the share completes at its return probe.  The donations come in runs (6.12
    # arch/arm64/kvm/pkvm.c, docs/kernel-facts.md §KF-3.7): __pkvm_init_vm takes the pgd and the
    # hyp VM after the second allocation returned (line 30) and has returned by the time the
    # first vCPU's allocation starts (line 31); __pkvm_init_vcpu takes the vCPU after its
    # allocation returned (line 32), certain at pkvm_create_hyp_vm's return (line 33)
    assert df["line"].tolist() == [15, 22, 31, 31, 33]
    assert df["event_index"].tolist() == [2, 9, 18, 18, 20]
    assert df["ts"].tolist() == [18.538323, 18.544941, 18.549583, 18.549583, 18.549893]
    # lower bounds: the share's entry probe, the last allocation of each run
    earliest = [18.537715, 18.544642, 18.548803, 18.548803, 18.549619]
    assert df["t_earliest"].tolist() == pytest.approx(earliest, abs=1e-9)
    assert df["counted"].tolist() == [True, True, False, False, False]
    # the donations belong to the VM whose struct kvm is at 0x4393d000 (host_kvm of the call)
    assert df["vm"].tolist()[2:] == [0x4393D000] * 3 and df["vm"].isna().tolist()[:2] == [True] * 2
    assert df["gfn"].isna().all()


def test_real_7_3_shares_donations_and_guest_page() -> None:
    ev = _sample("7.3")
    df, log = to_transitions(ev, linear_map=LINEAR, kernel="7.3")
    assert len(log) == 0
    assert check(df) == [
        ("share", "host", "hyp", 0x45134000, 0x2000, "kvm_share_hyp"),  # ..5134000-..5135028
        ("share", "host", "hyp", 0x461A2000, 0x3000, "kvm_share_hyp"),  # ..61a2340-..61a4680
        ("donate", "host", "hyp", 0x44EAC000, 0x1000, "hyp_vm_donation"),  # hyp VM pgd
        ("donate", "host", "hyp", 0x461C2000, 0x2000, "hyp_vm_donation"),  # pkvm_hyp_vm
        ("donate", "host", "hyp", 0x4611C000, 0x3000, "hyp_vcpu_donation"),  # hyp vCPU
        ("share", "host", "guest", 0x42C99000, 0x1000, "guest_map"),  # type=0x0: np-guest
    ]
    assert df["gfn"].tolist()[-1] == 0 and df["gfn"].isna().tolist()[:5] == [True] * 5
    assert df["line"].tolist()[-1] == 49  # completed at the stage2_map return probe


def test_without_linear_map_the_kernel_addresses_are_a_problem() -> None:
    ev = _sample("6.12")
    df, log = to_transitions(ev)
    assert len(df) == 0
    assert [(p.kind, p.where) for p in log] == [("no_linear_map", 14), ("no_linear_map", 28)]
    assert "linear_map" in log.problems[0].detail


def test_kernel_filter_drops_guest_recipes_before_6_14() -> None:
    names = load_recipes(kernel="6.12").names
    assert "guest_map" not in names and "kvm_share_hyp" in names
    assert "guest_map" in load_recipes(kernel="7.3").names
    assert "guest_map" in load_recipes().names


# -- pairing, context, conditions ------------------------------------------------------------
def test_nested_calls_pair_inside_out_and_unpaired_returns_are_problems(tmp_path: Path) -> None:
    ev = events(
        tmp_path,
        "10.000001: s2_pkvm_create_hyp_vm: (pkvm_create_hyp_vm+0x0/0x298) "
        f"host_kvm={va(0x41000000)}",
        f"10.000002: {ALLOC} size=0x2000 gfp=0x1",
        # an interrupt on the same task allocates in between
        f"10.000003: {ALLOC} size=0x1000 gfp=0x2",
        f"10.000004: {alloc_ret('some_driver+0x10/0x40', va(0x42000000))}",
        f"10.000005: {alloc_ret('pkvm_create_hyp_vm+0xf8/0x298', va(0x43000000))}",
        # a return whose entry was lost
        f"10.000006: {alloc_ret('pkvm_create_hyp_vm+0x180/0x298', va(0x44000000))}",
        "10.000007: "
        + ret(
            "s2_pkvm_create_hyp_vm_ret",
            "kvm_arch_vcpu_run_pid_change+0x2a4/0x358",
            "pkvm_create_hyp_vm",
            "0",
        ),
        # after the call returned: no VM context any more
        f"10.000008: {ALLOC} size=0x1000 gfp=0x1",
        f"10.000009: {alloc_ret('pkvm_create_hyp_vm+0xb4/0x298', va(0x45000000))}",
        # a failed allocation
        f"10.000010: {ALLOC} size=0x1000 gfp=0x1",
        f"10.000011: {alloc_ret('pkvm_create_hyp_vm+0xb4/0x298', '0x0')}",
    )
    df, log = to_transitions(ev, linear_map=LINEAR)
    assert check(df) == [
        ("donate", "host", "hyp", 0x43000000, 0x2000, "hyp_vm_donation"),  # the outer pair
        ("donate", "host", "hyp", 0x45000000, 0x1000, "hyp_vm_donation"),
    ]
    assert df["vm"].tolist()[0] == 0x41000000 and pd.isna(df["vm"].tolist()[1])
    assert [(p.kind, p.where) for p in log] == [("unpaired_event", 6)]
    with pytest.raises(StrictError, match="unpaired_event"):
        to_transitions(ev, linear_map=LINEAR, strict=True)


def test_optional_return_probe_vetoes_only_when_present(tmp_path: Path) -> None:
    ev = events(
        tmp_path,
        f"1.000001: {SHARE} from={va(0x40001000)} to={va(0x40001008)}",
        "1.000002: "
        + ret("s2_kvm_share_hyp_ret", "kvm_arch_init_vm+0x54/0x198", "kvm_share_hyp", "-12"),
        f"1.000003: {SHARE} from={va(0x40002FF0)} to={va(0x40003010)}",
        f"1.000004: {SHARE} from={va(0x40005000)} to={va(0x40005000)}",
    )
    df, log = to_transitions(ev, linear_map=LINEAR)
    # the first failed (-ENOMEM); the second has no return probe and straddles two pages; the
    # third is empty (from == to, page aligned): no page at all
    assert check(df) == [("share", "host", "hyp", 0x40002000, 0x2000, "kvm_share_hyp")]
    assert df["line"].tolist() == [3] and len(log) == 0


def test_per_pfn_probes_inside_a_range_call_are_not_counted_twice(tmp_path: Path) -> None:
    ev = events(
        tmp_path,
        "2.000001: s2_kvm_unshare_hyp: (kvm_unshare_hyp+0x0/0x200) "
        f"from={va(0x40010000)} to={va(0x40012000)}",
        "2.000002: s2_unshare_pfn_hyp: (unshare_pfn_hyp+0x0/0x100) pfn=0x40010",
        "2.000003: "
        + ret("s2_unshare_pfn_hyp_ret", "kvm_unshare_hyp+0x60/0x200", "unshare_pfn_hyp", "0"),
        "2.000004: s2_unshare_pfn_hyp: (unshare_pfn_hyp+0x0/0x100) pfn=0x40011",
        "2.000005: "
        + ret("s2_unshare_pfn_hyp_ret", "kvm_unshare_hyp+0x60/0x200", "unshare_pfn_hyp", "0"),
        # a per-PFN unshare outside any traced range call stays
        "2.000006: s2_unshare_pfn_hyp: (unshare_pfn_hyp+0x0/0x100) pfn=0x40099",
    )
    df, log = to_transitions(ev, linear_map=LINEAR)
    assert check(df) == [
        ("unshare", "host", "hyp", 0x40010000, 0x2000, "kvm_unshare_hyp"),
        ("unshare", "host", "hyp", 0x40099000, 0x1000, "unshare_pfn_hyp"),
    ]
    assert df["counted"].all() and len(log) == 0


def test_protected_vm_turns_guest_share_into_donation(tmp_path: Path) -> None:
    stage2 = (
        f"{MAP}: (pkvm_pgtable_stage2_map+0x0/0x258) "
        "pgt=0xffff000003bf77c0 addr=0x3000 size=0x2000 phys=0x42c99000 prot=0xf"
    )

    def map_ret(value: str) -> str:
        return ret(f"{MAP}_ret", "user_mem_abort+0x818/0xde0", "pkvm_pgtable_stage2_map", value)

    for vm_type, op in (("0x80000000", "donate"), ("0x0", "share")):
        ev = events(
            tmp_path,
            "1.000001: s2_kvm_arch_init_vm: (kvm_arch_init_vm+0x0/0x1b0) "
            f"kvm=0xffff000005134000 type={vm_type}",
            f"1.000002: {stage2}",
            f"1.000003: {map_ret('0')}",
            f"1.000004: {stage2}",
            f"1.000005: {map_ret('-11')}",
            "1.000006: s2_pkvm_mapping_remove: (pkvm_mapping_remove+0x0/0x2f0) "
            "gfn=3 pfn=273561 nr_pages=2",
        )
        df, _ = to_transitions(ev)
        undo = ("unshare", "host", "guest") if op == "share" else ("reclaim", "guest", "host")
        assert check(df) == [
            (op, "host", "guest", 0x42C99000, 0x2000, "guest_map"),  # -EAGAIN one dropped
            (*undo, 0x42C99000, 0x2000, "guest_unmap"),  # pfn 273561 = 0x42c99
        ]
        assert df["gfn"].tolist() == [3, 3]


def test_lost_markers_become_lost_rows(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text(
        f"CPU:0 [LOST 4 EVENTS]\n{K}3.000001: kvm_entry: PC: 0x0\nCPU:1 [LOST 9 EVENTS]\n"
    )
    df, _ = to_transitions(read_trace(path, use_cache=False).events)
    assert check(df) == [("lost", None, None, 0, 0, "lost_events")] * 2
    assert df["line"].tolist() == [1, 3] and df["event_index"].tolist() == [0, 2]
    # the gap starts after the previous event of the same CPU (none on CPU 0)
    assert df["ts"].tolist() == [-np.inf, 3.000001]


def test_hypervisor_events_and_the_s2trace_tracepoint() -> None:
    ev = read_trace(DATA / "hyp_7_1.txt", use_cache=False).events
    df, log = to_transitions(ev)
    assert check(df) == [
        ("access_fault", None, None, 0x7F200000, 0x1000, "host_mem_abort"),
        ("lost", None, None, 0, 0, "lost_events"),
        ("share", "host", "hyp", 0x43000000, 0x2000, "pkvm_mem_transition"),
        ("donate", "host", "guest", 0x43002000, 0x1000, "pkvm_mem_transition"),
    ]
    assert [None if pd.isna(v) else v for v in df["vm"]] == [None, None, None, 4096]
    assert [None if pd.isna(v) else v for v in df["gfn"]] == [None, None, None, 0x10]
    assert [(p.kind, p.where) for p in log] == [("bad_field", 12)]  # op=give


# -- user recipes -----------------------------------------------------------------------------
def test_user_recipe_file_adds_and_overrides(tmp_path: Path) -> None:
    user = tmp_path / "mine.toml"
    user.write_text(
        """
[[recipe]]
name = "my_share"
event = "my_share_event"
op = "share"
initiator = "host"
completer = "ffa"
addr = "pa"
size = "len"
where = ["tag =~ ^ok"]

[[recipe]]
name = "kvm_share_hyp"           # replaces the built-in: no linear map needed any more
event = "s2_kvm_share_hyp"
op = "share"
initiator = "host"
completer = "hyp"
addr = "from"
end = "to"
space = "phys"
"""
    )
    ev = events(
        tmp_path,
        "5.000001: my_share_event: pa=0x80001800 len=4096 tag=ok-1",
        "5.000002: my_share_event: pa=0x80005000 len=4096 tag=no",
        "5.000003: my_share_event: pa=zzz len=4096 tag=ok-2",
        f"5.000004: {SHARE} from=0x90000000 to=0x90000010",
    )
    rs = load_recipes([user])
    assert rs.names.count("kvm_share_hyp") == 1 and rs.get("kvm_share_hyp").space == "phys"
    df, log = to_transitions(ev, rs)
    assert check(df) == [
        ("share", "host", "ffa", 0x80001000, 0x2000, "my_share"),  # 0x1800 + 4096 spans 2 pages
        ("share", "host", "hyp", 0x90000000, 0x1000, "kvm_share_hyp"),
    ]
    assert [(p.kind, p.where) for p in log] == [("bad_field", 3)]
    only = load_recipes([user], builtins=False)
    assert only.names == ["my_share", "kvm_share_hyp"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            'name = "x"\nevent = "e"\nop = "share"\naddr = "a"\nsize = "s"\ncolour = "red"',
            "unknown keys",
        ),
        ('name = "x"\nevent = "e"\nop = "share"\nsize = "s"', "needs 'addr'"),
        ('name = "x"\nevent = "e"\nop = "borrow"\naddr = "a"\npages = 1', "op 'borrow'"),
        (
            'name = "x"\nevent = "e"\nop = "share"\naddr = "a"\npages = 1\ninitiator = "cpu"',
            "initiator",
        ),
        ('name = "x"\nevent = "e"\nop = "share"\naddr = "a"\nsize = "s"\nend = "t"', "exactly one"),
        (
            'name = "x"\nevent = "e"\nop = "share"\naddr = "a"\npages = 1\nwhere = ["a >> 1"]',
            "condition",
        ),
        (
            'name = "x"\nevent = "e"\nop = "share"\naddr = "a"\npages = 1\nwhere = ["a & x"]',
            "integer mask",
        ),
        (
            'name = "x"\nevent = "e"\nop = "share"\naddr = "pair.a"\npages = 1',
            "no \\[recipe.pair\\]",
        ),
        (
            'name = "x"\nevent = "e"\nop = "share"\naddr = "a"\npages = 1\ncovered_by = "nope"',
            "not a recipe",
        ),
        (
            'name = "x"\nevent = "e"\nop = "share"\naddr = "a"\npages = 1\nkernels = "new"',
            "kernels",
        ),
        ('name = "x"\nevent = "e"\nop = "share"\naddr = "a"\npages = 1\nspace = "virt"', "space"),
        (
            'name = "x"\nevent = "e"\nop = "share"\naddr = "a"\npages = 1\n'
            'pair = { event = "f", side = "around" }',
            "side",
        ),
        ('name = "x"\nevent = "e"\nop = "share\naddr = "a"', "not valid TOML"),
    ],
)
def test_bad_recipe_files_are_input_errors(tmp_path: Path, body: str, message: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("[[recipe]]\n" + body + "\n")
    with pytest.raises(InputError, match=message) as e:
        load_recipes([f], builtins=False)
    assert str(f) in str(e.value)


def test_covered_by_cycle_is_an_input_error(tmp_path: Path) -> None:
    f = tmp_path / "cycle.toml"
    f.write_text(
        '[[recipe]]\nname = "a"\nevent = "e"\nop = "share"\naddr = "x"\npages = 1\n'
        'covered_by = "b"\n'
        '[[recipe]]\nname = "b"\nevent = "f"\nop = "share"\naddr = "x"\npages = 1\n'
        'covered_by = "a"\n'
    )
    with pytest.raises(InputError, match="cycle"):
        load_recipes([f], builtins=False)


def test_events_without_recipes_are_not_transitions(tmp_path: Path) -> None:
    ev = events(tmp_path, "1.000001: kvm_entry: PC: 0x0", "1.000002: something_else: a=1")
    df, log = to_transitions(ev)
    assert len(df) == 0 and len(log) == 0
    assert check(df) == []


# -- property: the kvm_share_hyp page range ---------------------------------------------------
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.integers(0, 1 << 30), st.integers(0, 1 << 20), st.sampled_from([4096, 16384]))
def test_share_range_is_align_down_to_page_align(
    tmp_path_factory, start: int, length: int, page: int
) -> None:
    virt = LINEAR[0] + start
    ev = events(
        tmp_path_factory.mktemp("p"),
        f"1.000001: {SHARE} from={virt:#x} to={virt + length:#x}",
    )
    df, _ = to_transitions(ev, linear_map=LINEAR, page_size=page)
    pa_from, pa_to = LINEAR[1] + start, LINEAR[1] + start + length
    lo = pa_from // page * page
    hi = -(-pa_to // page) * page
    if hi > lo:
        assert check(df) == [("share", "host", "hyp", lo, hi - lo, "kvm_share_hyp")]
    else:
        assert len(df) == 0


# -- hypercall tables -------------------------------------------------------------------------
def test_builtin_hypercall_tables() -> None:
    t65, t71 = hypercall_table("6.5"), hypercall_table("7.1.2")
    assert (t65[9], t65[10], t65[26], len(t65)) == (
        "__pkvm_host_share_hyp",
        "__pkvm_host_unshare_hyp",
        "__pkvm_teardown_vm",
        27,
    )
    assert (t71[7], t71[29], t71[31], t71[50], len(t71)) == (
        "__pkvm_prot_finalize",
        "__pkvm_host_share_hyp",
        "__pkvm_host_donate_guest",
        "__pkvm_tlb_flush_vmid",
        51,
    )
    with pytest.raises(InputError, match=r"kvm_asm\.h"):
        hypercall_table("6.12")


KVM_ASM_6X = """
#define __KVM_HOST_SMCCC_FUNC___kvm_hyp_init			0
#ifndef __ASSEMBLY__
enum __kvm_host_smccc_func {
	/* Hypercalls available only prior to pKVM finalisation */
	/* __KVM_HOST_SMCCC_FUNC___kvm_hyp_init */
	__KVM_HOST_SMCCC_FUNC___kvm_get_mdcr_el2 = __KVM_HOST_SMCCC_FUNC___kvm_hyp_init + 1,
	__KVM_HOST_SMCCC_FUNC___pkvm_init,
	__KVM_HOST_SMCCC_FUNC___pkvm_prot_finalize, // a comment
	/* Hypercalls available after pKVM finalisation */
	__KVM_HOST_SMCCC_FUNC___pkvm_host_share_hyp,
	__KVM_HOST_SMCCC_FUNC___pkvm_host_unshare_hyp,
};
"""

KVM_ASM_71 = """
enum __kvm_host_smccc_func {
	__KVM_HOST_SMCCC_FUNC___kvm_hyp_init = 0,
	__KVM_HOST_SMCCC_FUNC___pkvm_init,
	MARKER(__KVM_HOST_SMCCC_FUNC_MIN_PKVM)
	__KVM_HOST_SMCCC_FUNC___pkvm_prot_finalize,
	MARKER(__KVM_HOST_SMCCC_FUNC_PKVM_ONLY)
	__KVM_HOST_SMCCC_FUNC___pkvm_host_share_hyp,
	__KVM_HOST_SMCCC_FUNC___pkvm_reserve_vm = __KVM_HOST_SMCCC_FUNC_PKVM_ONLY + 5,
};
"""


def test_parse_kvm_asm_h(tmp_path: Path) -> None:
    assert parse_kvm_asm_h(KVM_ASM_6X) == {
        0: "__kvm_hyp_init",
        1: "__kvm_get_mdcr_el2",
        2: "__pkvm_init",
        3: "__pkvm_prot_finalize",
        4: "__pkvm_host_share_hyp",
        5: "__pkvm_host_unshare_hyp",
    }
    # the markers take no id (MARKER lines have no comma of their own in this sketch)
    marked = KVM_ASM_71.replace(")\n", "),\n")
    assert parse_kvm_asm_h(marked) == {
        0: "__kvm_hyp_init",
        1: "__pkvm_init",
        2: "__pkvm_prot_finalize",
        3: "__pkvm_host_share_hyp",
        8: "__pkvm_reserve_vm",
    }
    h = tmp_path / "kvm_asm.h"
    h.write_text(KVM_ASM_6X)
    assert hypercall_table(path=h)[4] == "__pkvm_host_share_hyp"
    with pytest.raises(InputError, match=r"no 'enum __kvm_host_smccc_func"):
        parse_kvm_asm_h("int x;")
    with pytest.raises(InputError, match="not defined"):
        parse_kvm_asm_h("enum __kvm_host_smccc_func { A = B + 1, };")


def test_hypercall_names_label_host_hcall_events() -> None:
    ev = read_trace(DATA / "hyp_7_1.txt", use_cache=False).events
    names = hypercall_names(ev, hypercall_table("7.1"))
    assert names.index.equals(ev.index)
    got = {int(line): n for line, n in zip(ev["line"], names, strict=True) if not pd.isna(n)}
    assert got == {3: "__pkvm_host_share_hyp"}  # id=29 on line 3; UNKNOWN id=77 is no hcall
    early = read_trace(DATA / "hyp_early.txt", use_cache=False).events
    assert hypercall_names(early, hypercall_table("6.5")).dropna().tolist() == [
        "__pkvm_host_share_hyp"
    ]


# -- probe definitions ------------------------------------------------------------------------
def _defined(lines: list[str]) -> dict[str, list[str]]:
    """event name -> argument names of each p:/r: line."""
    out = {}
    for ln in lines:
        kind, name = ln.split()[0].split(":")
        assert kind in ("p", "r")
        out[name] = [a.split("=")[0] for a in ln.split()[2:]]
    return out


@pytest.mark.parametrize("version", ["6.12", "7.3"])
def test_probe_lines_define_the_sample_events_with_their_fields(version: str) -> None:
    ev = _sample(version)
    defined = _defined(probe_lines(version))
    kprobe = ev[ev["event"].astype(str).str.startswith("s2_")]
    for name, text in zip(kprobe["event"].astype(str), kprobe["fields"], strict=True):
        assert name in defined, name
        fields = re.findall(r"(\w+)=", text)
        assert fields == defined[name], (name, fields)


def test_probe_lines_by_version() -> None:
    old = _defined(probe_lines("6.1.0-28-arm64"))
    assert "s2_pkvm_create_hyp_vm" not in old and "s2_kvm_share_hyp" in old
    assert "p:s2_alloc_pages_exact alloc_pages_exact size=%x0 gfp=%x1" in probe_lines("6.1")
    new = probe_lines("7.3")
    assert "r:s2_kvm_unshare_hyp_ret kvm_unshare_hyp ret=$retval" not in new  # void
    assert (
        "p:s2_pkvm_mapping_remove pkvm_mapping_remove gfn=+24(%x0):u64 pfn=+32(%x0):u64 "
        "nr_pages=+40(%x0):u64"
    ) in new
    assert "p:s2_pkvm_mapping_remove pkvm_mapping_remove gfn=+24(%x0):u64 pfn=+32(%x0):u64" in (
        probe_lines("6.15")
    )
    script = probe_script("7.3", comm="qemu-system-aar")
    assert "grep -q ' [tT] pkvm_pgtable_stage2_map$' /proc/kallsyms" in script
    assert 'comm == "qemu-system-aar"' in script
    with pytest.raises(InputError):
        probe_lines("banana")


def test_every_builtin_recipe_reads_a_probed_or_hypervisor_event() -> None:
    probed = set(_defined(probe_lines("7.3"))) | set(_defined(probe_lines("6.12")))
    probed |= {"s2_share_pfn_hyp", "s2_share_pfn_hyp_ret"}  # init.sh probes it where it exists
    hyp = {"host_mem_abort", "pkvm_mem_transition"}
    for r in load_recipes():
        assert r.event in probed | hyp, r.name
        if r.pair is not None:
            assert r.pair.event in probed, r.name


def test_hypercall_table_file_nested_too_deeply_is_one_line(tmp_path) -> None:
    """A user's hypercall TOML that the parser cannot nest into is an InputError naming the
    file, not a RecursionError (the same TOML reader as capture.toml and profile files)."""
    path = tmp_path / "deep.toml"
    path.write_text("names = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(InputError, match=r"deep\.toml: not valid TOML: nested too deeply"):
        hypercall_table(path=path)


def test_recipe_progress_bar_goes_to_stderr_only_when_asked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """progress=True: a 'recipes' bar on stderr, nothing on stdout; progress=False: silent;
    the transitions are the same either way."""
    events = _sample("6.12")
    shown, _ = to_transitions(events, kernel="6.12", linear_map=LINEAR, progress=True)
    captured = capsys.readouterr()
    assert captured.out == "" and "recipes" in captured.err
    quiet, _ = to_transitions(events, kernel="6.12", linear_map=LINEAR, progress=False)
    assert capsys.readouterr().err == ""
    pd.testing.assert_frame_equal(shown, quiet)
