"""The README is executed: every command of its tour runs on the bundled samples without a
traceback, and every output line the README prints under a command is in that command's
output (blanks normalised); the Python example runs too."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from s2trace.cli.main import main

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _tour() -> list[tuple[str, list[str]]]:
    """(command, expected output lines) of the console block under '## A tour'."""
    section = README[README.index("## A tour") :]
    block = section[section.index("```console") + len("```console") : section.index("```\n", 20)]
    steps: list[tuple[str, list[str]]] = []
    for line in block.strip("\n").splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif line.strip():
            steps[-1][1].append(line)
    return steps


def _python_example() -> str:
    return re.search(r"```python\n(.*?)```", README, re.S).group(1)


STEPS = _tour()


def _norm(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    (tmp_path / "sample-traces").symlink_to(REPO / "sample-traces")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_tour_is_there():
    assert len(STEPS) >= 10
    for cmd, _ in STEPS:
        assert cmd.startswith("s2trace ")
        for word in shlex.split(cmd, comments=True):
            if word.startswith("sample-traces/"):
                assert (REPO / word).exists(), f"README names a missing file: {word}"


@pytest.mark.parametrize(("cmd", "expected"), STEPS, ids=[c.split("#")[0] for c, _ in STEPS])
def test_tour_command(cmd, expected, in_tmp, capsys):
    argv = shlex.split(cmd, comments=True)[1:]
    code = main(argv)  # an exception here is the traceback a user would see
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    # 1 is a finding (violations, inconsistency), 0 a clean run; 2 would be unusable input
    assert code in (0, 1), err
    lines = {_norm(line) for line in out.splitlines()}
    for want in expected:
        assert _norm(want) in lines, f"{cmd}: README shows {want!r}; got:\n{out}"
    for word in argv[argv.index("-o") + 1 :][:1] if "-o" in argv else []:
        assert (in_tmp / word).exists()


def test_python_example(in_tmp, capsys):
    exec(compile(_python_example(), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "page oa=0x4393d000" in out
