"""Durable file replacement and directory locks, shared by the modules that commit files.

Nothing half-written is ever left where a later command would trust it: data goes to a
temporary name in the destination's directory, is fsynced, renamed over the destination, and
the directory itself is fsynced so the rename survives a crash.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Iterable, Iterator

from .errors import HostError, UserError

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


def write_error(e: OSError, dest: Path | str) -> Exception:
    """The one-line error for a failure writing ``dest``."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return HostError(f"no space left on device writing {dest}")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UserError(f"cannot write {dest}: {e.strerror}")
    if e.errno == errno.EFBIG:
        return HostError(f"cannot write {dest}: the file system does not allow a file this large")
    return HostError(f"cannot write {dest}: {e.strerror or e}")


@contextlib.contextmanager
def atomic_output(dest: Path | str, *, sync: bool = True) -> Iterator[int]:
    """A file descriptor on a new temporary file that becomes ``dest`` on success.

    On leaving the block normally the file is renamed over ``dest``, with ``sync`` after an
    fsync of it and followed by one of the directory; on any exception it is removed and
    ``dest`` is left as it was. OSErrors
    become one-line errors: a full disk is a HostError "no space left on device writing X".
    """
    parent, name = os.path.split(os.fspath(dest))
    parent = parent or "."
    if not os.path.isdir(parent):
        raise UserError(f"output directory {parent} does not exist")
    if os.path.isdir(dest):
        raise UserError(f"output path {dest} is a directory")
    from .scratch import lock_tmp, remove_stale_tmp  # pathlib: not on the hash command's path
    remove_stale_tmp(parent, name)
    tmp = os.path.join(parent, f".{name}.{os.urandom(6).hex()}.tmp")
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        lock_tmp(fd)
    except OSError as e:
        raise write_error(e, dest) from None
    done = False
    try:
        try:
            yield fd
            if sync:
                os.fsync(fd)
        except OSError as e:
            raise write_error(e, dest) from None
        os.close(fd)
        fd = -1
        try:
            os.replace(tmp, dest)
            if sync:
                fsync_dir(parent)
        except OSError as e:
            raise write_error(e, dest) from None
        done = True
    finally:
        if fd >= 0:
            os.close(fd)
        if not done:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def refuse_links(paths: Iterable[Path | str], what: str) -> None:
    """UserError if one of ``paths`` (those that exist) is a symbolic link: nothing that deletes
    or reads entries of ``what`` (its store, its cache) may be led out of it."""
    for path in paths:
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(mode):
            raise UserError(f"{path} is a symbolic link: imagebuilder does not follow links "
                            f"out of {what}; put the real directory (or file) there")


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
