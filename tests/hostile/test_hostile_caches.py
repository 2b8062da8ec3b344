"""Caches are checked, never trusted: damage is found, the entry rebuilt, one warning given.

Two caches live under ``$S2TRACE_CACHE`` (else ``$XDG_CACHE_HOME/s2trace``, else
``~/.cache/s2trace``): parsed traces (Parquet + a JSON sidecar) and decompressed dumps.  Each
entry carries a checksum of its content and the s2trace version and options that made it; an
entry that does not match is rebuilt with one warning, so the answer is the same as without a
cache.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostile.hostile_support import base_env, check, run

SETTINGS = settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


class Cached:
    """A prepared cache and the answer computed without one (short repr for hypothesis)."""

    def __init__(self, source: Path, cache: Path, want: str) -> None:
        self.source, self.cache, self.want = source, cache, want

    def __iter__(self):
        return iter((self.source, self.cache, self.want))

    def __repr__(self) -> str:
        return f"Cached({self.source.name})"

    def fresh_copy(self, tmp_path: Path) -> Path:
        """A private copy of the cache (a new one for every hypothesis example)."""
        dst = Path(tempfile.mkdtemp(dir=tmp_path)) / "cache"
        shutil.copytree(self.cache, dst)
        return dst


def _entries(cache: Path, pattern: str) -> list[Path]:
    return sorted(p for p in cache.rglob(pattern) if p.is_file() and not p.name.startswith("."))


def _flip(path: Path, at: int, value: int) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[at % len(data)] ^= value or 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def trace_cache(tmp_path_factory, samples):
    """A cache holding the parsed buggy trace, and the timeline computed without a cache."""
    root = tmp_path_factory.mktemp("trace-cache")
    trace = root / "trace.txt"
    shutil.copy(samples / "synthetic" / "buggy" / "trace.txt", trace)
    cache = root / "cache"
    env = base_env(cache)
    fresh = run(["timeline", "--kernel", "6.12", trace, "--format", "csv", "--no-cache"], env)
    first = run(["timeline", "--kernel", "6.12", trace, "--format", "csv"], env)
    check(fresh, "ok")
    check(first, "ok")
    assert fresh.out == first.out
    return Cached(trace, cache, fresh.out)


@SETTINGS
@given(
    flips=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=3)
)
def test_damaged_trace_cache(flips, trace_cache, tmp_path):
    trace, _, want = trace_cache
    cache = trace_cache.fresh_copy(tmp_path)
    (entry,) = _entries(cache, "*.parquet")
    for at, value in flips:
        _flip(entry, at, value)
    r = run(["timeline", "--kernel", "6.12", trace, "--format", "csv"], base_env(cache))
    check(r, "clean")
    assert r.out == want, "a damaged cache changed the answer\n" + r.describe()
    assert r.rc == 0


@pytest.mark.parametrize("cut", [0, 100, -8, -1000])
def test_truncated_trace_cache(cut, trace_cache, tmp_path):
    trace, pristine, want = trace_cache
    cache = tmp_path / "cache"
    shutil.copytree(pristine, cache)
    (entry,) = _entries(cache, "*.parquet")
    data = entry.read_bytes()
    entry.write_bytes(data[:cut] if cut else b"")
    r = run(["timeline", "--kernel", "6.12", trace, "--format", "csv"], base_env(cache))
    check(r, "ok")
    assert r.out == want


def test_sidecar_problems_tampered(env, buggy, tmp_path):
    """``"problems": []`` in the sidecar must not make malformed-line warnings disappear."""
    lines = (buggy / "trace.txt").read_text().splitlines(keepends=True)
    trace = tmp_path / "t.txt"
    trace.write_text("".join(lines[:40]) + "garbage line here\n" + "".join(lines[40:]))
    cache = tmp_path / "cache"
    e = base_env(cache)
    first = run(["violations", "--kernel", "6.12", trace], e)
    check(first, "warn")
    (sidecar,) = _entries(cache, "*.json")
    meta = json.loads(sidecar.read_text())
    meta["problems"] = []
    sidecar.write_text(json.dumps(meta))
    again = run(["violations", "--kernel", "6.12", trace], e)
    check(again, "warn")
    assert "malformed" in again.err, again.describe()
    assert again.out == first.out


@pytest.mark.parametrize("field", ["lines", "format", "version"])
def test_sidecar_fields_tampered(field, env, buggy, tmp_path):
    trace = tmp_path / "t.txt"
    shutil.copy(buggy / "trace.txt", trace)
    cache = tmp_path / "cache"
    e = base_env(cache)
    first = run(["events", trace, "--format", "csv"], e)
    check(first, "ok")
    (sidecar,) = _entries(cache, "*.json")
    meta = json.loads(sidecar.read_text())
    meta[field] = 7 if field == "lines" else "csv" if field == "format" else "0.0.0-other"
    sidecar.write_text(json.dumps(meta))
    again = run(["events", trace, "--format", "csv"], e)
    check(again, "clean")
    assert again.out == first.out


@pytest.fixture(scope="module")
def dump_cache(tmp_path_factory, samples):
    """A cache holding the decompressed 6.12 dump, and the map walked from a fresh cache."""
    root = tmp_path_factory.mktemp("dump-cache")
    cap = root / "qemu-pkvm-6.12"
    shutil.copytree(samples / "qemu-pkvm-6.12", cap)
    cache = root / "cache"
    first = run(["decode", cap, "--format", "csv", "--no-labels"], base_env(cache))
    check(first, "ok")
    return Cached(cap, cache, first.out)


def _raw_entry(cache: Path) -> Path:
    (entry,) = _entries(cache, "*.raw")
    return entry


@SETTINGS
@given(page=st.integers(0, 40), offset=st.integers(0, 4095), value=st.integers(1, 255))
def test_damaged_dump_cache(page, offset, value, dump_cache, tmp_path):
    cap, _, want = dump_cache
    cache = dump_cache.fresh_copy(tmp_path)
    entry = _raw_entry(cache)
    size = entry.stat().st_size
    _flip(entry, (size - 4096 * (page + 1) + offset) % size, value)
    r = run(["decode", cap, "--format", "csv", "--no-labels"], base_env(cache))
    check(r, "clean")
    assert r.out == want, "a damaged dump cache changed the map\n" + r.describe()


@pytest.mark.parametrize("keep", [0, 64, 4096, -4096])
def test_truncated_dump_cache(keep, dump_cache, tmp_path):
    cap, pristine, want = dump_cache
    cache = tmp_path / "cache"
    shutil.copytree(pristine, cache)
    entry = _raw_entry(cache)
    os.chmod(entry, 0o644)
    data = entry.read_bytes()
    entry.write_bytes(data[:keep] if keep else b"")
    r = run(["decode", cap, "--format", "csv", "--no-labels"], base_env(cache))
    check(r, "ok")
    assert r.out == want
    again = run(["decode", cap, "--format", "csv", "--no-labels"], base_env(cache))
    check(again, "ok")
    assert "warning" not in again.err, "the rebuilt entry should be trusted\n" + again.describe()


def test_xdg_cache_home_honoured(buggy, tmp_path):
    home, xdg = tmp_path / "home", tmp_path / "xdg"
    home.mkdir()
    e = base_env(tmp_path / "unused", HOME=str(home), XDG_CACHE_HOME=str(xdg))
    del e["S2TRACE_CACHE"]
    check(run(["timeline", buggy], e, cwd=tmp_path), "ok")
    assert _entries(xdg / "s2trace", "*.parquet"), "nothing cached under $XDG_CACHE_HOME/s2trace"
    assert not (home / ".cache").exists()


def test_s2trace_cache_wins_over_xdg(buggy, tmp_path):
    e = base_env(tmp_path / "mine", XDG_CACHE_HOME=str(tmp_path / "xdg"))
    check(run(["timeline", buggy], e, cwd=tmp_path), "ok")
    assert _entries(tmp_path / "mine", "*.parquet")
    assert not (tmp_path / "xdg").exists()


@pytest.mark.parametrize("command", ["timeline", "decode"])
def test_cache_location_unusable(command, real612, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    e = base_env(blocker / "cache")
    if command == "timeline":
        check(run(["timeline", real612], e, cwd=tmp_path), "ok")  # the cache is optional
    else:  # a compressed dump needs somewhere to go
        check(run(["decode", real612, "--summary"], e, cwd=tmp_path), "error", [str(blocker)])


def test_decompression_bomb_capped(tmp_path, buggy):
    """A small .zst that expands far beyond the limit is refused before filling the disk."""
    import zstandard

    bomb = tmp_path / "bomb.elf.zst"
    chunk = bytes(1 << 20)
    with open(bomb, "wb") as raw, zstandard.ZstdCompressor(level=1).stream_writer(raw) as w:
        w.write((buggy / "host-s2.elf").read_bytes())
        for _ in range(512):  # 512 MiB of zeros after the core
            w.write(chunk)
    e = base_env(tmp_path / "cache", S2TRACE_MAX_DECOMPRESSED="64MiB")
    r = run(
        ["decode", bomb, "--vttbr", "0x7f700000", "--vtcr", "0x800d3590", "--summary"],
        e,
        cwd=tmp_path,
    )
    check(r, "error", mentions=[str(bomb)])
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in leftovers) < 80 << 20, leftovers
