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


# --- reading files the build did not write --------------------------------------------------

Identity = tuple[int, int, int]
"""A source file as it was when the build read it: ``(st_dev, st_ino, st_size)``."""


class NotRegularError(Exception):
    """What should be a stored file is something else: ``kind`` says what."""

    def __init__(self, path: Path | str, kind: str) -> None:
        super().__init__(f"{path} is {kind}, not a regular file")
        self.path, self.kind = path, kind


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
             (stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def open_regular(path: Path | str) -> int:
    """A read-only descriptor of the regular file at ``path``. Anything else raises
    :class:`NotRegularError` without being followed, waited on or read: ``lstat`` first, then
    ``open`` with O_NOFOLLOW|O_NONBLOCK (the name may have changed in between), then ``fstat``.
    A missing file raises FileNotFoundError."""
    mode = os.lstat(path).st_mode
    if not stat.S_ISREG(mode):
        raise NotRegularError(path, _kind(mode))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotRegularError(path, "a symbolic link") from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotRegularError(path, _kind(mode))
    return fd


def source_identity(path: Path) -> tuple[Path, Identity]:
    """``path``'s real path and identity, recorded when the build decides to take the file;
    :func:`open_source` later opens only that very file."""
    from pathlib import Path

    real = Path(os.path.realpath(path))
    try:
        st = os.stat(real)
    except OSError as e:
        raise HostError(f"cannot read {path}: {e.strerror}") from None
    return real, (st.st_dev, st.st_ino, st.st_size)


def open_source(path: Path, identity: Identity, what: str) -> int:
    """A read-only descriptor of the regular file ``path`` (a real path), the one way a layer's
    source file is opened: no link is followed, a FIFO or device does not block, and the file
    must be the one recorded in ``identity``. Anything else (a file swapped for a link, a FIFO
    or another file after the build read it) is one line naming it."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as e:
        why = "now a symbolic link" if e.errno == errno.ELOOP else e.strerror or "unreadable"
        raise _changed(path, what, why) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _changed(path, what, "no longer a regular file")
        if (st.st_dev, st.st_ino, st.st_size) != identity:
            raise _changed(path, what, "another file or another size")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _changed(path: Path, what: str, why: str) -> UserError:
    return UserError(f"{shown_path(os.fsencode(path))} (for {what}) changed while the image was "
                     f"built ({why}): leave the app's files alone during a build and build again")


def shown_path(path: bytes) -> str:
    """``path`` for a one-line message: printable, its middle cut when it is long."""
    text = path.decode("utf-8", "backslashreplace")
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return repr(text if len(text) <= 120 else f"{text[:60]}...{text[-50:]}")
