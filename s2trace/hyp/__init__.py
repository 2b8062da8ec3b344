"""The hypervisor's own view of a dump: its EL2 stage 1, ``hyp_vmemmap``, symbols, checks.

Modules: :mod:`~s2trace.hyp.stage1_walk` (hyp stage 1 -> hyp map),
:mod:`~s2trace.hyp.vmemmap` (``struct hyp_page`` layouts by kernel version),
:mod:`~s2trace.hyp.symbols` (kallsyms, iomem, dmesg, traces -> labelled ranges),
:mod:`~s2trace.hyp.host_state` (page states per page; applied to an ownership map) and
:mod:`~s2trace.hyp.check` (the invariants, :func:`~s2trace.hyp.check.check_dump`,
:func:`~s2trace.hyp.check.enrich_with_vmemmap`).
"""
