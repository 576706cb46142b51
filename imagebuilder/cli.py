"""The command line's root: the ``imagebuilder`` group, ``main`` and the one mapping of
exceptions to exit codes. The commands themselves live in :mod:`imagebuilder.commands`, a module
per noun; a command's module is imported when that command runs (or ``--help`` lists them), so
``imagebuilder images`` pays neither for the build pipeline nor for the other commands.

Every ImageBuilderError becomes one ``ERROR: ...`` line on stderr and its exit code (2 for the
user's mistakes, 1 for the environment's failures); ``--debug`` keeps the traceback.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Sequence

import click

from . import __version__
from .commands.render import err
from .errors import ImageBuilderError

COMMANDS = {
    "build": "build", "export": "build",
    "images": "image", "inspect": "image", "rm": "image",
    "run": "vm", "ps": "vm", "stop": "vm",
    "check": "store", "gc": "store",
    "push": "registry", "pull": "registry", "promote": "registry",
    "publish": "aws", "userdata": "aws",
    "flash": "baremetal", "serve": "baremetal",
    "hash": "hash",
    "sign": "signing", "verify": "signing",
}
"""Each command and the module of :mod:`imagebuilder.commands` that defines it."""


class _Commands(click.Group):
    """A group that imports a command's module when the command is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module = importlib.import_module(f"{__package__}.commands.{COMMANDS[cmd_name]}")
            for command in module.COMMANDS:
                self.commands.setdefault(str(command.name), command)
        return self.commands.get(cmd_name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="imagebuilder")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Build minimal, immutable machine images from Java apps, and run them."""
    ctx.obj = {"debug": debug}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (callable from tests)."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    # python-debian logs a line when it fixes a copyright file's Format URL (the SBOM reads
    # them): the tool prints only what its reporter says.
    logging.getLogger("debian.copyright").setLevel(logging.ERROR)
    try:
        code = cli.main(args=list(argv) if argv is not None else None, prog_name="imagebuilder",
                        standalone_mode=False)
    except ImageBuilderError as exc:
        if debug:
            raise
        err(f"ERROR: {exc}")
        return exc.exit_code
    except click.exceptions.Abort:
        err("aborted")
        return 130
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "imagebuilder"
        err(f"ERROR: {exc.format_message()} (see '{command} --help')")
        return 2
    except click.ClickException as exc:
        err(f"ERROR: {exc.format_message()}")
        return exc.exit_code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        err("interrupted")
        return 130
    except OSError as exc:  # a disk or the system failed (EIO, ENOSPC, EFBIG...): exit 1
        if debug:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        err(f"ERROR: {exc.strerror or exc}{where}: fix the cause (a full or failing disk?) "
            "and run the command again")
        return 1
    return code if isinstance(code, int) else 0  # ctx.exit(n): run's exit status


if __name__ == "__main__":
    sys.exit(main())  # pragma: no cover
