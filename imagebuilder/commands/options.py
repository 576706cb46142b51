"""Options every command declares the same way, written once.

``json_option``: ``--json`` (the ``as_json`` parameter), and the command's reporter: bars and
the steps' news on a terminal, neither with ``--json``. ``reporting``: the reporter alone, for a
command that prints no result. ``env_options``: ``--env NAME`` (``env_name``) and ``--config
PATH`` (``config_path``), the imagebuilder.toml that names the environments.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

from .. import progress
from .render import TerminalReporter

F = TypeVar("F", bound=Callable[..., Any])

CONFIG_HELP = "imagebuilder.toml holding the environments (default: ./imagebuilder.toml)."


def reporting(command: F) -> F:
    """Run ``command`` with the terminal's reporter installed (quiet if it got ``--json``)."""
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with progress.using(TerminalReporter(quiet=bool(kwargs.get("as_json")))):
            return command(*args, **kwargs)
    return wrapper  # type: ignore[return-value]


def json_option(help: str = "Print the result as JSON.") -> Callable[[F], F]:
    """``--json``, with the reporter it quiets."""
    def decorate(command: F) -> F:
        return click.option("--json", "as_json", is_flag=True, help=help)(reporting(command))
    return decorate


def config_option(command: F) -> F:
    """``--config PATH`` alone."""
    return click.option("--config", "config_path", type=click.Path(), help=CONFIG_HELP)(command)


def env_options(help: str, *, required: bool = False) -> Callable[[F], F]:
    """``--env NAME`` (its help says what the environment is for here) and ``--config PATH``."""
    def decorate(command: F) -> F:
        with_env = click.option("--env", "env_name", required=required, help=help)
        return with_env(config_option(command))
    return decorate
