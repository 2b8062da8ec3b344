"""Fixtures of the hostile-input battery: private caches, copies of the samples to damage."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hostile.hostile_support import SAMPLES, base_env


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the cases that do not test the cache itself (saves re-parsing)."""
    return tmp_path_factory.mktemp("hostile-cache")


@pytest.fixture
def env(shared_cache: Path) -> dict[str, str]:
    return base_env(shared_cache)


@pytest.fixture
def own_env(tmp_path: Path) -> dict[str, str]:
    """An environment with a cache of this test's own."""
    cache = tmp_path / "cache"
    return base_env(cache)


@pytest.fixture(scope="session")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of sample-traces (cases damage copies of it, never the checkout)."""
    dst = tmp_path_factory.mktemp("samples") / "sample-traces"
    shutil.copytree(SAMPLES, dst)
    return dst


@pytest.fixture
def buggy(samples: Path, tmp_path: Path) -> Path:
    """A fresh copy of the buggy synthetic capture (a trace with planted faults, a dump)."""
    dst = tmp_path / "buggy"
    shutil.copytree(samples / "synthetic" / "buggy", dst)
    return dst


@pytest.fixture
def real612(samples: Path, tmp_path: Path) -> Path:
    """A fresh copy of the reduced real 6.12 capture (compressed dump, registers, kallsyms)."""
    dst = tmp_path / "qemu-pkvm-6.12"
    shutil.copytree(samples / "qemu-pkvm-6.12", dst)
    return dst
