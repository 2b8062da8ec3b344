"""How the commands speak: frames through the renderers, notes and warnings on stderr (one
line each, prefixed ``s2trace:``), never a traceback; files through the safe writer
(:mod:`s2trace.outputs`: a temporary file renamed into place)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any

import click
import pandas as pd

from s2trace.errors import ProblemLog
from s2trace.outputs import write_text
from s2trace.render import HEX_COLUMNS, PIECEWISE_FORMATS, write_frame, write_frames

__all__ = ["emit_frame", "emit_text", "note", "notes", "warn", "warn_problems"]


def note(text: str) -> None:
    """A decision made on the user's behalf, or its basis (stderr)."""
    prefix = "" if text.startswith("warning:") else "note: "
    click.echo(f"s2trace: {prefix}{text}", err=True)


def warn(text: str) -> None:
    click.echo(f"s2trace: warning: {text}", err=True)


def notes(lines: Iterable[str]) -> None:
    for line in lines:
        note(line)


def warn_problems(log: ProblemLog | None, where: str = "") -> None:
    """The one summary line of recorded damage, when there is any."""
    line = log.summary(where) if log is not None else None
    if line:
        warn(line)


def emit_frame(frame: pd.DataFrame, kw: dict[str, Any], meta: dict[str, Any] | None = None) -> None:
    """``frame`` in the command's ``--format`` to ``-o FILE`` or standard output, addresses
    in hex (:data:`s2trace.columns.ADDRESS_COLUMNS`)."""
    write_frame(
        frame,
        kw.get("fmt", "table"),
        out=sys.stdout,
        path=kw.get("output"),
        hex_columns=HEX_COLUMNS,
        meta=meta,
    )


def emit_pieces(
    pieces: Iterable[pd.DataFrame],
    whole: Callable[[], pd.DataFrame],
    kw: dict[str, Any],
    meta: dict[str, Any] | None = None,
) -> None:
    """A table given in pieces: CSV and JSON lines written a piece at a time (the table is
    never whole in memory); the other formats take the ``whole`` table (:func:`emit_frame`)."""
    fmt = kw.get("fmt", "table")
    if fmt not in PIECEWISE_FORMATS:
        emit_frame(whole(), kw, meta)
        return
    write_frames(pieces, fmt, out=sys.stdout, path=kw.get("output"), hex_columns=HEX_COLUMNS)


def emit_text(text: str, path: str | None) -> None:
    """Text to ``path`` (written safely) or standard output."""
    if path:
        write_text(path, text)
    else:
        click.echo(text, nl=False)
