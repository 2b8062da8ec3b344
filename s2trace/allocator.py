"""Keep freed memory for reuse (glibc ``mallopt``): first-touch page faults dominate.

On the machines s2trace is measured on, touching fresh memory costs more than the numpy work
done in it (a 1 M-descriptor decode spends most of its time faulting in new pages), because
glibc hands large arrays back to the kernel on ``free`` and maps them afresh next time.
:func:`keep_freed_memory` raises the thresholds so large arrays come from the heap and are
reused; the ``s2trace`` command calls it at start-up.  It changes a process-wide allocator
setting, so the library never calls it on its own: call it from your notebook or script if
you want the same speed.  Walks hand memory back explicitly where it matters
(:func:`s2trace.walk.walker._release_freed_memory`).
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(mmap_threshold: int = 1 << 28, trim_threshold: int = 1 << 30) -> bool:
    """Serve allocations up to ``mmap_threshold`` bytes from the heap and keep up to
    ``trim_threshold`` bytes of freed heap; True when the C library took the settings."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    )
