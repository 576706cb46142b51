"""The disk model: a virtual disk as a sorted list of data extents; everything else is zeros.

Every disk format imagebuilder writes (raw, qcow2, vmdk, vhd) is a serialisation of one
:class:`Disk`, so no format needs the image written out as raw first and no writer ever has to
look at, let alone write, the zeros between extents. A disk has a virtual size (a multiple of the
512-byte sector) and a list of :class:`Extent` objects, each ``length`` bytes at ``offset`` whose
bytes come either from memory (``bytes``: partition tables, FAT structures, boot sectors) or from
a range of a file (:class:`FileSlice`: a kernel, an initrd layer, an existing raw image), read
lazily and in bounded chunks so that a disk of any size is walked in flat memory.

Extents are sorted and may not overlap or reach past the end; a region no extent covers reads as
zeros. Extents may still *contain* zeros (a file's zero-filled tail, a FAT with free clusters):
writers check each cluster/grain they are about to write and skip all-zero ones where the format
can express "unallocated". :meth:`Disk.iter_nonzero` does that for them without copying file
data: it maps the files a window at a time, tests blocks against zeros in place and hands out
views of the non-zero runs, with the file range each came from so that the kernel can copy it.

:class:`DiskBuilder` assembles a disk piece by piece (``put`` at an offset), keeping extents sorted
and merging adjacent ones; :meth:`Disk.from_file` maps an existing, possibly sparse, raw file onto
extents with SEEK_DATA/SEEK_HOLE so its holes are never read. The extents, and the open files a
walk reads them through, are in :mod:`.extents`.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterable, Iterator

from ..errors import HostError, NotFoundError, UserError
from ..hashing.sparse import data_extents
from .extents import Buffer, Extent, FileRange, FileSlice, OpenFiles, Source

TYPE_CHECKING = False
if TYPE_CHECKING:  # pathlib (with re and enum) costs ~8 ms of every export's start-up
    from pathlib import Path

SECTOR_SIZE = 512
CHUNK_SIZE = 1 << 20
"""Default bytes per read when walking a disk: large enough for few syscalls, small for memory."""
WINDOW_SIZE = 8 << 20
"""Guest bytes per window of :meth:`Disk.iter_nonzero` (the most one run of it covers)."""

class Disk:
    """A virtual disk of ``size`` bytes: sorted, non-overlapping data extents, zeros elsewhere."""

    def __init__(self, size: int, extents: Iterable[Extent] = ()) -> None:
        if size <= 0 or size % SECTOR_SIZE:
            raise ValueError(f"disk size {size} is not a positive multiple of {SECTOR_SIZE}")
        ordered = sorted(extents, key=lambda e: e.offset)
        end = 0
        for e in ordered:
            if e.offset < end:
                raise ValueError(f"extent at {e.offset} overlaps the extent ending at {end}")
            if e.end > size:
                raise ValueError(
                    f"extent {e.offset}..{e.end} reaches past the end of the disk ({size})"
                )
            end = e.end
        self.size = size
        self.extents: tuple[Extent, ...] = tuple(ordered)

    def __repr__(self) -> str:
        return f"Disk(size={self.size}, extents={len(self.extents)}, data={self.data_size()})"

    def data_size(self) -> int:
        """Bytes covered by data extents (an upper bound of what a writer stores)."""
        return sum(e.length for e in self.extents)

    def iter_regions(self, chunk: int = CHUNK_SIZE) -> Iterator[tuple[int, bytes | int]]:
        """Walk the whole disk in order: ``(offset, data)`` for data, ``(offset, n)`` for zeros.

        Data comes in pieces of at most ``chunk`` bytes that never cross a multiple of ``chunk``
        (so block-aligned consumers get whole blocks); a zero region is one item however long.
        """
        if chunk <= 0:
            raise ValueError(f"chunk size {chunk} must be positive")
        files = OpenFiles()
        try:
            pos = 0
            for ext in self.extents:
                if ext.offset > pos:
                    yield pos, ext.offset - pos
                yield from self._iter_extent(ext, chunk, files)
                pos = ext.end
            if pos < self.size:
                yield pos, self.size - pos
        finally:
            files.close()

    @staticmethod
    def _iter_extent(ext: Extent, chunk: int, files: OpenFiles) -> Iterator[tuple[int, bytes]]:
        off = ext.offset
        src = ext.source
        while off < ext.end:
            n = min(ext.end, (off // chunk + 1) * chunk) - off
            rel = off - ext.offset
            if isinstance(src, bytes):
                data = src if n == ext.length else src[rel : rel + n]
            else:
                data = files.read(src, rel, n)
            yield off, data
            off += n

    def _iter_data(self, chunk: int) -> Iterator[tuple[int, memoryview]]:
        """The data pieces of :meth:`iter_regions`, as views valid until the next piece.

        File data is read into one reused buffer: no allocation, no page faults per chunk.
        """
        files = OpenFiles()
        buf = memoryview(bytearray(chunk))
        try:
            for ext in self.extents:
                src = ext.source
                whole = memoryview(src) if isinstance(src, bytes) else None
                off = ext.offset
                while off < ext.end:
                    n = min(ext.end, (off // chunk + 1) * chunk) - off
                    rel = off - ext.offset
                    if whole is not None:
                        yield off, whole[rel : rel + n]
                    else:
                        assert isinstance(src, FileSlice)
                        files.readinto(src, rel, buf[:n])
                        yield off, buf[:n]
                    off += n
        finally:
            files.close()

    def iter_blocks(self, block: int, chunk: int = CHUNK_SIZE) -> Iterator[tuple[int, bytes]]:
        """``(offset, data)`` for every ``block``-aligned block that a data extent touches.

        Each block is exactly ``block`` bytes, zero-filled where no extent covers it (also past
        the end of the disk when the size is not a multiple of ``block``); blocks no extent
        touches are not yielded. Blocks come in increasing order. The data may still be all
        zeros: callers that can leave a block unallocated compare it with a zero block.
        """
        if block <= 0:
            raise ValueError(f"block size {block} must be positive")
        chunk = max(block, chunk - chunk % block)
        pending: bytearray | None = None
        pending_off = -1
        for off, view in self._iter_data(chunk):
            pos = 0
            n = len(view)
            while pos < n:
                o = off + pos
                inb = o % block
                b = o - inb
                take = min(n - pos, block - inb)
                if pending is not None and pending_off != b:
                    yield pending_off, bytes(pending)
                    pending = None
                if pending is None and take == block:
                    yield b, bytes(view[pos : pos + take])
                else:
                    if pending is None:
                        pending = bytearray(block)
                        pending_off = b
                    pending[inb : inb + take] = view[pos : pos + take]
                pos += take
        if pending is not None:
            yield pending_off, bytes(pending)

    def iter_nonzero(
        self, block: int, window: int = WINDOW_SIZE
    ) -> Iterator[Run]:
        """Runs of non-zero ``block``-aligned blocks, in guest order: ``(offset, view, where)``.

        ``view`` holds the run's bytes, a whole number of blocks (zero-filled where no extent
        covers them, also past the end of the disk); every block in it has a non-zero byte, and
        all-zero blocks are never yielded. A run never crosses a multiple of ``window``. When the
        run lies in one file, ``where`` is ``(fd, file_offset)`` of its first byte, so that a
        writer can copy it from the file; the descriptor is open only until the walk ends, so
        use it before asking for the next run. Else ``where`` is None.

        No copy is made of file data: views are of read-only shared mappings of the files (page
        cache pages), so a run costs no read and its memory is the kernel's. Views stay valid
        while referenced; each keeps at most a ``window`` of one file mapped.
        """
        if block <= 0:
            raise ValueError(f"block size {block} must be positive")
        window = max(block, window - window % block)
        files = OpenFiles()
        partial = _PartialBlock(block)
        try:
            for ext in self.extents:
                head = ext.offset - ext.offset % block
                if head != ext.offset:  # starts inside a block: assemble that block
                    yield from partial.start(head)
                    n = min(ext.end, head + block) - ext.offset
                    partial.fill(ext.offset - head, self._bytes(ext, 0, n, files))
                    head += block
                tail = ext.end - ext.end % block
                if head < tail:  # whole blocks follow: the partial block before them is done
                    yield from partial.flush()
                off = head
                while off < tail:  # whole blocks, one window at a time
                    end = min(tail, (off // window + 1) * window)
                    yield from _nonzero_runs(ext, off, end, partial.zero, files)
                    off = end
                if tail < ext.end and tail >= head:  # ends inside a block: start assembling it
                    yield from partial.start(tail)
                    partial.fill(0, self._bytes(ext, tail - ext.offset, ext.end - tail, files))
            yield from partial.flush()
        finally:
            files.close()

    @staticmethod
    def _bytes(ext: Extent, rel: int, n: int, files: OpenFiles) -> bytes:
        src = ext.source
        if isinstance(src, bytes):
            return src[rel : rel + n]
        return files.read(src, rel, n)

    def read(self, offset: int, length: int) -> bytes:
        """The guest bytes ``offset .. offset+length`` (for tests and small structures)."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(f"read {offset}+{length} outside the disk ({self.size})")
        out = bytearray(length)
        end = offset + length
        i = bisect.bisect_right([e.offset for e in self.extents], offset) - 1
        files = OpenFiles()
        try:
            for ext in self.extents[max(i, 0) :]:
                if ext.offset >= end:
                    break
                lo, hi = max(offset, ext.offset), min(end, ext.end)
                if lo >= hi:
                    continue
                if isinstance(ext.source, bytes):
                    piece = ext.source[lo - ext.offset : hi - ext.offset]
                else:
                    piece = files.read(ext.source, lo - ext.offset, hi - lo)
                out[lo - offset : hi - offset] = piece
        finally:
            files.close()
        return bytes(out)

    @classmethod
    def from_file(cls, path: Path | str, size: int | None = None) -> Disk:
        """A disk whose content is the raw image at ``path``; its holes become zero regions.

        The virtual size is the file's size rounded up to a whole sector, or ``size`` when given
        (at least the file's size; the rest reads as zeros). The file is not read here, only
        mapped with SEEK_DATA/SEEK_HOLE; it must not change while the disk is in use.
        """
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFoundError(f"{path} does not exist") from None
        except OSError as e:
            raise HostError(f"cannot read {path}: {e.strerror}") from None
        try:
            file_size = os.fstat(fd).st_size
            ranges = data_extents(fd, file_size)
        except OSError as e:
            raise HostError(f"cannot map the data of {path}: {e.strerror}") from None
        finally:
            os.close(fd)
        disk_size = -(-file_size // SECTOR_SIZE) * SECTOR_SIZE if size is None else size
        if disk_size <= 0:
            raise UserError(f"{path} is empty: a disk needs at least one sector")
        if disk_size < file_size:
            raise UserError(f"{path} ({file_size} bytes) does not fit a disk of {disk_size} bytes")
        return cls(disk_size, [Extent(o, n, FileSlice(path, o)) for o, n in ranges])


Run = tuple[int, memoryview, FileRange | None]
"""A run of :meth:`Disk.iter_nonzero`: guest offset, its bytes, where in a file they lie."""


class _PartialBlock:
    """The one block that extents cover only in part, assembled until the walk moves past it,
    then yielded unless it is all zeros."""

    def __init__(self, block: int) -> None:
        self.zero = bytes(block)
        self.data: bytearray | None = None
        self.offset = -1

    def start(self, offset: int) -> Iterator[Run]:
        """Assemble the block at ``offset`` (yielding the one assembled before, if another)."""
        if self.data is not None and self.offset != offset:
            yield from self.flush()
        if self.data is None:
            self.data, self.offset = bytearray(len(self.zero)), offset

    def fill(self, at: int, piece: bytes) -> None:
        assert self.data is not None
        self.data[at : at + len(piece)] = piece

    def flush(self) -> Iterator[Run]:
        if self.data is not None and self.data.find(self.zero) != 0:
            yield self.offset, memoryview(self.data), None
        self.data = None


def _nonzero_runs(ext: Extent, off: int, end: int, zero: bytes, files: OpenFiles
                  ) -> Iterator[Run]:
    """The runs of non-zero blocks (``len(zero)`` bytes each) of ``ext`` between the
    block-aligned guest offsets ``off`` and ``end`` (one window): views of ``ext``'s bytes, or
    of a read-only mapping of its file, never a copy."""
    block, src, rel = len(zero), ext.source, off - ext.offset
    where: FileRange | None = None
    if isinstance(src, bytes):
        buf: Buffer = src
        at = rel
    else:
        buf, at = files.window(src, rel, end - off)
        if not isinstance(buf, bytearray):  # mapped: the kernel may copy it
            where = (files.fd(src.path), src.offset + rel)
    run = -1  # start of the current run of non-zero blocks, relative to off
    n = end - off
    for j in range(0, n, block):
        if buf.find(zero, at + j, at + j + block) == at + j:  # all zero
            if run >= 0:
                yield off + run, memoryview(buf)[at + run : at + j], \
                    where and (where[0], where[1] + run)
                run = -1
        elif run < 0:
            run = j
    if run >= 0:
        yield off + run, memoryview(buf)[at + run : at + n], where and (where[0], where[1] + run)


class DiskBuilder:
    """Assemble a :class:`Disk` by putting data at offsets, in any order.

    Extents are kept sorted; overlapping puts are refused (``ValueError``); a put that continues
    the previous one (bytes after bytes, or the next range of the same file) is merged with it.
    """

    def __init__(self, size: int) -> None:
        if size <= 0 or size % SECTOR_SIZE:
            raise ValueError(f"disk size {size} is not a positive multiple of {SECTOR_SIZE}")
        self.size = size
        self._extents: list[Extent] = []
        self._starts: list[int] = []

    @property
    def extents(self) -> tuple[Extent, ...]:
        return tuple(self._extents)

    def put(
        self, offset: int, data: bytes | bytearray | FileSlice, length: int | None = None
    ) -> None:
        """Place ``data`` (bytes, or ``length`` bytes of a file) at guest ``offset``."""
        if isinstance(data, FileSlice):
            if length is None:
                raise ValueError("put of a FileSlice needs a length")
            source: Source = data
        else:
            source = bytes(data)
            if length is None:
                length = len(source)
            elif length != len(source):
                raise ValueError(f"put at {offset}: length {length} but {len(source)} bytes")
        if length == 0:
            return
        new = Extent(offset, length, source)
        if new.end > self.size:
            raise ValueError(
                f"put {offset}..{new.end} reaches past the end of the disk ({self.size})"
            )
        i = bisect.bisect_left(self._starts, offset)
        prev = self._extents[i - 1] if i > 0 else None
        nxt = self._extents[i] if i < len(self._extents) else None
        if prev is not None and prev.end > offset:
            raise ValueError(f"put at {offset} overlaps data at {prev.offset}..{prev.end}")
        if nxt is not None and nxt.offset < new.end:
            raise ValueError(f"put {offset}..{new.end} overlaps data at {nxt.offset}..{nxt.end}")
        if prev is not None and (merged := _merge(prev, new)) is not None:
            i -= 1
            new = merged
            del self._extents[i]
            del self._starts[i]
        if nxt is not None and (merged := _merge(new, nxt)) is not None:
            new = merged
            del self._extents[i]
            del self._starts[i]
        self._extents.insert(i, new)
        self._starts.insert(i, new.offset)

    def put_file(self, offset: int, path: Path | str) -> int:
        """Place the whole file at ``path`` at ``offset``; returns its length."""
        try:
            length = os.stat(path).st_size
        except FileNotFoundError:
            raise NotFoundError(f"{path} does not exist") from None
        self.put(offset, FileSlice(path, 0), length)
        return length

    def build(self) -> Disk:
        return Disk(self.size, self._extents)


def _merge(a: Extent, b: Extent) -> Extent | None:
    """``a`` and ``b`` as one extent when ``b`` directly continues ``a``, else None."""
    if a.end != b.offset:
        return None
    if isinstance(a.source, bytes) and isinstance(b.source, bytes):
        return Extent(a.offset, a.length + b.length, a.source + b.source)
    if (
        isinstance(a.source, FileSlice)
        and isinstance(b.source, FileSlice)
        and a.source.path == b.source.path
        and a.source.offset + a.length == b.source.offset
    ):
        return Extent(a.offset, a.length + b.length, a.source)
    return None
