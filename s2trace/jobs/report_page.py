"""The report as one self-contained HTML page (``report.html``).

Order: the verdict first (a coloured banner), then what was read, the plots (PNG files
embedded as data URIs, so the page works copied alone; each links to its file), the ownership
summary with the meaning of every category it shows, the violations, the diff of trace and
dump, the bookkeeping check, the notes, and links to the CSV/Parquet tables beside it.
Addresses and sizes are in hex.  Every text from the capture (paths, trace text) is escaped.

A small inline script counts the images that loaded and marks any that did not (``data-
images-loaded`` / ``data-images`` on ``<body>``), so a browser test, and a reader, can see a
broken page.  The page takes the report's parts duck-typed (this module does not import
:mod:`s2trace.jobs.report`, which calls it).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from s2trace.outputs import write_text
from s2trace.render import HEX_COLUMNS, hex_frame
from s2trace.units import fmt_bytes

__all__ = ["CATEGORIES", "category_meaning", "render_page", "write_page"]

#: What each owner/state and word of the report means (shown where it appears).
CATEGORIES: dict[str, str] = {
    "host/owned": "the host owns the page and may map it",
    "host/shared_owned": "the host owns the page and shares it with the hypervisor or a guest",
    "host/shared_borrowed": "the hypervisor or a guest owns the page and lends it to the host",
    "host/nopage": "valid in the host stage 2, but the hyp_vmemmap records no host access "
    "(PKVM_NOPAGE); the map's hyp_state column says whether the hypervisor owns it",
    "host/unknown": "host-mapped, but the page state lives in the hyp_vmemmap (kernels 6.14+) "
    "and no struct hyp_page covers this range: MMIO (device memory, e.g. below DRAM on QEMU "
    "virt) or memory the hypervisor does not track",
    "hyp/nopage": "owned by the hypervisor (an annotated invalid entry in the host stage 2): "
    "the host cannot reach it",
    "guest/nopage": "owned by a (protected) guest: the host cannot reach it",
    "ffa/nopage": "owned by the secure world through FF-A",
    "untraced": "not host-owned in the dump although the trace never moved it: set before "
    "tracing began (boot: the hyp carve-out, early donations) or by a path the trace misses",
    "incomplete": "an answer after a lost-events marker: transitions may be missing, so the "
    "state shown may be stale",
    "not touched": "pages no transition touched: host owned throughout the trace",
}


def category_meaning(key: str) -> str:
    """The meaning of an owner/state key (``"host/unknown"``) or report word."""
    return CATEGORIES.get(key, "an owner/state of this profile (see docs/columns.md)")


_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1280px;padding:0 18px 40px;
color:#222}
h1{font-size:20px;margin:18px 0 6px}h2{font-size:17px;margin:26px 0 6px;border-bottom:1px solid
#ddd}
#verdict{padding:14px 18px;border-radius:6px;font-size:18px;font-weight:600;margin:12px 0}
#verdict.ok{background:#e3f4e1;border:2px solid #3d8b37}
#verdict.bad{background:#fde4e1;border:2px solid #d62728}
#verdict ul{margin:6px 0 0;font-weight:400;font-size:15px}
table{border-collapse:collapse;font:12.5px ui-monospace,monospace;margin:6px 0}
td,th{border:1px solid #ddd;padding:2px 7px;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.n{text-align:right}
dl.facts dt{font-weight:600;float:left;width:7em;clear:left}dl.facts dd{margin:0 0 3px 7.5em}
figure{margin:10px 0 22px}figure img{max-width:100%;border:1px solid #ddd}
figcaption{color:#555;font-size:13px}.note{color:#555}.broken{outline:4px solid #d62728}
"""

_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images), ok = 0;
  imgs.forEach(function (i) {
    if (i.complete && i.naturalWidth > 0) { ok++; } else {
      i.classList.add('broken'); i.alt = 'IMAGE MISSING: ' + i.alt; }
  });
  document.body.setAttribute('data-images', imgs.length);
  document.body.setAttribute('data-images-loaded', ok);
});
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def table_html(frame: pd.DataFrame, limit: int = 50, numeric: Iterable[str] = ()) -> str:
    """A DataFrame as an HTML table, address-like columns in hex, at most ``limit`` rows."""
    if frame is None or not len(frame):
        return "<p class=note>(none)</p>"
    shown = hex_frame(frame.head(limit), HEX_COLUMNS)
    shown = shown.astype(object).where(frame.head(limit).notna(), "")
    right = {
        c
        for c in frame.columns
        if c in HEX_COLUMNS
        or c in set(numeric)
        or (pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c]))
    }
    head = "".join(f"<th>{_e(c)}</th>" for c in shown.columns)
    rows = []
    for values in shown.itertuples(index=False):
        cells = "".join(
            f"<td class=n>{_e(v)}</td>" if c in right else f"<td>{_e(v)}</td>"
            for c, v in zip(shown.columns, values, strict=True)
        )
        rows.append(f"<tr>{cells}</tr>")
    more = (
        f"<p class=note>{len(frame) - limit} more rows in the CSV file.</p>"
        if len(frame) > limit
        else ""
    )
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>{more}"


def _figure(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><a href="{_e(path.name)}"><img src="data:image/png;base64,{data}" '
        f'alt="{_e(caption)}"></a><figcaption>{_e(caption)} ({_e(path.name)})</figcaption>'
        "</figure>"
    )


def _owners(walk_map: pd.DataFrame) -> str:
    key = walk_map["owner"].astype("object").fillna("?") + np.where(
        walk_map["page_state"].isna(), "", "/" + walk_map["page_state"].astype("object").fillna("")
    )
    sizes = walk_map["size"].astype("float64").groupby(key.to_numpy()).agg(["sum", "count"])
    sizes = sizes.sort_values("sum", ascending=False)
    frame = pd.DataFrame(
        {
            "owner/state": sizes.index,
            "bytes": [f"{int(v):#x}" for v in sizes["sum"]],
            "size": [fmt_bytes(float(v)) for v in sizes["sum"]],
            "ranges": sizes["count"].astype(int).to_numpy(),
            "what it means": [category_meaning(k) for k in sizes.index],
        }
    )
    return table_html(frame, numeric=("bytes", "size"))


def _facts(lines: Sequence[str]) -> str:
    items = []
    for line in lines:
        key, _, value = line.partition(" ")
        items.append(f"<dt>{_e(key)}</dt><dd>{_e(value.strip())}</dd>")
    return f"<dl class=facts>{''.join(items)}</dl>"


def render_page(
    report: Any,
    verdicts: Sequence[str],
    facts: Sequence[str],
    images: Sequence[tuple[Path, str]],
    files: Sequence[Path],
) -> str:
    """The page's HTML (module docstring).  ``facts`` are the report's text lines
    (``key  value``), ``images`` (PNG path, caption) pairs, ``files`` the tables beside it."""
    cap, a = report.capture, report.analysis
    ok = not verdicts
    verdict = (
        "OK: nothing contradicts pKVM's rules"
        if ok
        else "PROBLEMS FOUND<ul>" + "".join(f"<li>{_e(v)}</li>" for v in verdicts) + "</ul>"
    )
    name = Path(str(cap.folder)).name
    parts = [
        f"<h1>s2trace report: {_e(name)} (kernel {_e(cap.kernel or '?')})</h1>",
        f'<div id=verdict class="{"ok" if ok else "bad"}">{verdict}</div>',
        "<h2>What was read</h2>",
        _facts(facts),
    ]
    if images:
        parts.append("<h2>Plots</h2>")
        parts += [_figure(p, c) for p, c in images]
    parts += ["<h2>Ownership in the dump</h2>", _owners(report.walk.map)]
    if a is not None:
        parts += [
            "<h2>Violations</h2>",
            "<p>Transitions the kernel's state machine refuses, with the check they break "
            "(the kernel leaves the page unchanged, and so does the replay).</p>",
            table_html(a.violations),
            "<h2>Trace against dump</h2>",
            "<p>Ranges where the replay's end state and the dump disagree on pages the trace "
            "touched:</p>",
            table_html(report.disagreements),
            f"<p><b>untraced</b>: {_e(category_meaning('untraced'))}.</p>",
            table_html(report.untraced, limit=20),
        ]
        if bool(a.intervals["incomplete"].any()):
            parts.append(f"<p><b>incomplete</b>: {_e(category_meaning('incomplete'))}.</p>")
    if report.check is not None:
        parts += [
            "<h2>pKVM bookkeeping</h2>",
            f"<p>{_e(report.check.verdict())}</p>",
            table_html(report.check.counts()),
        ]
    if report.notes:
        parts.append("<h2>Notes</h2><ul>")
        parts += [f"<li>{_e(n)}</li>" for n in report.notes]
        parts.append("</ul>")
    parts.append("<h2>Tables</h2><ul>")
    parts += [f'<li><a href="{_e(p.name)}">{_e(p.name)}</a></li>' for p in files]
    parts.append("</ul>")
    parts.append(
        "<h2>Words used here</h2><dl>"
        + "".join(f"<dt><b>{_e(k)}</b></dt><dd>{_e(v)}</dd>" for k, v in CATEGORIES.items())
        + "</dl>"
    )
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        f"<title>s2trace report: {_e(name)}</title><style>{_STYLE}</style>"
        f"<script>{_SCRIPT}</script></head><body>{''.join(parts)}</body></html>\n"
    )


def write_page(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` whole or not at all (:func:`s2trace.outputs.write_text`:
    a temporary file in the same folder and a rename)."""
    write_text(path, text, "report page")
    return path
