"""Memcache pages a trace cannot name (7.x top-ups), named by the dump's guest stage 2s."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from s2trace.hyp.memcache import name_untraced, unnamed_topups
from s2trace.jobs import analyze
from s2trace.jobs.report import build_report
from s2trace.trace import make_transitions

S73 = Path(__file__).resolve().parents[1] / "sample-traces" / "qemu-pkvm-7.3"


def test_the_7_3_topup_is_unnamed():
    """ftrace.txt line 46: topup_hyp_memcache(min_pages=0x3) at 72.573589, and no probe on
    hyp_mc_alloc_fn names the pages."""
    a = analyze(S73)
    t = unnamed_topups(a.events, a.transitions)
    assert t.to_dict("records") == [{"ts": 72.573589, "line": 46, "pages": 3}]


def test_a_named_page_silences_the_topup():
    a = analyze(S73)
    named = make_transitions(
        [
            dict(
                op="donate",
                initiator="host",
                completer="hyp",
                addr=0x44EA4000,
                recipe="hyp_memcache_alloc",
            )
        ]
    )
    assert len(unnamed_topups(a.events, named)) == 0


def test_report_names_the_guest_tables():
    """§KF-3.5: the first guest fault tops up 3 pages that become the guest stage-2
    tables; the first VM handle is 0x1000.  The dump must name exactly 3 pages so."""
    r = build_report(S73, plots=False, check=False)
    named = r.memcache[r.memcache["named_by_dump"].notna()]
    assert int(named["size"].sum()) == 3 * 4096
    assert set(named["named_by_dump"]) == {"stage-2 tables of VM 0x1000"}
    assert "the dump names 3 of them" in r.text()


def test_name_untraced_without_guests():
    rows = pd.DataFrame({"ipa_start": [0x1000], "size": [0x1000]})
    assert name_untraced(rows, None)["named_by_dump"].isna().all()


def test_topups_named_by_the_trace_are_not_unknown():
    """The lifecycle capture probes get_free_pages under topup_hyp_memcache: named."""
    lifecycle = S73.parent / "qemu-pkvm-7.3-lifecycle"
    a = analyze(lifecycle)
    assert (a.transitions["recipe"].astype(str) == "hyp_memcache_topup_page").sum() == 9
    assert len(unnamed_topups(a.events, a.transitions)) == 0
