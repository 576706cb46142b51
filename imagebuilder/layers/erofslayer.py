"""A layer's EROFS image: its cpio archive turned into a filesystem a disk boot mounts.

Disk boots carry each layer as an EROFS partition (see :mod:`imagebuilder.disk.bootable`), so the
root is read from the disk on demand instead of unpacked into RAM. The image is derived from the
layer alone (its zstd-compressed newc cpio), deterministically, so it is cached by the layer's
digest like any stage. The archive is read twice, streaming: once for the headers (paths,
modes, owners, symlink targets), which fix the layout, once for the file bodies, written where
the layout put them. Nothing is unpacked to the host's filesystem and nothing needs root.

The result is what the kernel's initramfs unpacker would make of the same archive: a later
member replaces an earlier one at the same path (a directory stays a directory, keeping its
contents), missing parent directories appear as root-owned 0755 directories, and the root is
root-owned 0755 unless the archive names ``.``. Hard links are refused (imagebuilder's layers
have none), and so is an entry with a name over 255 bytes or a path over 4095 (one line naming
it, before anything is written): the kernel would not unpack it either.
"""

from __future__ import annotations

import hashlib
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

from ..errors import DamagedError
from ..fsutil import atomic_output
from .erofs import Kind, Node, check_names, write_image

_MAGIC = b"070701"
_HEADER_SIZE = 110
_MAX_NAME = 4096
_MAX_LINK = 4095
_TRAILER = b"TRAILER!!!"
_KINDS: dict[int, Kind] = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink",
                           stat.S_IFCHR: "char", stat.S_IFBLK: "block", stat.S_IFIFO: "fifo",
                           stat.S_IFSOCK: "socket"}
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Header:
    """One newc member's header (its body not read)."""

    index: int
    path: bytes  #: relative, normalized; b"" for the root
    kind: Kind
    mode: int
    uid: int
    gid: int
    nlink: int
    mtime: int
    size: int
    rdev: tuple[int, int]


def _read_exactly(stream: BinaryIO, n: int, what: str) -> bytes:
    parts, got = [], 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            raise DamagedError(f"cpio archive ends inside {what}")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _body_chunks(stream: BinaryIO, size: int, what: str) -> Iterator[bytes]:
    left = size
    while left:
        chunk = stream.read(min(left, _CHUNK))
        if not chunk:
            raise DamagedError(f"cpio archive ends inside {what}")
        left -= len(chunk)
        yield chunk
    pad = -size % 4
    if pad:
        _read_exactly(stream, pad, what)


def _normalize(raw: bytes, offset: int) -> bytes:
    parts = [p for p in raw.split(b"/") if p not in (b"", b".")]
    if b".." in parts:
        raise DamagedError(f"cpio member at byte {offset} names a path with '..': {raw!r}")
    return b"/".join(parts)


def scan(stream: BinaryIO) -> Iterator[tuple[Header, Iterator[bytes]]]:
    """Each member of the uncompressed newc archive ``stream`` with its body's chunks, which
    must be consumed (or are skipped) before the next member is asked for."""
    offset = 0
    index = 0
    while True:
        head = _read_exactly(stream, _HEADER_SIZE, "a header")
        if head[:6] != _MAGIC:
            raise DamagedError(f"cpio header at byte {offset} is not newc (070701)")
        try:
            f = [int(head[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        except ValueError:
            raise DamagedError(f"cpio header at byte {offset}: a field is not hex") from None
        mode, uid, gid, nlink, mtime, size, namesize = f[1], f[2], f[3], f[4], f[5], f[6], f[11]
        if not 0 < namesize <= _MAX_NAME:
            raise DamagedError(f"cpio header at byte {offset} has a name of {namesize} bytes")
        pad = -(_HEADER_SIZE + namesize) % 4
        raw = _read_exactly(stream, namesize + pad, "a name")[:namesize].rstrip(b"\0")
        if raw == _TRAILER:
            return
        kind = _KINDS.get(stat.S_IFMT(mode))
        if kind is None:
            raise DamagedError(f"cpio member {raw!r} has an unknown file type {mode:o}")
        if kind == "file" and nlink > 1:
            raise DamagedError(f"cpio member {raw!r} is a hard link: not supported in a layer")
        if kind != "file" and kind != "symlink" and size:
            raise DamagedError(f"cpio member {raw!r} ({kind}) has a body of {size} bytes")
        header = Header(index, _normalize(raw, offset), kind, stat.S_IMODE(mode), uid, gid,
                        nlink, mtime, size, (f[9], f[10]))
        body = _body_chunks(stream, size, f"the body of {raw!r}")
        yield header, body
        for _ in body:  # whatever the caller left unread
            pass
        offset += _HEADER_SIZE + namesize + pad + size + (-size % 4)
        index += 1


def _open(layer: Path) -> Iterator[BinaryIO]:
    """The layer's archive, decompressed as it is read (a ZstdError on a damaged frame)."""
    with open(layer, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(
            raw, read_size=_CHUNK, read_across_frames=True) as stream:
        yield stream  # type: ignore[misc]


def tree_of(headers: Iterable[tuple[Header, bytes]]) -> tuple[Node, int]:
    """The node tree the archive unpacks to, and the most common mtime (the build time).

    ``headers`` are the members with their symlink targets (b"" for other kinds)."""
    root = Node("dir", 0o755)
    nodes: dict[bytes, Node] = {b"": root}
    mtimes: dict[int, int] = {}
    for h, target in headers:
        mtimes[h.mtime] = mtimes.get(h.mtime, 0) + 1
        if h.path == b"":
            if h.kind != "dir":
                raise DamagedError("the layer's root member is not a directory")
            root.mode, root.uid, root.gid, root.mtime = h.mode, h.uid, h.gid, h.mtime
            continue
        parent_path, _, name = h.path.rpartition(b"/")
        parent = _parent(nodes, parent_path)
        old = parent.children.get(name)
        if old is not None and old.kind == "dir" and h.kind == "dir":
            old.mode, old.uid, old.gid, old.mtime = h.mode, h.uid, h.gid, h.mtime
            continue
        if old is not None and old.kind == "dir":
            _forget(nodes, h.path)
        node = Node(h.kind, h.mode, h.uid, h.gid, h.mtime, h.size if h.kind == "file" else 0,
                    h.rdev, target, h.index)
        parent.children[name] = node
        nodes[h.path] = node
    build_time = max(mtimes, key=lambda t: (mtimes[t], -t)) if mtimes else 0
    _implicit_mtimes(root, build_time)
    return root, build_time


def _parent(nodes: dict[bytes, Node], path: bytes) -> Node:
    node = nodes.get(path)
    if node is None:
        up, _, name = path.rpartition(b"/")
        parent = _parent(nodes, up)
        node = Node("dir", 0o755, mtime=-1)
        parent.children[name] = node
        nodes[path] = node
    if node.kind != "dir":
        raise DamagedError(f"the layer puts a member inside {path!r}, which is a {node.kind}")
    return node


def _forget(nodes: dict[bytes, Node], path: bytes) -> None:
    prefix = path + b"/"
    for key in [k for k in nodes if k == path or k.startswith(prefix)]:
        del nodes[key]


def _implicit_mtimes(root: Node, build_time: int) -> None:
    stack = [root]
    while stack:
        node = stack.pop()
        if node.mtime == -1:
            node.mtime = build_time
        stack.extend(node.children.values())


def write_erofs(layer: Path, dest: Path, *, name: str = "", seed: bytes = b"") -> int:
    """Write the EROFS image of the layer file ``layer`` (a zstd-compressed newc cpio) to
    ``dest``; return its size. ``dest`` appears complete (fsynced) or not at all
    (:func:`fsutil.atomic_output`). The UUID is
    derived from ``seed`` (e.g. the layer's digest), the volume name is ``name``."""

    def headers() -> Iterator[tuple[Header, bytes]]:
        for stream in _open(layer):
            for h, body in scan(stream):
                yield h, (b"".join(body) if h.kind == "symlink" else b"")

    try:
        root, build_time = tree_of(headers())
    except zstandard.ZstdError as exc:
        raise DamagedError(f"layer {layer.name} does not decompress: {exc}") from None
    check_names(root, f"layer {name or layer.name}")
    wanted = {node.body for node in _files(root)}

    def bodies() -> Iterator[tuple[int, Iterable[bytes]]]:
        for stream in _open(layer):
            for h, body in scan(stream):
                if h.index in wanted:
                    yield h.index, body

    uuid = hashlib.sha256(b"erofs uuid\0" + seed).digest()[:16]
    with atomic_output(dest) as fd, open(fd, "wb", closefd=False) as out:
        try:
            size = write_image(root, out, bodies, build_time=build_time, uuid=uuid,
                               volume=name)
        except zstandard.ZstdError as exc:
            raise DamagedError(f"layer {layer.name} does not decompress: {exc}") from None
        out.flush()
    return size


def _files(root: Node) -> Iterator[Node]:
    stack = [root]
    while stack:
        node = stack.pop()
        if node.kind == "file" and node.size:
            yield node
        stack.extend(node.children.values())
