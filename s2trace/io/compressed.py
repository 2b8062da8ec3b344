"""Compressed dump files (``.zst``, ``.gz``, ``.xz``), decompressed once into a cache.

A memory map needs a plain file, so a compressed input is decompressed into the cache directory
(``$S2TRACE_CACHE``, else ``$XDG_CACHE_HOME/s2trace``, else ``~/.cache/s2trace``) under the sha256
of the *compressed* bytes, beside a JSON record of its size and content checksum that is verified on
every use (a damaged or truncated entry is rebuilt, with a warning). The hash is streamed, so
knowing whether the cache already holds an input costs one read of the (small) compressed file,
never a decompression. The output is written to a temporary file in the cache directory and renamed
into place, so a crash or a concurrent run never leaves a partial file under the final name. A tqdm
progress bar on stderr follows the compressed bytes consumed when stderr is a terminal.

The compression format is chosen by the file name suffix and checked against the stream's magic
number; a mismatch is an InputError rather than a guess. A zstd file is checked to its end (frame
and block headers) before it is decompressed: a cut-off file is an error, never a shorter dump.
Decompression is capped (:func:`decompression_limit`) and stops before the cache's disk fills.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import BinaryIO, cast

import zstandard
from tqdm import tqdm

from s2trace import __version__
from s2trace.errors import CacheWarning, InputError
from s2trace.files import cache_root, content_digest, input_file, shown
from s2trace.numbers import quoted

__all__ = [
    "COMPRESSED_SUFFIXES",
    "cache_dir",
    "check_zstd_framing",
    "decompressed",
    "decompression_limit",
    "is_compressed",
    "plain_name",
]

#: Suffix -> (format name, magic number at the start of the stream).
COMPRESSED_SUFFIXES: dict[str, tuple[str, bytes]] = {
    ".zst": ("zstd", b"\x28\xb5\x2f\xfd"),
    ".zstd": ("zstd", b"\x28\xb5\x2f\xfd"),
    ".gz": ("gzip", b"\x1f\x8b"),
    ".xz": ("xz", b"\xfd7zXZ\x00"),
}
_CHUNK = 1 << 20


def cache_dir() -> Path:
    """The cache root (:func:`s2trace.files.cache_root`: ``$S2TRACE_CACHE``, else
    ``$XDG_CACHE_HOME/s2trace``, else ``~/.cache/s2trace``; not created here)."""
    return cache_root()


def is_compressed(path: str | os.PathLike[str]) -> bool:
    """True when the name ends in a compression suffix this module handles."""
    return Path(path).suffix.lower() in COMPRESSED_SUFFIXES


def plain_name(path: str | os.PathLike[str]) -> str:
    """The file name without its compression suffix (``core.elf.zst`` -> ``core.elf``)."""
    p = Path(path)
    return p.stem if is_compressed(p) else p.name


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's content, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


#: Layout version of a cache entry (the decompressed file plus its JSON record).
ENTRY_VERSION = 1
#: Default cap on one decompressed file (``S2TRACE_MAX_DECOMPRESSED`` sets another, e.g. 64GiB).
DEFAULT_LIMIT = 256 << 30
#: Free space left on the cache's file system after decompressing (bytes).
FREE_MARGIN = 256 << 20
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def decompression_limit() -> int:
    """The cap on one decompressed file: ``$S2TRACE_MAX_DECOMPRESSED`` (bytes, or with a
    KiB/MiB/GiB/TiB suffix), else :data:`DEFAULT_LIMIT`."""
    text = os.environ.get("S2TRACE_MAX_DECOMPRESSED")
    if not text:
        return DEFAULT_LIMIT
    m = re.fullmatch(r"\s*([0-9]+)\s*([kKmMgGtT]?)(?:i?B)?\s*", text, re.ASCII)
    if m is None:
        raise InputError(
            f"S2TRACE_MAX_DECOMPRESSED={quoted(text)}: expected a size such as 64GiB or 1000000"
        )
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def decompressed(path: str | os.PathLike[str], cache: Path | None = None) -> Path:
    """Path of the decompressed content of ``path``, decompressing into the cache if needed.

    A cache entry is the decompressed file and a JSON record of its size, its
    :func:`~s2trace.files.content_digest` and the versions that wrote it; it is verified on
    every use, and an entry that does not match is decompressed again with a
    :class:`~s2trace.errors.CacheWarning`.  Decompression stops with an InputError past
    :func:`decompression_limit` bytes or when the cache's file system would be left with less
    than :data:`FREE_MARGIN` bytes free.
    """
    src = Path(path)
    fmt, magic = COMPRESSED_SUFFIXES[src.suffix.lower()]
    input_file(src, f"a {fmt}-compressed file")
    try:
        with open(src, "rb") as f:
            head = f.read(len(magic))
        digest = sha256_of(src)
    except OSError as e:
        raise InputError(f"{shown(src)}: cannot read ({e.strerror}); expected a {fmt} file") from e
    if head != magic:
        raise InputError(f"{shown(src)}: not a {fmt} stream (bad magic {head.hex() or 'empty'})")
    root = cache if cache is not None else cache_dir()
    target = root / f"{digest}.raw"
    record = root / f"{digest}.raw.json"
    if target.exists() or record.exists():
        trouble = _entry_trouble(target, record)
        if trouble is None:
            return target
        warnings.warn(
            f"{shown(target)} (the decompressed copy of {shown(src)}) {trouble}; "
            "decompressing again",
            CacheWarning,
            stacklevel=2,
        )
        for stale in (target, record):
            stale.unlink(missing_ok=True)
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=root, prefix=f".{digest}.", suffix=".part")
    except OSError as e:
        raise InputError(
            f"{shown(root)}: cannot create cache directory or write to it ({e.strerror}); it "
            "holds decompressed "
            f"copies of compressed dumps such as {shown(src)} (set S2TRACE_CACHE elsewhere)"
        ) from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            _decompress_stream(src, fmt, out, decompression_limit(), root)
            out.flush()
            os.fsync(out.fileno())
        entry = {
            "entry_version": ENTRY_VERSION,
            "s2trace": __version__,
            "source_sha256": digest,
            "size": tmp.stat().st_size,
            "content": content_digest(tmp),
        }
        os.chmod(tmp, 0o444)
        _write_record(record, entry)
        os.replace(tmp, target)
    except OSError as e:
        raise InputError(
            f"{shown(src)}: cannot write its decompressed copy to {shown(root)} ({e.strerror})"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _entry_trouble(target: Path, record: Path) -> str | None:
    """What is wrong with a cache entry (None: it matches its record)."""
    try:
        entry = json.loads(record.read_text())
        size, content = int(entry["size"]), str(entry["content"])
        version = int(entry["entry_version"])
    except FileNotFoundError:
        return "has no checksum record"
    except (OSError, ValueError, KeyError, TypeError):
        return "has an unreadable checksum record"
    if version != ENTRY_VERSION:
        return "was written by another version of s2trace"
    try:
        actual = target.stat().st_size
        if actual != size:
            return f"has {actual} bytes, its record says {size}"
        if content_digest(target) != content:
            return "does not match its checksum (damaged)"
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    return None


def _write_record(record: Path, entry: dict[str, object]) -> None:
    fd, name = tempfile.mkstemp(dir=record.parent, prefix=f".{record.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(entry, f)
        os.replace(name, record)
    finally:
        Path(name).unlink(missing_ok=True)


class _Counting:
    """A read-only file wrapper that advances a progress bar by the bytes read."""

    def __init__(self, raw: BinaryIO, bar: tqdm) -> None:
        self._raw = raw
        self._bar = bar

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._bar.update(len(data))
        return data

    def readable(self) -> bool:
        return True


def _reader(
    fmt: str, source: _Counting
) -> zstandard.ZstdDecompressionReader | gzip.GzipFile | lzma.LZMAFile:
    """A decompressing reader of ``source`` for ``fmt``; each read returns at most n bytes."""
    src = cast(BinaryIO, source)  # the readers call only read(), which _Counting has
    if fmt == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(src, read_across_frames=True)
    if fmt == "gzip":
        return gzip.GzipFile(fileobj=src, mode="rb")
    return lzma.LZMAFile(src)


def _decompress_stream(src: Path, fmt: str, out: BinaryIO, limit: int, folder: Path) -> None:
    """Decompress ``src`` (format ``fmt``) into ``out``; InputError on a corrupt or truncated
    stream, past ``limit`` bytes, or when the disk of ``folder`` (where ``out`` is) runs low."""
    if fmt == "zstd":
        # python-zstandard's readers stop quietly at a cut-off frame: check framing first.
        declared = check_zstd_framing(src)
        if declared is not None and declared > limit:
            raise InputError(_too_big(src, declared, limit))
    total = src.stat().st_size
    bar = tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        desc=f"decompressing {src.name}",
        file=sys.stderr,
        disable=not sys.stderr.isatty(),
        leave=False,
    )
    written = 0
    next_check = 0
    try:
        with bar, open(src, "rb") as raw, _reader(fmt, _Counting(raw, bar)) as reader:
            while chunk := reader.read(_CHUNK):
                written += len(chunk)
                if written > limit:
                    raise InputError(_too_big(src, written, limit))
                if written >= next_check:  # every 256 MiB: is there room for more?
                    free = shutil.disk_usage(folder).free
                    if free < FREE_MARGIN + (256 << 20):
                        raise InputError(
                            f"{shown(src)}: decompressing it would fill the disk of the cache "
                            f"({free >> 20} MiB free after {written >> 20} MiB written); free "
                            "space or set S2TRACE_CACHE elsewhere"
                        )
                    next_check = written + (256 << 20)
                out.write(chunk)
    except (zstandard.ZstdError, lzma.LZMAError, gzip.BadGzipFile, EOFError) as e:
        raise InputError(f"{shown(src)}: corrupt or truncated {fmt} stream ({e})") from None


def _too_big(src: Path, size: int, limit: int) -> str:
    return (
        f"{shown(src)}: decompresses to more than {limit} bytes (at least {size}); refused "
        "(set S2TRACE_MAX_DECOMPRESSED to allow more)"
    )


_ZSTD_MAGIC = 0xFD2FB528
_SKIPPABLE_MASK, _SKIPPABLE_MAGIC = 0xFFFFFFF0, 0x184D2A50


def check_zstd_framing(src: Path) -> int | None:
    """Walk the frames and block headers of a zstd file; InputError if it is cut off.
    Returns the content size the frames declare (None when a frame does not declare it).

    Layout per RFC 8878 section 3.1: a frame is magic, a 2-14 byte header (descriptor byte:
    FCS flag bits 7-6, single-segment bit 5, checksum bit 2, dictionary-ID flag bits 1-0;
    then window byte unless single-segment, 0/1/2/4 dictionary-ID bytes, 0/1/2/4/8 content
    size bytes), blocks with a 3-byte little-endian header (bit 0 last, bits 2-1 type: 0 raw
    and 2 compressed carry ``size`` bytes, 1 RLE carries one byte, 3 reserved; bits 23-3 size)
    and a 4-byte checksum when flagged.  Skippable frames are magic 0x184D2A5? + 4-byte size.
    One small read per 128 KiB block: cheap next to decompression.
    """
    length = src.stat().st_size
    declared: int | None = 0
    with open(src, "rb") as f:

        def skip(n: int, what: str) -> None:
            if f.tell() + n > length:
                need(length, what)  # raises with the offset
            f.seek(n, os.SEEK_CUR)

        def need(n: int, what: str) -> bytes:
            at = f.tell()
            data = f.read(n)
            if len(data) < n:
                raise InputError(
                    f"{shown(src)}: truncated zstd stream: {what} at offset {at:#x} is cut off "
                    f"(file has {length} bytes)"
                )
            return data

        while f.tell() < length:
            start = f.tell()
            magic = int.from_bytes(need(4, "frame magic"), "little")
            if magic & _SKIPPABLE_MASK == _SKIPPABLE_MAGIC:
                size = int.from_bytes(need(4, "skippable frame size"), "little")
                skip(size, "skippable frame")
                continue
            if magic != _ZSTD_MAGIC:
                raise InputError(f"{shown(src)}: not a zstd frame at offset {start:#x}")
            desc = need(1, "frame header")[0]
            fcs_flag, single, checksum, dict_flag = (
                desc >> 6,
                desc >> 5 & 1,
                desc >> 2 & 1,
                desc & 3,
            )
            extra = (0 if single else 1) + (0, 1, 2, 4)[dict_flag]
            fcs_len = (1 if single else 0, 2, 4, 8)[fcs_flag]
            header_bytes = need(extra + fcs_len, "frame header")
            if fcs_len and declared is not None:
                fcs = int.from_bytes(header_bytes[extra:], "little")
                declared += fcs + (256 if fcs_len == 2 else 0)
            else:
                declared = None
            while True:
                header = int.from_bytes(need(3, "block header"), "little")
                last, btype, size = header & 1, header >> 1 & 3, header >> 3
                if btype == 3:
                    raise InputError(f"{shown(src)}: reserved zstd block type at {f.tell() - 3:#x}")
                skip(1 if btype == 1 else size, "block")
                if last:
                    break
            if checksum:
                need(4, "frame checksum")
    return declared
