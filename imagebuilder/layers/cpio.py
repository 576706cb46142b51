"""Deterministic initramfs layers: an in-memory tree written as a zstd-compressed newc cpio.

The kernel unpacks concatenated initramfs archives in order, so an image's root filesystem is a
stack of independent layers (base, jvm, app). For a layer to be cached, content-addressed and
uploaded once, the same tree must give the same bytes on every machine: entries are sorted by path
bytes, inode numbers are assigned in that order, owners and mtimes are fixed, and nothing from the
host (inode numbers, timestamps, user ids, umask) leaks in.

The zstd frame is written in zstd's multithreaded mode even with one worker: its output does not
depend on the number of workers (checked by the tests), so ``threads`` only changes speed, never
bytes. The window is capped at 8 MiB (windowLog 23) so the kernel's streaming decompressor
(lib/decompress_unzstd.c) needs little memory at early boot.
"""

from __future__ import annotations

import os
import posixpath
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import zstandard

from ..errors import HostError, UserError
from ..fsutil import Identity, atomic_output, open_source, shown_path, source_identity
from ..fsutil import source_date_epoch as source_date_epoch  # the build reads it from here

Kind = Literal["file", "dir", "symlink", "char", "block"]

CHUNK_SIZE = 1 << 20
MAX_WINDOW_LOG = 23
_MAX_U32 = 0xFFFFFFFF
_TRAILER = "TRAILER!!!"

_TYPE_BITS: dict[str, int] = {
    "file": stat.S_IFREG,
    "dir": stat.S_IFDIR,
    "symlink": stat.S_IFLNK,
    "char": stat.S_IFCHR,
    "block": stat.S_IFBLK,
}


@dataclass(frozen=True)
class Entry:
    """One archive member. ``mode`` holds permission bits only; the type comes from ``kind``."""

    path: str
    kind: Kind
    mode: int
    uid: int = 0
    gid: int = 0
    source: Path | None = None
    data: bytes | None = None
    target: str | None = None
    rdev: tuple[int, int] = (0, 0)
    identity: Identity | None = None


def normalize_path(path: str | os.PathLike[str]) -> str:
    """``path`` as an archive member name: relative, no '.', no '..', no doubled or trailing '/'.

    Leading '/' is dropped ("/bin/sh" -> "bin/sh"). '..' and the root itself are refused.
    """
    raw = os.fspath(path)
    if "\x00" in raw:
        raise ValueError(f"path {raw!r} contains a NUL byte")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if not parts:
        raise ValueError(f"path {raw!r} names the root; give a file or directory inside it")
    if ".." in parts:
        raise ValueError(f"path {raw!r} contains '..'")
    return "/".join(parts)


NAME_MAX = 255
"""Longest name (one path component) in bytes: Linux's NAME_MAX, EROFS's EROFS_NAME_LEN."""
PATH_MAX = 4096
"""Longest path in bytes with its NUL: Linux's PATH_MAX, the largest name the kernel's
initramfs unpacker accepts."""


def check_entry_path(path: bytes, layer: str = "the layer") -> None:
    """UserError unless ``path`` (an entry's path in a layer, relative, '/'-separated) has no
    component over :data:`NAME_MAX` bytes and fits :data:`PATH_MAX` with its NUL. The kernel
    would not create such an entry (a file silently missing), and an EROFS image holding one
    is corrupt; so the cpio and EROFS writers refuse it, naming it."""
    if len(path) + 1 > PATH_MAX:
        raise UserError(f"{layer}: entry {shown_path(path)} is a path of {len(path)} bytes; Linux "
                        f"allows at most {PATH_MAX - 1}: shorten it")
    for part in path.split(b"/"):
        if len(part) > NAME_MAX:
            raise UserError(f"{layer}: entry {shown_path(path)} has a name of {len(part)} bytes; "
                            f"Linux allows at most {NAME_MAX}: rename it")


def _check_mode(mode: int) -> int:
    if not isinstance(mode, int) or mode < 0 or mode & ~0o7777:
        raise ValueError(f"mode {mode!r} is not a set of permission bits (0..0o7777)")
    return mode


def _check_id(value: int, what: str) -> int:
    if not isinstance(value, int) or not 0 <= value <= _MAX_U32:
        raise ValueError(f"{what} {value!r} is out of range")
    return value


class Tree:
    """An in-memory filesystem tree, the input of a layer.

    Paths are relative to the root of the layer ('/bin/sh' and 'bin/sh' are the same). Adding a
    path again replaces the earlier entry. Missing parent directories appear in :meth:`entries`
    as 0o755 root-owned directories.
    """

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}

    def __contains__(self, path: object) -> bool:
        if not isinstance(path, str | os.PathLike):
            return False
        try:
            return normalize_path(path) in self._entries
        except ValueError:
            return False

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, path: str) -> Entry | None:
        """The entry explicitly added at ``path``, if any."""
        return self._entries.get(normalize_path(path))

    def _put(self, entry: Entry) -> None:
        check_entry_path(_path_key(entry.path))
        self._entries[entry.path] = entry

    def add_file(
        self,
        path: str,
        *,
        source: Path | None = None,
        data: bytes | None = None,
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        identity: Identity | None = None,
    ) -> None:
        """A regular file whose contents come from ``source`` (read at write time) or ``data``.

        The writer reads exactly the file ``source`` is now (:func:`open_source`): ``identity``
        is what the build recorded when it read ``source`` (a real path) earlier, as
        :func:`source_identity` gives it; without it, it is recorded here."""
        if (source is None) == (data is None):
            raise ValueError("add_file needs exactly one of source= or data=")
        if data is not None and len(data) > _MAX_U32:
            raise ValueError(f"{path}: newc cpio cannot hold files of 4 GiB or more")
        if source is not None and identity is None:
            source, identity = source_identity(Path(source))
        self._put(Entry(
            normalize_path(path), "file", _check_mode(mode), _check_id(uid, "uid"),
            _check_id(gid, "gid"), source=None if source is None else Path(source),
            data=None if data is None else bytes(data), identity=identity,
        ))

    def add_dir(self, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
        """A directory."""
        self._put(Entry(
            normalize_path(path), "dir", _check_mode(mode), _check_id(uid, "uid"),
            _check_id(gid, "gid"),
        ))

    def add_symlink(self, path: str, target: str, uid: int = 0, gid: int = 0) -> None:
        """A symbolic link to ``target`` (kept verbatim; absolute targets resolve in the guest)."""
        if not target or "\x00" in target:
            raise ValueError(f"{path}: bad symlink target {target!r}")
        self._put(Entry(
            normalize_path(path), "symlink", 0o777, _check_id(uid, "uid"), _check_id(gid, "gid"),
            target=target,
        ))

    def add_node(
        self,
        path: str,
        kind: Literal["char", "block"],
        major: int,
        minor: int,
        mode: int = 0o600,
        uid: int = 0,
        gid: int = 0,
    ) -> None:
        """A character or block device node."""
        if kind not in ("char", "block"):
            raise ValueError(f"device kind must be 'char' or 'block', not {kind!r}")
        self._put(Entry(
            normalize_path(path), kind, _check_mode(mode), _check_id(uid, "uid"),
            _check_id(gid, "gid"), rdev=(_check_id(major, "major"), _check_id(minor, "minor")),
        ))

    def add_tree(self, src_dir: Path, dest_prefix: str = "") -> None:
        """Copy a directory from disk into the tree under ``dest_prefix`` ('' = the root).

        Files keep only their executable bit (0o755 if any x bit is set, else 0o644); directories
        are 0o755; symlinks stay symlinks with their target verbatim; owners are always 0. Other
        file types (sockets, fifos, devices) are refused.
        """
        src_dir = Path(src_dir)
        if not src_dir.is_dir():
            raise UserError(f"{src_dir} is not a directory")
        prefix = "/".join(p for p in dest_prefix.split("/") if p not in ("", "."))
        if prefix:
            self.add_dir(prefix)
        self._add_dir_contents(src_dir, prefix)

    def _add_dir_contents(self, src: Path, prefix: str) -> None:
        with os.scandir(src) as it:
            children = sorted(it, key=lambda e: e.name)
        for child in children:
            dest = f"{prefix}/{child.name}" if prefix else child.name
            st = child.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                self.add_symlink(dest, os.readlink(child.path))
            elif stat.S_ISDIR(st.st_mode):
                self.add_dir(dest)
                self._add_dir_contents(Path(child.path), dest)
            elif stat.S_ISREG(st.st_mode):
                mode = 0o755 if st.st_mode & 0o111 else 0o644
                self.add_file(dest, source=Path(child.path), mode=mode)
            else:
                raise UserError(
                    f"{child.path} is not a regular file, directory or symlink; "
                    "remove it from the directory being packed"
                )

    def entries(self) -> list[Entry]:
        """Every entry sorted by path bytes, with missing parent directories added (0o755).

        A path below a non-directory entry (a file, or a symlink such as lib -> usr/lib) is an
        error: where it would land depends on the unpacker.
        """
        result = dict(self._entries)
        for path in self._entries:
            parent = posixpath.dirname(path)
            while parent and parent not in result:
                result[parent] = Entry(parent, "dir", 0o755)
                parent = posixpath.dirname(parent)
        for path in self._entries:
            parent = posixpath.dirname(path)
            while parent:
                if result[parent].kind != "dir":
                    raise ValueError(
                        f"'{path}' is inside '{parent}', which is a {result[parent].kind}, "
                        "not a directory"
                    )
                parent = posixpath.dirname(parent)
        return [result[p] for p in sorted(result, key=_path_key)]


def _path_key(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


def _pad(n: int) -> bytes:
    return b"\x00" * (-n % 4)


def _header(
    *, ino: int, mode: int, uid: int, gid: int, nlink: int, mtime: int, filesize: int,
    rdev: tuple[int, int], name: bytes,
) -> bytes:
    namesize = len(name) + 1
    fields = (ino, mode, uid, gid, nlink, mtime, filesize, 0, 0, rdev[0], rdev[1], namesize, 0)
    head = b"070701" + b"".join(b"%08X" % f for f in fields) + name + b"\x00"
    return head + _pad(len(head))


def _entry_header(entry: Entry, ino: int, mtime: int, filesize: int) -> bytes:
    return _header(
        ino=ino, mode=_TYPE_BITS[entry.kind] | entry.mode, uid=entry.uid, gid=entry.gid,
        nlink=2 if entry.kind == "dir" else 1, mtime=mtime, filesize=filesize, rdev=entry.rdev,
        name=entry.path.encode("utf-8", "surrogateescape"),
    )


def _write_entry(entry: Entry, ino: int, mtime: int, out: BinaryIO) -> None:
    if entry.kind == "symlink":
        assert entry.target is not None
        body = entry.target.encode("utf-8", "surrogateescape")
    elif entry.kind == "file" and entry.source is not None:
        _write_source_file(entry, ino, mtime, out)
        return
    elif entry.kind == "file":
        assert entry.data is not None
        body = entry.data
    else:
        body = b""
    out.write(_entry_header(entry, ino, mtime, len(body)))
    if body:
        out.write(body)
        out.write(_pad(len(body)))


def _write_source_file(entry: Entry, ino: int, mtime: int, out: BinaryIO) -> None:
    """Stream ``entry.source`` in 1 MiB chunks; refuse a file that changes size meanwhile."""
    assert entry.source is not None and entry.identity is not None
    fd = open_source(entry.source, entry.identity, entry.path)
    with os.fdopen(fd, "rb") as f:
        size = entry.identity[2]
        if size > _MAX_U32:
            raise UserError(f"{entry.source}: newc cpio cannot hold files of 4 GiB or more")
        out.write(_entry_header(entry, ino, mtime, size))
        remaining = size
        while remaining:
            chunk = f.read(min(CHUNK_SIZE, remaining))
            if not chunk:
                break
            out.write(chunk)
            remaining -= len(chunk)
        if remaining or f.read(1):
            raise HostError(f"{entry.source} changed size while it was being archived")
        out.write(_pad(size))


def write_cpio(tree: Tree, out: BinaryIO, *, mtime: int) -> None:
    """Write ``tree`` to ``out`` as a newc ("070701") cpio archive with a fixed ``mtime``.

    Entries come in :meth:`Tree.entries` order with inode numbers 1, 2, ...; dirs have nlink 2,
    everything else 1; device numbers are 0; file sources are streamed in 1 MiB chunks.
    """
    if not isinstance(mtime, int) or not 0 <= mtime <= _MAX_U32:
        raise ValueError(f"mtime {mtime!r} does not fit a newc header (0..2**32-1)")
    ino = 0
    for ino, entry in enumerate(tree.entries(), start=1):
        _write_entry(entry, ino, mtime, out)
    out.write(_header(
        ino=0, mode=0, uid=0, gid=0, nlink=1, mtime=0, filesize=0, rdev=(0, 0),
        name=_TRAILER.encode(),
    ))


def compression_params(level: int = 19, threads: int = 0) -> zstandard.ZstdCompressionParameters:
    """zstd parameters for a layer: ``level`` with windowLog <= 23, checksum, no content size.

    Always multithreaded mode (>= 1 worker): its bytes are the same for every worker count, and
    differ from single-threaded mode, so ``threads`` (0 = one worker, -1 = one per CPU) must never
    be allowed to select the latter.
    """
    if not 1 <= level <= 22:
        raise ValueError(f"zstd level {level} is out of range 1..22")
    default = zstandard.ZstdCompressionParameters.from_level(level)
    window_log = min(default.window_log, MAX_WINDOW_LOG)
    workers = (os.cpu_count() or 1) if threads < 0 else max(threads, 1)
    return zstandard.ZstdCompressionParameters.from_level(
        level, window_log=window_log, write_checksum=1, write_content_size=0, write_dict_id=0,
        threads=workers,
    )


def write_layer(tree: Tree, dest: Path, *, mtime: int, level: int = 19, threads: int = 0) -> None:
    """Write ``tree`` to ``dest`` as one zstd frame holding a newc cpio archive.

    The result is byte-identical for the same tree, ``mtime`` and ``level`` whatever ``threads``
    is (given the same zstandard/libzstd version). Committed by :func:`fsutil.atomic_output`:
    ``dest`` is either absent, the old file, or complete, and a full disk is one line.
    """
    params = compression_params(level, threads)
    compressor = zstandard.ZstdCompressor(compression_params=params)
    with atomic_output(dest) as fd, open(fd, "wb", closefd=False) as raw:
        with compressor.stream_writer(raw, closefd=False) as zw:
            write_cpio(tree, zw, mtime=mtime)
        raw.flush()
