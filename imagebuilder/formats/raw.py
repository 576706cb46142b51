"""raw: the guest's bytes, byte for byte, as a sparse file.

The simplest format and the reference the others are compared with (``qemu-img compare``): the
file is ``disk.size`` bytes long and byte N of the file is byte N of the guest disk. Zero regions
are holes: the file is sized with ``ftruncate`` and only the non-zero 64 KiB blocks of the data
extents are written (copied by the kernel from the files they come from, where it can), so a
16 GiB disk holding 256 MiB of data takes 256 MiB on the host (and ``cp --sparse``,
``bmaptool`` and ``qemu-img`` keep it that way).

:func:`write_blocks` is shared with the fixed VHD writer, whose data part is the same raw image.
"""

from __future__ import annotations

import os

from ..disk import Disk
from . import (
    BLOCK_SIZE,
    WRITEBACK,
    ContentId,
    Output,
    Progress,
    ProgressTracker,
    atomic_output,
)

TYPE_CHECKING = False
if TYPE_CHECKING:  # pathlib (with re and enum) costs ~8 ms of every export's start-up
    from pathlib import Path


def write_raw(disk: Disk, dest: Path | str, *, progress: Progress | None = None,
              sync: bool = True) -> None:
    """Write ``disk`` to ``dest`` as a sparse raw image of exactly ``disk.size`` bytes."""
    with atomic_output(dest, sync=sync) as fd:
        os.ftruncate(fd, disk.size)
        write_blocks(fd, disk, progress=progress, sync=sync)


def write_blocks(
    fd: int,
    disk: Disk,
    *,
    content_id: ContentId | None = None,
    progress: Progress | None = None,
    sync: bool = True,
) -> int:
    """Write the non-zero 64 KiB blocks of ``disk`` at their guest offsets in ``fd``.

    Everything else is left untouched (holes in a freshly truncated file). Runs of blocks that
    lie in one file are copied by the kernel, others gathered into few ``pwritev`` calls (see
    :class:`~imagebuilder.formats.Output`). Each written block (zero-padded to 64 KiB at the
    disk's end) is fed to ``content_id``. ``sync``: the file will be fsynced (start write-back
    early). Returns the number of bytes written.
    """
    tracker = ProgressTracker(progress, disk.size)
    out = Output(fd, writeback=WRITEBACK if sync else 0)
    for off, view, where in disk.iter_nonzero(BLOCK_SIZE):
        n = len(view)
        if content_id is not None:
            for j in range(0, n, BLOCK_SIZE):
                content_id.update(off + j, view[j : j + BLOCK_SIZE])
        if off + n > disk.size:  # the padded last block
            n = disk.size - off
            view = view[:n]
        if where is None:
            out.write(off, view)
        else:
            out.copy(off, where[0], where[1], view)
        tracker.advance_to(off + n)
    out.flush()
    tracker.done()
    return out.written
