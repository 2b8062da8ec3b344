"""What a replay's states rest on besides the trace: a dump taken after it, and boot evidence.

:func:`analyze <s2trace.jobs.analyze.analyze>` asks here for

* :func:`dump_map` -- the ownership map of a dump taken after the trace (a capture folder's
  dump, or one the user names), with a basis text naming the dump; pages no transition changes
  take its state, the others are checked against it at the end;
* :func:`boot_ranges` -- ranges boot evidence assigns an owner: the hypervisor carve-out that
  ``kvm [0]: Reserved N MiB at PA`` announces in dmesg (``kvm_hyp_reserve()`` in
  ``arch/arm64/kvm/pkvm.c``, v5.13+: the memory the hypervisor keeps for its own page tables,
  vmemmap and VM table, which the host never gets back), each with its file and line.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from s2trace.files import read_text
from s2trace.jobs.walk import DumpRequest, request_from_capture, walk_dump

__all__ = ["boot_ranges", "dump_map"]

_CARVE_OUT = re.compile(
    r"kvm \[\d+\]: Reserved (?P<n>\d+) (?P<unit>[KMG])iB at (?P<at>0x[0-9a-fA-F]+)"
)


def dump_map(
    *, capture: str | Path | None = None, specs: tuple[str, ...] = ()
) -> tuple[pd.DataFrame, str, list[str]]:
    """(ownership map, basis text, notes) of the dump a capture folder holds, or of ``specs``
    (dump files; registers recovered from memory, profile detected as ``decode`` does)."""
    req = request_from_capture(capture) if capture is not None else DumpRequest(specs=specs)
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
