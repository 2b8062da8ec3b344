"""Input files: checked before they are opened, capped in size, remembered as inputs.

Every file s2trace reads on the user's behalf (dumps, traces, capture.toml, profile and recipe
files, kallsyms, iomem, dmesg, region lists, raw descriptor tables) comes through
:func:`input_file` first:

* it must be a regular file, checked with ``os.stat`` *before* ``open()``: opening a FIFO with
  no writer blocks forever, and a device such as ``/dev/zero`` never ends, so both are refused
  with one line (a symlink to a regular file is fine: ``stat`` follows it);
* a text input is read whole only up to a cap (:data:`TEXT_LIMIT` unless the caller gives
  another): a profile file is kilobytes, a full kallsyms some tens of megabytes;
* text must be UTF-8: a file that is not gets one line with the offset of the first bad byte;
* inside :func:`watching_inputs` (the CLI runs every command in one) it is remembered by device
  and inode, so that an output which is the same file as an input is refused
  (:mod:`s2trace.outputs`), whatever name the output uses (a symlink, a hard link, ``./x/../``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import tomllib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from s2trace.errors import InputError
from s2trace.numbers import quoted

__all__ = [
    "TEXT_LIMIT",
    "cache_root",
    "content_digest",
    "input_file",
    "is_input",
    "is_regular",
    "note_input",
    "parse_toml",
    "read_bytes",
    "read_text",
    "shown",
    "watching_inputs",
]

#: Default cap of a text input read whole (bytes).
TEXT_LIMIT = 256 << 20

#: Device and inode of every input of the command being run (None: not watching).
_INPUTS: set[tuple[int, int]] | None = None

_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def shown(path: str | os.PathLike[str]) -> str:
    """A path as messages print it: as is when printable and short, else :func:`quoted`."""
    text = os.fsdecode(path)
    return text if text.isprintable() and len(text) <= 200 else quoted(text)


def input_file(path: str | os.PathLike[str], what: str, *, limit: int | None = None) -> Path:
    """``path`` after checking that it is a regular file of at most ``limit`` bytes (no limit
    when None); recorded as an input.  InputError (one line naming the file and ``what`` was
    expected) otherwise.  Nothing is opened here."""
    p = Path(path)
    try:
        st = os.stat(p)
    except OSError as e:
        raise InputError(_stat_error(p, e, what)) from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{shown(p)}: is a directory; expected {what} (a file)")
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
        raise InputError(
            f"{shown(p)}: is {kind}; expected {what} (a regular file: special files are refused "
            "because they may block or never end)"
        )
    if limit is not None and st.st_size > limit:
        raise InputError(
            f"{shown(p)}: {st.st_size} bytes; expected {what} of at most {limit} bytes"
        )
    if _INPUTS is not None:
        _INPUTS.add((st.st_dev, st.st_ino))
    return p


def _stat_error(p: Path, e: OSError, what: str) -> str:
    if e.errno == errno.ENOENT:
        return f"{shown(p)}: no such file; expected {what}"
    if e.errno == errno.ENAMETOOLONG:
        return f"{shown(p)}: file name too long; expected {what}"
    if e.errno == errno.ENOTDIR:
        return f"{shown(p)}: a part of the path is not a directory; expected {what}"
    return f"{shown(p)}: cannot read ({e.strerror}); expected {what}"


def is_regular(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a regular file (False for anything else, and for names that
    cannot be looked up at all, such as one too long)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def note_input(path: str | os.PathLike[str]) -> None:
    """Remember ``path`` as an input without reading it (a file a capture folder names)."""
    try:
        st = os.stat(path)
    except OSError:
        return
    if stat.S_ISREG(st.st_mode) and _INPUTS is not None:
        _INPUTS.add((st.st_dev, st.st_ino))


def is_input(st: os.stat_result) -> bool:
    """Whether the file with this ``stat`` result is an input of the command being run."""
    return _INPUTS is not None and (st.st_dev, st.st_ino) in _INPUTS


@contextlib.contextmanager
def watching_inputs() -> Iterator[None]:
    """Remember the inputs read inside the block (one command: the CLI runs each command in
    one), so that :mod:`s2trace.outputs` refuses to write over any of them.  Outside such a
    block (a notebook regenerating a file it read earlier) nothing is remembered."""
    global _INPUTS
    saved, _INPUTS = _INPUTS, set()
    try:
        yield
    finally:
        _INPUTS = saved


def read_bytes(path: str | os.PathLike[str], what: str, *, limit: int = TEXT_LIMIT) -> bytes:
    """The content of a regular file of at most ``limit`` bytes (see :func:`input_file`)."""
    p = input_file(path, what, limit=limit)
    try:
        with open(p, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise InputError(f"{shown(p)}: cannot read ({e.strerror}); expected {what}") from None
    if len(data) > limit:  # grew while we looked
        raise InputError(f"{shown(p)}: more than {limit} bytes; expected {what}")
    return data


def read_text(
    path: str | os.PathLike[str], what: str, *, limit: int = TEXT_LIMIT, lenient: bool = False
) -> str:
    """The UTF-8 text of a regular file of at most ``limit`` bytes (see :func:`input_file`);
    a byte that is not UTF-8 is an InputError naming its offset (``lenient``: replaced by
    U+FFFD, for logs such as dmesg whose stray bytes carry no meaning)."""
    data = read_bytes(path, what, limit=limit)
    try:
        return data.decode("utf-8", "replace" if lenient else "strict")
    except UnicodeDecodeError as e:
        raise InputError(
            f"{shown(path)}: byte {e.start:#x} is not UTF-8; expected {what} (UTF-8 text)"
        ) from None


def parse_toml(text: str, origin: str) -> dict[str, object]:
    """A TOML document read from ``origin`` (already shown safely); bad TOML, including
    nesting too deep for the parser, is one InputError line naming ``origin``."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{origin}: not valid TOML: {exc}") from None
    except RecursionError:
        raise InputError(f"{origin}: not valid TOML: nested too deeply") from None


# -- caches ------------------------------------------------------------------------------------
def cache_root() -> Path:
    """Where s2trace keeps its caches: ``$S2TRACE_CACHE``, else ``$XDG_CACHE_HOME/s2trace``,
    else ``~/.cache/s2trace`` (not created here)."""
    env = os.environ.get("S2TRACE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):  # the XDG spec: a relative value is to be ignored
        return Path(xdg) / "s2trace"
    return Path.home() / ".cache" / "s2trace"


_DIGEST_BLOCK = 1 << 20


def content_digest(path: str | os.PathLike[str]) -> str:
    """A checksum of a file's content, cheap enough to verify a cache entry on every read:
    the sum (mod 2^64) of the little-endian 64-bit words of each 1 MiB block, all blocks'
    sums and the length hashed with sha256.  Any change of one word changes its block's sum.
    Read at memory speed (numpy), unlike a byte-wise hash."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(_DIGEST_BLOCK):
            size += len(block)
            words = np.frombuffer(block[: len(block) // 8 * 8], "<u8")
            tail = block[len(block) // 8 * 8 :]
            h.update(np.uint64(words.sum(dtype=np.uint64)).tobytes() + tail)
    h.update(size.to_bytes(8, "little"))
    return h.hexdigest()
