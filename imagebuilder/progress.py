"""How the library tells a person what it is doing without printing: one small interface.

The library never prints, never logs to the console and never exits. A long step (a download, a
disk being written) counts its bytes through :meth:`Reporter.progress`; a notice (a cached file
was damaged and is fetched again) goes to :meth:`Reporter.warn`, a step's news to
:meth:`Reporter.info`. The command line decides how they look (bars and lines on stderr on a
terminal, no bars with ``--json``) by installing its reporter with :func:`using` for the length of
a command; library code reaches it with :func:`current`. Outside a command (the library used on
its own, a test) the reporter is :class:`Silent`.

A reporter is process-wide, not per thread, so a step may report from a worker thread too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Protocol

Advance = Callable[[int], None]
"""Called with the number of bytes (or units) done since the last call."""


class Reporter(Protocol):
    """Where progress and notices of the library go."""

    def progress(self, total: int | None, desc: str) -> AbstractContextManager[Advance]:
        """A step of ``total`` bytes (None: unknown) named ``desc``; the context gives the
        function that advances it, and the step ends with the context."""
        ...

    def warn(self, text: str) -> None:
        """Something the person should know and may have to act on."""
        ...

    def info(self, text: str) -> None:
        """News of a step (what was built, what was cached)."""
        ...


def _ignore(_done: int) -> None:
    return None


class Silent:
    """The reporter of library code run outside a command: it shows nothing."""

    def progress(self, total: int | None, desc: str) -> AbstractContextManager[Advance]:
        return nullcontext(_ignore)

    def warn(self, text: str) -> None:
        return None

    def info(self, text: str) -> None:
        return None


_current: Reporter = Silent()


def current() -> Reporter:
    """The reporter installed by :func:`using`, or a :class:`Silent` one."""
    return _current


@contextmanager
def using(reporter: Reporter) -> Iterator[Reporter]:
    """Install ``reporter`` for the length of the block (the one before comes back after it)."""
    global _current
    before, _current = _current, reporter
    try:
        yield reporter
    finally:
        _current = before
