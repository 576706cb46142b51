"""The one way imagebuilder commits a file, and directory locks.

Nothing half-written is ever left where a later command would trust it: data goes to a
temporary name (``.NAME.<12 hex>.tmp`` in the destination's directory, or a scratch name the
caller owns), is fsynced, renamed over the destination, and the directory itself is fsynced so
the rename survives a crash. :func:`commit` is the tool's one rename; :func:`atomic_output`
(a descriptor) and :func:`write_atomic` (bytes) write through it. A full disk is one line
(:func:`disk_full`), whoever meets it.

A writer holds an flock on its temporary file until the rename, so a temporary file nobody
holds belongs to a killed command: the next writer of the same destination removes it
(:func:`remove_stale_tmp`), and :func:`remove_stale_temps` sweeps a whole directory (the run
caches, for ``run``, the next build and ``gc``).

Besides: :func:`source_date_epoch`, the one time a build stamps on what it writes; directory
locks; and the safe opening of files the build did not write (:func:`open_source`).
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

_TEMP_SUFFIX = ".tmp"
_TEMP_HEX = 12


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


# --- errors ----------------------------------------------------------------------------------


def disk_full(e: OSError, dest: Path | str) -> HostError | None:
    """The one line for a full disk (or quota) met writing ``dest``; None for other errors."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return HostError(f"no space left on device writing {dest}")
    return None


def write_error(e: OSError, dest: Path | str) -> Exception:
    """The one-line error for a failure writing ``dest``."""
    full = disk_full(e, dest)
    if full is not None:
        return full
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UserError(f"cannot write {dest}: {e.strerror}")
    if e.errno == errno.EFBIG:
        return HostError(f"cannot write {dest}: the file system does not allow a file this large")
    return HostError(f"cannot write {dest}: {e.strerror or e}")


# --- committing ------------------------------------------------------------------------------


def _parent(path: Path | str) -> str:
    return os.path.dirname(os.fspath(path)) or "."


def temp_name(dest: Path | str) -> str:
    """A fresh temporary name for ``dest``, in its directory (same file system: the rename is
    atomic): ``.NAME.<12 hex>.tmp``."""
    parent, name = os.path.split(os.fspath(dest))
    return os.path.join(parent or ".", f".{name}.{os.urandom(_TEMP_HEX // 2).hex()}{_TEMP_SUFFIX}")


def _fsync_path(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace(tmp: Path | str, dest: Path | str, sync: bool) -> None:
    try:
        os.replace(tmp, dest)
        if sync:
            fsync_dir(_parent(dest))
    except OSError as e:
        raise write_error(e, dest) from None


def commit(tmp: Path | str, dest: Path | str, *, sync: bool = True) -> None:
    """Rename the finished ``tmp`` (a file or a directory, on ``dest``'s file system) over
    ``dest``: the one rename of the tool. With ``sync``, ``tmp`` is fsynced first and ``dest``'s
    directory after, so a crash leaves the old ``dest`` or the whole new one. An OSError is one
    line (:func:`write_error`); ``tmp`` is then the caller's to remove."""
    if sync:
        try:
            _fsync_path(tmp)
        except OSError as e:
            raise write_error(e, dest) from None
    _replace(tmp, dest, sync)


@contextlib.contextmanager
def atomic_output(dest: Path | str, *, sync: bool = True, mode: int | None = None,
                  tmp: Path | str | None = None) -> Iterator[int]:
    """A file descriptor on a new temporary file that becomes ``dest`` on success.

    On leaving the block normally the file is renamed over ``dest`` (:func:`commit`), with
    ``sync`` after an fsync of it and followed by one of the directory; on any exception it is
    removed and ``dest`` is left as it was. The temporary file is ``.NAME.<hex>.tmp`` beside
    ``dest`` (stale ones of killed writers go first), or ``tmp`` when the caller owns a scratch
    name. ``mode``: exact permissions (else 0644 less the umask, as ``cp`` would). OSErrors
    become one-line errors: a full disk is a HostError "no space left on device writing X".
    """
    parent, name = os.path.split(os.fspath(dest))
    parent = parent or "."
    if not os.path.isdir(parent):
        raise UserError(f"output directory {parent} does not exist")
    if os.path.isdir(dest):
        raise UserError(f"output path {dest} is a directory")
    if tmp is None:
        remove_stale_tmp(parent, name)
    fd, tmp = _locked_temp(dest, tmp, mode)
    done = False
    try:
        try:
            if mode is not None:
                os.fchmod(fd, mode)  # the umask may have narrowed it
            yield fd
            if sync:
                os.fsync(fd)
        except OSError as e:
            raise write_error(e, dest) from None
        _replace(tmp, dest, sync)
        done = True
    finally:
        os.close(fd)
        if not done:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _locked_temp(dest: Path | str, tmp: Path | str | None,
                 mode: int | None) -> tuple[int, Path | str]:
    """A new temporary file for ``dest`` (``tmp``, or a fresh :func:`temp_name`), created no
    more open than ``mode`` (a secret's file is never readable by others, not even for a moment)
    and locked as a live writer's. A sweep of stale temporaries may take one in the instant
    between its creation and its lock: then it is made again."""
    for _ in range(8):
        path = temp_name(dest) if tmp is None else tmp
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                         0o644 if mode is None else mode & 0o777)
        except OSError as e:
            raise write_error(e, dest) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held to the rename: a live writer's (see above)
            mine = os.fstat(fd)
            now = os.stat(path, follow_symlinks=False)
            if (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
                return fd, path
        except FileNotFoundError:
            pass
        except OSError as e:
            os.close(fd)
            raise write_error(e, dest) from None
        os.close(fd)  # swept before it was locked: make another
    raise HostError(f"cannot write {dest}: its temporary files keep being removed by another "
                    "process")


def write_atomic(dest: Path | str, data: bytes | Iterable[bytes], *, sync: bool = True,
                 mode: int | None = None, tmp: Path | str | None = None) -> None:
    """Write ``data`` (bytes, or chunks of them) to ``dest``, complete or not at all, through
    :func:`atomic_output`."""
    with atomic_output(dest, sync=sync, mode=mode, tmp=tmp) as fd:
        for chunk in [data] if isinstance(data, bytes | bytearray | memoryview) else data:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]


def write_private(dest: Path | str, data: bytes) -> None:
    """Write ``data`` to ``dest`` readable by its owner only (mode 0600: it holds an
    environment's secrets), complete or not at all."""
    write_atomic(dest, data, mode=0o600)


# --- the time stamped on what a build writes -------------------------------------------------

_MAX_EPOCH = 0xFFFF_FFFF
"""The latest time every format can hold (newc cpio's mtime is 32 bits)."""


def source_date_epoch() -> int:
    """``$SOURCE_DATE_EPOCH`` (reproducible-builds.org): the one time a build stamps on what it
    writes (every layer entry's mtime, a VHD footer), 0 when unset or empty, never the wall
    clock. Anything but a whole number of seconds from 0 to 2**32-1 is a UserError."""
    raw = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not raw:
        return 0
    what = "negative" if raw[:1] == "-" and raw[1:].isdigit() else "not a whole number"
    if not (raw.isascii() and raw.isdigit()):
        raise UserError(f"SOURCE_DATE_EPOCH={raw!r} is {what}: set it to the seconds since "
                        "1970 (0 or more) or unset it")
    if int(raw) > _MAX_EPOCH:
        raise UserError(f"SOURCE_DATE_EPOCH={raw} is out of range (0..{_MAX_EPOCH})")
    return int(raw)


# --- temporary files of killed writers -------------------------------------------------------


def _is_temp(entry: str, name: str | None = None) -> bool:
    """Whether ``entry`` is a temporary name :func:`temp_name` made (for ``name`` if given)."""
    if not (entry.startswith(".") and entry.endswith(_TEMP_SUFFIX)):
        return False
    stem, _, token = entry[1:-len(_TEMP_SUFFIX)].rpartition(".")
    if name is not None and stem != name:
        return False
    return bool(stem) and len(token) == _TEMP_HEX and all(c in "0123456789abcdef" for c in token)


def _remove_if_unheld(path: str) -> bool:
    """Remove the regular file ``path`` if no process holds its flock; whether it went."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # its writer lives
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return True
    finally:
        os.close(fd)


def remove_stale_tmp(parent: str, name: str) -> None:
    """Remove the temporary files of ``parent/name`` that no live writer holds."""
    remove_stale_temps(parent, name)


def remove_stale_temps(directory: Path | str, name: str | None = None) -> list[str]:
    """Remove the temporary files (:func:`temp_name`) in ``directory`` that no live writer
    holds, of every destination or of ``name`` only; the names removed."""
    try:
        entries = os.listdir(directory)
    except OSError:
        return []
    return [entry for entry in entries if _is_temp(entry, name)
            and _remove_if_unheld(os.path.join(directory, entry))]


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
