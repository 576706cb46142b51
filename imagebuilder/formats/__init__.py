"""Disk image formats, each a writer over the one disk model (:class:`~imagebuilder.disk.Disk`).

``raw``, ``qcow2``, ``vmdk`` and ``vhd`` serialise the same list of extents: none writes the image
out as raw first, none writes the zero regions between extents, and all skip all-zero clusters
inside extents where the format can leave them unallocated. Every writer streams (memory stays
flat whatever the disk size) and commits its output the same way, through :func:`atomic_output`:
the file is written under a temporary name in the destination's directory and renamed, so an
interrupted or failed write leaves nothing at the destination.

Durability is the caller's choice (``sync``). Files that later commands trust without checking
(the cache's disks, block maps, the store) are fsynced before the rename, so a power cut leaves
the old file or the whole new one. Exports (a user's output file, reproducible from the store
bit for bit) are by default left for the kernel to write back, as ``qemu-img convert`` (cache
mode ``unsafe``), ``cp`` and ``tar`` leave theirs: waiting for the disk would double their time.
``export --sync`` asks for the fsync.

Writers are looked up by name with :func:`writer_for` (imported lazily, so ``import
imagebuilder.formats`` stays cheap); :func:`write_disk` is the one call the CLI needs.
"""

from __future__ import annotations

import errno
import functools
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from ..disk import Disk
from ..errors import HostError, UserError
from ..fsutil import atomic_output as atomic_output  # the writers import it from here
from ..fsutil import source_date_epoch as source_date_epoch

TYPE_CHECKING = False
if TYPE_CHECKING:  # not imported at run time (typing alone costs milliseconds of start-up)
    from collections import deque
    from concurrent.futures import Future
    from pathlib import Path
    from typing import Protocol

    class Writer(Protocol):
        def __call__(
            self, disk: Disk, dest: Path | str, *, progress: Progress | None = None,
            sync: bool = True
        ) -> None: ...


DISK_FORMATS: tuple[str, ...] = ("raw", "qcow2", "vmdk", "vhd")
"""Formats written from a Disk (``iso`` and ``kernel-initrd`` are built from the image)."""

BLOCK_SIZE = 1 << 16
"""The unit in which raw and vhd skip zeros and every writer hashes content (64 KiB)."""

COPY_BUFFER = 1 << 20
"""Bytes per read and write when :class:`Output` copies a range of another file."""

WRITEBACK = 8 << 20
"""Bytes after which :class:`Output` starts write-back of a file that will be fsynced."""

Progress = Callable[[int], None]
"""Called with the number of guest bytes just processed (for a progress bar)."""


def writer_for(fmt: str) -> Writer:
    """The ``write_<fmt>(disk, dest)`` function of a disk format; UserError if unknown."""
    if fmt not in DISK_FORMATS:
        raise UserError(f"unknown disk format '{fmt}'; choose one of {', '.join(DISK_FORMATS)}")
    module = importlib.import_module(f"{__name__}.{fmt}")
    writer: Writer = getattr(module, f"write_{fmt}")
    return writer


def write_disk(disk: Disk, dest: Path | str, fmt: str, *, progress: Progress | None = None,
               sync: bool = True) -> None:
    """Write ``disk`` to ``dest`` in format ``fmt`` (one of :data:`DISK_FORMATS`); ``sync``:
    fsync it before it takes the name ``dest``."""
    writer_for(fmt)(disk, dest, progress=progress, sync=sync)


@functools.lru_cache(maxsize=8)
def zero_block(size: int) -> bytes:
    """A shared all-zero buffer to compare blocks against (``block == zero_block(n)``)."""
    return bytes(size)


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (retrying short writes)."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


class WriteBehind:
    """Runs ``pwritev`` calls on a background thread, a bounded number of them in flight.

    Reading and zero-checking the next data then overlaps with writing the previous, and each
    write is followed, with ``sync``, by a hint to start write-back (``sync_file_range``), so
    that the final fsync has little left to wait for. Use as a context manager *inside*
    :func:`atomic_output`:
    leaving it waits for every write (re-raising the first error), also when leaving on an error,
    so no write can touch the descriptor after it is closed.
    """

    def __init__(self, fd: int, max_pending: int = 4, *, sync: bool = True) -> None:
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        self.fd = fd
        self._sync = sync
        self._max_pending = max_pending
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="imagebuilder-write")
        self._pending: deque[Future[None]] = deque()

    def __enter__(self) -> WriteBehind:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.drain()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, buffers: Sequence[bytes | memoryview], offset: int) -> None:
        """Write ``buffers`` back to back at ``offset``, soon (errors surface on a later call)."""
        while len(self._pending) >= self._max_pending:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._write, list(buffers), offset))

    def drain(self) -> None:
        """Wait for every submitted write; the first failure is raised."""
        first: BaseException | None = None
        while self._pending:
            try:
                self._pending.popleft().result()
            except BaseException as e:  # keep waiting for the others, then raise
                first = first or e
        if first is not None:
            raise first

    def _write(self, buffers: list[bytes | memoryview], offset: int) -> None:
        pwritev_all(self.fd, buffers, offset)
        if self._sync:
            start_writeback(self.fd, offset, sum(len(b) for b in buffers))


@functools.cache
def _libc(name: str, *argtypes: str) -> Callable[[int, int, int, int], int] | None:
    """libc's function ``name`` (Linux), its arguments the named ctypes types, looked up on
    first use: ctypes is not free to import. None where there is no such function."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        fn = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes = [getattr(ctypes, t) for t in argtypes]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    return _libc("sync_file_range", "c_int", "c_int64", "c_int64", "c_uint")


def _fallocate() -> Callable[[int, int, int, int], int] | None:
    """``fallocate`` itself, not ``posix_fallocate``, which glibc emulates by writing a byte per
    block where the file system cannot allocate."""
    return _libc("fallocate", "c_int", "c_int", "c_int64", "c_int64")


_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range to disk now (a hint; fsync still decides)."""
    fn = _sync_file_range()
    if fn is not None and length > 0:
        fn(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


_FALLOC_FL_KEEP_SIZE = 1
_NO_FALLOCATE = {errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL, errno.EPERM}
"""fallocate failures that mean "not on this file system": writing goes on without reserving.
Others (ENOSPC, EIO) are real."""


class Output:
    """Writes a new file's data: buffers at offsets and ranges of other files.

    Buffers that follow one another are gathered into one ``pwritev``. File ranges are read into
    small reused buffers and written from them: on ext4 that beats both the kernel's
    ``copy_file_range`` (a page-cache splice there) and writing from a mapping of the source
    (a page fault per 4 KiB), measured by bench/formats.py. Before bytes are written their
    blocks are reserved (``fallocate``, keeping the size): writing into allocated blocks skips
    the delayed allocation that costs ext4 a third of a plain write's time, and a full disk
    fails there, before the data is copied. Every ``writeback`` bytes (0: never, for output that
    will not be fsynced) the kernel is asked to start writing them to disk
    (``sync_file_range``), so the device works while the rest is prepared and the final fsync
    has little left to wait for.

    Writes are synchronous: a buffer may be dropped or reused once :meth:`flush` has returned;
    until then it must not change.
    """

    def __init__(self, fd: int, *, gather: int = 8 << 20, writeback: int = WRITEBACK) -> None:
        self.fd = fd
        self._gather = gather
        self._writeback = writeback
        self._buffers: list[bytes | bytearray | memoryview] = []
        self._start = self._end = 0
        self._wb_lo = self._wb_hi = self._wb_bytes = 0
        self._copy_bufs: list[memoryview] = []
        self._reserving = _fallocate() is not None
        self.written = 0
        """Bytes written (or copied) so far."""

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at ``offset`` (now, or with the next buffers if they follow it)."""
        if self._buffers and offset != self._end:
            self._flush_buffers()
        if not self._buffers:
            self._start = self._end = offset
        self._buffers.append(data)
        self._end += len(data)
        if self._end - self._start >= self._gather or len(self._buffers) >= 512:
            self._flush_buffers()

    def copy(self, offset: int, src_fd: int, src_offset: int, data: memoryview) -> None:
        """Put the ``len(data)`` bytes of ``src_fd`` from ``src_offset`` at ``offset``.

        ``data`` is a view of those same bytes (its length is what is copied). A range of two
        buffers or more is copied by two threads, half each: one reads while the other writes.
        """
        self._flush_buffers()
        n = len(data)
        self._reserve(offset, n)
        half = n // 2 - n // 2 % COPY_BUFFER
        if half == 0:
            self._copy_range(src_fd, src_offset, offset, n, self._buffer(0))
        else:
            import threading

            failed: list[BaseException] = []
            first, second = self._buffer(0), self._buffer(1)  # allocated here, not in a race

            def second_half() -> None:
                try:
                    self._copy_range(src_fd, src_offset + half, offset + half, n - half, second)
                except BaseException as e:
                    failed.append(e)

            helper = threading.Thread(target=second_half, name="imagebuilder-copy")
            helper.start()
            try:
                self._copy_range(src_fd, src_offset, offset, half, first)
            finally:
                helper.join()
            if failed:
                raise failed[0]
        self._done(offset, n)

    def _buffer(self, i: int) -> memoryview:
        while len(self._copy_bufs) <= i:
            self._copy_bufs.append(memoryview(bytearray(COPY_BUFFER)))
        return self._copy_bufs[i]

    def _copy_range(self, src_fd: int, src_offset: int, offset: int, n: int,
                    buf: memoryview) -> None:
        done = 0
        while done < n:
            got = os.preadv(src_fd, [buf[: min(n - done, len(buf))]], src_offset + done)
            if got <= 0:
                raise HostError(f"a source file shrank while being read (at {src_offset + done})")
            pwrite_all(self.fd, buf[:got], offset + done)
            done += got

    def flush(self) -> None:
        """Write what is gathered and start its write-back."""
        self._flush_buffers()
        if self._writeback and self._wb_bytes:
            start_writeback(self.fd, self._wb_lo, self._wb_hi - self._wb_lo)
            self._wb_bytes = 0

    def _reserve(self, offset: int, n: int) -> None:
        if not self._reserving or n <= 0:
            return
        fallocate = _fallocate()
        assert fallocate is not None
        if fallocate(self.fd, _FALLOC_FL_KEEP_SIZE, offset, n) == 0:
            return
        import ctypes

        err = ctypes.get_errno()
        if err in _NO_FALLOCATE:
            self._reserving = False
            return
        raise OSError(err, os.strerror(err))

    def _flush_buffers(self) -> None:
        if not self._buffers:
            return
        self._reserve(self._start, self._end - self._start)
        pwritev_all(self.fd, self._buffers, self._start)
        self._buffers = []
        self._done(self._start, self._end - self._start)

    def _done(self, offset: int, n: int) -> None:
        if n <= 0:
            return
        self.written += n
        if self._wb_bytes == 0:
            self._wb_lo, self._wb_hi = offset, offset + n
        else:
            self._wb_lo, self._wb_hi = min(self._wb_lo, offset), max(self._wb_hi, offset + n)
        self._wb_bytes += n
        if self._writeback and self._wb_bytes >= self._writeback:
            start_writeback(self.fd, self._wb_lo, self._wb_hi - self._wb_lo)
            self._wb_bytes = 0


class SequentialWriter:
    """Appends to a file from a start offset, gathering small writes into few ``pwritev`` calls.

    With a :class:`WriteBehind` the gathered writes go to its thread; else they are written here.
    """

    def __init__(
        self, fd: int, start: int, behind: WriteBehind | None = None, flush_at: int = 4 << 20
    ) -> None:
        self.fd = fd
        self.pos = start
        """Offset at which the next write lands (what has been written, flushed or not)."""
        self._flushed = start
        self._buffers: list[bytes | memoryview] = []
        self._buffered = 0
        self._flush_at = flush_at
        self._behind = behind

    def write(self, data: bytes | memoryview) -> int:
        """Append ``data``; returns the file offset it lands at."""
        at = self.pos
        self._buffers.append(data)
        self._buffered += len(data)
        self.pos += len(data)
        if self._buffered >= self._flush_at or len(self._buffers) >= 512:
            self.flush()
        return at

    def flush(self) -> None:
        if not self._buffers:
            return
        if self._behind is not None:
            self._behind.submit(self._buffers, self._flushed)
        else:
            pwritev_all(self.fd, self._buffers, self._flushed)
        self._flushed = self.pos
        self._buffers = []
        self._buffered = 0


def pwritev_all(fd: int, buffers: Sequence[bytes | bytearray | memoryview], offset: int) -> None:
    """Write the buffers back to back at ``offset`` (one ``pwritev`` unless it comes up short)."""
    total = sum(len(b) for b in buffers)
    n = os.pwritev(fd, buffers, offset)
    if n == total:
        return
    # Short write: finish buffer by buffer.
    for b in buffers:
        if n >= len(b):
            n -= len(b)
            offset += len(b)
            continue
        pwrite_all(fd, memoryview(b)[n:], offset + n)
        offset += len(b)
        n = 0


class Record:
    """A plain record: the attributes named in ``__slots__``, compared and shown by their values.

    What ``@dataclass`` gave the format structures, without importing ``dataclasses`` (and
    ``inspect`` with it): about 10 ms of every export's start-up.
    """

    __slots__: tuple[str, ...] = ()

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Record)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({fields})"


class ContentId:
    """A digest of a disk's size and content, for ids that must be reproducible (no randomness).

    Fed with the non-zero 64 KiB blocks in order, so equal guest content gives an equal id
    however the disk's extents are laid out. XXH3-128: 16 bytes, the size of a UUID.
    """

    def __init__(self, size: int) -> None:
        import xxhash  # only the formats that need ids pay for it

        self._h = xxhash.xxh3_128()
        self._h.update(b"imagebuilder disk\0" + size.to_bytes(8, "little"))

    def update(self, offset: int, block: bytes | bytearray | memoryview) -> None:
        self._h.update(offset.to_bytes(8, "little"))
        self._h.update(block)

    def digest(self) -> bytes:
        return self._h.digest()


class ProgressTracker:
    """Turns "I am at guest offset X" into ``progress(delta)`` calls; the total is the disk size."""

    def __init__(self, callback: Progress | None, size: int) -> None:
        self._cb = callback
        self._size = size
        self.pos = 0

    def advance_to(self, offset: int) -> None:
        offset = min(offset, self._size)
        if self._cb is not None and offset > self.pos:
            self._cb(offset - self.pos)
        self.pos = max(self.pos, offset)

    def done(self) -> None:
        self.advance_to(self._size)
