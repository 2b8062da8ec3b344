"""Showing a timeline elsewhere: ``s2trace plot`` (PNG/SVG/PDF via :mod:`s2trace.plots`) and
``s2trace export --perfetto`` (Chrome JSON trace via :mod:`s2trace.export.perfetto`).

Both analyse the trace like ``s2trace timeline`` (same options,
:func:`~s2trace.cli.trace_cmd.analyze_trace`) and only parse arguments and call the public API.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from s2trace.cli.options import OUTPUT, StrictInt
from s2trace.cli.trace_cmd import analyze_trace, page_address, trace_options
from s2trace.errors import InputError
from s2trace.outputs import output_path

__all__ = ["PLOT_KINDS", "PLOT_SUFFIXES", "register"]

PLOT_KINDS = ("churn", "owners", "map", "page")
PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def _time(text: str | None, what: str) -> float | None:
    from s2trace.jobs.analyze import parse_time

    try:
        return parse_time(text)
    except InputError as exc:
        raise InputError(f"{what}: {exc}") from None


def _range(text: str) -> tuple[int, int]:
    """``START-END`` (hex or decimal) as two integers."""
    from s2trace.cli.options import parse_u64

    lo, sep, hi = text.partition("-")
    if not sep:
        raise InputError(f"--range {text!r}: expected START-END, e.g. 0x44000000-0x44100000")
    start, end = parse_u64(lo.strip(), "--range start"), parse_u64(hi.strip(), "--range end")
    if end <= start:
        raise InputError(f"--range {text}: END must be above START")
    return start, end


def _event_span(result: Any) -> tuple[float | None, float | None]:
    """First and last finite event time of the trace (the natural export window)."""
    import numpy as np

    ts = result.events["ts"].to_numpy(dtype=np.float64)
    ts = ts[np.isfinite(ts)]
    return (float(ts.min()), float(ts.max())) if len(ts) else (None, None)


#: Most churn bins a plot draws (a bar each: more is unreadable and slow to draw).
MAX_BINS = 5000


def _check_bins(
    result: Any, window: dict[str, float | None], width: float, text: str | None
) -> None:
    """InputError when ``--bin`` would cut the plotted window into more than MAX_BINS bins."""
    first, last = _event_span(result)
    lo = window["t_from"] if window["t_from"] is not None else first
    hi = window["t_to"] if window["t_to"] is not None else last
    if lo is None or hi is None:
        return
    bins = (hi - lo) / width
    if bins > MAX_BINS:
        raise InputError(
            f"--bin {text}: {bins:.0f} bins over the {hi - lo:g} s window; at most {MAX_BINS} "
            "(choose a wider bin or a narrower --from/--to)"
        )


def register(cli: click.Group) -> None:
    @cli.command("plot")
    @click.argument("trace")
    @click.argument("addr", required=False)
    @click.option(
        "--kind",
        type=click.Choice(PLOT_KINDS),
        required=True,
        help="churn: transitions per time bin; owners: bytes per owner/state over time; "
        "map: address × time raster; page: the history of the page holding ADDR.",
    )
    @click.option("--range", "addr_range", help="map: only addresses START-END (hex or decimal).")
    @click.option("--at", "at", help="Mark this time (trace seconds, or with s/ms/us/ns).")
    @click.option("--from", "t_from", help="Start of the plotted window (trace seconds).")
    @click.option("--to", "t_to", help="End of the plotted window (trace seconds).")
    @click.option("--bin", "bin_width", help="churn: bin width (e.g. 1ms; default ~40 bins).")
    @click.option(
        "--unit",
        type=click.Choice(["bytes", "pages"]),
        default="bytes",
        show_default=True,
        help="churn: y axis unit.",
    )
    @click.option(
        "--dpi", type=StrictInt(10, 2400), default=150, show_default=True, help="PNG resolution."
    )
    @click.option(
        "-o",
        "--output",
        required=True,
        type=OUTPUT,
        help="Image file: .png, .svg or .pdf.",
    )
    @trace_options
    def plot_cmd(
        trace: str,
        addr: str | None,
        kind: str,
        addr_range: str | None,
        at: str | None,
        t_from: str | None,
        t_to: str | None,
        bin_width: str | None,
        unit: str,
        dpi: int,
        output: str,
        **kw: Any,
    ) -> None:
        """Plot a trace's ownership timeline: churn, owners over time, the ownership map, or
        one page's history (``--kind page ADDR``)."""
        out = Path(output)
        if (kind == "page") != (addr is not None):
            raise InputError("ADDR goes with --kind page (and --kind page needs ADDR)")
        span = _range(addr_range) if addr_range else None
        if out.suffix.lower() not in PLOT_SUFFIXES:
            raise InputError(f"{output}: unknown image type (expected {', '.join(PLOT_SUFFIXES)})")
        window: dict[str, Any] = {
            "at": _time(at, "--at"),
            "t_from": _time(t_from, "--from"),
            "t_to": _time(t_to, "--to"),
        }
        width = _time(bin_width, "--bin")
        if width is not None and width <= 0:
            raise InputError(f"--bin {bin_width}: expected a positive width")
        r = analyze_trace(trace, kw, grounds=False)
        if width is not None and kind == "churn":
            _check_bins(r, window, width, bin_width)
        from s2trace import plots
        from s2trace.jobs.names import object_labels

        page_size = int(kw.get("page_size") or 4096)
        window["meta"] = r.meta
        try:
            if kind == "churn":
                fig = plots.plot_churn(
                    r.transitions,
                    r.violations,
                    bin_width=width,
                    unit=unit,
                    page_size=page_size,
                    **window,
                )
            elif kind == "owners":
                fig = plots.plot_owners(
                    r.intervals, r.violations, transitions=r.transitions, **window
                )
            elif kind == "page":
                page = page_address(str(addr), kw, r) // page_size * page_size
                fig = plots.plot_page(r.intervals, r.transitions, page, r.violations, **window)
            else:
                fig = plots.plot_map(
                    r.intervals,
                    r.violations,
                    transitions=r.transitions,
                    page_size=page_size,
                    addr_range=span,
                    labels=object_labels(r.transitions),
                    **window,
                )
        except ValueError as exc:
            raise InputError(f"{trace}: cannot plot {kind}: {exc}") from None
        with output_path(out, "plot") as tmp:
            fig.savefig(tmp, dpi=dpi, format=out.suffix.lower()[1:])
        click.echo(f"s2trace: wrote {out}", err=True)

    @cli.command("export")
    @click.argument("trace")
    @click.option(
        "--perfetto",
        "perfetto",
        required=True,
        type=OUTPUT,
        help="Write the timeline as a Chrome JSON trace that ui.perfetto.dev opens.",
    )
    @click.option("--from", "t_from", help="Start of the exported window (default: first event).")
    @click.option("--to", "t_to", help="End of the exported window (default: last event).")
    @trace_options
    def export_cmd(
        trace: str, perfetto: str, t_from: str | None, t_to: str | None, **kw: Any
    ) -> None:
        """Export the ownership timeline: counters of bytes per owner, one slice per page-range
        ownership interval, instant events for violations, access faults and lost events."""
        lo, hi = _time(t_from, "--from"), _time(t_to, "--to")
        r = analyze_trace(trace, kw, grounds=False)
        from s2trace.export.perfetto import perfetto_trace, write_perfetto

        first, last = _event_span(r)
        lo = first if lo is None else lo
        hi = last if hi is None else hi
        if lo is not None and hi is not None and hi < lo:
            raise InputError(f"--from {lo} is after --to {hi}")
        doc = perfetto_trace(
            r.intervals, r.violations, r.transitions, t_from=lo, t_to=hi, meta=r.meta
        )
        write_perfetto(perfetto, doc)
        click.echo(f"s2trace: wrote {perfetto} ({len(doc['traceEvents'])} events)", err=True)
