"""What a replay's states rest on besides the trace: a dump taken after it, and boot evidence.

:func:`analyze <s2trace.jobs.analyze.analyze>` asks here for

* :func:`dump_map` -- the ownership map of a dump taken after the trace (a capture folder's
  dump, or one the user names), with a basis text naming the dump; pages no transition changes
  take its state, the others are checked against it at the end;
* :func:`boot_ranges` -- ranges boot evidence assigns an owner: the hypervisor carve-out that
  ``kvm [0]: Reserved N MiB at PA`` announces in dmesg (``kvm_hyp_reserve()`` in
  ``arch/arm64/kvm/pkvm.c``, v5.13+: the memory the hypervisor keeps for its own page tables,
  vmemmap and VM table, which the host never gets back), each with its file and line;
* :func:`kallsyms_ranges` -- the hypervisor's image sections (``.text``, ``.rodata``,
  ``.bss``, ``.data``), which it owns from boot (docs/kernel-facts.md §KF-3.8), bounded by
  kallsyms symbols and placed in physical memory with /proc/iomem's ``Kernel code`` and
  ``Kernel data`` (:func:`s2trace.hyp.evidence.image_offsets`: KASLR moves the image, so
  kallsyms alone cannot place it);
* :func:`boot_evidence` -- both, as one set of ranges with notes on what was not used.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from s2trace.errors import InputError
from s2trace.files import read_text
from s2trace.hyp.boot_sections import hyp_owned_sections
from s2trace.hyp.evidence import KernelImage, read_iomem, read_kallsyms
from s2trace.jobs.inputs import Inputs
from s2trace.jobs.walk import dump_request, walk_dump, walk_request

__all__ = ["boot_evidence", "boot_ranges", "dump_map", "kallsyms_ranges"]

_RANGE_COLUMNS = ["ipa_start", "size", "basis", "owner", "page_state"]

_CARVE_OUT = re.compile(
    r"kvm \[\d+\]: Reserved (?P<n>\d+) (?P<unit>[KMG])iB at (?P<at>0x[0-9a-fA-F]+)"
)


def dump_map(
    *, capture: Inputs | None = None, specs: tuple[str, ...] = ()
) -> tuple[pd.DataFrame, str, list[str]]:
    """(ownership map, basis text, notes) of the dump a capture folder holds (``capture``:
    its resolved inputs), or of ``specs`` (dump files; registers recovered from memory,
    profile detected as ``decode`` does)."""
    req = dump_request(capture) if capture is not None else walk_request(*specs)
    result = walk_dump(req)
    names = ", ".join(Path(s.partition("@")[0]).name for s in req.specs)
    where = "the capture folder's dump" if capture is not None else "named with --dump"
    basis = f"dump {names} ({where}, taken after the trace ended)"
    notes = list(getattr(result, "notes", []))
    profile = getattr(getattr(result, "profile", None), "name", None)
    if profile:
        notes.append(f"dump read with profile {profile}")
    return result.map, basis, notes


def boot_ranges(dmesg: str | Path, page_size: int = 4096) -> pd.DataFrame:
    """Initial ranges (ipa_start, size, owner, page_state, basis) that a dmesg's boot lines
    assign: the hypervisor carve-out is hyp-owned.  Empty when the dmesg says nothing."""
    path = Path(dmesg)
    text = read_text(path, "a dmesg log", lenient=True)
    rows = []
    for m in _CARVE_OUT.finditer(text):
        size = int(m.group("n")) << {"K": 10, "M": 20, "G": 30}[m.group("unit")]
        at = int(m.group("at"), 16)
        line = text.count("\n", 0, m.start()) + 1
        start = at - at % page_size
        stop = -(-(at + size) // page_size) * page_size
        rows.append((start, stop - start, f"evidence {path.name} line {line}: hyp carve-out"))
    frame = pd.DataFrame(rows, columns=["ipa_start", "size", "basis"])
    frame["ipa_start"] = frame["ipa_start"].astype("uint64")
    frame["size"] = frame["size"].astype("uint64")
    frame["owner"] = "hyp"
    frame["page_state"] = "owned"
    return frame


def _hyp_owned(rows: list[tuple[int, int, str]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["ipa_start", "size", "basis"])
    frame["ipa_start"] = frame["ipa_start"].astype("uint64")
    frame["size"] = frame["size"].astype("uint64")
    frame["owner"] = "hyp"
    frame["page_state"] = "owned"
    return frame[_RANGE_COLUMNS]


def kallsyms_ranges(
    kallsyms: str | Path, iomem: str | Path | None, page_size: int = 4096
) -> tuple[pd.DataFrame, list[str], list[str]]:
    """(initial ranges, notes, problems): the hyp image sections kallsyms bounds, hyp-owned
    from boot, each with its basis (``evidence FILE lines A and B (placed by IOMEM): hyp
    .text ...``); notes say how the image was placed, problems what was not used and why.

    Without ``iomem`` nothing is claimed (the image cannot be placed); an unreadable kallsyms
    or iomem is a problem too (the answers then rest on other grounds, and say so).
    """
    ks_name = Path(kallsyms).name
    if iomem is None:
        return (
            _hyp_owned([]),
            [],
            [
                f"{ks_name}: hyp sections not used: no iomem copy to place the kernel image "
                "(KASLR moves it; give --iomem, or an iomem file in the capture)"
            ],
        )
    try:
        ks = read_kallsyms(Path(kallsyms))
        io = read_iomem(Path(iomem))
        image = KernelImage.from_evidence(ks, io)
    except InputError as exc:
        return _hyp_owned([]), [], [f"{ks_name}: hyp sections not used: {exc}"]
    kernel = io[io["name"].isin(["Kernel code", "Kernel data"])]
    bounds = (int(kernel["start"].min()), int(kernel["end"].max()))
    found, problems = hyp_owned_sections(ks, image, page_size, bounds)
    io_name = Path(iomem).name
    rows = [
        (
            lo,
            hi - lo,
            f"evidence {ks_name} lines {a} and {b} (placed by {io_name}): "
            f"hyp {section}, the hypervisor's from boot",
        )
        for lo, hi, section, a, b in zip(
            found["pa_start"].tolist(), found["pa_end"].tolist(), found["section"].tolist(),
            found["start_line"].tolist(), found["end_line"].tolist(), strict=True,
        )
    ]  # fmt: skip
    placed = f"{ks_name}: hyp sections placed by {io_name} ({image.how})"
    return _hyp_owned(rows), [placed], [f"{ks_name}: {n}" for n in problems]


def _outside(frame: pd.DataFrame, taken: pd.DataFrame) -> pd.DataFrame:
    """The parts of ``frame``'s ranges that no range of ``taken`` covers (evidence ranges:
    a handful of rows, so a plain loop)."""
    spans = sorted(
        (int(a), int(a) + int(n)) for a, n in zip(taken["ipa_start"], taken["size"], strict=True)
    )
    rows: list[tuple[int, int, str]] = []
    for start, size, basis in zip(
        frame["ipa_start"].tolist(), frame["size"].tolist(), frame["basis"].tolist(), strict=True
    ):
        lo, hi = int(start), int(start) + int(size)
        for a, b in spans:
            if b <= lo or a >= hi:
                continue
            if a > lo:
                rows.append((lo, a - lo, str(basis)))
            lo = max(lo, b)
        if hi > lo:
            rows.append((lo, hi - lo, str(basis)))
    return _hyp_owned(rows)


def boot_evidence(
    dmesg: str | Path | None,
    kallsyms: str | Path | None,
    iomem: str | Path | None,
    page_size: int = 4096,
) -> tuple[pd.DataFrame, list[str], list[str]]:
    """(initial ranges, notes, problems) of every boot evidence at hand: the dmesg carve-out,
    then the kallsyms hyp sections where the carve-out does not already speak (both say hyp)."""
    parts = [boot_ranges(dmesg, page_size)[_RANGE_COLUMNS]] if dmesg is not None else []
    notes: list[str] = []
    problems: list[str] = []
    if kallsyms is not None:
        sections, notes, problems = kallsyms_ranges(kallsyms, iomem, page_size)
        parts.append(_outside(sections, parts[0]) if parts else sections)
    frame = pd.concat(parts, ignore_index=True) if parts else _hyp_owned([])
    order = np.argsort(frame["ipa_start"].to_numpy(dtype=np.uint64), kind="stable")
    return frame.iloc[order].reset_index(drop=True), notes, problems
