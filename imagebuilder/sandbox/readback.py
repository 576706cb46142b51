"""Reading what a sandboxed run left in its root, from the host, without trusting it.

The app could write anywhere in its root, so any path there may have become a symbolic link to a
host file, a FIFO that blocks, or a file of any size. Each component is opened relative to the
one before with O_NOFOLLOW (directories with O_DIRECTORY), the file without blocking, then
checked with fstat to be a regular file under a cap before a byte is read from that same fd.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from ..errors import ImageBuilderError


class Unsafe(ImageBuilderError):
    """A path in the sandbox's root is a link, not a regular file, or too large."""


def open_inside(root: Path, rel: str, cap: int) -> tuple[int, int]:
    """A read-only fd of the regular file ``rel`` under ``root`` and its size; FileNotFoundError
    if it is missing, Unsafe if it is anything but a regular file of at most ``cap`` bytes."""
    *parents, name = rel.strip("/").split("/")
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parents:
            fd, parent = _open_dir(part, fd, rel), fd
            os.close(parent)
        try:
            file = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
                           | os.O_CLOEXEC, dir_fd=fd)
        except OSError as exc:
            raise _refused(exc, rel) from None
    finally:
        os.close(fd)
    info = os.fstat(file)
    if not stat.S_ISREG(info.st_mode) or info.st_size > cap:
        os.close(file)
        raise Unsafe(f"/{rel} is a symbolic link or not a regular file (mode "
                     f"{stat.filemode(info.st_mode)})" if not stat.S_ISREG(info.st_mode) else
                     f"/{rel} is larger than {cap >> 20} MiB ({info.st_size} bytes)")
    return file, info.st_size


def _open_dir(name: str, dir_fd: int, rel: str) -> int:
    try:
        return os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                       dir_fd=dir_fd)
    except OSError as exc:
        raise _refused(exc, rel) from None


def _refused(exc: OSError, rel: str) -> Exception:
    if isinstance(exc, FileNotFoundError):
        return exc
    # ELOOP (a link), ENOTDIR (a link or a file where a directory belongs), ENXIO (a socket).
    return Unsafe(f"/{rel} is a symbolic link or not a regular file ({exc.strerror})")


def copy_out(root: Path, rel: str, dest: Path, cap: int) -> int:
    """Copy the regular file ``rel`` under ``root`` to ``dest`` (a new file, outside the root);
    its size."""
    fd, size = open_inside(root, rel, cap)
    with os.fdopen(fd, "rb") as src, open(dest, "xb") as out:
        shutil.copyfileobj(src, out)
        copied = out.tell()
    if copied > cap:
        dest.unlink()
        raise Unsafe(f"/{rel} grew beyond {cap >> 20} MiB while read")
    return size


def tail(root: Path, rel: str, limit: int, line_cap: int) -> str:
    """The last ``limit`` bytes of the regular file ``rel`` under ``root``, whole lines only
    (but for a first line cut by the limit, which is dropped), each cut at ``line_cap`` bytes."""
    fd, size = open_inside(root, rel, cap=1 << 62)
    with os.fdopen(fd, "rb") as f:
        f.seek(max(0, size - limit))
        data = f.read(limit)
    lines = data.split(b"\n")
    if size > limit:
        lines = lines[1:]
    return "\n".join(line[:line_cap].decode(errors="replace") for line in lines)
