"""Reading back a layer: the members of a zstd-compressed newc cpio, listed or unpacked.

`inspect --sizes` needs each member's path, type and size; the file bodies are skipped as they
stream past, so a layer is read in constant memory. The AOT training run needs the image's root
on disk: :func:`extract_layer` unpacks a layer as the kernel would (files with their mode and
mtime, which class data sharing checks; directories, symlinks), without root, so device nodes
are left out. The reader trusts nothing: a header that is not newc, a size past the end, a
member after the trailer, or a name that leaves the destination is a DamagedError.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

from ..errors import DamagedError

_MAGIC = b"070701"
_HEADER_SIZE = 110
_MAX_NAME = 4096
_TRAILER = b"TRAILER!!!"
_KINDS = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink",
          stat.S_IFCHR: "char", stat.S_IFBLK: "block"}


@dataclass(frozen=True)
class Member:
    """One archive member: its path (relative to the root), type and body size in bytes."""

    path: str
    kind: str
    size: int


def _read_exactly(stream: BinaryIO, n: int, what: str) -> bytes:
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            raise DamagedError(f"cpio archive ends inside {what}")
        data += chunk
    return data


def _skip(stream: BinaryIO, n: int, what: str) -> None:
    while n:
        chunk = stream.read(min(n, 1 << 20))
        if not chunk:
            raise DamagedError(f"cpio archive ends inside {what}")
        n -= len(chunk)


def members(stream: BinaryIO, dest: Path | None = None) -> Iterator[Member]:
    """The members of the uncompressed newc archive ``stream``, up to its trailer; each is
    unpacked below ``dest`` first when one is given."""
    offset = 0
    while True:
        head = _read_exactly(stream, _HEADER_SIZE, "a header")
        if head[:6] != _MAGIC:
            raise DamagedError(f"cpio header at byte {offset} is not newc (070701)")
        try:
            fields = [int(head[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        except ValueError:
            raise DamagedError(f"cpio header at byte {offset}: a field is not hex") from None
        mode, mtime, filesize, namesize = fields[1], fields[5], fields[6], fields[11]
        if not 0 < namesize <= _MAX_NAME:
            raise DamagedError(f"cpio header at byte {offset} has a name of {namesize} bytes")
        name_pad = -(_HEADER_SIZE + namesize) % 4
        raw = _read_exactly(stream, namesize + name_pad, "a name")[:namesize].rstrip(b"\x00")
        if raw == _TRAILER:
            return
        kind = _KINDS.get(stat.S_IFMT(mode), "other")
        member = Member(raw.decode("utf-8", "surrogateescape"), kind, filesize)
        if dest is None:
            _skip(stream, filesize, f"the body of {raw!r}")
        else:
            _unpack(stream, dest, member, stat.S_IMODE(mode), mtime)
        _skip(stream, -filesize % 4, f"the body of {raw!r}")
        yield member
        offset += _HEADER_SIZE + namesize + name_pad + filesize + (-filesize % 4)


def _target(dest: Path, name: str) -> Path:
    """Where member ``name`` goes below ``dest``; never outside it, even through a symlink."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or ".." in parts:
        raise DamagedError(f"cpio member name {name!r} leaves the archive's root")
    path = dest.joinpath(*parts)
    parent = os.path.realpath(path.parent)
    if not (parent == str(dest) or parent.startswith(str(dest) + os.sep)):
        raise DamagedError(f"cpio member {name!r} is below a symlink that leaves the root")
    return path


def _unpack(stream: BinaryIO, dest: Path, member: Member, mode: int, mtime: int) -> None:
    what = f"the body of {member.path!r}"
    path = _target(dest, member.path)
    if member.kind == "dir":
        path.mkdir(exist_ok=True)
        # Kept writable by its owner, so the scratch directory can be removed afterwards.
        path.chmod(mode | 0o700)
        _skip(stream, member.size, what)
        return
    if member.kind in ("file", "symlink") and (path.is_symlink() or path.exists()):
        if path.is_dir() and not path.is_symlink():
            raise DamagedError(f"cpio member {member.path!r} replaces a directory")
        path.unlink()
    if member.kind == "symlink":
        os.symlink(_read_exactly(stream, member.size, what).decode("utf-8", "surrogateescape"),
                   path)
        os.utime(path, (mtime, mtime), follow_symlinks=False)
    elif member.kind == "file":
        with open(path, "wb") as out:
            left = member.size
            while left:
                chunk = stream.read(min(left, 1 << 20))
                if not chunk:
                    raise DamagedError(f"cpio archive ends inside {what}")
                out.write(chunk)
                left -= len(chunk)
        path.chmod(mode & 0o777 | 0o600)
        os.utime(path, (mtime, mtime))
    else:  # device nodes and the like need root: /dev is mounted apart
        _skip(stream, member.size, what)


def extract_layer(path: Path, dest: Path) -> int:
    """Unpack the layer file ``path`` into the directory ``dest`` (over what an earlier layer
    put there, like the kernel); the number of members."""
    dest.mkdir(parents=True, exist_ok=True)
    dest = Path(os.path.realpath(dest))
    return sum(1 for _ in layer_members(path, dest))


def layer_members(path: Path, dest: Path | None = None) -> Iterator[Member]:
    """The members of the layer file ``path`` (a zstd-compressed newc cpio), unpacked below
    ``dest`` if given."""
    with open(path, "rb") as raw:
        try:
            with zstandard.ZstdDecompressor().stream_reader(raw, read_size=1 << 20,
                                                             read_across_frames=True) as stream:
                yield from members(stream, dest)  # type: ignore[arg-type]
        except zstandard.ZstdError as exc:
            raise DamagedError(f"layer {path.name} does not decompress: {exc}") from None
