"""Physical memory of a dumped machine, backed by read-only memory maps.

:class:`PhysicalMemory` is what the page-table walker reads from: an ordered list of
non-overlapping :class:`Region` values, each a run of physical addresses whose bytes sit in a
file at some offset.  Files are mapped with ``mmap`` (``ACCESS_READ``), never read whole, so a
1 GiB core costs address space, not RAM: only the pages the walker touches become resident.

Addresses between regions are simply absent (MMIO, holes, memory the capture left out).  Reading
there raises :class:`MemoryFault`; :meth:`PhysicalMemory.gather` returns a mask instead, so the
walker can record "table outside the dump" as a problem and go on.

Bytes are interpreted as little-endian 64-bit words (``<u8``).  SCTLR_EL2.EE sets the
endianness of stage 2 translation table walks of the EL1&0 regime (and of EL2's own stage 1);
a little-endian arm64 kernel leaves it 0.  (From the Arm ARM's SCTLR_EL2.EE description, as
remembered; not re-read for this module.)  Big-endian kernels are not supported: the ELF
opener refuses big-endian cores rather than misread them.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import mmap
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from s2trace.errors import InputError, Problem

__all__ = ["WORD", "MemoryFault", "PhysicalMemory", "Region"]

#: Dtype of every word this module hands out: little-endian unsigned 64-bit.
WORD = np.dtype("<u8")

_ADDRESS_LIMIT = 1 << 64


class MemoryFault(Exception):
    """A read touched physical addresses that are not in the dump.

    ``pa`` and ``nbytes`` give the requested range; ``missing`` is the first absent address.
    """

    def __init__(self, pa: int, nbytes: int, missing: int | None = None) -> None:
        self.pa = pa
        self.nbytes = nbytes
        self.missing = pa if missing is None else missing
        super().__init__(
            f"physical range {pa:#x}..{pa + nbytes:#x} is not in the dump "
            f"(first missing byte {self.missing:#x})"
        )


@dataclass(frozen=True, slots=True)
class Region:
    """Physical addresses ``[pa, pa + size)`` stored in ``path`` from ``file_offset`` on.

    ``name`` is the label used in messages; it names the file the user gave (which differs
    from ``path`` when a compressed input was decompressed into the cache).
    """

    pa: int
    size: int
    path: Path
    file_offset: int
    name: str

    @property
    def end(self) -> int:
        """First physical address after the region."""
        return self.pa + self.size

    def describe(self) -> str:
        """``name [start..end)`` for messages."""
        return f"{self.name} [{self.pa:#x}..{self.end:#x})"


class PhysicalMemory:
    """Read-only physical memory assembled from regions of dump files.

    Regions are sorted by address; any overlap is an :class:`InputError` naming both regions.
    Every region must lie inside its file (otherwise "truncated region").  ``problems`` holds
    what the openers noticed but could work around (unknown lines in a region list, partial
    ELF segments...).
    """

    def __init__(self, regions: Iterable[Region], problems: Iterable[Problem] = ()) -> None:
        self._maps: dict[Path, mmap.mmap] = {}
        self._fds: dict[Path, int] = {}  # opened by data_from only
        self._real: dict[Path, Path] = {}  # realpath and size per file, not per region
        self._lengths: dict[Path, int] = {}
        self._closed = False
        self._bytes: list[np.ndarray] = []
        self._words: list[np.ndarray] = []
        self.problems: tuple[Problem, ...] = tuple(problems)
        ordered = sorted(regions, key=lambda r: (r.pa, r.size))
        try:
            for r in ordered:
                self._check_region(r)
            for a, b in itertools.pairwise(ordered):
                if b.pa < a.end:
                    lo, hi = b.pa, min(a.end, b.end)
                    raise InputError(
                        f"overlapping regions: {a.describe()} and {b.describe()} "
                        f"both cover {lo:#x}..{hi:#x}"
                    )
            for r in ordered:
                self._attach(r)
        except BaseException:
            self.close()
            raise
        self.regions: tuple[Region, ...] = tuple(ordered)
        self._starts = np.array([r.pa for r in ordered], dtype=np.uint64)
        self._sizes = np.array([r.size for r in ordered], dtype=np.uint64)
        # Runs of abutting regions: a read may cross from one file into the next.
        run_starts: list[int] = []
        run_sizes: list[int] = []
        for r in ordered:
            if run_starts and run_starts[-1] + run_sizes[-1] == r.pa:
                run_sizes[-1] += r.size
            else:
                run_starts.append(r.pa)
                run_sizes.append(r.size)
        self._run_starts = np.array(run_starts, dtype=np.uint64)
        self._run_sizes = np.array(run_sizes, dtype=np.uint64)

    # -- construction ---------------------------------------------------------------------

    def _check_region(self, r: Region) -> None:
        if r.size <= 0:
            raise InputError(f"{r.name}: region at {r.pa:#x} has size {r.size}; expected > 0")
        if r.pa < 0 or r.pa + r.size > _ADDRESS_LIMIT:
            raise InputError(f"{r.name}: region {r.pa:#x}+{r.size:#x} is outside 64-bit space")
        if r.file_offset < 0:
            raise InputError(f"{r.name}: negative file offset {r.file_offset}")
        try:
            length = self._lengths.get(r.path)
            if length is None:
                length = self._lengths[r.path] = os.stat(r.path).st_size
        except OSError as e:
            raise InputError(f"{r.path}: cannot read ({e.strerror}); expected a dump file") from e
        if r.file_offset + r.size > length:
            raise InputError(
                f"{r.name}: truncated region: {r.path} has {length} bytes, expected at least "
                f"{r.file_offset + r.size} (offset {r.file_offset:#x} + size {r.size:#x})"
            )

    def _attach(self, r: Region) -> None:
        """Map ``r.path`` (once per file) and keep byte and word views of the region."""
        key = self._real.get(r.path)
        if key is None:
            key = self._real[r.path] = Path(os.path.realpath(r.path))
        mm = self._maps.get(key)
        if mm is None:
            try:
                with open(key, "rb") as f:
                    mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError) as e:
                raise InputError(f"{r.path}: cannot map file ({e}); expected a dump file") from e
            if hasattr(mmap, "MADV_RANDOM"):
                # Table walks jump around: do not read ahead megabytes around every page.
                mm.madvise(mmap.MADV_RANDOM)
            self._maps[key] = mm
        # frombuffer accepts unaligned offsets (an ELF segment may start at any byte).
        self._bytes.append(np.frombuffer(mm, dtype=np.uint8, count=r.size, offset=r.file_offset))
        self._words.append(np.frombuffer(mm, dtype=WORD, count=r.size // 8, offset=r.file_offset))

    # -- queries --------------------------------------------------------------------------

    def _live(self) -> None:
        if self._closed:
            raise ValueError("PhysicalMemory is closed")

    def _region_index(self, pa: int) -> int:
        """Index of the region holding ``pa``, or -1."""
        self._live()
        if pa < 0 or pa >= _ADDRESS_LIMIT or not self.regions:
            return -1
        i = int(np.searchsorted(self._starts, np.uint64(pa), side="right")) - 1
        if i >= 0 and pa < self.regions[i].end:
            return i
        return -1

    def holds(self, pa: int, nbytes: int = 1) -> bool:
        """True when every byte of ``[pa, pa + nbytes)`` is in the dump."""
        if nbytes <= 0:
            return nbytes == 0
        if pa < 0 or pa + nbytes > _ADDRESS_LIMIT or not self.regions:
            return False
        i = int(np.searchsorted(self._run_starts, np.uint64(pa), side="right")) - 1
        return i >= 0 and pa + nbytes <= int(self._run_starts[i]) + int(self._run_sizes[i])

    def data_from(self, pa: int) -> int:
        """The lowest address ``>= pa`` of ``pa``'s region whose bytes its file stores, or the
        region's end when the rest of the region is a hole.

        A hole of a sparse file reads as zeros, so a scan for non-zero patterns (stage-2
        roots, ``kvm_nvhe_init_params``) can skip it without reading it: a sparse 64 GiB
        core then costs what its data costs.  ``pa`` itself when the file system gives no
        hole information (``SEEK_DATA`` unsupported) or ``pa`` is in no region.
        """
        i = self._region_index(pa)
        if i < 0 or not hasattr(os, "SEEK_DATA"):
            return pa
        r = self.regions[i]
        fd = self._fds.get(r.path)
        if fd is None:
            try:
                fd = os.open(r.path, os.O_RDONLY)
            except OSError:
                return pa
            self._fds[r.path] = fd
        try:
            found = os.lseek(fd, r.file_offset + (pa - r.pa), os.SEEK_DATA)
        except OSError as e:
            return r.end if e.errno == errno.ENXIO else pa  # ENXIO: only a hole follows
        return max(pa, min(r.end, r.pa + (found - r.file_offset)))

    def __contains__(self, pa: object) -> bool:
        return isinstance(pa, int | np.integer) and self.holds(int(pa), 1)

    @property
    def total_bytes(self) -> int:
        """Number of physical bytes present."""
        return sum(r.size for r in self.regions)

    def read(self, pa: int, nbytes: int) -> bytes:
        """The ``nbytes`` bytes at physical ``pa``; :class:`MemoryFault` if any is absent.

        A read may span abutting regions (consecutive DDR chip-select files, for instance).
        """
        if nbytes < 0:
            raise ValueError(f"negative read size {nbytes}")
        if nbytes == 0:
            return b""
        chunks: list[bytes] = []
        cur, left = pa, nbytes
        while left:
            i = self._region_index(cur)
            if i < 0:
                raise MemoryFault(pa, nbytes, cur)
            r = self.regions[i]
            take = min(left, r.end - cur)
            off = cur - r.pa
            chunks.append(self._bytes[i][off : off + take].tobytes())
            cur += take
            left -= take
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def u64(self, pa: int, count: int) -> np.ndarray:
        """``count`` little-endian 64-bit words at ``pa`` (read-only).

        Zero-copy (a view into the map) when the range lies in one region at a word offset
        from its start; otherwise a copy.  :class:`MemoryFault` if any byte is absent.
        """
        if count < 0:
            raise ValueError(f"negative word count {count}")
        i = self._region_index(pa)
        if i >= 0:
            r = self.regions[i]
            off = pa - r.pa
            if off % 8 == 0 and pa + 8 * count <= r.end:
                return self._words[i][off // 8 : off // 8 + count]
        out = np.frombuffer(self.read(pa, 8 * count), dtype=WORD)
        return out

    def gather(self, pas: np.ndarray, nbytes: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows of ``nbytes`` bytes starting at each of ``pas``, as 64-bit words.

        Returns ``(words, ok)``: ``words`` has shape ``(N, nbytes // 8)`` (dtype ``<u8``) and
        ``ok[k]`` says that all of ``[pas[k], pas[k] + nbytes)`` is in the dump; rows that are
        not ok are zero.  One ``searchsorted`` finds each row's region; rows are then copied
        with one fancy-indexing operation per region over a strided window view of the map,
        so the cost is one memcpy per row and no Python work per row.  Rows that cross from
        one region into an abutting one (rare: only near region boundaries) are assembled
        with :meth:`read`, once per distinct address.
        """
        self._live()
        if nbytes <= 0 or nbytes % 8:
            raise ValueError(f"gather size must be a positive multiple of 8, got {nbytes}")
        pas = np.asarray(pas)
        if pas.dtype.kind not in "iu":
            raise TypeError(f"gather expects integer addresses, got dtype {pas.dtype}")
        if pas.ndim != 1:
            raise ValueError(f"gather expects a 1-D array of addresses, got shape {pas.shape}")
        if pas.size and pas.dtype.kind == "i" and int(pas.min()) < 0:
            raise ValueError("gather: negative physical address")
        pas = pas.astype(np.uint64, copy=False)
        n_rows, width = pas.shape[0], nbytes // 8
        words = np.zeros((n_rows, width), dtype=WORD)
        ok = np.zeros(n_rows, dtype=bool)
        if n_rows == 0 or not self.regions:
            return words, ok
        size = np.uint64(nbytes)

        idx = np.searchsorted(self._starts, pas, side="right").astype(np.int64) - 1
        valid = idx >= 0
        safe = np.where(valid, idx, 0)
        rel = pas - self._starts[safe]  # wraps where invalid; masked below
        room = self._sizes[safe]
        fits = valid & (room >= size) & (rel <= room - size)

        rows = np.flatnonzero(fits)
        if rows.size:
            keys = idx[rows]
            order = np.argsort(keys, kind="stable")
            rows, keys = rows[order], keys[order]
            cuts = np.flatnonzero(np.diff(keys)) + 1
            for group in np.split(rows, cuts):
                i = int(idx[group[0]])
                offs = rel[group]
                aligned = (offs & np.uint64(7)) == 0
                if aligned.all():
                    win = sliding_window_view(self._words[i], width)
                    words[group] = win[(offs >> np.uint64(3)).astype(np.intp)]
                else:
                    # Region starts off a word boundary relative to the rows: copy bytes.
                    win8 = sliding_window_view(self._bytes[i], nbytes)
                    words[group] = win8[offs.astype(np.intp)].view(WORD)
            ok[rows] = True

        if len(self._run_starts) < len(self.regions):
            self._gather_straddlers(pas, nbytes, words, ok)
        self.release()
        return words, ok

    def _gather_straddlers(
        self, pas: np.ndarray, nbytes: int, words: np.ndarray, ok: np.ndarray
    ) -> None:
        """Fill rows that cross a boundary between abutting regions (in place)."""
        size = np.uint64(nbytes)
        ridx = np.searchsorted(self._run_starts, pas, side="right").astype(np.int64) - 1
        valid = ridx >= 0
        safe = np.where(valid, ridx, 0)
        rel = pas - self._run_starts[safe]
        room = self._run_sizes[safe]
        inside = valid & (room >= size) & (rel <= room - size) & ~ok
        todo = np.flatnonzero(inside)
        if not todo.size:
            return
        # Distinct addresses only: at most nbytes / alignment of them per boundary.
        uniq, inverse = np.unique(pas[todo], return_inverse=True)
        filled = np.stack([np.frombuffer(self.read(int(a), nbytes), dtype=WORD) for a in uniq])
        words[todo] = filled[inverse]
        ok[todo] = True

    # -- lifetime -------------------------------------------------------------------------

    def release(self) -> None:
        """Drop this process's page mappings of the dump files (their data stays cached).

        Recent kernels (seen on 6.18, ext4) map a whole large page-cache folio on each fault,
        so touching 1000 random 4 KiB pages of a freshly written 1 GiB file mapped ~640 MiB
        into the process.  Those pages are clean shared page cache, not copies, but they
        count as resident and are slower to reclaim while mapped.  ``MADV_DONTNEED`` on a
        shared read-only file mapping only removes page-table entries: views stay valid and
        refault from the page cache.  :meth:`gather` calls this after copying its rows.
        """
        if self._closed or not hasattr(mmap, "MADV_DONTNEED"):
            return
        for mm in self._maps.values():
            mm.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        """Release the maps.

        A map that is still exported (a caller keeps an array from :meth:`u64`) cannot be
        closed now; it is dropped and closes when the last such array goes away.
        """
        self._closed = True
        self._bytes = []
        self._words = []
        maps, self._maps = self._maps, {}
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        for mm in maps.values():
            with contextlib.suppress(BufferError):
                mm.close()

    def __enter__(self) -> PhysicalMemory:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        parts = ", ".join(r.describe() for r in getattr(self, "regions", ()))
        return f"PhysicalMemory({parts})"
