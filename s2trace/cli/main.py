"""Entry point of the ``s2trace`` command.

Commands live in sibling modules (``decode_cmd``, ``trace_cmd`` ...), each exposing a
``register(group)`` function; they only parse arguments, call the public API and render.
Errors: an :class:`~s2trace.errors.InputError` (unusable input) becomes one line on stderr and
exit status 2, never a traceback.
"""

from __future__ import annotations

import importlib
import sys

import click

from s2trace.errors import InputError

#: Modules that add commands to the group, in help order.
COMMAND_MODULES = (
    "s2trace.cli.decode_cmd",
    "s2trace.cli.walk_cmd",
    "s2trace.cli.trace_cmd",
    "s2trace.cli.memory_cmd",
    "s2trace.cli.hyp_cmd",
    "s2trace.cli.show_cmd",
    "s2trace.cli.diff_cmd",
    "s2trace.cli.guests_cmd",
    "s2trace.cli.synth_cmd",
    "s2trace.cli.batch_cmd",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="s2trace")
def cli() -> None:
    """Decode, walk and replay Arm64 stage-2 page tables and pKVM page ownership."""


def _register_all() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(cli)


_register_all()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit status (2 for unusable input)."""
    from s2trace.allocator import keep_freed_memory

    keep_freed_memory()
    try:
        rc = cli.main(args=argv, prog_name="s2trace", standalone_mode=False)
    except InputError as exc:
        click.echo(f"s2trace: error: {exc}", err=True)
        return 2
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return 2
    except click.exceptions.Abort:
        click.echo("s2trace: aborted", err=True)
        return 130
    except BrokenPipeError:
        return 0
    return rc if isinstance(rc, int) else 0


def entry() -> None:  # pragma: no cover - console-script shim
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
