"""The hypervisor's own view of a dump: its EL2 stage 1, ``hyp_vmemmap``, symbols, checks.

Modules: :mod:`~s2trace.hyp.stage1_walk` (hyp stage 1 -> hyp map),
:mod:`~s2trace.hyp.vmemmap` (``struct hyp_page`` layouts by kernel version),
:mod:`~s2trace.hyp.symbols` (kallsyms, iomem, dmesg, traces -> labelled ranges),
:mod:`~s2trace.hyp.host_state` (page states per page; applied to an ownership map),
:mod:`~s2trace.hyp.hyp_view` (the hyp stage 1 and vmemmap of a dump, loaded together),
:mod:`~s2trace.hyp.kernel_guess` (which ``struct hyp_page`` layout a dump uses),
:mod:`~s2trace.hyp.enrich` (vmemmap page states on a host ownership map),
:mod:`~s2trace.hyp.invariants` (the consistency rules), :mod:`~s2trace.hyp.check`
(:func:`~s2trace.hyp.check.check_dump`) and :mod:`~s2trace.hyp.guests` (the VMs the
hypervisor holds, their stage 2s and pages).
"""
