"""The whole job for one capture folder: walk, replay, diff, violations, plots, one screen.

:func:`build_report` takes a capture folder (:mod:`s2trace.jobs.capture`: a dump, its registers
and kernel version, optionally a trace and symbols) and runs every stage the folder allows:

1. walk the host stage 2 of the dump into the ownership map (registers from ``capture.toml``,
   else recovered from the dump's memory) and summarise it;
2. read the trace, derive transitions, replay them (:func:`s2trace.trace.analyze`);
3. compare the replay's final ownership with the dump (:func:`~s2trace.trace.diff_maps`):
   disagreements on pages the trace touched are real discrepancies; ranges only the dump
   shows as not host-owned were set before the trace started (boot, earlier VMs) and are
   reported apart;
4. check pKVM's own bookkeeping in the dump (:func:`s2trace.hyp.check.check_dump`) when the
   folder gives TTBR0_EL2 and TCR_EL2;
5. with ``out_dir``, write the tables as CSV, the three plots (:mod:`s2trace.plots`) as PNG
   and the text as ``report.txt``.

:func:`render_text` turns the :class:`Report` into about one screen of text.  Damage found on
the way (walk or trace problems) is counted in the report, never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from s2trace.errors import InputError, ProblemLog
from s2trace.files import shown
from s2trace.hyp.check import CheckResult, check_dump
from s2trace.hyp.guests import find_guests
from s2trace.hyp.memcache import name_untraced, unnamed_topups
from s2trace.io import open_memory
from s2trace.io.memory import PhysicalMemory
from s2trace.jobs.analyze import Analysis, analyze
from s2trace.jobs.capture import Capture
from s2trace.jobs.inputs import Inputs, resolve
from s2trace.jobs.names import object_labels
from s2trace.jobs.report_page import category_meaning, render_page, write_page
from s2trace.jobs.walk import dump_request, walk_dump
from s2trace.outputs import output_path, write_text
from s2trace.plots import plot_churn, plot_map, plot_owners, plot_page
from s2trace.render import write_frame
from s2trace.trace.queries import diff_maps, snapshot
from s2trace.units import fmt_bytes
from s2trace.walk.ownership import Summary, summarize
from s2trace.walk.result import WalkResult

__all__ = ["Report", "build_report", "render_text", "write_outputs"]


@dataclass
class Report:
    """Everything :func:`build_report` found (stages the folder does not allow are None).

    ``diff`` has the MAP_DIFF columns plus ``traced`` (True: the trace touched the range, so
    the replay and the dump really disagree; False: only the dump has it, set before tracing).
    """

    capture: Capture
    walk: WalkResult
    summary: Summary
    analysis: Analysis | None = None
    diff: pd.DataFrame | None = None
    check: CheckResult | None = None
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    topups: pd.DataFrame | None = None  # memcache top-ups the trace cannot name
    memcache: pd.DataFrame | None = None  # untraced ranges, with the dump's name for them

    @property
    def violations(self) -> pd.DataFrame | None:
        return None if self.analysis is None else self.analysis.violations

    @property
    def disagreements(self) -> pd.DataFrame:
        """Diff rows on pages the trace touched."""
        if self.diff is None:
            return pd.DataFrame()
        return self.diff[self.diff["traced"]].reset_index(drop=True)

    @property
    def untraced(self) -> pd.DataFrame:
        """Diff rows only the dump explains (ownership set before the trace began)."""
        if self.diff is None:
            return pd.DataFrame()
        return self.diff[~self.diff["traced"]].reset_index(drop=True)

    def text(self) -> str:
        return render_text(self)


# ---------------------------------------------------------------------------------------------
def _walk(inputs: Inputs, memory: PhysicalMemory, notes: list[str]) -> WalkResult:
    result = walk_dump(dump_request(inputs, coalesce=True), memory=memory)
    notes.extend(result.notes)
    return result


def _memcache(
    cap: Capture, report: Report, memory: PhysicalMemory, notes: list[str]
) -> tuple[Any, Any]:
    """Memcache top-ups the trace cannot name, and the untraced ranges the dump's guest
    stage 2s name (:mod:`s2trace.hyp.memcache`)."""

    a = report.analysis
    assert a is not None  # called only after the trace was analysed
    topups = unnamed_topups(a.events, a.transitions)
    ttbr0, tcr = cap.reg("ttbr0_el2"), cap.reg("tcr_el2")
    if not len(topups) or ttbr0 is None or tcr is None or cap.kallsyms is None:
        return topups, None

    try:
        guests = find_guests(
            memory,
            ttbr0,
            tcr,
            kallsyms=cap.kallsyms,
            iomem=cap.iomem,
            host_map=report.walk.map,
            hcr=cap.reg("hcr_el2"),
        )
    except InputError as exc:
        notes.append(f"memcache pages not named from the dump: {exc}")
        return topups, None
    return topups, name_untraced(report.untraced, guests)


def _check(cap: Capture, memory: PhysicalMemory, notes: list[str]) -> Any | None:
    regs = ("vttbr_el2", "vtcr_el2", "ttbr0_el2", "tcr_el2")
    if any(cap.reg(r) is None for r in regs):
        notes.append("hyp bookkeeping not checked: capture.toml gives no TTBR0_EL2/TCR_EL2")
        return None
    return check_dump(
        memory,
        *(int(cap.reg(r)) for r in regs),  # type: ignore[arg-type]
        kernel=cap.kernel,
        hcr=cap.reg("hcr_el2"),
        mair=cap.reg("mair_el2"),
        kallsyms=cap.kallsyms,
        iomem=cap.iomem,
    )


def _diff(analysis: Analysis, walk_map: pd.DataFrame) -> pd.DataFrame:

    diff = diff_maps(snapshot(analysis.timeline), walk_map)
    # The final snapshot covers exactly the pages some transition touched, so a range it
    # covers is a traced one.
    diff["traced"] = diff["expected_owner"].notna().to_numpy(dtype=bool)
    return diff


def build_report(
    capture_dir: str | Path | Inputs,
    *,
    out_dir: str | Path | None = None,
    plots: bool = True,
    check: bool = True,
    trace: bool = True,
    memcache: bool = True,
    strict: bool = False,
    use_cache: bool = True,
) -> Report:
    """Run every stage the capture folder allows (module docstring); write files to
    ``out_dir`` when given.  ``capture_dir``: a folder, or inputs resolved from one (the
    folder's ``capture.toml`` is read once, and its Capture passed to every stage).
    ``trace=False`` leaves the trace unread (no replay, diff or memcache naming; a note says
    so), ``check=False`` the hyp bookkeeping unchecked, ``memcache=False`` the memcache
    top-ups unnamed (no guest stage 2s read)."""

    inputs = capture_dir if isinstance(capture_dir, Inputs) else resolve([str(capture_dir)])
    cap = inputs.capture
    if cap is None:
        raise InputError(
            f"{shown(inputs.label)}: not a capture folder (no capture.toml, no host-s2.elf)"
        )
    if strict and not inputs.strict:
        inputs = replace(inputs, strict=True)
    notes: list[str] = []
    # The dump is opened once: the walk and the check read the same memory.
    with open_memory(list(inputs.dumps), base=inputs.base) as memory:
        walked = _walk(inputs, memory, notes)
        report = Report(cap, walked, summarize(walked), notes=notes)
        _rest(report, inputs, memory, trace=trace, check=check, memcache=memcache,
              use_cache=use_cache)  # fmt: skip
    if out_dir is not None:
        report.files = write_outputs(report, out_dir, plots=plots)
    return report


def _rest(
    report: Report,
    inputs: Inputs,
    memory: PhysicalMemory,
    *,
    trace: bool,
    check: bool,
    memcache: bool,
    use_cache: bool,
) -> None:
    """The stages after the walk: trace, diff and memcache naming, then the check."""
    cap, walked, notes = report.capture, report.walk, report.notes
    if cap.trace is not None and not trace:
        notes.append("trace not read (not asked for): no replay, diff or memcache naming")
    elif cap.trace is not None:
        report.analysis = analyze(
            inputs, strict=inputs.strict, progress=False, use_cache=use_cache, grounds=False
        )  # the report compares the trace with the dump: the dump is not its ground
        report.diff = _diff(report.analysis, walked.map)
        if memcache:
            report.topups, report.memcache = _memcache(cap, report, memory, notes)
    else:
        notes.append("no trace in the capture: nothing to replay")
    if check:
        report.check = _check(cap, memory, notes)


# ---------------------------------------------------------------------------------------------
def _figures(report: Report, out: Path) -> list[tuple[Path, str]]:
    """The plots as PNG files, with captions: the map, each violated page's history (up to
    three pages), churn and owners."""
    a = report.analysis
    if a is None or not len(a.intervals):
        return []
    labels = object_labels(a.transitions)
    common: dict[str, Any] = {"meta": a.meta}
    figures: list[tuple[str, str, Any]] = [
        (
            "map",
            "Ownership map: rows go to the ranges that change and the pages violations name",
            lambda: plot_map(
                a.intervals, a.violations, transitions=a.transitions, labels=labels, **common
            ),
        )
    ]
    addrs = a.violations["addr"].to_numpy(np.uint64)
    pages: np.ndarray = pd.unique(addrs)[:3] if len(addrs) else np.zeros(0, np.uint64)
    for page in pages:
        figures.append(
            (
                f"page-{int(page):#x}",
                f"History of page {int(page):#x}, named by a violation",
                lambda page=page: plot_page(
                    a.intervals, a.transitions, int(page), a.violations, **common
                ),
            )
        )
    figures += [
        ("churn", "Churn per time bin", lambda: plot_churn(a.transitions, a.violations, **common)),
        (
            "owners",
            "Bytes per owner and state over time",
            lambda: plot_owners(a.intervals, a.violations, transitions=a.transitions, **common),
        ),
    ]
    made = []
    for name, caption, make in figures:
        path = out / f"{name}.png"
        with output_path(path, "report plot") as tmp:
            make().savefig(tmp, dpi=110, format="png")
        made.append((path, caption))
    return made


def write_outputs(report: Report, out_dir: str | Path, *, plots: bool = True) -> list[Path]:
    """In ``out_dir``: the tables as CSV (and Parquet for the large ones), the PNG plots (when
    there is a trace), ``report.txt`` and the self-contained ``report.html``."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{shown(out)}: cannot create the report folder ({e.strerror})") from None
    tables: dict[str, pd.DataFrame | None] = {"map": report.walk.map}
    a = report.analysis
    if a is not None:
        tables.update(
            transitions=a.transitions,
            intervals=a.intervals,
            violations=a.violations,
            diff=report.diff,
        )
    if report.check is not None:
        tables["breaches"] = report.check.breaches
    files = []
    for name, frame in tables.items():
        if frame is None:
            continue
        path = out / f"{name}.csv"
        write_frame(frame, "csv", path=path)
        files.append(path)
        if name in ("map", "transitions", "intervals"):
            files.append(out / f"{name}.parquet")
            write_frame(frame, "parquet", path=files[-1])
    tables_written = list(files)
    images = _figures(report, out) if plots else []
    files += [p for p, _ in images]
    text, page = out / "report.txt", out / "report.html"
    files += [text, page]
    report.files = files
    body = render_text(report)
    write_text(text, body, "report")
    facts = [line for line in body.splitlines() if not line.startswith(("verdict", "outputs"))]
    write_page(page, render_page(report, verdicts(report), facts, images, tables_written))
    return files


# ---------------------------------------------------------------------------------------------


def _union_bytes(intervals: pd.DataFrame) -> int:
    """Bytes covered by the union of the intervals' address ranges (any time)."""
    if not len(intervals):
        return 0
    order = np.argsort(intervals["addr_start"].to_numpy(dtype=np.uint64), kind="stable")
    start = intervals["addr_start"].to_numpy(dtype=np.int64)[order]
    end = start + intervals["size"].to_numpy(dtype=np.int64)[order]
    reach = np.maximum.accumulate(end)
    new = np.r_[True, start[1:] >= reach[:-1]]
    heads = np.flatnonzero(new)
    tails = np.r_[heads[1:], len(start)] - 1
    return int((reach[tails] - start[heads]).sum())


def _owners_line(walk_map: pd.DataFrame) -> str:
    key = walk_map["owner"].astype("object").fillna("?") + np.where(
        walk_map["page_state"].isna(), "", "/" + walk_map["page_state"].astype("object").fillna("")
    )
    sizes = walk_map["size"].groupby(key.to_numpy()).sum().sort_values(ascending=False)
    return ", ".join(f"{k} {fmt_bytes(float(v))}" for k, v in sizes.items())


def _counts(series: pd.Series) -> str:
    c = series.astype("object").value_counts()
    return ", ".join(f"{k} {v}" for k, v in c.items()) or "none"


def _problems(log: ProblemLog) -> str:
    return log.by_kind() or "none"


def _ranges(frame: pd.DataFrame, limit: int) -> list[str]:
    out = []
    for r in frame.head(limit).to_dict("records"):
        eo, ao = r["expected_owner"], r["actual_owner"]
        exp = f"{eo}/{r['expected_state']}" if not pd.isna(eo) else "-"
        act = f"{ao}/{r['actual_state']}" if not pd.isna(ao) else "-"
        size = fmt_bytes(float(r["size"]))
        out.append(f"    {int(r['ipa_start']):#014x} +{size:>9}  trace {exp}  dump {act}")
    if len(frame) > limit:
        out.append(f"    ... {len(frame) - limit} more (diff.csv)")
    return out


def _named_by_dump(report: Report) -> pd.DataFrame:
    m = report.memcache
    if m is None or not len(m):
        return pd.DataFrame({"size": pd.Series([], dtype="uint64")})
    return m[m["named_by_dump"].notna()]


def _memcache_lines(report: Report, named: pd.DataFrame) -> list[str]:
    t = report.topups
    if t is None or not len(t):
        return []
    asked = int(t["pages"].fillna(0).sum())
    when = ", ".join(f"t={r.ts:.6f} (line {r.line})" for r in t.head(3).itertuples())
    out = [
        f"memcache {len(t)} top-up(s) of {asked} page(s) at {when}: the trace does not name "
        "the pages (unknown until a dump names them)"
    ]
    if len(named):
        names = sorted(set(named["named_by_dump"].astype(str)))
        pages = int(named["size"].sum()) // 4096
        out.append(
            f"         the dump names {pages} of them: {', '.join(names)} "
            f"({', '.join(f'{int(a):#x}' for a in named['ipa_start'].head(4))})"
        )
    return out


def verdicts(report: Report) -> list[str]:
    """What is wrong, one phrase each (empty: nothing contradicts pKVM's rules)."""
    out = []
    a = report.analysis
    if a is not None and len(a.violations):
        out.append(f"{len(a.violations)} ownership violation(s) in the trace")
    if len(report.disagreements):
        out.append(f"{len(report.disagreements)} range(s) where the dump contradicts the trace")
    if report.check is not None and not report.check.consistent:
        out.append("pKVM bookkeeping inconsistent in the dump")
    return out


def _meanings(walk_map: pd.DataFrame) -> list[str]:
    """A line explaining each owner/state of the map a reader may not know."""
    keys = set(
        walk_map["owner"].astype("object").fillna("?")
        + "/"
        + walk_map["page_state"].astype("object").fillna("")
    )
    return [
        f"         {k}: {category_meaning(k)}" for k in ("host/unknown", "host/nopage") if k in keys
    ]


def render_text(report: Report, *, limit: int = 5) -> str:
    """One screen: what was read, what was found, where the outputs are, and a verdict."""
    cap, w = report.capture, report.walk
    cfg = w.config
    lines = [
        f"capture  {cap.folder}  (kernel {cap.kernel or '?'}, profile {w.profile.name})",
        f"dump     {', '.join(Path(d.split('@')[0]).name for d in cap.dump)}: root "
        f"{cfg.root:#x}, {cfg.ia_bits}-bit IPA, {cfg.geometry.label}, start level "
        f"{cfg.start_level}; {len(w.map)} ranges, {len(w.tables)} tables, problems "
        f"{_problems(w.problems)}",
        f"owners   {_owners_line(w.map)}",
        *_meanings(w.map),
    ]
    a = report.analysis
    verdict = verdicts(report)
    if a is not None:
        tr = a.transitions
        ts = tr["ts"].to_numpy(dtype=np.float64)
        ts = ts[np.isfinite(ts)]
        span = f", t {ts.min():.6f}..{ts.max():.6f} s" if len(ts) else ""
        lines.append(
            f"trace    {Path(a.meta['trace']).name} ({a.meta['format']}): {a.meta['events']} "
            f"events, {len(tr)} transitions ({_counts(tr['op'][tr['op'].notna()])}){span}; "
            f"problems {_problems(a.problems)}"
        )
        pages = _union_bytes(a.intervals) // 4096
        lines.append(
            f"replay   {len(a.intervals)} intervals over {pages} pages; "
            f"{len(a.violations)} violation(s)"
        )
        for r in a.violations.head(limit).to_dict("records"):
            lines.append(
                f"    line {r['line']} t={r['ts']:.6f} {r['op']} {int(r['addr']):#x} "
                f"+{fmt_bytes(float(r['size']))}: {r['check']}"
            )
        if len(a.violations) > limit:
            lines.append(f"    ... {len(a.violations) - limit} more (violations.csv)")
        dis, pre = report.disagreements, report.untraced
        lines.append(
            f"diff     trace end vs dump: {len(dis)} disagreement(s) on traced pages"
            + (f" ({fmt_bytes(float(dis['size'].sum()))})" if len(dis) else "")
        )
        lines += _ranges(dis, limit)
        named = _named_by_dump(report)
        if len(pre):
            lines.append(
                f"         {len(pre) - len(named)} range(s), "
                f"{fmt_bytes(float(pre['size'].sum() - named['size'].sum()))}, not host-owned "
                "in the dump and never in the trace (set before tracing began, e.g. at boot)"
            )
        lines += _memcache_lines(report, named)
    if report.check is not None:
        lines.append(f"check    {report.check.verdict()}")
    lines += [f"note     {n}" for n in report.notes]
    if report.files:
        folder = report.files[0].parent
        lines.append(f"outputs  {folder}/: " + " ".join(p.name for p in report.files))
    lines.append(
        "verdict  " + ("; ".join(verdict) if verdict else "OK: nothing contradicts pKVM's rules")
    )
    return "\n".join(lines) + "\n"
