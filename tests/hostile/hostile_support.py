"""Running s2trace as a real subprocess under limits, and judging what it did.

Every hostile case runs ``python -m s2trace.cli.main ...`` from this checkout (``PYTHONPATH``),
in its own process group, with a wall-clock timeout and an address-space cap
(``RLIMIT_AS``), against a private cache directory.  :func:`verdict` lists every way a run
broke the README's contract; a case passes when that list is empty:

* ``error``: exit status 2, exactly one line on stderr starting ``s2trace: error:`` (the
  last; only s2trace's own ``s2trace: warning:``/``note:`` lines may come before it), no
  traceback, and (when given) one of ``mentions`` quoted in that line;
* ``ok``: exit status 0 and no traceback;
* ``warn``: exit status 0, a ``warning`` line on stderr, no traceback;
* ``clean``: whatever the outcome, it is a clean one: exit 0 or 1 without a traceback, or a
  clean ``error``.  Used where the input may or may not be usable (generated cases, fuzz).

A run that times out, is killed by a signal (the memory cap), or prints ``Traceback`` /
``MemoryError`` always fails.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "sample-traces"

#: Address-space cap of every run (bytes).  Normal runs of every command stay well below.
MEMORY_CAP = 3 << 30
#: Wall-clock limit of one run (seconds); generous for a loaded 2-core CI machine.
TIMEOUT = 60.0
#: Parallel runs in a batch (the CI machine has 2 cores).
WORKERS = 2


@dataclass
class Run:
    """What one subprocess did."""

    args: list[str]
    rc: int | None
    out: str
    err: str
    seconds: float
    timed_out: bool = False
    env: dict[str, str] = field(default_factory=dict)

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]

    def describe(self) -> str:
        shown = " ".join(_short(a) for a in self.args)
        err = self.err if len(self.err) < 3000 else self.err[:1500] + "\n...\n" + self.err[-1500:]
        return (
            f"s2trace {shown}\n  exit={self.rc} timed_out={self.timed_out} "
            f"seconds={self.seconds:.1f}\n  stderr: {err!r}\n  stdout[:300]: {self.out[:300]!r}"
        )


def _short(arg: str) -> str:
    text = repr(arg) if any(c.isspace() or not c.isprintable() for c in arg) else arg
    return text if len(text) <= 120 else text[:100] + f"...<{len(text)} chars>"


def base_env(cache: Path, **extra: str) -> dict[str, str]:
    """The environment of a run: this checkout on PYTHONPATH, a private cache, no terminal."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("S2TRACE_", "PYTEST_", "HYPOTHESIS")) and k != "XDG_CACHE_HOME"
    }
    env["PYTHONPATH"] = str(REPO)
    env["S2TRACE_CACHE"] = str(cache)
    env["MPLBACKEND"] = "Agg"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


def _limits(memory: int, fsize: int | None) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if fsize is not None:  # writes past fsize fail with EFBIG (a stand-in for a full disk)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))


def run(
    args: Sequence[str | os.PathLike[str]],
    env: dict[str, str],
    *,
    cwd: Path | None = None,
    timeout: float = TIMEOUT,
    memory: int = MEMORY_CAP,
    stdout: int | None = subprocess.PIPE,
    stdin: int | None = subprocess.DEVNULL,
    shell_tail: str | None = None,
    fsize: int | None = None,
) -> Run:
    """Run ``s2trace ARGS`` once (or ``s2trace ARGS | SHELL_TAIL`` through ``sh``)."""
    argv = [str(a) for a in args]
    cmd: list[str] = [sys.executable, "-m", "s2trace.cli.main", *argv]
    if shell_tail is not None:
        import shlex

        script = f"{shlex.join(cmd)} {shell_tail}; exit ${{PIPESTATUS[0]}}"
        cmd = ["bash", "-c", script]
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdin=stdin,
        stdout=stdout,
        stderr=subprocess.PIPE,
        cwd=cwd or REPO,
        env=env,
        preexec_fn=lambda: _limits(memory, fsize),
        start_new_session=True,
    )
    try:
        out_b, err_b = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out_b, err_b = proc.communicate()
        timed_out = True
    seconds = time.monotonic() - start
    return Run(
        argv,
        None if timed_out else proc.returncode,
        (out_b or b"").decode("utf-8", "replace"),
        (err_b or b"").decode("utf-8", "replace"),
        seconds,
        timed_out,
        env,
    )


def run_many(
    cases: Iterable[Sequence[str | os.PathLike[str]]], env: dict[str, str], **kw: object
) -> list[Run]:
    """Run several argument lists, :data:`WORKERS` at a time, in order."""
    with ThreadPoolExecutor(WORKERS) as pool:
        return list(pool.map(lambda a: run(a, env, **kw), list(cases)))  # type: ignore[arg-type]


_CRASH_MARKS = ("Traceback (most recent call last)", "MemoryError", "Segmentation fault")


def verdict(r: Run, expect: str, mentions: Iterable[str] = ()) -> list[str]:
    """Every way ``r`` broke the contract ``expect`` (see the module docstring)."""
    bad: list[str] = []
    if r.timed_out:
        return [f"hang: no exit within {r.seconds:.0f} s"]
    if r.rc is not None and r.rc < 0:
        return [f"killed by signal {-r.rc} (memory cap {MEMORY_CAP >> 30} GiB?)"]
    if any(m in r.err for m in _CRASH_MARKS):
        bad.append("traceback")
    lines = r.err_lines
    if expect == "clean":
        if r.rc == 2:
            expect = "error"
        elif r.rc not in (0, 1):
            bad.append(f"exit status {r.rc} (expected 0, 1 or a clean 2)")
    if expect == "error":
        if r.rc != 2:
            bad.append(f"exit status {r.rc}, expected 2")
        errors = [line for line in lines if line.startswith("s2trace: error:")]
        others = [line for line in lines[:-1] if not line.startswith("s2trace: ")]
        if len(errors) != 1 or lines[-1] != errors[0] or others:
            bad.append(
                f"{len(lines)} stderr lines, expected one 's2trace: error:' line (after any "
                "warnings about the input)"
            )
        wanted = list(mentions)
        if wanted and errors and not any(m in errors[0] for m in wanted):
            bad.append(f"the error line names none of {wanted}")
    elif expect in ("ok", "warn"):
        if r.rc != 0:
            bad.append(f"exit status {r.rc}, expected 0")
        if expect == "warn" and not any("warning" in line for line in lines):
            bad.append("no warning on stderr")
    return bad


def check(r: Run, expect: str, mentions: Iterable[str] = ()) -> None:
    """Assert ``r`` kept the contract ``expect``."""
    bad = verdict(r, expect, mentions)
    assert not bad, "; ".join(bad) + "\n" + r.describe()


def check_all(runs: Iterable[Run], expect: str, mentions: Iterable[str] = ()) -> None:
    failures = [(r, verdict(r, expect, mentions)) for r in runs]
    failures = [(r, bad) for r, bad in failures if bad]
    assert not failures, "\n".join("; ".join(bad) + "\n" + r.describe() for r, bad in failures)


# -- hostile files ---------------------------------------------------------------------------
def make_fifo(path: Path) -> Path:
    """A named pipe nobody writes to: opening it for reading blocks forever."""
    os.mkfifo(path)
    return path


def mutate(data: bytes, ops: Sequence[tuple[str, int, bytes]]) -> bytes:
    """Apply file mutations ``(kind, position, payload)``; positions wrap around the length."""
    buf = bytearray(data)
    for kind, pos, payload in ops:
        at = pos % (len(buf) + 1)
        if kind == "truncate":
            del buf[at:]
        elif kind == "flip":
            if buf:
                buf[at % len(buf)] ^= payload[0] if payload else 0xFF
        elif kind == "insert":
            buf[at:at] = payload
        elif kind == "delete":
            del buf[at : at + max(1, len(payload))]
        elif kind == "join":  # lose the next line end
            nl = buf.find(b"\n", at)
            if nl >= 0:
                del buf[nl]
        elif kind == "dupline":
            start = buf.rfind(b"\n", 0, at) + 1
            end = buf.find(b"\n", at)
            end = len(buf) if end < 0 else end + 1
            buf[end:end] = buf[start:end]
    return bytes(buf)
