"""Trace file bytes: plain or compressed files, read in chunks that end at a line end.

The file is read -- decompressed as a stream when it is compressed (zstd, gzip, xz, bzip2,
recognised by their magic bytes) -- in pieces of about :data:`CHUNK_BYTES` cut at line ends,
into one buffer reused for every piece: it stays in the CPU caches and, unlike a memory map of
the whole file, costs no page faults per chunk (on the test VM a first touch of fresh memory is
the single largest cost).  Each piece is handed out padded (:func:`.chunk.padded`).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, cast

import numpy as np
import zstandard
from tqdm import tqdm

from s2trace.errors import InputError
from s2trace.io.compressed import check_zstd_framing
from s2trace.trace.parse.chunk import BACK, FRONT, NL, padded

__all__ = ["CHUNK_BYTES", "read_chunks", "read_head"]

#: Bytes read per chunk (a chunk also takes the part of a line the previous one left over).
CHUNK_BYTES = 4 << 20


_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"BZh", "bzip2"),
)


def _compression(head: bytes) -> str | None:
    return next((name for magic, name in _MAGIC if head.startswith(magic)), None)


def _open_stream(src: Path, raw: BinaryIO) -> BinaryIO:
    """A reader of the decompressed bytes of ``raw`` (or ``raw`` itself)."""
    head = raw.read(8)
    raw.seek(0)
    kind = _compression(head)
    # The decompressors are binary file objects (read, readinto, close), not typing.BinaryIO.
    if kind == "zstd":
        # python-zstandard's reader ends quietly at a cut-off frame: check the framing to the
        # file's end first (a truncated trace is an error, never a shorter trace).
        check_zstd_framing(src)
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    if kind == "gzip":
        return cast(BinaryIO, gzip.GzipFile(fileobj=raw, mode="rb"))
    if kind == "xz":
        return cast(BinaryIO, lzma.LZMAFile(raw))
    if kind == "bzip2":
        return cast(BinaryIO, bz2.BZ2File(raw))
    return raw


def read_head(src: Path, size: int = 1 << 16) -> bytes:
    """The first ``size`` bytes of the (decompressed) file."""
    try:
        with open(src, "rb") as raw, _open_stream(src, raw) as stream:
            return stream.read(size)
    except (OSError, EOFError, zstandard.ZstdError, lzma.LZMAError) as e:
        raise InputError(f"{src}: cannot read ({e})") from e


def _fill(stream: BinaryIO, view: memoryview) -> int:
    """Read into ``view`` until it is full or the stream ends; the number of bytes read."""
    got = 0
    while got < len(view):
        n = stream.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    return got


def read_chunks(src: Path, bar: tqdm, chunk: int = CHUNK_BYTES) -> Iterator[np.ndarray]:
    """The file's lines in padded buffers of about ``chunk`` bytes (see :func:`padded`).

    Bytes are read (decompressed as a stream when the file is compressed) straight into one
    buffer that is reused for every chunk, after the part of a line the previous chunk left
    over: the parser copies out what it keeps, so only the first chunk touches fresh memory.
    The bar follows the file bytes consumed.
    """
    size = FRONT + chunk + BACK
    buf = np.zeros(size, np.uint8)
    carry = np.zeros(0, np.uint8)
    try:
        with open(src, "rb") as raw, _open_stream(src, raw) as stream:
            while True:
                need = FRONT + len(carry) + chunk + 1 + BACK
                if need > len(buf):  # a line longer than a chunk: grow
                    buf = np.zeros(need, np.uint8)
                at = FRONT + len(carry)
                buf[FRONT:at] = carry
                got = _fill(stream, buf.data[at : at + chunk])
                bar.update(raw.tell() - bar.n)
                n = len(carry) + got
                if got == 0:
                    if n:
                        yield padded(buf, n)
                    return
                data = buf[FRONT : FRONT + n]
                tail = max(n - (1 << 16), 0)
                nls = np.flatnonzero(data[tail:] == NL)
                if not len(nls):
                    nls = np.flatnonzero(data == NL)
                    tail = 0
                if not len(nls):  # no line end yet
                    carry = data.copy()
                    continue
                cut = tail + int(nls[-1]) + 1
                carry = data[cut:].copy()
                yield padded(buf, cut)
    except (OSError, EOFError, zstandard.ZstdError, lzma.LZMAError) as e:
        raise InputError(f"{src}: cannot read, corrupt or truncated ({e})") from e
