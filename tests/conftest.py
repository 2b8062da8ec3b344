"""Shared fixtures: the two decode engines, and the real samples from ../shared.

The real 1 GiB cores are decompressed once into the cache (``S2TRACE_CACHE`` or
``~/.cache/s2trace``); tests that need them are marked ``slow`` and skip cleanly when
``../shared/samples`` is absent.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from s2trace.decode import decode, decode_array
from s2trace.render import plain_value

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SAMPLES = SHARED / "samples"

#: Registers of the two real captures (from their README and gdb-regs.txt).
REAL = {
    "6.12": {
        "dir": "qemu-pkvm-6.12",
        "vttbr": 0x7F709001,
        "vtcr": 0x802D3590,
        "ttbr0": 0x7F301001,
        "tcr": 0x15001F5B5D53510,
        "sha256": "538eb93379c8a347e53e0a9219b46758a7f57edfdd513980f45978dc2eb61f3e",
    },
    "7.3": {
        "dir": "qemu-pkvm-7.3",
        "vttbr": 0x7F609001,
        "vtcr": 0x802D3590,
        "ttbr0": 0x7F201001,
        "tcr": 0x5500075B5903510,
        "sha256": "57508f183241345d91ed02d938262a41df1f82370130bb6a97aef4b8877f68cf",
    },
}


_plain = plain_value  # the JSON renderer's rule: NA -> None, numpy scalars -> Python


def _numpy_one(raw: int, *args: Any, **kw: Any) -> dict[str, Any]:
    row = decode_array([raw], *args, **kw).astype(object).iloc[0].to_dict()
    return {k: _plain(v) for k, v in row.items()}


def _construct_one(raw: int, *args: Any, **kw: Any) -> dict[str, Any]:
    return decode(raw, *args, **kw).to_dict()


@pytest.fixture(params=["construct", "numpy"])
def engine(request: pytest.FixtureRequest) -> Any:
    """Decode one descriptor to a plain dict with either engine: every decode test runs on
    both, so the two stay bit-identical."""
    return _construct_one if request.param == "construct" else _numpy_one


def real_core(version: str) -> Path:
    """The decompressed real core of a capture (skips when the sample is not here)."""
    info = REAL[version]
    src = SAMPLES / info["dir"] / "host-s2.elf.zst"
    if not src.exists():
        pytest.skip(f"real sample {src} not available")
    from s2trace.io.compressed import decompressed

    return Path(decompressed(src))


def real_dir(version: str) -> Path:
    d = SAMPLES / REAL[version]["dir"]
    if not d.exists():
        pytest.skip(f"real sample {d} not available")
    return d


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPLBACKEND", "Agg")
    if "S2TRACE_CACHE" not in os.environ:
        monkeypatch.setenv("S2TRACE_CACHE", str(Path.home() / ".cache" / "s2trace"))
