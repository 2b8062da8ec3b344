"""`s2trace report`: the whole job on a capture folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from s2trace.cli.main import main
from s2trace.errors import InputError
from s2trace.jobs.report import build_report, render_text
from s2trace.synth import generate, plan
from s2trace.synth.dump import write_dump

REPO = Path(__file__).resolve().parents[1]
REAL_612 = REPO / "sample-traces" / "qemu-pkvm-6.12"
BUGGY = REPO / "sample-traces" / "synthetic" / "buggy"


def test_real_sample_report(tmp_path):
    r = build_report(REAL_612, out_dir=tmp_path / "out", use_cache=False)
    a = r.analysis
    assert a is not None and len(a.transitions) == 5  # 2 shares, 3 donations in the capture
    assert r.violations is not None and r.violations.empty
    assert r.disagreements.empty
    # the dump's hyp-owned ranges the trace never mentions: boot-time ownership
    pre = r.untraced
    assert len(pre) == 7
    assert set(pre["actual_owner"].astype(str)) == {"hyp"}
    carve = pre[pre["ipa_start"] == 0x7F200000]
    assert int(carve["size"].iloc[0]) == 10 << 20  # "Reserved 10 MiB at 0x7f200000"
    assert r.check is not None and r.check.consistent
    text = r.text()
    assert len(text.splitlines()) <= 30
    assert "5 transitions (donate 3, share 2)" in text
    assert "0 violation(s)" in text
    assert "verdict  OK" in text
    names = {p.name for p in r.files}
    assert {"map.csv", "transitions.csv", "violations.csv", "diff.csv", "report.txt"} <= names
    assert {"churn.png", "owners.png", "map.png"} <= names
    for p in r.files:
        assert p.stat().st_size > 0
    assert (tmp_path / "out" / "report.txt").read_text() == render_text(r)
    back = pd.read_csv(tmp_path / "out" / "map.csv")
    assert len(back) == len(r.walk.map)


def test_buggy_report_lists_the_planted_faults():
    r = build_report(BUGGY, check=True)
    v = r.violations
    assert list(v["check"].astype(str)) == [
        "shared_page_donated",
        "double_unshare",
        "host_access_not_owned",
    ]
    assert r.disagreements.empty
    assert r.check is None  # the synthetic dump has no hyp stage 1
    text = render_text(r)
    for line in v["line"]:
        assert f"line {line} " in text
    assert "TTBR0_EL2" in text
    assert "verdict  3 ownership violation(s)" in text


def test_report_finds_a_dump_that_contradicts_the_trace(tmp_path):
    folder = generate("ffa", tmp_path / "f", size=120, seed=9)
    final = plan("ffa", size=120, seed=9).final.copy()
    i = int(np.flatnonzero(final["state"].to_numpy() == "shared_ffa")[0])
    final.loc[i, "state"] = "hyp_owned"  # the dump now says the hypervisor owns it
    write_dump(final, folder / "host-s2.elf")
    r = build_report(folder, use_cache=False)
    dis = r.disagreements
    assert len(dis) == 1
    assert int(dis["ipa_start"].iloc[0]) == int(final["addr"].iloc[i])
    assert int(dis["size"].iloc[0]) == int(final["pages"].iloc[i]) * 4096
    assert str(dis["expected_owner"].iloc[0]) == "host"
    assert str(dis["actual_owner"].iloc[0]) == "hyp"
    assert "1 disagreement(s) on traced pages" in r.text()
    assert "dump contradicts the trace" in r.text()
    assert main(["report", str(folder), "--no-cache"]) == 1


def test_capture_without_trace(tmp_path):
    folder = tmp_path / "c"
    shutil.copytree(REPO / "sample-traces" / "synthetic" / "boot", folder)
    toml = (folder / "capture.toml").read_text().replace('trace = "trace.txt"\n', "")
    (folder / "capture.toml").write_text(toml)
    r = build_report(folder, out_dir=tmp_path / "o")
    assert r.analysis is None and r.diff is None
    assert "nothing to replay" in r.text()
    assert {p.name for p in r.files} == {"map.csv", "map.parquet", "report.txt", "report.html"}


def test_not_a_capture(tmp_path):
    with pytest.raises(InputError, match="not a capture folder"):
        build_report(tmp_path)


def test_cli_exit_status(tmp_path, capsys):
    assert main(["report", str(REAL_612), "--no-check"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("capture  ")
    assert main(["report", str(BUGGY), "-o", str(tmp_path / "b"), "--no-plots"]) == 1
    out = capsys.readouterr().out
    assert "double_unshare" in out
    assert not (tmp_path / "b" / "map.png").exists()
    assert (tmp_path / "b" / "violations.csv").exists()
    assert main(["report", str(tmp_path / "b")]) == 2
    assert "not a capture folder" in capsys.readouterr().err
