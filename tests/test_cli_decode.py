"""``s2trace decode`` / ``build`` / ``profiles`` on the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest

from s2trace.arch.geometry import Geometry, Granule
from s2trace.cli.main import COMMANDS, main
from s2trace.walk.build import Stage2Builder

JSON_KEYS = {
    "raw",
    "level",
    "granule",
    "kind",
    "oa",
    "next_table",
    "size",
    "memattr",
    "memattr_name",
    "s2ap",
    "sh",
    "af",
    "dbm",
    "contiguous",
    "xn",
    "sw",
    "pbha",
    "owner",
    "owner_id",
    "page_state",
    "locked",
}


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_decode_values_table(capsys):
    code, out, _ = run(capsys, "decode", "0x4393d7ff", "0x008000004393d7ff", "0x4")
    assert code == 0
    lines = out.splitlines()
    assert "owner" in lines[0] and "page_state" in lines[0]
    assert "shared_owned" in lines[2] and "0x4393d000" in lines[2]
    assert "hyp" in lines[3] and "nopage" in lines[3]


def test_decode_json_contract(capsys):
    code, out, _ = run(
        capsys,
        "decode",
        "0x80000004393d7ff",
        "0x2000000000010004",
        "--profile",
        "linux-7.1",
        "--format",
        "json",
    )
    assert code == 0
    a, b = (json.loads(line) for line in out.splitlines())
    assert set(a) >= JSON_KEYS
    # addresses are hex text in JSON a person reads (columns.ADDRESS_COLUMNS)
    assert a["raw"] == "0x80000004393d7ff" and a["oa"] == "0x4393d000" and a["kind"] == "page"
    assert a["memattr"] == 0xF and a["xn"] == 0 and a["sw"] == 0 and a["pbha"] == 1
    assert a["next_table"] is None and a["locked"] is None
    assert b["owner"] == "guest" and b["vm_handle"] == "0x1000" and b["oa"] is None
    assert b["raw"] == "0x2000000000010004" and b["memattr"] is None  # invalid: no attributes


def test_decode_csv_hex(capsys):
    code, out, _ = run(capsys, "decode", "0x400007fd", "--level", "2", "--format", "csv")
    header, row = out.splitlines()
    fields = dict(zip(header.split(","), row.split(","), strict=True))
    assert code == 0 and fields["oa"] == "0x40000000" and fields["kind"] == "block"
    assert fields["size"] == "0x200000"


def test_decode_table_file(tmp_path, capsys):
    f = tmp_path / "table.bin"
    np.array([0x4393D7FF, 0, 0x4, 0x7FD], dtype="<u8").tofile(f)
    code, out, _ = run(capsys, "decode", str(f), "--level", "3", "--format", "json")
    rows = [json.loads(x) for x in out.splitlines()]
    assert code == 0 and [r["index"] for r in rows] == [0, 1, 2, 3]
    assert [r["kind"] for r in rows] == ["page", "invalid", "invalid", "reserved"]


def test_explain(capsys):
    code, out, _ = run(capsys, "decode", "0x4393d7ff", "--explain")
    assert code == 0
    assert "[  7:6] S2AP[1:0]" in out and "rw" in out
    assert "MemAttr[3:0]" in out and "Normal-WB" in out
    code, out, _ = run(capsys, "decode", "0x4393d7ff", "--explain", "--granule", "16k")
    assert "RES0 -- set" in out  # bits 13:12 of a 16K page


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["decode", "banana"], "neither a number nor an existing file"),
        (["decode", "0x1ffffffffffffffff"], "does not fit in 64 bits"),
        (["decode", "0x3", "--level", "0", "--granule", "64k"], "level 0 does not exist"),
        (["decode", "0x3", "--granule", "8k"], "expected 4k, 16k or 64k"),
        (["decode", "0x3", "--profile", "linux-9.9"], "profile 'linux-9.9'"),
    ],
)
def test_bad_input_one_line_exit_2(capsys, argv, needle):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_odd_length_file(tmp_path, capsys):
    f = tmp_path / "t.bin"
    f.write_bytes(b"\x00" * 12)
    code, _, err = run(capsys, "decode", str(f), "--level", "3")
    assert code == 2 and "not a multiple of 8" in err and str(f) in err


def test_build_round_trip(capsys):
    code, out, _ = run(
        capsys, "build", "--kind", "page", "--oa", "0x4393d000", "--state", "shared_owned"
    )
    assert code == 0 and out.strip() == "0x008000004393d7ff"
    code, out, _ = run(capsys, "decode", out.strip(), "--format", "json")
    assert json.loads(out)["page_state"] == "shared_owned"
    code, out, _ = run(
        capsys, "build", "--kind", "invalid", "--owner", "hyp", "--profile", "linux-7.1"
    )
    assert out.strip() == "0x2000000000000002"
    code, _, err = run(capsys, "build", "--kind", "page", "--oa", "0x4393d800")
    assert code == 2 and "not aligned" in err


def test_console_script_no_traceback():
    """The installed entry point exits 2 with one line on bad input."""
    proc = subprocess.run(
        [sys.executable, "-m", "s2trace.cli.main", "decode", "xyz"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("s2trace: error:")


def _python(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter, standard output buffered as on a pipe."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, env=env
    )


def test_command_table_names_what_each_module_registers():
    for module in set(COMMANDS.values()):
        group = click.Group()
        __import__(module, fromlist=["register"]).register(group)
        assert set(group.commands) == {n for n, m in COMMANDS.items() if m == module}, module


def test_a_command_imports_only_its_own_modules(tmp_path):
    """``decode`` of a dump to Parquet does not import the other commands' modules (start-up
    time)."""
    b = Stage2Builder(Geometry(Granule.K4), ia_bits=40)
    b.map(0x8000_0000, 0x3000)
    dump = b.write_elf(tmp_path / "dump.elf")
    argv = ["decode", str(dump), "--vttbr", hex(b.vttbr), "--vtcr", hex(b.vtcr)]
    argv += ["--format", "parquet", "-o", str(tmp_path / "map.parquet")]
    proc = _python(
        f"import sys; from s2trace.cli.main import main; assert main({argv!r}) == 0; "
        "print(*sorted(m for m in sys.modules if m.startswith('s2trace.')))"
    )
    loaded = set(proc.stdout.splitlines()[-1].split())
    assert {m for m in loaded if m.startswith("s2trace.cli.")} == {
        "s2trace.cli.main",
        "s2trace.cli.decode_cmd",
        "s2trace.cli.walk_cmd",  # decode walks dumps with its code
        "s2trace.cli.options",
        "s2trace.cli.output",
    }, proc.stderr
    assert "s2trace.jobs.walk" in loaded


def test_profiles_list(capsys):
    code, out, _ = run(capsys, "profiles")
    assert code == 0 and "linux-5.15 (default)" in out and "linux-7.1" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["decode", "0x4"],
        ["decode", "sample-traces/qemu-pkvm-7.3"],
        ["timeline", "sample-traces/qemu-pkvm-7.3"],
        ["hyp-map", "sample-traces/qemu-pkvm-7.3"],
    ],
)
def test_parquet_without_output_is_refused_before_any_work(capsys, argv, monkeypatch):
    """Parquet is binary: without -o it is one error line and exit 2, said before the dump
    is walked or the trace read (no note of the walk precedes it)."""
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    code, out, err = run(capsys, *argv, "--format", "parquet")
    assert code == 2 and out == ""
    assert err.splitlines() == [
        "s2trace: error: --format parquet needs -o FILE (Parquet is binary: it is not "
        "written to standard output)"
    ]
