"""Where a sparse file's data is, so that nothing has to read its holes.

Disk images are mostly empty: a 16 GiB raw disk may hold a few hundred MiB of data, the rest being
holes that the filesystem stores as nothing and that read back as zeros. Reading those zeros costs
as much as reading data. Linux (and most Unix filesystems) tell where the data is through
``lseek(SEEK_DATA)`` / ``lseek(SEEK_HOLE)``; this module turns that into a list of data extents and
a walk over the file that reads only them, so hashing and the disk-format writers stay
proportional to the data, not to the apparent size.

Where the filesystem or platform cannot answer (no SEEK_DATA, EINVAL/EOPNOTSUPP, a pipe), the
whole file is reported as one data extent: callers then read zeros instead of skipping them, which
is slower but never wrong. Equally, a region reported as data may contain zeros (filesystems
allocate whole blocks): consumers must treat "data" as "bytes to read", never as "non-zero".
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

CHUNK_SIZE = 1 << 20
"""Default bytes per data piece yielded by :func:`iter_regions`."""

_SEEK_DATA: int | None = getattr(os, "SEEK_DATA", None)
_SEEK_HOLE: int | None = getattr(os, "SEEK_HOLE", None)
_UNSUPPORTED = {errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ESPIPE, errno.ENOSYS}

Extent = tuple[int, int]
"""``(offset, length)`` of a data region."""


def _extents_of_fd(fd: int, size: int) -> list[Extent]:
    if size <= 0:
        return []
    if _SEEK_DATA is None or _SEEK_HOLE is None:
        return [(0, size)]
    extents: list[Extent] = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, _SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # no data at or after pos: the rest is a hole
                break
            if e.errno in _UNSUPPORTED:  # cannot tell: the rest is data
                extents.append((pos, size - pos))
                break
            raise
        if start >= size:
            break
        start = max(start, pos)
        try:
            end = os.lseek(fd, start, _SEEK_HOLE)
        except OSError as e:
            if e.errno not in _UNSUPPORTED and e.errno != errno.ENXIO:
                raise
            end = size  # unsupported, or the file shrank under us: read to the end
        end = min(end, size)
        if end <= start:  # a filesystem that answers nonsense: stop trusting it
            end = size
        if extents and extents[-1][0] + extents[-1][1] == start:
            prev = extents.pop()
            extents.append((prev[0], end - prev[0]))
        else:
            extents.append((start, end - start))
        pos = end
    return extents


def data_extents(fd_or_path: int | str | os.PathLike[str], size: int | None = None) -> list[Extent]:
    """``[(offset, length), ...]`` of the data regions of a file, sorted, disjoint, non-empty.

    ``fd_or_path`` is an open file descriptor (its file position is restored) or a path.
    ``size`` limits the walk to the first ``size`` bytes (default: the file's size); a file of
    size 0, or one that is a single hole, has no extents. Where holes cannot be detected the
    answer is ``[(0, size)]``.
    """
    if isinstance(fd_or_path, int):
        fd = fd_or_path
        if size is None:
            size = os.fstat(fd).st_size
        try:
            saved = os.lseek(fd, 0, os.SEEK_CUR)
        except OSError:
            saved = None
        try:
            return _extents_of_fd(fd, size)
        finally:
            if saved is not None:
                os.lseek(fd, saved, os.SEEK_SET)
    fd = os.open(fd_or_path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        if size is None:
            size = os.fstat(fd).st_size
        return _extents_of_fd(fd, size)
    finally:
        os.close(fd)


def layout(extents: list[Extent], size: int) -> Iterator[tuple[int, int, bool]]:
    """``(offset, length, is_data)`` covering ``[0, size)`` in order: data extents and the holes
    between, before and after them. Extents reaching past ``size`` are clipped."""
    pos = 0
    for start, length in extents:
        end = min(start + length, size)
        if start > pos:
            yield pos, min(start, size) - pos, False
        if end > start:
            yield start, end - start, True
        pos = max(pos, end)
        if pos >= size:
            return
    if pos < size:
        yield pos, size - pos, False


def iter_regions(
    path: str | os.PathLike[str], chunk: int = CHUNK_SIZE
) -> Iterator[tuple[int, bytes | int]]:
    """Walk the whole file at ``path`` in order, reading only its data.

    Yields ``(offset, data)`` for data (``bytes`` of at most ``chunk`` bytes; data that happens
    to be zeros is still data) and ``(offset, hole_length)`` for each hole, so that the pieces
    cover the file exactly. Raises OSError if the file shrinks while it is read.
    """
    if chunk <= 0:
        raise ValueError(f"chunk must be positive, not {chunk}")
    with open(path, "rb", buffering=0) as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        for offset, length, is_data in layout(_extents_of_fd(fd, size), size):
            if not is_data:
                yield offset, length
                continue
            pos, end = offset, offset + length
            while pos < end:
                data = os.pread(fd, min(chunk, end - pos), pos)
                if not data:
                    raise OSError(errno.EIO, f"{path!s} shrank while being read (at {pos})")
                yield pos, data
                pos += len(data)
