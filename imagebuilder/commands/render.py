"""What a person sees on stderr: the library's progress and notices, rendered.

The library reports through :mod:`imagebuilder.progress`; here that becomes tqdm bars on a
terminal (none when stderr is not one, none with ``--json``) and ``WARNING:`` lines. This is the
only place the command line sets up tqdm. Whatever a line carries from outside (an app's log, a
registry's reply) is made printable first, so it cannot drive the terminal.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any

import click

from .. import progress
from ..text import printable


def err(message: str) -> None:
    """One message on stderr."""
    click.echo(printable(message, keep="\n\t"), err=True)


def emit_json(value: Any) -> None:
    """The command's result, as one line of JSON on stdout."""
    click.echo(json.dumps(value))


class TerminalReporter:
    """Bars on stderr when it is a terminal (never when ``quiet``), warnings always, the steps'
    news unless ``quiet`` (``--json``: stdout carries the result, stderr only what went
    wrong)."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet

    @contextmanager
    def _bar(self, total: int | None, desc: str) -> Iterator[progress.Advance]:
        from tqdm import tqdm
        with tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                  file=sys.stderr, leave=False, disable=True if self.quiet else None) as bar:
            yield bar.update

    def progress(self, total: int | None, desc: str) -> AbstractContextManager[progress.Advance]:
        return self._bar(total, printable(desc))

    def warn(self, text: str) -> None:
        err(f"WARNING: {text}")

    def info(self, text: str) -> None:
        if not self.quiet:
            err(text)


def reporter() -> progress.Reporter:
    """The reporter of the running command."""
    return progress.current()


class Phases:
    """Progress in phases (a flash's write, then its verify; a push's blobs): each
    :meth:`start` ends the bar before it and opens the next."""

    def __init__(self) -> None:
        self._bars = ExitStack()

    def start(self, total: int | None, desc: str) -> progress.Advance:
        self.close()
        return self._bars.enter_context(progress.current().progress(total, desc))

    def close(self) -> None:
        self._bars.close()


@contextmanager
def phases() -> Iterator[Phases]:
    """A :class:`Phases` whose last bar ends with the block."""
    bars = Phases()
    try:
        yield bars
    finally:
        bars.close()

