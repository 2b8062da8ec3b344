"""Trace text formats: the layout of their lines, and detecting which one a file is in.

The layouts are regexes in RE2 syntax that Python's ``re`` also accepts: detection matches
them with ``re`` on the first lines of a file; the scanners learn column templates from them
(:mod:`s2trace.trace.parse.templates`) and run them with Arrow's RE2 on the lines no template fits
(:mod:`s2trace.trace.parse.textscan`).  The formats themselves are described in
:mod:`s2trace.trace.parse.readers`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from s2trace.columns import EVENTS
from s2trace.errors import InputError
from s2trace.trace.parse import cache
from s2trace.trace.parse.sources import read_head

__all__ = [
    "DATA_RE",
    "HOST_RE",
    "HYP_EARLY_RE",
    "HYP_RE",
    "IGNORED_RE",
    "LOST_EVENT",
    "LOST_RE",
    "TEXT_FORMATS",
    "TRACE_FORMATS",
    "detect_format",
]

#: Event name of a lost-events marker row.
LOST_EVENT = "lost_events"
TEXT_FORMATS: tuple[str, ...] = ("ftrace", "trace-cmd", "hyp", "hyp-early")
TRACE_FORMATS: tuple[str, ...] = (*TEXT_FORMATS, *cache.TABULAR_FORMATS)


# -- line layouts (RE2 syntax, also valid for Python's re, which detection uses) --------------
_EVENT = r"(?P<event>[^\s:\[\]]+)"
_TAIL = r"(?:\s+(?P<fields>.*?))?\s*$"
HOST_RE = (
    r"^\s*(?P<task>.*?)-(?P<pid>\d+)\s+(?:\(\s*(?P<tgid>[\d-]+)\)\s+)?\[(?P<cpu>\d+)\]\s+"
    r"(?:(?P<flags>[^\s:]+)\s+)?(?P<ts>\d+\.\d+):\s+" + _EVENT + ":" + _TAIL
)
HYP_RE = r"^\[(?P<cpu>\d+)\]\s+(?P<ts>\d+\.\d+):\s+" + _EVENT + _TAIL
HYP_EARLY_RE = r"^\[\s*(?P<ts>\d+\.\d+)\]\s+" + _EVENT + _TAIL
LOST_RE = (
    r"^\s*CPU:\s*(?P<cpu>\d+)\s+\[(?:LOST\s+(?P<lost>\d+)\s+EVENTS"
    r"|(?P<dropped>\d+)?\s*EVENTS\s+DROPPED)\]\s*$"
)
#: Lines that carry nothing and are not malformed: blank, comments, trace-cmd's headers.
IGNORED_RE = r"^\s*(?:#.*|cpus=\d+|version\s*=\s*\d+|CPU\s+\d+\s+is\s+empty)?\s*$"
DATA_RE = {"ftrace": HOST_RE, "trace-cmd": HOST_RE, "hyp": HYP_RE, "hyp-early": HYP_EARLY_RE}
_TRACE_CMD_HINT = re.compile(r"^(?:cpus=\d+|version = \d+|CPU \d+ is empty)\s*$|EVENTS DROPPED\]")


def detect_format(path: str | os.PathLike[str]) -> str:
    """The format of a trace file, from its first bytes and lines (one of TRACE_FORMATS).

    Raises InputError when no layout fits any of the first data lines.
    """
    src = Path(path)
    try:
        with open(src, "rb") as f:
            magic = f.read(8)
    except OSError as e:
        raise InputError(f"{src}: cannot read ({e.strerror})") from e
    if magic.startswith(b"PAR1"):
        return "parquet"
    if magic.startswith(b"\x17\x08\x44tracing"):
        raise InputError(f"{src}: a binary trace.dat; convert it with `trace-cmd report` first")
    head = read_head(src)
    text = head.decode("utf-8", "replace")
    lines = text.split("\n")
    if len(head) == 1 << 16:
        lines = lines[:-1]  # the last one may be cut
    data = [ln.rstrip("\r") for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if data:
        first = data[0].lstrip()
        if first.startswith("{"):
            return "jsonl"
        if [c.strip().strip('"') for c in first.split(",")] == EVENTS.names:
            return "csv"
    scores = {name: 0 for name in ("ftrace", "hyp", "hyp-early")}
    checked = [ln for ln in data if not re.match(IGNORED_RE, ln) and not re.match(LOST_RE, ln)]
    for ln in checked[:200]:
        for name in scores:
            if re.match(DATA_RE[name], ln):
                scores[name] += 1
    trace_cmd = any(_TRACE_CMD_HINT.search(ln) for ln in data[:200])
    best = max(scores, key=lambda k: scores[k])
    if scores[best] == 0:
        if checked:
            raise InputError(
                f"{src}: not a recognised trace: the first data line is {checked[0][:80]!r} "
                "(expected ftrace, trace-cmd report, hypervisor trace, CSV, JSON lines or "
                "Parquet)"
            )
        return "trace-cmd" if trace_cmd else "ftrace"
    if best == "ftrace" and trace_cmd and "# tracer:" not in text:
        return "trace-cmd"
    return best
