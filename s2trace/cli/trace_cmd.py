"""Trace commands: ``events``, ``timeline``, ``owner``, ``explain``, ``violations``,
``diff``, ``probes`` -- thin wrappers of :func:`s2trace.jobs.analyze.analyze` and the
queries in :mod:`s2trace.trace.queries`."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

from s2trace.cli.options import output_options, parse_u64

__all__ = ["register", "trace_options"]


def trace_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Options every command that reads a trace takes."""
    for opt in reversed(
        [
            click.option(
                "--recipes",
                multiple=True,
                type=click.Path(dir_okay=False),
                help="Extra recipe TOML file(s) (see docs/recipes.md).",
            ),
            click.option("--kernel", help="Kernel version of the trace (e.g. 6.12, 7.3)."),
            click.option(
                "--linear-map", help="Kernel linear map VA=PA, e.g. 0xffff000000000000=0x40000000."
            ),
            click.option(
                "--page-size",
                type=click.Choice(["4096", "16384", "65536"]),
                default="4096",
                show_default=True,
                help="Page size of the traced kernel (4K, 16K or 64K granule).",
            ),
            click.option(
                "--strict", is_flag=True, help="Malformed lines and violations are fatal."
            ),
            click.option("--no-cache", is_flag=True, help="Do not use the parsed-trace cache."),
            click.option(
                "--dump",
                multiple=True,
                help="Dump taken after the trace: untouched pages take its state (default: "
                "a capture folder's).",
            ),
            click.option(
                "--dmesg", type=click.Path(dir_okay=False), help="dmesg of the traced boot."
            ),
            click.option(
                "--kallsyms",
                type=click.Path(dir_okay=False),
                help="kallsyms of the traced kernel: its hyp sections are the hypervisor's from "
                "boot (placed with --iomem).",
            ),
            click.option(
                "--iomem", type=click.Path(dir_okay=False), help="/proc/iomem of the traced boot."
            ),
        ]
    ):
        f = opt(f)
    return f


def _analyze(trace: str, kw: dict[str, Any], *, grounds: bool = True) -> Any:
    """Analyse ``trace``; ``grounds``: ground untouched pages in the capture's dump (owner,
    explain, timeline) -- plots and exports show what the trace did, without it."""
    from s2trace.jobs.analyze import analyze, parse_linear_map

    result = analyze(
        trace,
        recipes=kw.get("recipes") or (),
        kernel=kw.get("kernel"),
        linear_map=parse_linear_map(kw.get("linear_map")),
        page_size=int(kw.get("page_size") or 4096),
        strict=bool(kw.get("strict")),
        progress=None if sys.stderr.isatty() else False,
        use_cache=not kw.get("no_cache"),
        grounds=grounds,
        dump=kw.get("dump") or (),
        dmesg=kw.get("dmesg"),
        kallsyms=kw.get("kallsyms"),
        iomem=kw.get("iomem"),
    )
    if result.meta.get("trace_notes"):
        click.echo(f"s2trace: warning: {result.source}: {result.meta['trace_notes']}", err=True)
    if result.meta.get("boot_evidence_not_used"):
        click.echo(f"s2trace: warning: {result.meta['boot_evidence_not_used']}", err=True)
    ignored = result.meta.get("ignored_events")
    if ignored:
        click.echo(
            f"s2trace: warning: events that recipes of other kernels read are ignored for "
            f"Linux {result.kernel} ({result.meta.get('kernel_family', '')}): {ignored}",
            err=True,
        )
    if len(result.problems):
        first = next(iter(result.problems))
        click.echo(
            f"s2trace: warning: {len(result.problems)} problem(s) in {result.source} "
            f"({result.problems.by_kind()}); first: {first}",
            err=True,
        )
    return result


def _addr(text: str, kw: dict[str, Any], result: Any = None) -> int:
    from s2trace.jobs.analyze import parse_linear_map

    value = parse_u64(text, "address")
    lm = parse_linear_map(kw.get("linear_map"))
    if lm is None and result is not None and "linear_map" in result.meta:
        lm = parse_linear_map(result.meta["linear_map"])
    if lm is not None and value >= lm[0]:
        value = value - lm[0] + lm[1]
    return value


def _write(frame: Any, kw: dict[str, Any], meta: dict[str, Any] | None = None) -> None:
    from s2trace.render import write_frame

    write_frame(frame, kw["fmt"], out=sys.stdout, path=kw.get("output"), meta=meta)


def register(cli: click.Group) -> None:
    @cli.command("events")
    @click.argument("trace")
    @output_options
    @click.option("--strict", is_flag=True)
    def events_cmd(trace: str, **kw: Any) -> None:
        """Parse a trace into the events table (convert to CSV, JSON lines or Parquet)."""
        from s2trace.trace.parse.readers import read_trace

        t = read_trace(trace, strict=kw["strict"])
        for note in t.notes:
            click.echo(f"s2trace: warning: {trace}: {note}", err=True)
        for p in list(t.problems)[:1]:
            click.echo(
                f"s2trace: warning: {len(t.problems)} problem(s) in the trace; first: {p}", err=True
            )
        _write(t.events, kw, {"trace": trace, "format": t.fmt, "lines": t.lines})

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
        from s2trace.jobs.analyze import parse_time
        from s2trace.trace.queries import snapshot

        when = None if at is None or at == "end" else parse_time(at)
        r = _analyze(trace, kw)
        if at is None:
            _write(r.intervals, kw, r.meta)
        else:
            _write(snapshot(r.timeline, when), kw, {**r.meta, "at": at})

    @cli.command("violations")
    @click.argument("trace")
    @trace_options
    @output_options
    def violations_cmd(trace: str, **kw: Any) -> None:
        """Transitions the pKVM state machine refuses, with the kernel check they break."""
        r = _analyze(trace, kw, grounds=False)
        _write(r.violations, kw, r.meta)

    @cli.command("owner")
    @click.argument("trace")
    @click.argument("addr")
    @click.option("--at", "at", help="Time (trace seconds; default: the end).")
    @click.option("--json", "as_json", is_flag=True)
    @trace_options
    def owner_cmd(trace: str, addr: str, at: str | None, as_json: bool, **kw: Any) -> None:
        """Who owned the page holding ADDR at time T, since when, and why."""
        from s2trace.jobs.analyze import parse_time
        from s2trace.trace.queries import owner_at

        r = _analyze(trace, kw)
        ans = owner_at(r.timeline, _addr(addr, kw, r), parse_time(at))
        record = _answer_dict(ans)
        if as_json:
            click.echo(json.dumps(record))
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
        from s2trace.jobs.analyze import parse_time
        from s2trace.trace.queries import explain

        r = _analyze(trace, kw)
        click.echo(explain(r.timeline, _addr(addr, kw, r), parse_time(at)))

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
