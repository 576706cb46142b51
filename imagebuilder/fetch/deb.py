"""Unpack the files of a Debian package without dpkg and without root.

Layers are built from the contents of ``.deb`` files, on any host, by an unprivileged user. A
``.deb`` is an ``ar`` archive whose ``data.tar[.xz|.zst|.gz|.bz2]`` member holds the files; this
module streams that member through the right decompressor into ``tarfile`` and writes regular
files, directories, symlinks and hard links, keeping modes but not owners and skipping device
nodes and fifos (an initramfs gets those from devtmpfs).

Extraction is confined to the destination: member names that are absolute or climb out with
``..`` are refused, and symlinks already in the tree are followed the way they would be inside a
chroot of the destination (an absolute target means the destination's root), so no member can be
written outside it. Symlinks themselves are kept verbatim, absolute targets included: Debian
packages ship many.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import shutil
import tarfile
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, cast

import zstandard

from ..errors import FetchError

AR_MAGIC = b"!<arch>\n"
AR_HEADER = 60
MAX_SYMLINK_HOPS = 40
DAMAGED = (tarfile.TarError, EOFError, lzma.LZMAError, zstandard.ZstdError, gzip.BadGzipFile)


def extract_deb(deb: Path, dest: Path) -> None:
    """Unpack the data files of the package ``deb`` into the directory ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    with _data_tar(deb) as tar:
        _extract_members(tar, dest, deb)


def list_deb(deb: Path) -> list[str]:
    """The paths (without a leading ``./``) of the regular files and symlinks ``deb`` holds."""
    with _data_tar(deb) as tar:
        return [m.name.removeprefix("./") for m in tar if m.isfile() or m.issym()]


@contextmanager
def _data_tar(deb: Path) -> Iterator[tarfile.TarFile]:
    """The package's data.tar as a stream; damage inside it raises FetchError."""
    with open(deb, "rb") as raw:
        name, size = _find_data_member(raw, deb)
        stream = _decompressed(name, io.BufferedReader(_Bounded(raw, size), 1024 * 1024))
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                yield tar
        except DAMAGED as exc:
            raise FetchError(f"{deb}: damaged package data ({exc})") from None


def _find_data_member(raw: BinaryIO, deb: Path) -> tuple[str, int]:
    """Position ``raw`` at the start of the data.tar member; return its name and size."""
    if raw.read(len(AR_MAGIC)) != AR_MAGIC:
        raise FetchError(f"{deb} is not a Debian package (no ar archive header)")
    while True:
        header = raw.read(AR_HEADER)
        if len(header) < AR_HEADER:
            raise FetchError(f"{deb} has no data.tar member")
        if header[58:60] != b"`\n":
            raise FetchError(f"{deb} is damaged (bad ar member header)")
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError:
            raise FetchError(f"{deb} is damaged (bad ar member size)") from None
        if name == "data.tar" or name.startswith("data.tar."):
            return name, size
        raw.seek(size + (size & 1), io.SEEK_CUR)


def _decompressed(name: str, raw: BinaryIO) -> BinaryIO:
    """A readable stream of the uncompressed tar for the data member ``name``."""
    suffix = name.removeprefix("data.tar")
    if suffix == "":
        return raw
    if suffix == ".xz":
        return cast(BinaryIO, lzma.open(raw, "rb"))
    if suffix == ".zst":
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    if suffix == ".gz":
        return cast(BinaryIO, gzip.GzipFile(fileobj=raw, mode="rb"))
    if suffix == ".bz2":
        return cast(BinaryIO, bz2.open(raw, "rb"))
    raise FetchError(f"unsupported package data compression: {name}")


class _Bounded(io.RawIOBase):
    """The next ``size`` bytes of ``raw`` as a file of their own."""

    def __init__(self, raw: BinaryIO, size: int) -> None:
        self._raw = raw
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        want = min(len(buffer), self._left)
        if want <= 0:
            return 0
        data = self._raw.read(want)
        buffer[: len(data)] = data
        self._left -= len(data)
        return len(data)


def _extract_members(tar: tarfile.TarFile, dest: Path, deb: Path) -> None:
    dir_modes: list[tuple[Path, int]] = []
    for member in tar:
        parts = _safe_parts(member.name, deb)
        if not parts:
            continue
        if member.isdir():
            path = _resolve(dest, parts)
            path.mkdir(parents=True, exist_ok=True)
            dir_modes.append((path, member.mode & 0o7777))
            continue
        if not (member.isreg() or member.issym() or member.islnk()):
            continue  # device nodes and fifos
        target = _resolve(dest, parts[:-1]) / parts[-1]
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_existing(target, deb)
        if member.isreg():
            _write_file(tar, member, target)
        elif member.issym():
            os.symlink(member.linkname, target)
        else:
            source_parts = _safe_parts(member.linkname, deb)
            source = _resolve(dest, source_parts[:-1]) / source_parts[-1]
            os.link(source, target, follow_symlinks=False)
    for path, mode in sorted(dir_modes, reverse=True):
        os.chmod(path, mode)


def _safe_parts(name: str, deb: Path) -> list[str]:
    """Path components of a member name; refuse absolute names and ``..``."""
    if name.startswith("/"):
        raise FetchError(f"{deb}: refusing member with an absolute path: {name}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise FetchError(f"{deb}: refusing member that climbs out with '..': {name}")
    return parts


def _resolve(root: Path, parts: list[str]) -> Path:
    """The real location of ``parts`` under ``root``, following symlinks as in a chroot."""
    done: list[str] = []
    todo = deque(parts)
    hops = 0
    while todo:
        part = todo.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        path = root.joinpath(*done, part)
        if not path.is_symlink():
            done.append(part)
            continue
        hops += 1
        if hops > MAX_SYMLINK_HOPS:
            raise FetchError(f"too many levels of symbolic links under {root}: {'/'.join(parts)}")
        target = os.readlink(path)
        if target.startswith("/"):
            done = []
        todo.extendleft(reversed(target.split("/")))
    return root.joinpath(*done)


def _remove_existing(target: Path, deb: Path) -> None:
    """Make room for a new non-directory member at ``target``, as tar does."""
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.is_dir():
        try:
            target.rmdir()
        except OSError:
            raise FetchError(
                f"{deb}: cannot replace the non-empty directory {target} with a file or link"
            ) from None
    elif target.exists():
        target.unlink()


def _write_file(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
    source = tar.extractfile(member)
    assert source is not None  # a regular member always has data
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(target, flags, 0o600)
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(source, out, 1024 * 1024)
        os.fchmod(out.fileno(), member.mode & 0o7777)
    os.utime(target, (member.mtime, member.mtime), follow_symlinks=False)
