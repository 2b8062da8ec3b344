"""``s2trace batch``: the dataset equals one-at-a-time runs, on a local cluster and on a real
Dask scheduler with two workers started here (127.0.0.1, free ports, always torn down)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zstandard

from s2trace.cli.main import main
from s2trace.errors import InputError
from s2trace.jobs.batch import TABLES, resolve_batch_inputs, run_capture
from s2trace.jobs.batch_capture import CaptureTables, parse_stages
from s2trace.jobs.batch_dataset import summary_table, write_group

pytest.importorskip("dask.distributed")

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample-traces"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Captures of every kind: two real captures, synthetic ones, a dump alone, a trace
    alone, and a broken trace; and a list file naming some of them."""
    d = tmp_path_factory.mktemp("fleet")
    for name in ("boot", "buggy"):
        shutil.copytree(SAMPLES / "synthetic" / name, d / name)
    shutil.copytree(SAMPLES / "qemu-pkvm-6.12", d / "real-6.12")
    shutil.copy(SAMPLES / "synthetic" / "buggy" / "trace.txt", d / "alone-trace.txt")
    shutil.copy(SAMPLES / "synthetic" / "boot" / "host-s2.elf", d / "alone-dump.elf")
    (d / "broken.txt").write_text("this is not a trace\n")
    (d / "list.txt").write_text("# the fleet\nboot\nbuggy\n\nreal-6.12\n")
    return d


def _inputs(fleet):
    return [str(fleet / "list.txt"), str(fleet / "alone-*"), str(fleet / "broken.txt")]


def test_inputs_resolve(fleet):
    items = resolve_batch_inputs([*_inputs(fleet), str(fleet / "boot")])  # boot twice
    assert [(Path(i.path).name, i.kind) for i in items] == [
        ("boot", "capture"),
        ("buggy", "capture"),
        ("real-6.12", "capture"),
        ("alone-dump.elf", "dump"),
        ("alone-trace.txt", "trace"),
        ("broken.txt", "trace"),
    ]
    assert len({i.capture for i in items}) == len(items)
    with pytest.raises(InputError, match="matches nothing"):
        resolve_batch_inputs([str(fleet / "nothing-*")])
    with pytest.raises(InputError, match="no such"):
        resolve_batch_inputs([str(fleet / "missing")])


def _comparable(summary: pd.DataFrame) -> pd.DataFrame:
    return summary.drop(columns=["seconds"]).reset_index(drop=True)


def _tables(dataset: Path, name: str) -> pd.DataFrame:
    path = dataset / name
    if not path.exists():
        return pd.DataFrame()
    frame = pd.read_parquet(path)
    frame["capture"] = frame["capture"].astype(str)
    return frame.sort_values(list(frame.columns)).reset_index(drop=True)


@pytest.fixture(scope="module")
def local_run(fleet, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "ds"
    # three captures a task: a group's tables are written together (the scheduler run below,
    # one a task, must give the same dataset)
    args = ["batch", *_inputs(fleet), "-o", str(out), "--workers", "2", "--kernel", "6.12"]
    assert main([*args, "--per-task", "3"]) == 0
    return out


def _assert_equals_alone(dataset, items, **run):
    """Every summary value and table row of the dataset equals ``run_capture`` run alone."""
    summary = pd.read_parquet(dataset / "summary.parquet")
    assert list(summary["capture"]) == [i.capture for i in items]
    for item in items:
        alone = run_capture(item, **run)
        row = summary[summary["capture"] == item.capture].iloc[0]
        for key, value in alone.summary.items():
            if key == "seconds":
                continue
            got = row[key]
            assert (pd.isna(got) and value is None) or got == value, (item.capture, key)
        for name in TABLES:
            if name == "timings":
                continue
            frame = alone.tables.get(name)
            part = dataset / name / f"capture={item.capture}" / "part-0.parquet"
            if frame is None or frame.empty:
                assert not part.exists()
                continue
            back = pd.read_parquet(part)
            assert len(back) == len(frame), (item.capture, name)
            # categoricals and objects are written as strings (one schema per table), the
            # rest keeps its dtype
            plain = {
                c: "string"
                if isinstance(t, pd.CategoricalDtype) or pd.api.types.is_object_dtype(t)
                else str(t)
                for c, t in frame.dtypes.items()
            }
            assert {c: str(t) for c, t in back.dtypes.items()} == plain, (item.capture, name)
            for col in frame.columns:
                want = frame[col].astype(object).where(frame[col].notna(), None).tolist()
                have = back[col].astype(object).where(back[col].notna(), None).tolist()
                want = [str(v) if isinstance(v, str) else v for v in want]
                assert have == want, (item.capture, name, col)
    return summary


def test_local_batch_equals_one_at_a_time(fleet, local_run):
    _assert_equals_alone(local_run, resolve_batch_inputs(_inputs(fleet)), kernel="6.12")


def test_stages_and_groups_equal_one_at_a_time(fleet, tmp_path):
    """``--stages check,summary`` with two captures per task, on one worker: the same rows as
    those stages run alone; inputs no chosen stage applies to (traces alone) are skipped."""
    out = tmp_path / "ds"
    args = ["batch", *_inputs(fleet), "-o", str(out), "--workers", "1", "--kernel", "6.12"]
    assert main([*args, "--stages", "summary,check", "--per-task", "2"]) == 0
    items = resolve_batch_inputs(_inputs(fleet))
    summary = _assert_equals_alone(out, items, kernel="6.12", stages=("summary", "check"))
    traces = summary["kind"] == "trace"
    assert (summary.loc[traces, "status"] == "skipped").all()
    assert summary.loc[traces, "note"].str.contains("replay").all()
    assert not (out / "violations").exists() and not (out / "diff").exists()
    real = summary[summary["path"].str.endswith("real-6.12")].iloc[0]
    assert real["status"] == "ok" and real["breaches"] == 0  # checked: it has TTBR0_EL2
    assert (out / "totals" / f"capture={real['capture']}").is_dir()
    assert real["stages"] == "summary,check" and pd.isna(real["note"])


def test_stages_not_run_are_absent_never_zero(fleet, local_run, tmp_path):
    """A check + summary batch: the stages each row holds are named; the replay and diff
    columns are absent (not zero), a capture without hyp registers has a null ``breaches``
    and a note saying why; what did run equals the all-stages batch, row for row."""
    out = tmp_path / "ds"
    args = ["batch", *_inputs(fleet), "-o", str(out), "--workers", "1", "--kernel", "6.12"]
    assert main([*args, "--stages", "check,summary"]) == 0
    some = pd.read_parquet(out / "summary.parquet").set_index("capture")
    full = pd.read_parquet(local_run / "summary.parquet").set_index("capture")
    assert list(some.index) == list(full.index)
    for absent in ("violations", "transitions", "diff_traced", "diff_untraced"):
        assert absent not in some.columns and absent in full.columns
    by_name = {Path(p).name: c for c, p in some["path"].items()}
    stages = some["stages"].to_dict()
    assert stages[by_name["real-6.12"]] == "summary,check"
    assert full.loc[by_name["real-6.12"], "stages"] == "summary,replay,diff,check"
    for synthetic in ("boot", "buggy"):  # no hyp stage 1 in a synthetic dump: no check
        cap = by_name[synthetic]
        assert stages[cap] == "summary" and pd.isna(some.loc[cap, "breaches"])
        assert "no check" in some.loc[cap, "note"] and "TTBR0_EL2" in some.loc[cap, "note"]
        assert full.loc[cap, "stages"] == "summary,replay,diff"
    assert stages[by_name["alone-trace.txt"]] == ""  # skipped: only replay applies
    assert full.loc[by_name["alone-trace.txt"], "stages"] == "replay"
    for failed in ("broken.txt", "alone-dump.elf"):
        assert pd.isna(full.loc[by_name[failed], "stages"])
    both = ["status", "kernel", "problems", "breaches"]
    both += [c for c in some.columns if c.startswith("bytes_")]
    ok = some["status"] == "ok"
    pd.testing.assert_frame_equal(some.loc[ok, both], full.loc[ok, both])
    for name in ("totals", "findings"):
        pd.testing.assert_frame_equal(_tables(out, name), _tables(local_run, name))
    # a failed capture leaves no partition in any table but its timing
    for name in ("totals", "violations", "findings", "diff"):
        for failed in ("broken.txt", "alone-dump.elf"):
            assert not (local_run / name / f"capture={by_name[failed]}").exists()


def test_stage_names_are_checked(fleet, tmp_path, capsys):
    with pytest.raises(InputError, match=r"unknown stage.*bogus.*summary,replay,diff,check"):
        parse_stages("summary,bogus")
    assert parse_stages(" check , summary ") == ("summary", "check")
    assert main(["batch", str(fleet / "boot"), "-o", str(tmp_path / "x"), "--stages", "x"]) == 2
    assert "--stages" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_group_written_as_each_capture_alone(tmp_path):
    """Captures written in one group keep the schema each would have alone: categoricals of
    different categories (which concatenate to ``str``) are strings, ``str`` stays ``str``,
    missing values stay missing; the summary's columns do not depend on the rows' order."""
    frames = [
        pd.DataFrame(
            {
                "owner": pd.Categorical(owners, categories=cats),
                "host": pd.array(["a", "b"][: len(owners)], dtype="str"),
                "bytes": np.arange(len(owners), dtype=np.uint64),
            }
        )
        for owners, cats in ((["host", None], ["host", "hyp"]), (["guest"], ["guest"]))
    ]
    results = [CaptureTables({"capture": f"c{i}"}, {"totals": f}) for i, f in enumerate(frames)]
    write_group(tmp_path, results)
    for i, frame in enumerate(frames):
        back = pd.read_parquet(tmp_path / "totals" / f"capture=c{i}" / "part-0.parquet")
        assert [str(t) for t in back.dtypes] == ["string", "str", "uint64"]
        assert back["owner"].astype(object).where(back["owner"].notna(), None).tolist() == [
            None if pd.isna(v) else v for v in frame["owner"].astype(object)
        ]
    rows = [
        {"capture": "b", "status": "ok", "violations": 1, "problems": 0},
        {"capture": "a", "status": "ok", "problems": 2, "bytes_host": 4096, "breaches": 0},
    ]
    one, other = summary_table(rows), summary_table(rows[::-1])
    pd.testing.assert_frame_equal(one, other)
    assert list(one.columns) == [
        "capture", "status", "problems", "bytes_host", "violations", "breaches"
    ]  # fmt: skip


def test_compressed_trace_is_a_trace(tmp_path):
    """Compressed files are judged by their inner name: ftrace.txt.zst is a trace."""
    trace = tmp_path / "ftrace.txt.zst"
    trace.write_bytes(zstandard.ZstdCompressor().compress(b"# tracer: nop\n"))
    dump = tmp_path / "host-s2.elf.zst"
    dump.write_bytes(zstandard.ZstdCompressor().compress(b"\x7fELF"))
    kinds = [i.kind for i in resolve_batch_inputs([str(trace), str(dump)])]
    assert kinds == ["trace", "dump"]


def test_a_failing_capture_is_a_row(local_run):
    summary = pd.read_parquet(local_run / "summary.parquet")
    bad = summary[summary["path"].str.endswith("broken.txt")].iloc[0]
    assert bad["status"] == "error" and "broken.txt" in bad["error"]
    dump = summary[summary["path"].str.endswith("alone-dump.elf")].iloc[0]
    assert dump["status"] == "error" and "--vttbr" in dump["error"]  # no registers to find
    assert (summary["status"] == "ok").sum() == 4
    buggy = summary[summary["path"].str.endswith("buggy")].iloc[0]
    assert buggy["violations"] > 0
    violations = pd.read_parquet(local_run / "violations")
    assert set(violations["capture"].astype(str)) >= {buggy["capture"]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def dask_cluster(tmp_path):
    """A real ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1."""
    from dask.distributed import Client

    dask_bin = shutil.which("dask") or str(Path(sys.executable).parent / "dask")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs = []
    logs = []

    def start(*args):
        log = open(tmp_path / f"dask-{len(procs)}.log", "w")  # noqa: SIM115
        logs.append(log)
        procs.append(subprocess.Popen([dask_bin, *args], stdout=log, stderr=log, env=env))

    try:
        start("scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard")
        for _ in range(2):
            start(
                "worker",
                address,
                "--host",
                "127.0.0.1",
                "--nthreads",
                "1",
                "--no-dashboard",
                "--death-timeout",
                "60",
            )
        deadline = time.monotonic() + 90
        while True:
            try:
                with Client(address, timeout="5s") as client:
                    client.wait_for_workers(2, timeout=60)
                break
            except (OSError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield address
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs[::-1]:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for log in logs:
            log.close()


def test_scheduler_batch_equals_local(fleet, local_run, dask_cluster, tmp_path):
    out = tmp_path / "remote"
    code = main(
        ["batch", *_inputs(fleet), "-o", str(out), "--scheduler", dask_cluster, "--kernel", "6.12"]
    )
    assert code == 0
    remote = pd.read_parquet(out / "summary.parquet")
    local = pd.read_parquet(local_run / "summary.parquet")
    pd.testing.assert_frame_equal(_comparable(remote), _comparable(local))
    for name in TABLES:
        if name == "timings":
            continue
        pd.testing.assert_frame_equal(_tables(out, name), _tables(local_run, name))
    hosts = pd.read_parquet(out / "timings")["pid"].nunique()
    assert hosts >= 1


def test_existing_dataset_is_kept(fleet, local_run):
    assert main(["batch", str(fleet / "boot"), "-o", str(local_run)]) == 2
    assert (local_run / "summary.parquet").exists()
