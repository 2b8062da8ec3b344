"""Evidence files a post-mortem has, read into frames: kallsyms, /proc/iomem, dmesg, and where
the kernel image and linear map sit in physical memory.

:mod:`~s2trace.hyp.symbols` turns these into labelled ranges; :mod:`~s2trace.hyp.hyp_view` and
the register recovery use the image placement.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from s2trace.columns import LABELS
from s2trace.errors import InputError
from s2trace.files import read_text, shown
from s2trace.pkvm.kallsyms import parse_kallsyms
from s2trace.walk.tables import Memory

__all__ = [
    "IMAGE_ANCHORS",
    "KernelImage",
    "LinearMap",
    "dmesg_labels",
    "hex_values",
    "image_offsets",
    "iomem_labels",
    "kernel_resources",
    "read_iomem",
    "read_kallsyms",
    "read_symbol_u64",
]

PAGE = 4096


def _text(source: str | Path) -> tuple[str, str]:
    """(content, name) of a path or of literal text (anything with a newline)."""
    if isinstance(source, Path) or "\n" not in source:
        p = Path(source)
        return read_text(p, "an evidence file (kallsyms, iomem or dmesg)", lenient=True), shown(p)
    return source, "<text>"


_HEXVAL = np.full(256, 255, dtype=np.uint8)
_HEXVAL[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10, dtype=np.uint8)
_HEXVAL[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16, dtype=np.uint8)
_HEXVAL[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16, dtype=np.uint8)


def hex_values(text: pd.Series | list[str]) -> np.ndarray:
    """Hex strings (``0x`` optional, up to 16 digits) to uint64, vectorised: right-aligned
    into 16 bytes, one lookup per digit, one shift-and-or per column.  Raises ValueError on
    a non-hex digit."""
    s = pd.Series(text, dtype="string").str.replace(r"^0[xX]", "", regex=True)
    if s.str.len().max() > 16 if len(s) else False:
        raise ValueError("hex value longer than 16 digits")
    raw = np.array(s.str.zfill(16).fillna("0" * 16).tolist(), dtype="S16")
    digits = np.take(_HEXVAL, raw.view(np.uint8).reshape(-1, 16))
    if (digits == 255).any():
        raise ValueError("not a hex number")
    out = np.zeros(len(s), dtype=np.uint64)
    for col in range(16):
        out = (out << np.uint64(4)) | digits[:, col].astype(np.uint64)
    return out


def _frame(start: object, end: object, label: object, source: str) -> pd.DataFrame:
    s = np.asarray(start, dtype=np.uint64)
    df = pd.DataFrame(
        {
            "start": s,
            "end": np.asarray(end, dtype=np.uint64),
            "label": pd.array(np.asarray(label, dtype=object), dtype="string"),
            "source": pd.Categorical([source] * len(s)),
        }
    )
    return df[df["end"] > df["start"]].reset_index(drop=True)


# -- kallsyms ---------------------------------------------------------------------------------
def read_kallsyms(source: str | Path) -> pd.DataFrame:
    """``/proc/kallsyms`` (a path or its text) as ``addr (uint64), type, name, line``, in file order
    (first address per name wins in lookups).  Parsed by the one kallsyms reader,
    :func:`s2trace.pkvm.kallsyms.parse_kallsyms` (lines that are not ``ADDR TYPE NAME`` are
    an :class:`InputError` naming its line here: evidence must be the boot's own file)."""

    return _kallsyms_frame(*_text(source)).copy()


# One capture's jobs read the same evidence files more than once (the walk's page states, the
# check): the parse of the last few files is kept, keyed by their name and whole content.
_PARSED = 8


@functools.lru_cache(maxsize=_PARSED)
def _kallsyms_frame(text: str, name: str) -> pd.DataFrame:
    k = parse_kallsyms(text, name, strict=True)
    return pd.DataFrame(
        {
            "addr": k.addresses.astype(np.uint64),
            "type": np.array(k.types, dtype=str),
            "name": np.array(k.names, dtype=str),
            "line": k.lines,
        }
    )


def _symbols(kallsyms: pd.DataFrame) -> dict[str, int]:
    """Address of each name's first line (filled from the last line up, so the first wins)."""
    names = kallsyms["name"].tolist()
    addrs = kallsyms["addr"].to_numpy(np.uint64).tolist()
    return dict(zip(reversed(names), reversed(addrs), strict=True))


# -- iomem and dmesg ------------------------------------------------------------------------------
_IOMEM = re.compile(r"^(\s*)([0-9a-fA-F]+)-([0-9a-fA-F]+)\s*:\s*(.*?)\s*$")


def read_iomem(source: str | Path) -> pd.DataFrame:
    """``/proc/iomem`` as ``start, end (exclusive), name, depth``."""
    return _iomem_frame(*_text(source)).copy()


@functools.lru_cache(maxsize=_PARSED)
def _iomem_frame(text: str, name: str) -> pd.DataFrame:
    lines = pd.Series(text.splitlines(), dtype="string")
    lines = lines[lines.str.strip() != ""]
    parts = lines.str.extract(_IOMEM)
    bad = parts[1].isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"{name}: line {int(lines.index[i]) + 1}: {lines.iloc[i]!r} is not "
            "'START-END : NAME' (iomem)"
        )
    return pd.DataFrame(
        {
            "start": hex_values(parts[1]),
            "end": hex_values(parts[2]) + np.uint64(1),
            "name": parts[3].to_numpy(str),
            "depth": (parts[0].str.len().to_numpy(np.int64) // 2).astype(np.int8),
        }
    )


def iomem_labels(iomem: pd.DataFrame) -> pd.DataFrame:
    """Every iomem line as a label (``iomem: NAME``)."""
    return _frame(iomem["start"], iomem["end"], "iomem: " + iomem["name"], "iomem")


_RESERVED = re.compile(
    r"(?P<who>kvm|cma)\b[^\n]*?Reserved (?P<n>\d+) (?P<unit>[KMG])iB at (?P<at>0x[0-9a-fA-F]+)"
)


def dmesg_labels(source: str | Path) -> pd.DataFrame:
    """The hyp carve-out (``kvm [0]: Reserved N MiB at PA``) and CMA lines of a dmesg."""
    text, _ = _text(source)
    rows = []
    for m in _RESERVED.finditer(text):
        size = int(m.group("n")) << {"K": 10, "M": 20, "G": 30}[m.group("unit")]
        at = int(m.group("at"), 16)
        what = "hyp carve-out (dmesg)" if m.group("who") == "kvm" else "CMA area (dmesg)"
        rows.append((at, at + size, what))
    if not rows:
        return LABELS.empty()
    s, e, lab = zip(*rows, strict=True)
    return _frame(s, e, list(lab), "dmesg")


# -- the kernel image and the linear map -------------------------------------------------------
MASK64 = (1 << 64) - 1

#: (iomem resource, the symbol the kernel starts it at): ``request_standard_resources`` in
#: arch/arm64/kernel/setup.c puts ``Kernel code`` at ``__pa_symbol(_text)`` and ``Kernel
#: data`` at ``__pa_symbol(_sdata)`` (some 5.x kernels started ``Kernel code`` at ``_stext``,
#: tried last).  Both sample captures agree on _text and _sdata.
IMAGE_ANCHORS: tuple[tuple[str, str], ...] = (
    ("Kernel code", "_text"),
    ("Kernel data", "_sdata"),
    ("Kernel code", "_stext"),
)


def kernel_resources(iomem: str | Path | pd.DataFrame, source: str = "iomem") -> dict[str, int]:
    """Start PAs of ``Kernel code`` and ``Kernel data`` in a ``/proc/iomem`` copy (a path, its
    text, or :func:`read_iomem`'s frame).

    InputError when it lists neither, or lists them at 0 (read without root: the kernel then
    prints every range as ``00000000-00000000``).
    """
    if isinstance(iomem, pd.DataFrame):
        frame = iomem
    else:
        frame = read_iomem(iomem)
        source = "iomem" if "\n" in str(iomem) else str(iomem)
    out: dict[str, int] = {}
    for name in ("Kernel code", "Kernel data"):
        starts = frame["start"][frame["name"] == name]
        if len(starts):
            out[name] = int(starts.iloc[0])
    if not out:
        raise InputError(f"{source}: no 'Kernel code' line; expected a copy of /proc/iomem")
    if not any(out.values()):
        raise InputError(
            f"{source}: the kernel ranges read 0 (copied without root); read /proc/iomem as root"
        )
    return out


def image_offsets(
    address: Callable[[str], int | None], resources: Mapping[str, int]
) -> list[tuple[int, str]]:
    """Candidate VA-PA offsets of the kernel image (``PA = VA - offset`` mod 2**64), each with
    the anchors that give it, those most anchors agree on first.

    ``address`` looks a kallsyms name up (None: absent), ``resources`` is
    :func:`kernel_resources`' dict.  Only the offset is derived: KASLR moves the image's
    virtual and physical placement independently, so kallsyms alone cannot place it.
    """
    found: dict[int, list[str]] = {}
    for res, sym in IMAGE_ANCHORS:
        va = address(sym)
        if res in resources and va is not None:
            found.setdefault((va - resources[res]) & MASK64, []).append(f"iomem '{res}' = {sym}")
    ranked = sorted(found.items(), key=lambda kv: -len(kv[1]))  # stable: anchor order on ties
    return [(off, " and ".join(hows)) for off, hows in ranked]


@dataclass(frozen=True, slots=True)
class KernelImage:
    """Where the kernel image is: ``_text`` at ``text_va`` is physical ``text_pa``; ``how``
    says which evidence placed it."""

    text_va: int
    text_pa: int
    how: str = ""

    @classmethod
    def from_evidence(cls, kallsyms: pd.DataFrame, iomem: pd.DataFrame) -> KernelImage:
        """Placed by :func:`image_offsets` from kallsyms and iomem (the offset most anchors
        agree on); InputError when no anchor pair is there."""
        syms = _symbols(kallsyms)
        resources = kernel_resources(iomem)
        found = image_offsets(syms.get, resources)
        if not found:
            names = ", ".join(sorted({s for _, s in IMAGE_ANCHORS}))
            raise InputError(
                f"kallsyms: none of {names} matches an iomem 'Kernel code'/'Kernel data' line "
                "(needed to place the kernel image)"
            )
        off, how = found[0]
        va = next(syms[s] for _, s in IMAGE_ANCHORS if s in syms)
        va = syms.get("_text", va)
        return cls(va, (va - off) & MASK64, how)

    def pa(self, va: object) -> np.ndarray:
        """Physical addresses of kernel-image VAs (vectorised)."""
        v = np.asarray(va, dtype=np.uint64)
        with np.errstate(over="ignore"):
            return v - np.uint64(self.text_va) + np.uint64(self.text_pa)


@dataclass(frozen=True, slots=True)
class LinearMap:
    """The kernel's linear map: PA = VA - PAGE_OFFSET + PHYS_OFFSET, modulo 2**64.

    That is ``__lm_to_phys`` ((VA & ~PAGE_OFFSET) + PHYS_OFFSET) for linear addresses.
    ``phys_offset`` is ``memstart_addr`` (read from the dump with :meth:`from_dump`).  A
    kernel built with 52-bit VAs running with 48 (no LPA2/LVA, as in both captures, whose
    kconfig has ARM64_VA_BITS=52) keeps PAGE_OFFSET = -(1 << 52) and lowers memstart_addr by
    ``_PAGE_OFFSET(48) - _PAGE_OFFSET(52)`` (``arm64_memblock_init``), so memstart_addr then
    reads as a negative number (0xfff1000040000000 in both dumps for RAM at 0x40000000).
    ``page_offset`` None picks PAGE_OFFSET from that: -(1 << 52) when memstart_addr is
    negative, else -(1 << 48) for VAs at or above 0xffff000000000000 and -(1 << 52) below.
    """

    phys_offset: int
    page_offset: int | None = None

    def pa(self, va: object) -> np.ndarray:
        v = np.asarray(va, dtype=np.uint64)
        if self.page_offset is not None:
            po = np.full(v.shape, self.page_offset, dtype=np.uint64)
        elif self.phys_offset >= 1 << 63:
            po = np.full(v.shape, 0xFFF0000000000000, dtype=np.uint64)
        else:
            po = np.where(
                v >= np.uint64(0xFFFF000000000000),
                np.uint64(0xFFFF000000000000),
                np.uint64(0xFFF0000000000000),
            )
        with np.errstate(over="ignore"):
            return v - po + np.uint64(self.phys_offset)

    def pair(self) -> tuple[int, int]:
        """``(VA, PA)`` of PAGE_OFFSET: the form :func:`s2trace.trace.to_transitions` takes
        (PA = VA - va + pa, for VA >= va).  PAGE_OFFSET is ``page_offset`` when given, else
        0xffff000000000000, the start of the linear map of a kernel running with 48-bit VAs
        (as both captures do; a 52-bit LVA kernel needs ``page_offset`` -(1 << 52))."""
        va = self.page_offset if self.page_offset is not None else 0xFFFF000000000000
        return va, int(self.pa(va))

    @classmethod
    def from_dump(
        cls,
        memory: Memory,
        kallsyms: pd.DataFrame,
        image: KernelImage,
        page_offset: int | None = None,
    ) -> LinearMap:
        value = read_symbol_u64(memory, kallsyms, image, "memstart_addr")
        return cls(int(value), page_offset)


def read_symbol_u64(
    memory: Memory, kallsyms: pd.DataFrame, image: KernelImage, name: str, count: int = 1
) -> int | np.ndarray:
    """The 64-bit value(s) of a kernel-image variable, read from the dump."""
    syms = _symbols(kallsyms)
    if name not in syms:
        raise InputError(f"kallsyms: no symbol {name}")
    pa = int(image.pa(syms[name]))
    words, ok = memory.gather(np.array([pa], dtype=np.uint64), 8 * count)
    if not ok[0]:
        raise InputError(f"{name} (PA {pa:#x}) is not in the dump")
    row = words[0].astype(np.uint64)
    return int(row[0]) if count == 1 else row
