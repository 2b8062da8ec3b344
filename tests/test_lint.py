"""The code base is ruff-clean (part of the test suite, so CI enforces it)."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("args", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff_clean(args):
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists() and not shutil.which("ruff"):
        pytest.fail("ruff is not installed (it is part of the test extra)")
    proc = subprocess.run(
        [ruff, *args, "s2trace", "tests", "benchmarks"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _tool(name: str) -> str:
    path = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(path).exists():
        pytest.fail(f"{name} is not installed (it is part of the test extra)")
    return path


def test_import_layers():
    """The import-linter contracts in pyproject.toml (layers, results-only renderers) hold."""
    proc = subprocess.run(
        [_tool("lint-imports")],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr


def _function_level_imports(path: Path, root: Path = REPO) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith("s2trace"):
                    found.append(f"{path.relative_to(root)}:{inner.lineno} {inner.module}")
                elif isinstance(inner, ast.Import):
                    found += [
                        f"{path.relative_to(root)}:{inner.lineno} {a.name}"
                        for a in inner.names
                        if a.name.startswith("s2trace")
                    ]
    return found


def test_no_hidden_imports_below_cli():
    """Below the CLI no module imports an s2trace module inside a function (such an import
    hides a cycle or an upward arrow from the layer contract's reader)."""
    hidden = []
    for path in sorted((REPO / "s2trace").rglob("*.py")):
        if "cli" in path.relative_to(REPO / "s2trace").parts[:1]:
            continue
        hidden += _function_level_imports(path)
    assert hidden == []


def test_function_import_detector_sees_one(tmp_path):
    """The detector above is not vacuous: it reports an import inside a function."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from s2trace.errors import InputError\n    return InputError\n")
    assert _function_level_imports(probe, tmp_path) == ["probe.py:2 s2trace.errors"]


# The package cites kernel facts in docs/kernel-facts.md (shipped with the project), never in
# private notes an installed user does not have.  Patterns are assembled so this file does not
# match itself.
_NOTES = re.compile("pkvm-stage2" + "-facts|(?<![-\\w.])facts ?§|(?<![-\\w.])facts [0-9]+\\.[0-9]")
_KF_REF = re.compile(r"§KF-(\d+(?:\.\d+)?)")
_CITING = ("s2trace", "tests", "benchmarks", "notebooks", "docs")


def _cited_files() -> list[Path]:
    files = [REPO / "README.md"]
    for top in _CITING:
        files += [
            p
            for p in (REPO / top).rglob("*")
            if p.is_file() and p.suffix in {".py", ".toml", ".md", ".ipynb", ".txt"}
        ]
    return files


def test_no_citation_of_private_notes():
    hits = [
        f"{p.relative_to(REPO)}:{n}: {line.strip()}"
        for p in _cited_files()
        for n, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        if _NOTES.search(line)
    ]
    assert not hits, "cite docs/kernel-facts.md §KF-x.y instead:\n" + "\n".join(hits)


def test_kernel_fact_citations_exist():
    facts = (REPO / "docs" / "kernel-facts.md").read_text(encoding="utf-8")
    sections = set(re.findall(r"^#{2,3} KF-(\d+(?:\.\d+)?) ", facts, re.MULTILINE))
    missing = [
        f"{p.relative_to(REPO)}:{n}: §KF-{ref}"
        for p in _cited_files()
        for n, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        for ref in _KF_REF.findall(line)
        if ref not in sections
    ]
    assert not missing, "no such section in docs/kernel-facts.md:\n" + "\n".join(missing)
