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


def write_private(dest: Path | str, data: bytes) -> None:
    """Write ``data`` to ``dest`` readable by its owner only (mode 0600: it holds an
    environment's secrets), complete or not at all: temporary name, fsync, rename."""
    parent = os.path.dirname(os.fspath(dest)) or "."
    tmp = os.path.join(parent, f".{os.path.basename(dest)}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(parent)
