"""The hypervisor's own image sections, which it owns from boot, as physical page ranges.

At pKVM init the hypervisor maps its ``.text``, ``.rodata``, ``.bss`` and (where the kernel has
one) ``.data`` sections into its own stage 1 as owned pages, and the boot fix-up then marks
every such page owned by the hypervisor in the host stage 2 (docs/kernel-facts.md §KF-3.8).
Their bounds are kallsyms symbols (``__kvm_nvhe___hyp_text_start`` ... ``_end``, or the same
names without the ``__kvm_nvhe_`` prefix); :class:`~s2trace.hyp.evidence.KernelImage` turns
their virtual addresses into physical ones.  The mapping takes whole pages: the start is
rounded down and the end up, so the ``.hyp.idmap.text`` page that ``.text`` starts in is
included.  The image's per-CPU template (``__per_cpu_start``) is not: the hypervisor uses
copies the host allocates for it.

Only what the symbols support is claimed: a section whose two symbols are not both present
(or whose end is not above its start, or which falls outside the image ``bounds``) is left
out and said so in the notes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from s2trace.hyp.evidence import KernelImage

__all__ = ["HYP_OWNED_SECTIONS", "hyp_owned_sections"]

#: (start symbol, end symbol, section): what ``recreate_hyp_mappings`` maps hyp-owned
#: (arch/arm64/kvm/hyp/nvhe/setup.c; ``.data`` from the "Add .hyp.data section" patch, 2025).
HYP_OWNED_SECTIONS: tuple[tuple[str, str, str], ...] = (
    ("__hyp_text_start", "__hyp_text_end", ".text"),
    ("__hyp_data_start", "__hyp_data_end", ".data"),
    ("__hyp_rodata_start", "__hyp_rodata_end", ".rodata"),
    ("__hyp_bss_start", "__hyp_bss_end", ".bss"),
)
_PREFIX = "__kvm_nvhe_"


def _lookup(kallsyms: pd.DataFrame, name: str) -> tuple[int, int] | None:
    """(address, file line) of ``__kvm_nvhe_<name>``, else of ``<name>``; None if neither."""
    for candidate in (_PREFIX + name, name):
        hit = kallsyms[kallsyms["name"] == candidate]
        if len(hit):
            line = int(hit["line"].iloc[0]) if "line" in hit else 0
            return int(hit["addr"].iloc[0]), line
    return None


def hyp_owned_sections(
    kallsyms: pd.DataFrame,
    image: KernelImage,
    page_size: int = 4096,
    bounds: tuple[int, int] | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """(ranges, notes): one row per section of :data:`HYP_OWNED_SECTIONS` that kallsyms
    bounds, with ``pa_start, pa_end`` (page-rounded), ``section``, ``start_line`` and
    ``end_line`` (the symbols' lines in the kallsyms file; 0: not known).

    ``bounds`` (PA start, end) is where the kernel image lies (iomem ``Kernel code`` to the
    end of ``Kernel data``); a section placed outside it is dropped with a note.
    """
    rows = []
    notes = []
    for start_sym, end_sym, section in HYP_OWNED_SECTIONS:
        a, b = _lookup(kallsyms, start_sym), _lookup(kallsyms, end_sym)
        if a is None or b is None:
            if a is not None or b is not None:
                notes.append(f"hyp {section}: only one of {start_sym}/{end_sym} in kallsyms")
            continue
        if b[0] <= a[0]:
            if b[0] < a[0]:
                notes.append(f"hyp {section}: {end_sym} is below {start_sym}; not used")
            continue  # an empty section (7.3's .hyp.data) owns nothing
        lo, hi = (int(x) for x in image.pa(np.array([a[0], b[0]], dtype=np.uint64)))
        lo -= lo % page_size
        hi = -(-hi // page_size) * page_size
        if bounds is not None and not (bounds[0] <= lo and hi <= bounds[1]):
            notes.append(
                f"hyp {section} would be at {lo:#x}-{hi:#x}, outside the kernel image "
                f"({bounds[0]:#x}-{bounds[1]:#x}); not used (kallsyms of another kernel?)"
            )
            continue
        rows.append((lo, hi, section, a[1], b[1]))
    frame = pd.DataFrame(rows, columns=["pa_start", "pa_end", "section", "start_line", "end_line"])
    frame["pa_start"] = frame["pa_start"].astype(np.uint64)
    frame["pa_end"] = frame["pa_end"].astype(np.uint64)
    return frame, notes
