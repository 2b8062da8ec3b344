"""Compressed dump files (``.zst``, ``.gz``, ``.xz``), decompressed once into a cache.

A memory map needs a plain file, so a compressed input is decompressed into the cache
directory (``$S2TRACE_CACHE``, default ``~/.cache/s2trace``) under the sha256 of the
*compressed* bytes.  The hash is streamed, so knowing whether the cache already holds an
input costs one read of the (small) compressed file, never a decompression.  The output is
written to a temporary file in the cache directory and renamed into place, so a crash or a
concurrent run never leaves a partial file under the final name.  A tqdm progress bar on stderr
follows the compressed bytes consumed when stderr is a terminal.

The compression format is chosen by the file name suffix and checked against the stream's magic
number; a mismatch is an InputError rather than a guess.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO, cast

import zstandard
from tqdm import tqdm

from s2trace.errors import InputError

__all__ = ["COMPRESSED_SUFFIXES", "cache_dir", "decompressed", "is_compressed", "plain_name"]

#: Suffix -> (format name, magic number at the start of the stream).
COMPRESSED_SUFFIXES: dict[str, tuple[str, bytes]] = {
    ".zst": ("zstd", b"\x28\xb5\x2f\xfd"),
    ".zstd": ("zstd", b"\x28\xb5\x2f\xfd"),
    ".gz": ("gzip", b"\x1f\x8b"),
    ".xz": ("xz", b"\xfd7zXZ\x00"),
}
_CHUNK = 1 << 20


def cache_dir() -> Path:
    """``$S2TRACE_CACHE`` or ``~/.cache/s2trace`` (not created here)."""
    env = os.environ.get("S2TRACE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "s2trace"


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


def decompressed(path: str | os.PathLike[str], cache: Path | None = None) -> Path:
    """Path of the decompressed content of ``path``, decompressing into the cache if needed."""
    src = Path(path)
    fmt, magic = COMPRESSED_SUFFIXES[src.suffix.lower()]
    try:
        with open(src, "rb") as f:
            head = f.read(len(magic))
        digest = sha256_of(src)
    except OSError as e:
        raise InputError(f"{src}: cannot read ({e.strerror}); expected a {fmt} file") from e
    if head != magic:
        raise InputError(f"{src}: not a {fmt} stream (bad magic {head.hex() or 'empty'})")
    root = cache if cache is not None else cache_dir()
    target = root / f"{digest}.raw"
    if target.is_file():
        return target
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{root}: cannot create cache directory ({e.strerror})") from e
    try:
        fd, tmp_name = tempfile.mkstemp(dir=root, prefix=f".{digest}.", suffix=".part")
    except OSError as e:
        raise InputError(f"{root}: cannot write to the cache directory ({e.strerror})") from e
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            _decompress_stream(src, fmt, out)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o444)
        os.replace(tmp, target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise InputError(
            f"{src}: cannot write its decompressed copy to {root} ({e.strerror})"
        ) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


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


def _decompress_stream(src: Path, fmt: str, out: BinaryIO) -> None:
    """Decompress ``src`` (format ``fmt``) into ``out``; InputError on a corrupt stream."""
    if fmt == "zstd":
        # python-zstandard's readers stop quietly at a cut-off frame: check framing first.
        check_zstd_framing(src)
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
    try:
        with bar, open(src, "rb") as raw, _reader(fmt, _Counting(raw, bar)) as reader:
            while chunk := reader.read(_CHUNK):
                out.write(chunk)
    except (zstandard.ZstdError, lzma.LZMAError, gzip.BadGzipFile, EOFError) as e:
        raise InputError(f"{src}: corrupt or truncated {fmt} stream ({e})") from e


_ZSTD_MAGIC = 0xFD2FB528
_SKIPPABLE_MASK, _SKIPPABLE_MAGIC = 0xFFFFFFF0, 0x184D2A50


def check_zstd_framing(src: Path) -> None:
    """Walk the frames and block headers of a zstd file; InputError if it is cut off.

    Layout per RFC 8878 section 3.1: a frame is magic, a 2-14 byte header (descriptor byte:
    FCS flag bits 7-6, single-segment bit 5, checksum bit 2, dictionary-ID flag bits 1-0;
    then window byte unless single-segment, 0/1/2/4 dictionary-ID bytes, 0/1/2/4/8 content
    size bytes), blocks with a 3-byte little-endian header (bit 0 last, bits 2-1 type: 0 raw
    and 2 compressed carry ``size`` bytes, 1 RLE carries one byte, 3 reserved; bits 23-3 size)
    and a 4-byte checksum when flagged.  Skippable frames are magic 0x184D2A5? + 4-byte size.
    One small read per 128 KiB block: cheap next to decompression.
    """
    length = src.stat().st_size
    with open(src, "rb") as f:

        def need(n: int, what: str) -> bytes:
            at = f.tell()
            data = f.read(n)
            if len(data) < n:
                raise InputError(
                    f"{src}: truncated zstd stream: {what} at offset {at:#x} is cut off "
                    f"(file has {length} bytes)"
                )
            return data

        while f.tell() < length:
            start = f.tell()
            magic = int.from_bytes(need(4, "frame magic"), "little")
            if magic & _SKIPPABLE_MASK == _SKIPPABLE_MAGIC:
                size = int.from_bytes(need(4, "skippable frame size"), "little")
                need(size, "skippable frame")
                continue
            if magic != _ZSTD_MAGIC:
                raise InputError(f"{src}: not a zstd frame at offset {start:#x}")
            desc = need(1, "frame header")[0]
            fcs_flag, single, checksum, dict_flag = (
                desc >> 6,
                desc >> 5 & 1,
                desc >> 2 & 1,
                desc & 3,
            )
            extra = (0 if single else 1) + (0, 1, 2, 4)[dict_flag]
            extra += (1 if single else 0, 2, 4, 8)[fcs_flag]
            need(extra, "frame header")
            while True:
                header = int.from_bytes(need(3, "block header"), "little")
                last, btype, size = header & 1, header >> 1 & 3, header >> 3
                if btype == 3:
                    raise InputError(f"{src}: reserved zstd block type at {f.tell() - 3:#x}")
                payload = 1 if btype == 1 else size
                if f.tell() + payload > length:
                    need(length, "block")  # raises with the block's offset
                f.seek(payload, os.SEEK_CUR)
                if last:
                    break
            if checksum:
                need(4, "frame checksum")
