"""Trace commands: ``events``, ``timeline``, ``owner``, ``explain``, ``violations``,
``diff``, ``probes`` -- thin wrappers of :func:`s2trace.jobs.analyze.analyze` and the
queries in :mod:`s2trace.trace.queries`."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

from s2trace.cli.options import TRACE, inputs_from, output_options, parse_u64, use
from s2trace.cli.output import emit_frame, emit_pieces, warn, warn_problems
from s2trace.jobs.analyze import analyze, parse_time
from s2trace.jobs.inputs import Inputs, parse_linear_map
from s2trace.trace.parse.readers import read_trace
from s2trace.trace.queries import explain, owner_at, snapshot

__all__ = ["analyze_trace", "page_address", "register", "trace_inputs", "trace_options"]


def trace_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Options every command that reads a trace takes (declared in :mod:`s2trace.cli.options`)."""
    return use(*TRACE)(f)


def trace_inputs(trace: str, kw: dict[str, Any]) -> Inputs:
    """The resolved inputs of a trace command: a trace file or a capture folder."""
    return inputs_from((trace,), kw, role="trace")


def analyze_trace(trace: str, kw: dict[str, Any], *, grounds: bool = True) -> Any:
    """Analyse ``trace``; ``grounds``: ground untouched pages in the capture's dump (owner,
    explain, timeline) -- plots and exports show what the trace did, without it."""
    result = analyze(
        trace_inputs(trace, kw),
        recipes=kw.get("recipes") or (),
        page_size=int(kw.get("page_size") or 4096),
        strict=bool(kw.get("strict")),
        progress=None if sys.stderr.isatty() else False,
        use_cache=not kw.get("no_cache"),
        grounds=grounds,
        dump=kw.get("dump") or (),
        hyp_trace=kw.get("hyp_trace"),
        hypercalls=kw.get("hypercalls"),
    )
    if result.meta.get("trace_notes"):
        warn(f"{result.source}: {result.meta['trace_notes']}")
    if result.meta.get("boot_evidence_not_used"):
        warn(result.meta["boot_evidence_not_used"])
    ignored = result.meta.get("ignored_events")
    if ignored:
        warn(
            f"events that recipes of other kernels read are ignored for "
            f"Linux {result.kernel} ({result.meta.get('kernel_family', '')}): {ignored}"
        )
    warn_problems(result.problems, str(result.source))
    return result


def page_address(text: str, kw: dict[str, Any], result: Any = None) -> int:
    value = parse_u64(text, "address")
    lm = parse_linear_map(kw.get("linear_map"))
    if lm is None and result is not None and "linear_map" in result.meta:
        lm = parse_linear_map(result.meta["linear_map"])
    if lm is not None and value >= lm[0]:
        value = value - lm[0] + lm[1]
    return value


def register(cli: click.Group) -> None:
    @cli.command("events")
    @click.argument("trace")
    @output_options
    @use("strict", "no_cache")
    def events_cmd(trace: str, **kw: Any) -> None:
        """Parse a trace (a file or a capture folder's) into the events table (convert to CSV,
        JSON lines or Parquet)."""
        source = trace_inputs(trace, kw).need_trace("events")
        t = read_trace(source, strict=kw["strict"], use_cache=not kw.get("no_cache"))
        for line in t.notes:
            warn(f"{source}: {line}")
        warn_problems(t.problems, "the trace")
        emit_frame(t.events, kw, {"trace": str(source), "format": t.fmt, "lines": t.lines})

    @cli.command("timeline")
    @click.argument("trace")
    @click.option(
        "--at",
        "at",
        help="Print the ownership map at this time instead (a snapshot; 'end': after the "
        "last event), each row with its basis.",
    )
    @trace_options
    @output_options
    def timeline_cmd(trace: str, at: str | None, **kw: Any) -> None:
        """Replay a trace: the ownership intervals of every page it touches."""
        when = None if at is None or at == "end" else parse_time(at)
        r = analyze_trace(trace, kw)
        if at is None:  # a long trace's intervals are on disk: CSV/JSON written piece by piece
            emit_pieces(r.timeline.interval_pieces(), lambda: r.intervals, kw, r.meta)
        else:
            emit_frame(snapshot(r.timeline, when), kw, {**r.meta, "at": at})

    @cli.command("violations")
    @click.argument("trace")
    @trace_options
    @output_options
    def violations_cmd(trace: str, **kw: Any) -> None:
        """Transitions the pKVM state machine refuses, with the kernel check they break."""
        r = analyze_trace(trace, kw, grounds=False)
        emit_frame(r.violations, kw, r.meta)

    @cli.command("owner")
    @click.argument("trace")
    @click.argument("addr")
    @click.option("--at", "at", help="Time (trace seconds; default: the end).")
    @click.option("--json", "as_json", is_flag=True)
    @trace_options
    def owner_cmd(trace: str, addr: str, at: str | None, as_json: bool, **kw: Any) -> None:
        """Who owned the page holding ADDR at time T, since when, and why."""
        r = analyze_trace(trace, kw)
        ans = owner_at(r.timeline, page_address(addr, kw, r), parse_time(at))
        record = _answer_dict(ans)
        if as_json:
            click.echo(json.dumps({**record, "addr": f"{record['addr']:#x}"}))  # hex, as all JSON
            return
        when = "the end of the trace" if record["t"] is None else f"t={record['t']}"
        since = "the start" if record["since"] is None else f"t={record['since']}"
        if record.get("t_earliest") is not None and record["t_earliest"] != record["since"]:
            since += f" (happened after t={record['t_earliest']})"
        peer = f", {record['peer']} {record['peer_state']}" if record.get("peer") else ""
        note = " -- may be incomplete: events were lost" if record.get("incomplete") else ""
        click.echo(
            f"{record['addr']:#x} at {when}: owner {record['owner']}, host "
            f"{record['host_state']}{peer}, since {since}; basis: {record['basis']}{note}"
        )

    @cli.command("explain")
    @click.argument("trace")
    @click.argument("addr")
    @click.option("--at", "at", help="Time (trace seconds; default: the end).")
    @trace_options
    def explain_cmd(trace: str, addr: str, at: str | None, **kw: Any) -> None:
        """The events, with times and source lines, that led to ADDR's state at T."""
        r = analyze_trace(trace, kw)
        click.echo(explain(r.timeline, page_address(addr, kw, r), parse_time(at)))

    @cli.command("probes")
    @click.option("--kernel", required=True, help="Kernel version, e.g. 6.12 or 7.3.")
    @click.option(
        "--script",
        is_flag=True,
        help="A shell script that installs only the probes this kernel has.",
    )
    @click.option("--comm", help="With --script: record only this task.")
    def probes_cmd(kernel: str, script: bool, comm: str | None) -> None:
        """The kprobe_events lines that capture a trace s2trace understands."""
        from s2trace.trace.recipes.probes import probe_lines, probe_script

        if script:
            click.echo(probe_script(kernel, comm), nl=False)
        else:
            click.echo("\n".join(probe_lines(kernel)))


def _answer_dict(ans: Any) -> dict[str, Any]:
    """The owner answer as the JSON contract: addr, t, owner, host_state, peer, peer_state,
    since (when the state certainly held; null: before the trace), t_earliest (earliest time
    the change can have happened; null: before the trace), cause (source line of the event
    that set the state), event_index (its row in the events table), basis (what the state
    rests on: "trace line N", a rule in words, the dump, an evidence file and line, or an
    assumption) and incomplete."""
    import dataclasses

    from s2trace.render import plain_value

    raw = {k: plain_value(v) for k, v in dataclasses.asdict(ans).items()}
    for key in ("since", "t_earliest"):
        if isinstance(raw.get(key), float) and raw[key] == float("-inf"):
            raw[key] = None
    return raw
