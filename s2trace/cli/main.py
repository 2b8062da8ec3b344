"""Entry point of the ``s2trace`` command.

Commands live in sibling modules (``decode_cmd``, ``trace_cmd`` ...), each exposing a
``register(group)`` function, imported when one of their commands runs (:data:`COMMANDS`);
they only parse arguments, call the public API and render.
Errors: an :class:`~s2trace.errors.InputError` (unusable input) becomes one line on stderr and
exit status 2, never a traceback.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
import warnings
from typing import Any

import click

from s2trace.errors import CacheWarning, InputError
from s2trace.files import watching_inputs

#: Every command and the sibling module whose ``register(group)`` adds it.  A module is
#: imported when one of its commands is looked up (all of them for ``--help``), so a command
#: does not pay for importing the others' code (the trace and report stacks cost ~0.1 s
#: of a ``decode``'s start).  ``tests/test_cli_decode.py`` checks this table against what
#: each module registers.
COMMANDS = {
    **dict.fromkeys(("decode", "build", "profiles"), "s2trace.cli.decode_cmd"),
    **dict.fromkeys(("trim", "scan"), "s2trace.cli.walk_cmd"),
    **dict.fromkeys(
        ("events", "timeline", "violations", "owner", "explain", "probes"),
        "s2trace.cli.trace_cmd",
    ),
    "regs": "s2trace.cli.memory_cmd",
    **dict.fromkeys(("check", "hyp-map"), "s2trace.cli.hyp_cmd"),
    **dict.fromkeys(("plot", "export"), "s2trace.cli.show_cmd"),
    "diff": "s2trace.cli.diff_cmd",
    "guests": "s2trace.cli.guests_cmd",
    "report": "s2trace.cli.report_cmd",
    "synth": "s2trace.cli.synth_cmd",
    "batch": "s2trace.cli.batch_cmd",
}


class _Commands(click.Group):
    """The ``s2trace`` group, whose commands are registered by their module on first
    lookup (:data:`COMMANDS`)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._registered: set[str] = set()

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(n for n in COMMANDS if self.get_command(ctx, n) is not None)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        # an unknown name registers every command, for click's "Did you mean ...?"
        known = COMMANDS.get(cmd_name)
        for module in [known] if known else dict.fromkeys(COMMANDS.values()):
            self._register(module)
        return super().get_command(ctx, cmd_name)

    def _register(self, module: str) -> None:
        if module in self._registered:
            return
        self._registered.add(module)
        try:
            importlib.import_module(module).register(self)
        except ModuleNotFoundError as exc:  # a module left out of this installation
            if exc.name != module:
                raise


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="s2trace")
def cli() -> None:
    """Decode, walk and replay Arm64 stage-2 page tables and pKVM page ownership."""


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit status (2 for unusable input, with one line on stderr)."""
    from s2trace.allocator import keep_freed_memory

    keep_freed_memory()
    warnings.showwarning = _show_warning
    warnings.simplefilter("always", CacheWarning)
    try:
        with watching_inputs():  # no output of the command may overwrite one of its inputs
            rc = cli.main(args=argv, prog_name="s2trace", standalone_mode=False)
        sys.stdout.flush()  # a full disk behind standard output shows here at the latest
    except InputError as exc:
        return _fail(str(exc))
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.UsageError as exc:
        return _fail(_usage_line(exc))
    except click.ClickException as exc:
        return _fail(exc.format_message())
    except click.exceptions.Abort:
        click.echo("s2trace: aborted", err=True)
        return 130
    except BrokenPipeError:
        _discard_stdout()  # `s2trace ... | head`: the reader has what it wanted
        return 0
    except OSError as exc:
        if exc.filename is not None or exc.errno not in _STDOUT_ERRORS:
            raise
        _discard_stdout()
        return _fail(f"standard output: cannot write ({exc.strerror})")
    return rc if isinstance(rc, int) else 0


#: Errors of a write to standard output (no file name): full disk, quota, size limit, I/O.
_STDOUT_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})


def _fail(message: str) -> int:
    """Print the one error line (line breaks in a message are shown escaped) and return 2."""
    one_line = message.replace("\r", "\\r").replace("\n", "\\n")
    click.echo(f"s2trace: error: {one_line}", err=True)
    return 2


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: str | None = None,
) -> None:
    """Every warning as one ``s2trace: warning:`` line (s2trace's own without a category)."""
    text = str(message).replace("\n", " ")
    if not issubclass(category, CacheWarning):
        text = f"{category.__name__}: {text}"
    click.echo(f"s2trace: warning: {text}", err=True)


def _usage_line(exc: click.UsageError) -> str:
    """A usage error as one line: the command, what is wrong, where to look."""
    where = exc.ctx.command_path if exc.ctx is not None else "s2trace"
    return f"{where}: {exc.format_message()} (see '{where} --help')"


def _discard_stdout() -> None:
    """Point standard output at /dev/null so the interpreter's last flush cannot fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def entry() -> None:  # pragma: no cover - console-script shim
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
