"""Scratch space that a killed command does not leave behind for good.

Builds unpack packages into scratch directories (hundreds of MB), and every commit goes through
a temporary file; a SIGKILL or a power cut leaves them where they were. They are removed by the
next command that works in the same place, but only once it is proven that no live process
owns them, never by age or guess:

- a process names everything it creates in a scratch directory (the cache's ``tmp/``, the
  store's ``.tmp/``, the system temporary directory) with its *owner token*, and holds an flock
  on ``<token>.owner`` there while it has entries there (the last one done removes the file).
  The lock file is locked under a temporary name and renamed into place, so it is never visible
  unlocked while its owner lives. The kernel drops the lock when the process dies, however it
  dies; :func:`remove_stale` takes the lock of each owner file it finds and, when that succeeds,
  removes the owner's entries, then the file.
- a file committed beside its destination (``.NAME.XXXX.tmp``) is flocked by its writer until
  the rename; :mod:`imagebuilder.fsutil` removes those no writer holds.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from .fsutil import commit

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


def _open_dir(name: str, dir_fd: int | None) -> int:
    """Open directory ``name`` without following a link; one that denies reading is made
    readable first (an app's own ``chmod 0``)."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except PermissionError:
        os.chmod(name, 0o700, dir_fd=dir_fd, follow_symlinks=False)
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def remove_tree(path: Path | str) -> None:
    """Remove ``path`` and everything under it, never following a link and never recursing:
    a tree an app made thousands of levels deep costs one open directory at a time (shutil's
    rmtree recurses once per level, and Python's stack ends near 1000). Errors are ignored, as
    by ``rmtree(ignore_errors=True)``; what could not be removed stays."""
    path = os.fspath(path)
    try:
        fd = _open_dir(path, None)
    except FileNotFoundError:
        return
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(path)
        return
    names: list[str] = []  # the directories descended into, below ``path``
    try:
        while True:
            child = None
            with os.scandir(fd) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            child = entry.name
                            break
                        os.unlink(entry.name, dir_fd=fd)
                    except OSError:
                        continue
            if child is not None:
                try:
                    deeper = _open_dir(child, fd)
                except OSError:  # cannot enter it: try to remove it as it is, and go on
                    with contextlib.suppress(OSError):
                        os.rmdir(child, dir_fd=fd)
                    continue
                os.close(fd)
                fd = deeper
                names.append(child)
                continue
            if not names:
                break
            parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = parent
            with contextlib.suppress(OSError):
                os.rmdir(names.pop(), dir_fd=fd)
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        os.rmdir(path)


_OWNER = ".owner"
_owners: dict[str, list[object]] = {}  # directory and prefix -> [token, locked fd, users]
_lock = threading.Lock()


def acquire(directory: Path | str, prefix: str = "") -> str:
    """This process's owner token in ``directory``: entries it creates there are named
    ``token + "." + anything`` (or that with leading dots) until the matching :func:`release`.
    The first acquisition creates and locks ``token.owner``; the last release removes it."""
    os.makedirs(directory, exist_ok=True)
    key = f"{os.path.realpath(directory)}\0{prefix}\0{os.getpid()}"
    with _lock:
        if key in _owners:
            _owners[key][2] = int(_owners[key][2]) + 1  # type: ignore[call-overload]
            return str(_owners[key][0])
        token = f"{prefix}{os.getpid()}-{os.urandom(6).hex()}"
        pending = os.path.join(directory, f".{token}{_OWNER}.new")
        fd = os.open(pending, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        commit(pending, os.path.join(directory, token + _OWNER), sync=False)
        _owners[key] = [token, fd, 1]
        return token


def release(directory: Path | str, prefix: str = "") -> None:
    """Undo one :func:`acquire`; the last one removes the owner file (the entries are gone)."""
    key = f"{os.path.realpath(directory)}\0{prefix}\0{os.getpid()}"
    with _lock:
        token, fd, users = _owners[key]
        if int(users) > 1:  # type: ignore[call-overload]
            _owners[key][2] = int(users) - 1  # type: ignore[call-overload]
            return
        del _owners[key]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(directory, f"{token}{_OWNER}"))
        os.close(int(fd))  # type: ignore[call-overload]


@contextlib.contextmanager
def owned(directory: Path | str, prefix: str = "") -> Iterator[str]:
    """:func:`acquire` for the duration of a block."""
    token = acquire(directory, prefix)
    try:
        yield token
    finally:
        release(directory, prefix)


def _owned_by(name: str, token: str) -> bool:
    return name.lstrip(".").startswith(token + ".") and name != token + _OWNER


def remove_stale(directory: Path | str, prefix: str = "", *, dry_run: bool = False
                 ) -> list[str]:
    """Remove the entries in ``directory`` whose owner (named ``PREFIX...``) is dead, proven by
    taking its owner lock; the names removed (with ``dry_run``: that would be). Entries of live
    owners are left alone."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    removed: list[str] = []
    for owner in [n for n in names if n.startswith(prefix) and n.endswith(_OWNER)]:
        path = os.path.join(directory, owner)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its process lives
            token = owner.removesuffix(_OWNER)
            for name in names:
                if _owned_by(name, token):
                    if not dry_run:
                        _remove(os.path.join(directory, name))
                    removed.append(name)
            if not dry_run:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            removed.append(owner)
        finally:
            os.close(fd)
    return removed


def _remove(path: str) -> None:
    remove_tree(path)


@contextlib.contextmanager
def scratch_dir(parent: Path | str | None = None, prefix: str = "imagebuilder-"
                ) -> Iterator[Path]:
    """A new scratch directory in ``parent`` (default: the system temporary directory), owned
    by this process and removed on exit; stale ones of dead processes go first."""
    parent = Path(parent or tempfile.gettempdir())
    remove_stale(parent, prefix)
    with owned(parent, prefix) as token:
        path = Path(tempfile.mkdtemp(prefix=token + ".", dir=parent))
        try:
            yield path
        finally:
            remove_tree(path)

