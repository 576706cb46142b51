"""Where a disk's bytes come from: extents of bytes in memory or of a range of a file.

An :class:`Extent` is ``length`` bytes at a guest offset, taken from memory (``bytes``) or from
a :class:`FileSlice`; :class:`OpenFiles` holds the file descriptors one walk of a
:class:`~imagebuilder.disk.model.Disk` reads the slices through, reading them in bounded pieces
or mapping a window of them (no copy), and closes them together.
"""

from __future__ import annotations

import mmap
import os
import stat

from ..errors import HostError

TYPE_CHECKING = False
if TYPE_CHECKING:  # pathlib (with re and enum) costs ~8 ms of every export's start-up
    from pathlib import Path

# FileSlice and Extent are plain immutable classes rather than dataclasses: importing
# ``dataclasses`` (and ``inspect`` with it) costs about 10 ms, a tenth of a short export.


class FileSlice:
    """Bytes of the file at ``path`` starting at ``offset``; the length is the extent's."""

    __slots__ = ("offset", "path")
    path: Path | str
    offset: int

    def __init__(self, path: Path | str, offset: int = 0) -> None:
        if offset < 0:
            raise ValueError(f"negative file offset {offset} for {path}")
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "offset", offset)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"FileSlice is immutable (cannot set {name})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"FileSlice is immutable (cannot delete {name})")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, FileSlice)
        return (self.path, self.offset) == (other.path, other.offset)

    def __hash__(self) -> int:
        return hash((self.path, self.offset))

    def __repr__(self) -> str:
        return f"FileSlice(path={self.path!r}, offset={self.offset!r})"


Source = bytes | FileSlice
Buffer = bytes | bytearray | mmap.mmap
"""What :meth:`Disk.iter_nonzero` reads from: all three have ``find`` (a memcmp-fast zero test)."""
FileRange = tuple[int, int]
"""``(fd, offset)``: where in an open file a run of :meth:`Disk.iter_nonzero` lies."""


class Extent:
    """``length`` bytes of guest data at guest ``offset``, taken from ``source``."""

    __slots__ = ("length", "offset", "source")
    offset: int
    length: int
    source: Source

    def __init__(self, offset: int, length: int, source: Source) -> None:
        if offset < 0:
            raise ValueError(f"extent at negative offset {offset}")
        if length <= 0:
            raise ValueError(f"extent at {offset} has non-positive length {length}")
        if isinstance(source, bytes | bytearray | memoryview):
            if len(source) != length:
                raise ValueError(
                    f"extent at {offset}: length {length} but {len(source)} bytes of data"
                )
            if not isinstance(source, bytes):
                source = bytes(source)
        elif not isinstance(source, FileSlice):
            raise TypeError(f"extent source must be bytes or FileSlice, not {type(source)}")
        object.__setattr__(self, "offset", offset)
        object.__setattr__(self, "length", length)
        object.__setattr__(self, "source", source)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Extent is immutable (cannot set {name})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Extent is immutable (cannot delete {name})")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Extent)
        return (self.offset, self.length, self.source) == (
            other.offset,
            other.length,
            other.source,
        )

    def __hash__(self) -> int:
        return hash((self.offset, self.length, self.source))

    def __repr__(self) -> str:
        return f"Extent(offset={self.offset!r}, length={self.length!r}, source={self.source!r})"

    @property
    def end(self) -> int:
        """The guest offset just past the extent."""
        return self.offset + self.length


class OpenFiles:
    """Open file descriptors for FileSlice reads during one walk of a disk, closed together."""

    def __init__(self) -> None:
        self._fds: dict[Path | str, int] = {}
        self._mappable: dict[Path | str, int] = {}
        """Per file: its size if it is a regular file that can be mapped, else -1."""

    def fd(self, path: Path | str) -> int:
        fd = self._fds.get(path)
        if fd is None:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise HostError(f"cannot read {path}: {e.strerror}") from None
            self._fds[path] = fd
        return fd

    def read(self, fs: FileSlice, start: int, length: int) -> bytes:
        """``length`` bytes of ``fs`` from ``start`` (relative to the slice); never short."""
        buf = bytearray(length)
        self.readinto(fs, start, memoryview(buf))
        return bytes(buf)

    def readinto(self, fs: FileSlice, start: int, view: memoryview) -> None:
        """Fill ``view`` with the bytes of ``fs`` from ``start``; never short."""
        fd = self.fd(fs.path)
        pos = fs.offset + start
        try:
            while view:
                n = os.preadv(fd, [view], pos)
                if n == 0:
                    raise HostError(
                        f"{fs.path} ended at byte {pos}, before the {len(view)} more bytes "
                        "the disk needs (did it change?)"
                    )
                view = view[n:]
                pos += n
        except OSError as e:
            raise HostError(f"cannot read {fs.path}: {e.strerror}") from None

    def window(self, fs: FileSlice, start: int, length: int) -> tuple[Buffer, int]:
        """``(buf, at)``: ``buf[at : at + length]`` are the bytes of ``fs`` from ``start``.

        A read-only shared mapping of a regular file (no copy: the page cache's own pages), else
        a new buffer filled by reading. Either way the caller owns ``buf``: it stays valid, and
        mapped, for as long as something refers to it.
        """
        fd = self.fd(fs.path)
        pos = fs.offset + start
        size = self._mappable.get(fs.path)
        if size is None:
            st = os.fstat(fd)
            size = self._mappable[fs.path] = st.st_size if stat.S_ISREG(st.st_mode) else -1
        if size >= 0:
            if pos + length > size:  # a mapping past the end would be a SIGBUS, not an error
                raise HostError(
                    f"{fs.path} ended at byte {size}, before the "
                    f"{pos + length - max(size, pos)} more bytes the disk needs (did it change?)"
                )
            at = pos % mmap.ALLOCATIONGRANULARITY
            try:
                return mmap.mmap(fd, at + length, prot=mmap.PROT_READ, offset=pos - at), at
            except (OSError, ValueError):  # a file system that cannot map: read instead
                self._mappable[fs.path] = -1
        buf = bytearray(length)
        self.readinto(fs, start, memoryview(buf))
        return buf, 0

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
