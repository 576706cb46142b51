"""Reading back a layer: the members of a zstd-compressed newc cpio, without unpacking it.

`inspect --sizes` needs each member's path, type and size; the file bodies are skipped as they
stream past, so a layer is read in constant memory. The reader trusts nothing: a header that is
not newc, a size past the end or a member after the trailer is a DamagedError.
"""

from __future__ import annotations

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


def members(stream: BinaryIO) -> Iterator[Member]:
    """The members of the uncompressed newc archive ``stream``, up to its trailer."""
    offset = 0
    while True:
        head = _read_exactly(stream, _HEADER_SIZE, "a header")
        if head[:6] != _MAGIC:
            raise DamagedError(f"cpio header at byte {offset} is not newc (070701)")
        try:
            fields = [int(head[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        except ValueError:
            raise DamagedError(f"cpio header at byte {offset}: a field is not hex") from None
        mode, filesize, namesize = fields[1], fields[6], fields[11]
        if not 0 < namesize <= _MAX_NAME:
            raise DamagedError(f"cpio header at byte {offset} has a name of {namesize} bytes")
        name_pad = -(_HEADER_SIZE + namesize) % 4
        raw = _read_exactly(stream, namesize + name_pad, "a name")[:namesize].rstrip(b"\x00")
        if raw == _TRAILER:
            return
        _skip(stream, filesize + (-filesize % 4), f"the body of {raw!r}")
        kind = _KINDS.get(stat.S_IFMT(mode), "other")
        yield Member(raw.decode("utf-8", "surrogateescape"), kind, filesize)
        offset += _HEADER_SIZE + namesize + name_pad + filesize + (-filesize % 4)


def layer_members(path: Path) -> Iterator[Member]:
    """The members of the layer file ``path`` (a zstd-compressed newc cpio)."""
    with open(path, "rb") as raw:
        try:
            with zstandard.ZstdDecompressor().stream_reader(raw, read_size=1 << 20,
                                                             read_across_frames=True) as stream:
                yield from members(stream)  # type: ignore[arg-type]
        except zstandard.ZstdError as exc:
            raise DamagedError(f"layer {path.name} does not decompress: {exc}") from None
