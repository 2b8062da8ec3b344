"""The scenario generator: text layout, agreement of trace and dump, planted faults."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2trace.arch.registers import config_from_registers
from s2trace.cli.main import main
from s2trace.errors import InputError
from s2trace.io import open_memory
from s2trace.jobs import analyze
from s2trace.jobs.capture import load_capture
from s2trace.synth import SCENARIOS, generate, plan
from s2trace.synth.dump import ownership_runs
from s2trace.synth.ftrace import HEADER_LINES, _digits, write_ftrace
from s2trace.synth.layout import CARVEOUT, RAM
from s2trace.synth.patterns import ESR_DABT_L3_WRITE
from s2trace.synth.plan import ABORT, TRANSITION, Part, merge
from s2trace.trace import diff_maps, snapshot
from s2trace.trace.parse.readers import read_trace
from s2trace.walk.walker import walk

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC = REPO / "sample-traces" / "synthetic"


def _walk_capture(folder: Path) -> pd.DataFrame:
    cap = load_capture(folder)
    memory = open_memory(list(cap.dump))
    try:
        config = config_from_registers(cap.reg("vttbr_el2"), cap.reg("vtcr_el2"))
        result = walk(memory, config, cap.profile, coalesce=True)
    finally:
        memory.close()
    assert not result.problems.counts()
    return result.map


def _planted(folder: Path) -> list[dict]:
    data = tomllib.loads((folder / "capture.toml").read_text())
    return data["synth"].get("planted", [])


# ---------------------------------------------------------------------------------------------
# the text writer
def test_ftrace_lines_hand_checked(tmp_path):
    part = Part(
        {
            "t_us": [18_537_715, 123_456_000_001],
            "kind": [TRANSITION, ABORT],
            "op": [2, 0],  # donate
            "initiator": [0, 0],
            "completer": [1, 0],
            "addr": [0x4393D000, 0x7F200000],
            "pages": [12, 1],
            "vm": [0x1001, 0],
            "cpu": [1, 0],
            "task": [0, 1],
        },
        [("kvmpoke", 189), ("my comm-x", 99)],
    )
    path = write_ftrace(merge([part]), tmp_path / "t.txt")
    lines = path.read_text().splitlines()
    assert len(lines) == HEADER_LINES + 2
    # the kernel's "%16s-%-7d [%03d] FLAGS %5lu.%06lu: " prefix, then the TP_printk text
    assert lines[HEADER_LINES] == (
        "         kvmpoke-189     [001] d....    18.537715: pkvm_mem_transition: op=donate "
        "initiator=host completer=hyp addr=0x4393d000 nr_pages=12 vm=4097 gfn=0x0"
    )
    assert lines[HEADER_LINES + 1] == (
        "       my comm-x-99      [000] d.... 123456.000001: host_mem_abort: esr=0x92000047 "
        "addr=0x7f200000"
    )


def test_esr_is_a_lower_el_data_abort():
    # EC (bits 31:26) 0x24 = data abort from a lower EL; IL set; WnR set; DFSC 0x07 = L3
    # translation fault (Arm ARM ESR_ELx, ISS for data aborts)
    assert ESR_DABT_L3_WRITE >> 26 == 0x24
    assert ESR_DABT_L3_WRITE >> 25 & 1 == 1
    assert ESR_DABT_L3_WRITE >> 6 & 1 == 1
    assert ESR_DABT_L3_WRITE & 0x3F == 0x07


@given(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=20))
def test_digits_match_format(values):
    arr = np.array(values, dtype=np.uint64)
    hexes = _digits(arr, 16, 16)
    decs = _digits(arr, 10, 20, pad=32, field=20)
    secs = _digits(arr, 10, 20, pad=32, field=5)
    for v, h, d, s in zip(values, hexes, decs, secs, strict=True):
        assert bytes(h[h != 0]).decode() == f"{v:x}"
        assert bytes(d).decode() == f"{v:20d}"
        assert bytes(s[s != 0]).decode() == f"{v:5d}"


def test_trace_reads_back_without_problems(tmp_path):
    folder = generate("buggy", tmp_path / "b", size=300, seed=5)
    trace = read_trace(folder / "trace.txt", use_cache=False)
    assert trace.fmt == "ftrace"
    assert not list(trace.problems)
    p = plan("buggy", size=300, seed=5)
    assert len(trace.events) == len(p)
    assert (trace.events["line"].to_numpy() == HEADER_LINES + 1 + np.arange(len(p))).all()
    assert np.allclose(trace.events["ts"].to_numpy(), p.cols["t_us"] / 1e6)
    assert set(trace.events["event"].astype(str)) == {"pkvm_mem_transition", "host_mem_abort"}


# ---------------------------------------------------------------------------------------------
# trace and dump agree; violations known by construction
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_dump_agrees_with_replay(tmp_path, scenario):
    folder = generate(scenario, tmp_path / scenario, size=600, seed=11)
    a = analyze(folder, use_cache=False)
    assert not a.problems.counts()
    # every event became a transition (the recipes understand all of them)
    assert len(a.transitions) == len(a.events)
    dump_map = _walk_capture(folder)
    diff = diff_maps(snapshot(a.timeline), dump_map)
    assert diff.empty, diff
    # the diff is not vacuous: the dump holds non-host ownership the trace set up
    assert (dump_map["owner"].astype(str) == "hyp").any()
    planted = _planted(folder)
    got = a.violations[["line", "check"]].astype({"check": str}).to_dict("records")
    assert got == [{"line": p["line"], "check": p["check"]} for p in planted]
    if scenario != "buggy":
        assert a.violations.empty


def test_buggy_violations_are_exactly_the_planted_ones(tmp_path):
    folder = generate("buggy", tmp_path / "b", size=2000, seed=3, duration=4.0)
    a = analyze(folder, use_cache=False)
    planted = _planted(folder)
    assert [p["check"] for p in planted] == [
        "shared_page_donated",
        "double_unshare",
        "host_access_not_owned",
    ]
    v = a.violations
    assert list(v["line"]) == [p["line"] for p in planted]
    assert list(v["check"].astype(str)) == [p["check"] for p in planted]
    assert [int(x) for x in v["addr"]] == [int(p["addr"], 16) for p in planted]
    assert list(v["op"].astype(str)) == [p["op"] for p in planted]
    assert np.allclose(v["ts"].to_numpy(), [float(p["ts"]) for p in planted])
    # the fatal host access is the last event of the trace (6.x hypervisors BUG on it)
    assert planted[-1]["line"] == HEADER_LINES + len(a.events)


def test_a_wrong_dump_is_caught(tmp_path):
    """The agreement test can fail: a dump built from a different final state disagrees."""
    from s2trace.synth.dump import write_dump

    folder = generate("virtio-churn", tmp_path / "v", size=200, seed=2)
    p = plan("virtio-churn", size=200, seed=2)
    final = p.final.copy()
    shared = np.flatnonzero(final["state"].to_numpy() == "shared_hyp")
    victim = shared[-1]
    final.loc[victim, "state"] = "host_owned"
    write_dump(final, folder / "host-s2.elf")
    a = analyze(folder, use_cache=False)
    diff = diff_maps(snapshot(a.timeline), _walk_capture(folder))
    assert len(diff) == 1
    assert int(diff["ipa_start"].iloc[0]) == int(final["addr"].iloc[victim])
    assert diff["expected_state"].astype(str).iloc[0] == "shared_owned"
    assert diff["actual_state"].astype(str).iloc[0] == "owned"


@settings(max_examples=6, deadline=None)
@given(
    scenario=st.sampled_from(["vm-lifecycle", "virtio-churn", "ffa"]),
    seed=st.integers(0, 2**32 - 1),
    size=st.integers(0, 3000),
)
def test_clean_scenarios_replay_without_violations(scenario, seed, size):
    from s2trace.trace.replay import replay
    from s2trace.trace.synth_helpers import transitions_frame

    p = plan(scenario, size=size, seed=seed, duration=3.0)
    c = p.cols
    ops = np.array(["share", "unshare", "donate", "reclaim", "access_fault"], dtype=object)
    comps = np.array(["host", "hyp", "guest", "ffa"], dtype=object)
    is_abort = c["kind"] == ABORT
    op = np.where(is_abort, "access_fault", ops[c["op"]])
    timeline = replay(
        transitions_frame(
            op=op,
            addr=c["addr"],
            size=c["pages"] * np.uint64(4096),
            ts=c["t_us"] / 1e6,
            initiator=np.where(is_abort, "host", comps[c["initiator"]]),
            completer=np.where(is_abort, None, comps[c["completer"]]),
        ),
        kernel="6.12",
    )
    assert timeline.violations.empty
    # every page's final owner is what the plan says
    snap = snapshot(timeline)
    runs = ownership_runs(p.final)
    expect = runs[runs["state"] != "host_owned"]
    got = snap[snap["owner"].astype(str) != "host"]
    got_shared = snap[snap["page_state"].astype(str) == "shared_owned"]
    hyp_bytes = int(expect.loc[expect["state"] == "hyp_owned", "size"].sum())
    shared_bytes = int(expect.loc[expect["state"].str.startswith("shared"), "size"].sum())
    assert int(got["size"].sum()) == hyp_bytes
    assert int(got_shared["size"].sum()) == shared_bytes


# ---------------------------------------------------------------------------------------------
# parameters
def test_seed_reproducible_and_varies(tmp_path):
    a = generate("virtio-churn", tmp_path / "a", size=500, seed=1)
    b = generate("virtio-churn", tmp_path / "b", size=500, seed=1)
    c = generate("virtio-churn", tmp_path / "c", size=500, seed=2)
    assert (a / "trace.txt").read_bytes() == (b / "trace.txt").read_bytes()
    assert (a / "host-s2.elf").read_bytes() == (b / "host-s2.elf").read_bytes()
    assert (a / "trace.txt").read_bytes() != (c / "trace.txt").read_bytes()


@pytest.mark.parametrize("scenario", ["vm-lifecycle", "virtio-churn", "ffa", "buggy"])
def test_size_and_duration(scenario):
    boot_events = len(plan("boot"))
    for size in (100, 5000):
        p = plan(scenario, size=size, seed=0, duration=3.0)
        workload = len(p) - boot_events
        assert abs(workload - size) <= max(40, size // 20), (size, workload)
        t = p.cols["t_us"]
        assert (np.diff(t) >= 0).all()
        # the workload starts 2 s after boot and lasts the duration (planted fatal access: +1 ms)
        assert t[boot_events:].min() >= 2_000_000
        assert t.max() <= 2_000_000 + 3_000_000 + 1_000


def test_large_plan_is_vectorised():
    p = plan("buggy", size=200_000, seed=4, duration=60.0)
    assert abs(len(p) - 200_000) < 1000
    assert len(p.planted) == 3


def test_boot_layout():
    p = plan("boot")
    runs = ownership_runs(p.final)
    assert int(runs["size"].sum()) == RAM.size
    carve = runs[runs["addr"] == CARVEOUT.base]
    assert list(carve["state"]) == ["hyp_owned"] and int(carve["size"].iloc[0]) == CARVEOUT.size


def test_errors():
    with pytest.raises(InputError, match="scenario 'nope'"):
        plan("nope")
    with pytest.raises(InputError, match="longer duration"):
        plan("vm-lifecycle", size=10_000_000, duration=1.0)
    with pytest.raises(InputError):
        plan("ffa", size=-1)


def test_cli(tmp_path, capsys):
    out = tmp_path / "ffa"
    assert main(["synth", "ffa", "-o", str(out), "--size", "50", "--seed", "4"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert (out / "trace.txt").exists()
    assert main(["synth", "ffa", "-o", str(tmp_path / "z"), "--compress", "--size", "10"]) == 0
    assert (tmp_path / "z" / "host-s2.elf.zst").exists()
    assert not (tmp_path / "z" / "host-s2.elf").exists()
    a = analyze(tmp_path / "z", use_cache=False)
    assert diff_maps(snapshot(a.timeline), _walk_capture(tmp_path / "z")).empty
    assert main(["synth", "nope", "-o", str(tmp_path / "n")]) == 2


# ---------------------------------------------------------------------------------------------
# the committed samples are the generator's output
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_committed_samples_are_current(tmp_path, scenario):
    committed = SYNTHETIC / scenario
    assert committed.is_dir(), f"regenerate: s2trace synth {scenario} -o {committed}"
    meta = tomllib.loads((committed / "capture.toml").read_text())["synth"]
    fresh = generate(
        scenario,
        tmp_path / scenario,
        size=meta["size"],
        seed=meta["seed"],
        duration=meta["duration"],
    )
    for name in ("capture.toml", "trace.txt", "host-s2.elf"):
        assert (committed / name).read_bytes() == (fresh / name).read_bytes(), name
        assert (committed / name).stat().st_size < 1 << 20
