"""Durable file replacement and directory locks, shared by the modules that commit files.

Nothing half-written is ever left where a later command would trust it: data goes to a
temporary name in the destination's directory, is fsynced, renamed over the destination, and
the directory itself is fsynced so the rename survives a crash.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

TYPE_CHECKING = False
if TYPE_CHECKING:  # pathlib (with re and enum) costs ~8 ms of every export's start-up
    from pathlib import Path


def fsync_dir(path: Path | str) -> None:
    """Make the entries of directory ``path`` (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def dir_lock(root: Path | str, exclusive: bool = True) -> Iterator[None]:
    """An flock on ``root/.lock``: shared for readers, exclusive for writers of ``root``."""
    os.makedirs(root, exist_ok=True)
    fd = os.open(os.path.join(root, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)
