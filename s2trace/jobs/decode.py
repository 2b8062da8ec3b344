"""The decode job for descriptors a user names directly: 64-bit values on the command line, or
files of raw little-endian descriptors (one table each) at a given level.

A dump (walked from its root) is the walk job's (:mod:`s2trace.jobs.walk`); this is for the
hex a person pastes from a crash log or a table page read out of a debugger.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from s2trace.arch.geometry import Geometry, Granule
from s2trace.decode import decode_array
from s2trace.decode.explain import explain_text
from s2trace.errors import InputError
from s2trace.files import input_file, read_bytes
from s2trace.numbers import parse_u64
from s2trace.pkvm.profiles import DEFAULT_PROFILE, Profile, get_profile

__all__ = ["DecodeRequest", "decode_files", "decode_values", "explain_values", "read_table_file"]


@dataclass(frozen=True)
class DecodeRequest:
    """How to read descriptors: granule and format, level, annotation profile, FWB."""

    geometry: Geometry
    level: int
    profile: Profile
    fwb: bool = False

    @classmethod
    def of(
        cls,
        *,
        granule: str = "4k",
        ds: bool = False,
        lpa: bool = False,
        level: int | None = 3,
        profile: str | None = None,
        profiles_file: str | Path | None = None,
        fwb: bool = False,
    ) -> DecodeRequest:
        geometry = Geometry(Granule.parse(granule), ds=ds, lpa=lpa)
        lvl = 3 if level is None else level
        geometry.check_level(lvl)
        return cls(geometry, lvl, get_profile(profile or DEFAULT_PROFILE, profiles_file), fwb)


def decode_values(req: DecodeRequest, values: Sequence[str | int]) -> pd.DataFrame:
    """Descriptor values (numbers or their text) decoded into the DESCRIPTOR columns."""
    raw = np.array([parse_u64(v, "descriptor") for v in values], dtype=np.uint64)
    return decode_array(raw, req.geometry, req.level, req.profile, req.fwb)


def explain_values(req: DecodeRequest, values: Sequence[str | int]) -> list[str]:
    """The per-bit explanation of each value."""
    return [
        explain_text(parse_u64(v, "descriptor"), req.geometry, req.level, req.profile, req.fwb)
        for v in values
    ]


#: Largest file of raw descriptors read as one table (8 M descriptors).
TABLE_FILE_LIMIT = 64 << 20


def read_table_file(path: str | Path) -> np.ndarray:
    """A file of raw little-endian 64-bit descriptors (InputError on an unusable length)."""
    what = "a file of raw little-endian 64-bit descriptors"
    p = input_file(path, what, limit=TABLE_FILE_LIMIT)
    size = p.stat().st_size
    if size == 0:
        raise InputError(f"{path}: empty file (expected raw little-endian 64-bit descriptors)")
    if size % 8:
        raise InputError(
            f"{path}: length {size} is not a multiple of 8 (expected raw little-endian 64-bit "
            f"descriptors; {size % 8} trailing bytes at offset {size - size % 8:#x})"
        )
    return np.frombuffer(read_bytes(p, what, limit=TABLE_FILE_LIMIT), dtype="<u8").astype(np.uint64)


def decode_files(req: DecodeRequest, paths: Sequence[str | Path]) -> pd.DataFrame:
    """Each file as one table: its descriptors with their ``index`` (and ``file`` when
    there are several)."""
    frames = []
    for path in paths:
        values = read_table_file(path)
        frame = decode_array(values, req.geometry, req.level, req.profile, req.fwb)
        frame.insert(0, "index", np.arange(len(values), dtype=np.int64))
        if len(paths) > 1:
            frame.insert(0, "file", str(path))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
