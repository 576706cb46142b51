"""A small, deterministic writer of uncompressed EROFS images, so a layer can live on a disk.

EROFS (the kernel's Enhanced Read-Only File System, Documentation/filesystems/erofs.rst) is
what disk boots mount their layers from instead of unpacking them into RAM: a read-only
filesystem whose pages the kernel reads on demand and may drop again. This writer makes the
plainest form of it, which every kernel since 5.4 reads and erofs-utils' ``fsck.erofs``
checks:

- 4 KiB blocks; the superblock at byte 1024 of block 0; no compression, no xattrs, no
  checksum feature;
- the metadata area starts at block 0 (``meta_blkaddr`` 0): inodes are packed right after the
  superblock, each 32-byte aligned (a node id, *nid*, is its offset / 32, so the root, placed
  first, is nid 36); an inode is *compact* (32 bytes) unless its owner, size or mtime needs
  the *extended* (64-byte) form;
- a file's (directory's, symlink's) data is its whole blocks in the data area after the
  metadata (``FLAT_PLAIN``), and its last partial block is kept *inline*, right after the inode
  (``FLAT_INLINE``), when it fits in the rest of the inode's block; a file's blocks of zeros
  are never written, so they stay holes of the image file (a 2 GB sparse file costs the image
  no disk space; EROFS reads them back as zeros all the same);
- a directory's data is blocks of 12-byte dirents (nid, name offset, type) followed by their
  names, sorted by name bytes ('.' and '..' included), a block never split inside an entry.

A name over 255 bytes (EROFS_NAME_LEN, which ``fsck.erofs`` and the kernel reject as a bogus
dirent) or a path over 4095 bytes (PATH_MAX with its NUL) is refused with a UserError naming the
entry, before anything is written.

The image is a pure function of its input (nodes in a fixed order, every field from the
input or a constant), so the same layer gives the same bytes on any machine. Nothing needs
root: modes, owners and device numbers are just numbers written into inodes.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import BinaryIO, Literal

from .cpio import check_entry_path

BLOCK_BITS = 12
BLOCK = 1 << BLOCK_BITS
MAGIC = 0xE0F5E1E2
SUPER_OFFSET = 1024
_SUPER_SIZE = 128
_SLOT = 32  # inodes are 32-byte aligned; a nid counts slots
_META_START = SUPER_OFFSET + _SUPER_SIZE
_NULL_ADDR = 0xFFFFFFFF
_DIRENT = struct.Struct("<QHBB")
_COMPACT = struct.Struct("<HHHHIIIIHHI")
_EXTENDED = struct.Struct("<HHHHQIIIIQII16x")
_FLAT_PLAIN, _FLAT_INLINE = 0, 2
_MODE_BITS = {"file": 0o100000, "dir": 0o040000, "symlink": 0o120000, "char": 0o020000,
              "block": 0o060000, "fifo": 0o010000, "socket": 0o140000}
_FILE_TYPES = {"file": 1, "dir": 2, "char": 3, "block": 4, "fifo": 5, "socket": 6, "symlink": 7}
_MAX_U16 = 0xFFFF
_MAX_U32 = 0xFFFFFFFF

Kind = Literal["file", "dir", "symlink", "char", "block", "fifo", "socket"]


@dataclass
class Node:
    """One inode of the image. ``children`` maps names to nodes (directories only); ``data``
    is a symlink's target; a regular file's bytes come from the ``bodies`` callback of
    :func:`write_image`, keyed by ``body``."""

    kind: Kind
    mode: int  #: permission bits (0..0o7777)
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    size: int = 0  #: a regular file's size in bytes
    rdev: tuple[int, int] = (0, 0)
    data: bytes = b""
    body: int = -1  #: the key of a regular file's bytes for ``bodies``
    children: dict[bytes, Node] = field(default_factory=dict)
    # set by the layout
    nid: int = 0
    _inline: bool = False
    _blkaddr: int = _NULL_ADDR
    _extended: bool = False
    _content: bytes = b""  #: a directory's or symlink's bytes


@dataclass(frozen=True)
class Layout:
    """Where everything goes: the image's size in blocks, and the nodes in inode order."""

    blocks: int
    nodes: tuple[Node, ...]


def _dir_blocks(node: Node, parent: Node) -> bytes:
    """The directory's data: dirent blocks, the last one cut after its last name."""
    entries = sorted([(b".", node), (b"..", parent), *node.children.items()],
                     key=lambda item: item[0])
    blocks: list[bytes] = []
    i = 0
    while i < len(entries):
        j, used = i, 0
        while j < len(entries) and used + _DIRENT.size + len(entries[j][0]) <= BLOCK:
            used += _DIRENT.size + len(entries[j][0])
            j += 1
        if j == i:
            raise ValueError(f"a name of {len(entries[i][0])} bytes does not fit a block")
        chunk = entries[i:j]
        nameoff = _DIRENT.size * len(chunk)
        heads, names = [], []
        for name, child in chunk:
            heads.append(_DIRENT.pack(child.nid, nameoff, _FILE_TYPES[child.kind], 0))
            names.append(name)
            nameoff += len(name)
        blocks.append(b"".join(heads) + b"".join(names))
        i = j
    return b"".join(block.ljust(BLOCK, b"\0") for block in blocks[:-1]) + blocks[-1]


def _order(root: Node) -> list[tuple[Node, Node]]:
    """Every node with its parent, depth first, children by name: the inode order."""
    out: list[tuple[Node, Node]] = []
    stack: list[tuple[Node, Node]] = [(root, root)]
    while stack:
        node, parent = stack.pop()
        out.append((node, parent))
        for name in sorted(node.children, reverse=True):
            stack.append((node.children[name], node))
    return out


def _data_size(node: Node) -> int:
    return node.size if node.kind == "file" else len(node._content)


def layout(root: Node, build_time: int) -> Layout:
    """Give every node its nid, inode form and data placement.

    Directory contents name their children's nids, which depend on where the inodes land,
    which depends on the inline tails' sizes: a directory's size does not depend on nids, so
    one pass sizes everything and assigns nids, a second fills in the directory bytes.
    """
    ordered = _order(root)
    for node, _ in ordered:
        if node.kind == "symlink":
            node._content = node.data
        elif node.kind == "dir":
            node._content = _dir_blocks(node, node)  # nids are 0 for now; the size is final
    pos = _META_START
    data_blocks = 0
    plans: list[tuple[Node, int]] = []
    for node, _ in ordered:
        size = _data_size(node)
        node._extended = (node.uid > _MAX_U16 or node.gid > _MAX_U16 or size > _MAX_U32
                          or node.mtime != build_time or _nlink(node) > _MAX_U16)
        isize = _EXTENDED.size if node._extended else _COMPACT.size
        tail = size % BLOCK
        node._inline = False
        if tail and node.kind in ("file", "dir", "symlink"):
            room = BLOCK - pos % BLOCK
            if isize + tail <= room:
                node._inline = True
            elif tail <= BLOCK // 2 and isize + tail <= BLOCK:
                pos += room  # start a fresh block: the tail must not cross a block boundary
                node._inline = True
        node.nid = pos // _SLOT
        full = size // BLOCK if node._inline else -(-size // BLOCK)
        plans.append((node, full))
        pos += isize + (tail if node._inline else 0)
        pos = -(-pos // _SLOT) * _SLOT
    if root.nid > _MAX_U16:
        raise AssertionError("the root inode must come first")
    data_start = -(-pos // BLOCK)
    for node, full in plans:
        node._blkaddr = data_start + data_blocks if full else _NULL_ADDR
        data_blocks += full
    for node, parent in ordered:
        if node.kind == "dir":
            node._content = _dir_blocks(node, parent)
    return Layout(blocks=data_start + data_blocks, nodes=tuple(node for node, _ in ordered))


def _nlink(node: Node) -> int:
    if node.kind != "dir":
        return 1
    return 2 + sum(1 for child in node.children.values() if child.kind == "dir")


def _inode(node: Node, ino: int) -> bytes:
    size = _data_size(node)
    layout_bits = _FLAT_INLINE if node._inline else _FLAT_PLAIN
    mode = _MODE_BITS[node.kind] | node.mode
    if node.kind in ("char", "block"):
        major, minor = node.rdev
        i_u = (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)
    elif node.kind in ("fifo", "socket") or size == 0:
        i_u = 0
    else:
        i_u = node._blkaddr
    if node._extended:
        return _EXTENDED.pack(1 | layout_bits << 1, 0, mode, 0, size, i_u & _MAX_U32, ino,
                              node.uid, node.gid, node.mtime, 0, _nlink(node))
    return _COMPACT.pack(layout_bits << 1, 0, mode, _nlink(node), size, 0, i_u & _MAX_U32, ino,
                         node.uid, node.gid, 0)


def superblock(root: Node, inodes: int, blocks: int, build_time: int, uuid: bytes,
               volume: bytes) -> bytes:
    """The 128-byte superblock."""
    head = struct.pack("<IIIBBHQQIIII16s16sI", MAGIC, 0, 0, BLOCK_BITS, 0, root.nid, inodes,
                       build_time, 0, blocks, 0, 0, uuid, volume, 0)
    return head.ljust(_SUPER_SIZE, b"\0")


Bodies = Callable[[], Iterable[tuple[int, Iterable[bytes]]]]
"""Yields ``(body, chunks)`` for every regular file with data, in any order: the file's key
(:attr:`Node.body`) and its bytes."""


def write_image(root: Node, out: BinaryIO, bodies: Bodies, *, build_time: int = 0,
                uuid: bytes = bytes(16), volume: str = "") -> int:
    """Write the tree under ``root`` as an EROFS image to ``out`` (a seekable, empty file)
    and return its size in bytes. Regions left unwritten (padding) are holes, read as zeros.
    """
    if len(uuid) != 16:
        raise ValueError("uuid must be 16 bytes")
    check_names(root, volume or "the layer")
    plan = layout(root, build_time)
    size = plan.blocks * BLOCK
    fd = out.fileno()
    os.ftruncate(fd, size)
    meta: dict[int, bytes] = {}
    by_body: dict[int, Node] = {}
    for ino, node in enumerate(plan.nodes, start=1):
        record = _inode(node, ino)
        content = node._content
        if node._inline:
            full = len(content) // BLOCK * BLOCK if node.kind != "file" else 0
            record += content[full:]
        meta[node.nid * _SLOT] = record
        if node.kind != "file" and content and node._blkaddr != _NULL_ADDR:
            whole = len(content) // BLOCK * BLOCK if node._inline else len(content)
            os.pwrite(fd, content[:whole], node._blkaddr * BLOCK)
        if node.kind == "file" and node.size:
            by_body[node.body] = node
    os.pwrite(fd, superblock(root, len(plan.nodes), plan.blocks, build_time, uuid,
                             volume.encode()[:16]), SUPER_OFFSET)
    for offset, record in meta.items():
        os.pwrite(fd, record, offset)
    for key, chunks in bodies():
        if key in by_body:
            _write_body(fd, by_body.pop(key), chunks)
    if by_body:
        raise ValueError(f"{len(by_body)} file(s) got no bytes")
    return size


def check_names(root: Node, layer: str) -> None:
    """UserError naming the first entry under ``root`` whose name is over 255 bytes or whose
    path is over 4095 (:func:`imagebuilder.layers.cpio.check_entry_path`): EROFS cannot hold
    the first, Linux cannot open the second."""
    stack: list[tuple[bytes, Node]] = [(b"", root)]
    while stack:
        path, node = stack.pop()
        for name in sorted(node.children, reverse=True):
            child_path = path + b"/" + name if path else name
            check_entry_path(child_path, layer)
            stack.append((child_path, node.children[name]))


def _write_sparse(fd: int, data: bytes, length: int, offset: int) -> None:
    """Write ``data[:length]`` at ``offset`` of the image, leaving out its blocks of zeros:
    the image was truncated to its size, so they stay holes that read as zeros, and a sparse
    (or zero-filled) file of the layer costs no disk space in the image."""
    if data.count(0, 0, length) == length:
        return
    view = memoryview(data)
    run = -1  # start of the pending run of blocks holding data
    pos = 0
    while pos < length:
        stop = min(length, pos + BLOCK - (offset + pos) % BLOCK)
        zero = data.count(0, pos, stop) == stop - pos
        if zero and run >= 0:
            _pwrite_all(fd, view[run:pos], offset + run)
            run = -1
        elif not zero and run < 0:
            run = pos
        pos = stop
    if run >= 0:
        _pwrite_all(fd, view[run:length], offset + run)


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _write_body(fd: int, node: Node, chunks: Iterable[bytes]) -> None:
    """A file's bytes: the whole blocks to its data blocks, an inline tail after its inode."""
    whole = node.size // BLOCK * BLOCK if node._inline else node.size
    inline_at = node.nid * _SLOT + (_EXTENDED.size if node._extended else _COMPACT.size)
    done = 0
    for chunk in chunks:
        if done + len(chunk) > node.size:
            raise ValueError("a file has more bytes than its size")
        view = memoryview(chunk)
        if done < whole:
            n = min(len(view), whole - done)
            _write_sparse(fd, chunk, n, node._blkaddr * BLOCK + done)
            view = view[n:]
            done += n
        if len(view):
            os.pwrite(fd, view, inline_at + done - whole)
            done += len(view)
    if done != node.size:
        raise ValueError("a file has fewer bytes than its size")
