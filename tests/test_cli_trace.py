"""Trace commands on the bundled real captures (expectations from their ftrace.txt)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from s2trace.cli.main import main
from s2trace.jobs.analyze import analyze, parse_time
from s2trace.jobs.inputs import parse_linear_map

SAMPLE = str(Path(__file__).resolve().parents[1] / "sample-traces" / "qemu-pkvm-6.12")


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_analyze_capture_folder():
    r = analyze(SAMPLE)
    assert r.kernel.startswith("6.12") and r.meta["linear_map"] == "0xffff000000000000=0x40000000"
    ops = sorted(
        zip(r.transitions["op"].astype(str), r.transitions["addr"].astype(int), strict=True)
    )
    # ftrace.txt: 2 kvm_share_hyp (struct kvm, vCPU) and 3 allocations under pkvm_create_hyp_vm
    assert ops == [
        ("donate", 0x438F6000),
        ("donate", 0x438F8000),
        ("donate", 0x48115000),
        ("share", 0x4393D000),
        ("share", 0x44C38000),
    ]
    assert len(r.violations) == 0


def test_owner_json_contract(capsys):
    code, out, _ = run(capsys, "owner", SAMPLE, "0xffff00000393d000", "--json")
    got = json.loads(out)
    assert code == 0
    assert {"addr", "t", "owner", "host_state", "peer_state", "since", "cause"} <= set(got)
    # linear-map VA 0xffff00000393d000 is PA 0x4393d000, shared at 18.538323 (line 15)
    assert got["addr"] == "0x4393d000" and got["owner"] == "host"
    assert got["host_state"] == "shared_owned" and got["peer_state"] == "shared_borrowed"
    assert got["since"] == pytest.approx(18.538323) and got["cause"] == 15


def test_owner_before_and_after(capsys):
    _, before, _ = run(capsys, "owner", SAMPLE, "0x48115000", "--at", "18.5")
    _, after, _ = run(capsys, "owner", SAMPLE, "0x48115000", "--at", "18.6")
    assert "owner host, host owned" in before
    # donated by __pkvm_init_vm: after the hyp VM's allocation returned (line 30, 18.548803),
    # certainly by the first vCPU allocation's entry (line 31, 18.549583; §KF-3.7)
    assert "owner hyp, host nopage" in after and "since t=18.549583" in after
    assert "happened after t=18.548803" in after and "basis: trace line 31" in after


def test_explain_names_the_event(capsys):
    code, out, _ = run(capsys, "explain", SAMPLE, "0x438f7000")
    assert code == 0 and "donate" in out and "18.548803" in out and "line 31" in out


def _not_json(name):
    raise ValueError(f"{name} is not JSON (RFC 8259)")


def test_timeline_and_violations_formats(capsys):
    code, out, _ = run(capsys, "timeline", SAMPLE, "--format", "json")
    rows = [json.loads(x, parse_constant=_not_json) for x in out.splitlines()]
    assert code == 0 and {r["owner"] for r in rows} == {"host", "hyp"}
    # open-ended times (-inf/inf in tables and CSV) are null: JSON has no infinity
    first = rows[0]
    assert first["t_start"] is None and first["t_end"] is None and first["basis"].startswith("dump")
    assert any(isinstance(r["t_start"], float) for r in rows)
    code, out, _ = run(capsys, "violations", SAMPLE, "--format", "csv")
    assert code == 0 and out.splitlines()[0].startswith("ts,line,event_index,op")
    assert len(out.splitlines()) == 1  # header only: the real capture is consistent


def test_probes(capsys):
    code, out, _ = run(capsys, "probes", "--kernel", "6.12")
    assert code == 0 and "kvm_share_hyp" in out and out.startswith(("p:", "r:"))


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["timeline", "/nonexistent/trace.txt"], "no such trace file"),
        (["owner", SAMPLE, "0xzz"], "not a number"),
        (["owner", SAMPLE, "0x1000", "--at", "yesterday"], "expected seconds"),
        (["timeline", SAMPLE, "--linear-map", "0xffff"], "expected VA=PA"),
    ],
)
def test_bad_input(capsys, argv, needle):
    code, _, err = run(capsys, *argv)
    assert code == 2 and needle in err and err.count("\n") == 1


def test_parsers():
    assert parse_time("18537023us") == pytest.approx(18.537023)
    assert parse_time("1.5") == 1.5 and parse_time(None) is None
    assert parse_linear_map("0xffff000000000000:0x40000000") == (0xFFFF000000000000, 0x40000000)
