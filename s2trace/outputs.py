"""The one way s2trace writes an output file: whole or not at all, never over an input.

:func:`output_path` (and :func:`open_output`, :func:`write_text`, :func:`write_bytes` built on
it) writes to a temporary file in the target's directory and renames it over the target with
``os.replace`` only when everything was written, so a crash, a full disk or an I/O error never
leaves half an output under the final name, and never touches an existing output.  Before
anything is written:

* a target that is the same file as an input of this process (:mod:`s2trace.files`: compared
  by device and inode, so a symlink, a hard link or a ``..`` spelling is caught) is refused;
* a target that is a directory, or whose directory does not exist, is refused;
* a target that exists and is not a regular file (``/dev/null``, ``/dev/stdout``, a pipe) is
  written directly: renaming over a device would replace the device node.

An existing regular output is replaced (documented in the README's "Bad input" section).
Every failure is one :class:`~s2trace.errors.InputError` line naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from s2trace.errors import InputError
from s2trace.files import is_input, shown

__all__ = ["check_output", "open_output", "output_path", "write_bytes", "write_text"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output(path: str | os.PathLike[str], what: str = "output") -> os.stat_result | None:
    """Refuse ``path`` as an output (InputError) when it names an input or a directory, or its
    directory is missing; return its ``stat`` when it exists (None otherwise)."""
    target = Path(path)
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise InputError(f"{shown(target)}: cannot write the {what} ({e.strerror})") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise InputError(f"{shown(target)}: is a directory; expected a file for the {what}")
        if is_input(st):
            raise InputError(
                f"{shown(target)}: is one of the inputs; refusing to write the {what} over it "
                "(choose another -o name)"
            )
        return st
    parent = target.parent
    if not parent.is_dir():
        raise InputError(
            f"{shown(parent)}: no such directory; cannot write the {what} {shown(target)}"
        )
    return None


@contextlib.contextmanager
def output_path(path: str | os.PathLike[str], what: str = "output") -> Iterator[Path]:
    """A path to write the output to; it becomes ``path`` when the block ends normally.

    Writers that want a file name (Parquet, image savers, the ELF writer) write to the yielded
    path; an ``OSError`` inside the block (full disk, I/O error) becomes one InputError line.
    """
    target = Path(path)
    st = check_output(target, what)
    if st is not None and not stat.S_ISREG(st.st_mode):
        try:
            yield target  # a device or a pipe: written in place
        except OSError as e:
            raise InputError(_write_error(target, e, what)) from None
        return
    try:
        fd, name = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name[:64]}.", suffix=".part"
        )
    except OSError as e:
        raise InputError(_write_error(target, e, what)) from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except OSError as e:
        raise InputError(_write_error(target, e, what)) from None
    finally:
        tmp.unlink(missing_ok=True)


def _write_error(target: Path, e: OSError, what: str) -> str:
    return f"{shown(target)}: cannot write the {what} ({e.strerror or e})"


@contextlib.contextmanager
def open_output(
    path: str | os.PathLike[str], mode: str = "w", what: str = "output", **kw: Any
) -> Iterator[IO[Any]]:
    """An open file for the output (see :func:`output_path`); flushed and synced before the
    rename, so "written" means on disk."""
    with output_path(path, what) as tmp, open(tmp, mode, **kw) as fh:
        yield fh
        fh.flush()
        try:
            os.fsync(fh.fileno())
        except OSError as e:  # pipes and some devices cannot sync; other errors are real
            if e.errno not in (errno.EINVAL, errno.EROFS, errno.ENOTSUP):
                raise


def write_text(path: str | os.PathLike[str], text: str, what: str = "output") -> None:
    with open_output(path, "w", what, encoding="utf-8") as fh:
        fh.write(text)


def write_bytes(path: str | os.PathLike[str], data: bytes, what: str = "output") -> None:
    with open_output(path, "wb", what) as fh:
        fh.write(data)
