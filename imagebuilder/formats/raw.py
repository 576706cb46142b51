"""raw: the guest's bytes, byte for byte, as a sparse file.

The simplest format and the reference the others are compared with (``qemu-img compare``): the
file is ``disk.size`` bytes long and byte N of the file is byte N of the guest disk. Zero regions
are holes: the file is sized with ``ftruncate`` and only the non-zero 64 KiB blocks of the data
extents are written, so a 16 GiB disk holding 256 MiB of data takes 256 MiB on the host (and
``cp --sparse``, ``bmaptool`` and ``qemu-img`` keep it that way).

:func:`write_blocks` is shared with the fixed VHD writer, whose data part is the same raw image.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..disk import Disk
from . import (
    BLOCK_SIZE,
    ContentId,
    Progress,
    ProgressTracker,
    WriteBehind,
    atomic_output,
    zero_block,
)

_RUN_MAX = 8 << 20  # bytes gathered into one pwritev


def write_raw(disk: Disk, dest: Path, *, progress: Progress | None = None) -> None:
    """Write ``disk`` to ``dest`` as a sparse raw image of exactly ``disk.size`` bytes."""
    with atomic_output(dest) as fd:
        os.ftruncate(fd, disk.size)
        write_blocks(fd, disk, progress=progress)


def write_blocks(
    fd: int,
    disk: Disk,
    *,
    content_id: ContentId | None = None,
    progress: Progress | None = None,
) -> int:
    """Write the non-zero 64 KiB blocks of ``disk`` at their guest offsets in ``fd``.

    Everything else is left untouched (holes in a freshly truncated file). Consecutive blocks
    go out in one ``pwritev``, on a background thread while the next blocks are read. Each
    written block (zero-padded to 64 KiB at the disk's end) is fed to ``content_id``. Returns
    the number of bytes written.
    """
    zero = zero_block(BLOCK_SIZE)
    tracker = ProgressTracker(progress, disk.size)
    run: list[bytes] = []
    run_off = run_len = written = 0
    with WriteBehind(fd) as behind:
        for off, block in disk.iter_blocks(BLOCK_SIZE):
            tracker.advance_to(off + BLOCK_SIZE)
            if block == zero:
                continue
            if content_id is not None:
                content_id.update(off, block)
            if off + BLOCK_SIZE > disk.size:
                block = block[: disk.size - off]
            if run and (run_off + run_len != off or run_len >= _RUN_MAX):
                behind.submit(run, run_off)
                run = []
            if not run:
                run_off, run_len = off, 0
            run.append(block)
            run_len += len(block)
            written += len(block)
        if run:
            behind.submit(run, run_off)
    tracker.done()
    return written
