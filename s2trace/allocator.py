"""Keep freed memory for reuse (glibc ``mallopt``): first-touch page faults dominate.

On the machines s2trace is measured on, touching fresh memory costs more than the numpy work
done in it (a 1 M-descriptor decode spends most of its time faulting in new pages), because
glibc hands large arrays back to the kernel on ``free`` and maps them afresh next time.
:func:`keep_freed_memory` raises the thresholds so large arrays come from the heap and are
reused; the ``s2trace`` command calls it at start-up.  It changes a process-wide allocator
setting, so the library never calls it on its own: call it from your notebook or script if
you want the same speed.

The other direction, :func:`release_memory`, hands freed memory back to the system where a
peak matters: between the stages of a trace analysis, and while a huge walk concatenates its
pieces (freed pieces would otherwise stay resident and double the peak).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["keep_freed_memory", "release_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library, found once per process (``find_library`` runs ``ldconfig``)."""
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def release_memory() -> None:
    """Return the memory the allocators keep after a stage to the system: Arrow's pool and
    glibc's free heap pages (``malloc_trim(0)``); a no-op where unsupported."""
    import sys

    if "pyarrow" in sys.modules:
        sys.modules["pyarrow"].default_memory_pool().release_unused()
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    if trim is not None:  # glibc only (not musl or macOS)
        trim.argtypes = [ctypes.c_size_t]
        trim(0)


def keep_freed_memory(mmap_threshold: int = 1 << 28, trim_threshold: int = 1 << 30) -> bool:
    """Serve allocations up to ``mmap_threshold`` bytes from the heap and keep up to
    ``trim_threshold`` bytes of freed heap; True when the C library took the settings."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None) if libc is not None else None
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    )
