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

Without unpacking anything, :func:`look_up` reads a package's control file (its ``control.tar``
member) and one file of its data in a single pass over the ``.deb``, for the SBOM and the dpkg
status stanzas the image carries; :func:`control_fields` and :func:`read_member` are its halves.
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

import zstandard

from ..errors import FetchError

AR_MAGIC = b"!<arch>\n"
AR_HEADER = 60
MAX_SYMLINK_HOPS = 40
#: The most :func:`look_up` reads of a control file or a data file (a copyright file is at most
#: a few hundred KiB; linux's, the largest in the archive, is under 1 MiB).
MAX_READ = 16 << 20
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


@dataclass(frozen=True)
class Lookup:
    """What :func:`look_up` read of one package."""

    #: The control file as shipped (``control`` in the control.tar member).
    control: bytes
    #: The path looked up, resolved through the package's own symlinks: with
    #: ``usr/share/doc/a`` a link to ``b``, ``usr/share/doc/a/copyright`` leads to
    #: ``usr/share/doc/b/copyright``.
    path: str
    #: That file's bytes; None when the package holds no regular file there (a link into
    #: another package, or nothing).
    data: bytes | None


def look_up(deb: Path, path: str | Callable[[dict[str, str]], str]) -> Lookup:
    """The control file of ``deb`` and its data file ``path`` (relative, e.g.
    ``usr/share/doc/libc6/copyright``, or a function of the control's fields giving it), in
    one pass over the package, unpacking nothing."""
    with open(deb, "rb") as raw:
        control, md5sums = _read_control(raw, deb)
        path = (path(parse_control(control)) if callable(path) else path).strip("/")
        if md5sums is not None and not _may_hold(md5sums, path):
            return Lookup(control, path, None)
        with _tar_member(raw, deb, "data.tar") as tar:
            found, data, seen = _scan_for(tar, path, deb)
    if data is None and found in seen:
        # a link to a file the stream had already passed: read it on a second pass
        with _data_tar(deb) as tar:
            data = next((_read(tar, m, deb) for m in tar if _name(m) == found and m.isreg()),
                        None)
    return Lookup(control, found, data)


def read_control(deb: Path) -> bytes:
    """The package's control file as shipped; the data member is not read."""
    with open(deb, "rb") as raw:
        return _read_control(raw, deb)[0]


def control_fields(deb: Path) -> dict[str, str]:
    """The fields of the package's control file (continuation lines joined with newlines)."""
    return parse_control(read_control(deb))


def read_member(deb: Path, path: str) -> bytes | None:
    """The bytes of the data file ``path`` of ``deb`` (through the package's own symlinks), or
    None if the package holds no such regular file."""
    return look_up(deb, path).data


def parse_control(text: bytes) -> dict[str, str]:
    """The fields of one control stanza, by name as written; a value's continuation lines are
    kept (without their leading space) after a newline."""
    fields: dict[str, str] = {}
    last = ""
    for line in text.decode("utf-8", "replace").splitlines():
        if line[:1] in (" ", "\t") and last:
            fields[last] += "\n" + line[1:]
        elif ":" in line:
            last, _, value = line.partition(":")
            fields[last] = value.strip()
    return fields


def _read_control(raw: BinaryIO, deb: Path) -> tuple[bytes, bytes | None]:
    """The ``control`` and ``md5sums`` files (None if it has none) of the control.tar member;
    ``raw`` is left after that member."""
    found: dict[str, bytes] = {}
    with _tar_member(raw, deb, "control.tar") as tar:
        for member in tar:
            if _name(member) in ("control", "md5sums") and member.isreg():
                found[_name(member)] = _read(tar, member, deb)
    if "control" not in found:
        raise FetchError(f"{deb} has no control file")
    return found["control"], found.get("md5sums")


def _may_hold(md5sums: bytes, path: str) -> bool:
    """Whether a package whose md5sums (the checksums of all its regular files but conffiles)
    is ``md5sums`` may hold a regular file at ``path``: only if it lists one of that name
    (``path`` might lead there through the package's symlinks). Reading the data member is
    the slow part (seconds for a JDK), and a package whose doc directory links to another's
    (Debian Policy 12.5) lists no copyright file."""
    base = "/" + path.rpartition("/")[2]
    return any(line.rstrip().endswith(base.encode())
               for line in md5sums.splitlines()) or path == ""


def _scan_for(tar: tarfile.TarFile, path: str, deb: Path
              ) -> tuple[str, bytes | None, set[str]]:
    """Follow the stream to ``path`` (through the symlinks met so far); where it led, the
    file's bytes if the stream held it there, and the regular files passed on the way."""
    links: dict[str, str] = {}
    seen: set[str] = set()
    target = path
    for member in tar:
        name = _name(member)
        if member.issym():
            links[name] = member.linkname
            target = _follow_links(path, links, deb)
        elif name == target and member.isreg():
            return target, _read(tar, member, deb), seen
        elif name == target and member.islnk():  # its data came earlier in the stream
            return member.linkname.removeprefix("./").strip("/"), None, seen
        elif member.isreg():
            seen.add(name)
    return target, None, seen


def _follow_links(path: str, links: dict[str, str], deb: Path) -> str:
    """``path`` with every component that is one of the package's symlinks (``links``, by
    name) replaced by its target, as in a chroot of the package."""
    return "/".join(_chroot_walk(
        path.split("/"), lambda done: links.get("/".join(done)),
        lambda: FetchError(f"{deb}: too many levels of symbolic links to {path}")))


def _chroot_walk(parts: list[str], readlink: Callable[[list[str]], str | None],
                 too_many: Callable[[], Exception]) -> list[str]:
    """The components ``parts`` name once every symlink (``readlink`` of the components so far:
    its target, or None for no link) is followed as in a chroot: ``..`` stops at the root, an
    absolute target starts from it."""
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
        target = readlink([*done, part])
        if target is None:
            done.append(part)
            continue
        hops += 1
        if hops > MAX_SYMLINK_HOPS:
            raise too_many()
        if target.startswith("/"):
            done = []
        todo.extendleft(reversed(target.split("/")))
    return done


def _name(member: tarfile.TarInfo) -> str:
    return member.name.removeprefix("./").strip("/")


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo, deb: Path) -> bytes:
    if member.size > MAX_READ:
        raise FetchError(f"{deb}: {_name(member)} is larger than {MAX_READ >> 20} MiB")
    source = tar.extractfile(member)
    assert source is not None  # a regular member always has data
    return source.read()


@contextmanager
def _data_tar(deb: Path) -> Iterator[tarfile.TarFile]:
    """The package's data.tar as a stream; damage inside it raises FetchError."""
    with open(deb, "rb") as raw, _tar_member(raw, deb, "data.tar") as tar:
        yield tar


@contextmanager
def _tar_member(raw: BinaryIO, deb: Path, stem: str) -> Iterator[tarfile.TarFile]:
    """The ``stem`` member (control.tar, data.tar) after ``raw``'s position as a tar stream,
    damage inside it raising FetchError; ``raw`` is left at the end of the member."""
    name, size = _find_member(raw, deb, stem)
    end = raw.tell() + size + (size & 1)
    stream = _decompressed(name, io.BufferedReader(_Bounded(raw, size), 1024 * 1024))
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            yield tar
    except DAMAGED as exc:
        raise FetchError(f"{deb}: damaged package {stem.removesuffix('.tar')} ({exc})"
                         ) from None
    raw.seek(end)


def _find_member(raw: BinaryIO, deb: Path, stem: str) -> tuple[str, int]:
    """Position ``raw`` at the start of the ``stem`` (control.tar or data.tar) member, which
    lies after the current position; return its name and size."""
    if raw.tell() == 0 and raw.read(len(AR_MAGIC)) != AR_MAGIC:
        raise FetchError(f"{deb} is not a Debian package (no ar archive header)")
    while True:
        header = raw.read(AR_HEADER)
        if len(header) < AR_HEADER:
            raise FetchError(f"{deb} has no {stem} member")
        if header[58:60] != b"`\n":
            raise FetchError(f"{deb} is damaged (bad ar member header)")
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError:
            raise FetchError(f"{deb} is damaged (bad ar member size)") from None
        if name == stem or name.startswith(f"{stem}."):
            return name, size
        raw.seek(size + (size & 1), io.SEEK_CUR)


def _decompressed(name: str, raw: BinaryIO) -> BinaryIO:
    """A readable stream of the uncompressed tar for the member ``name`` (control.tar.xz,
    data.tar.zst...)."""
    suffix = name.partition(".tar")[2]
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
    raise FetchError(f"unsupported package member compression: {name}")


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
    def readlink(done: list[str]) -> str | None:
        path = root.joinpath(*done)
        return os.readlink(path) if path.is_symlink() else None
    return root.joinpath(*_chroot_walk(parts, readlink, lambda: FetchError(
        f"too many levels of symbolic links under {root}: {'/'.join(parts)}")))


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
