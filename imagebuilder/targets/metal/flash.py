"""Flashing a disk model onto a server's disk (a block device) or a disk image file, safely.

What is written: only the runs of non-zero 4 KiB blocks of the disk model (the blocks a block
map lists), in aligned writes of up to 4 MiB, with O_DIRECT where the target allows it, then
fsync. Blocks outside those runs are left as they are on a block device (as ``bmaptool copy``
does: the image holds zeros there and nothing reads them); a regular-file target is emptied
first, so it ends up byte-identical to the raw disk.

How: a reader thread walks the disk model, copies each run into one of a few fixed buffers,
hashes it (XXH3-128 per written unit) and hands it over a bounded queue to the writer; an
exception in the reader travels through the queue and is raised by the writer. Memory stays at
the buffers' size whatever the disk's. For a raw image with a block map (:class:`MappedImage`)
the reader also checks each range's SHA-256 against the map as it reads (what ``bmaptool copy``
verifies), so the bytes written are the bytes the map vouches for. Verification runs on a third
thread as the writing goes on: it reads every unit back as soon as it is written (O_DIRECT, so
from the device rather than the page cache) and compares its XXH3-128 with the one the reader
computed from the source: the chain map (or disk model) -> source bytes -> unit digest ->
target holds end to end, and XXH3 keeps the read-back check at memory speed, where SHA-256
would make it CPU-bound (:mod:`.readback`). A mismatch or read error names the byte and block
range, and the partition tables are only written once all else verified.

Crash safety: before anything else the target's partition tables (the primary GPT at its start
and any backup GPT at its end) are zeroed, and the image's own tables (primary and backup GPT)
are written last, after an fsync of everything else. A flash interrupted at any point leaves a
target without a valid partition table, which firmware does not boot and verification rejects;
flashing again rewrites it whole.

Refusals (UserError, exit 2) of a target that must not be written (mounted, the host's own disk,
too small, a partition without ``--force``), or one that holds what the image is read from or
what imagebuilder keeps (the source file or any file of the store or the cache, also through a
symlink or a hard link, a loop device backed by one, a path in the store or the cache):
:mod:`imagebuilder.targets.metal.blockdev`, checked before the target is opened.

A file target is truncated first, so it then equals the image; on a block device only the
data ranges and the partition-table areas are written, and the gaps keep the device's old
bytes, so "verified" there covers the bytes written, not the whole device.

What "verified" means: every written range was read back from the target and its XXH3-128
equals that of the image's bytes for the range, as read from the image's extents (for a raw
image with a block map: as checked against the map's SHA-256). :class:`FlashResult` says how
many bytes and ranges were compared, and against what; a flash that wrote nothing verifies
nothing, so a disk without data is refused before the target is touched.

``--env``: :func:`imagebuilder.disk.configpart.with_config_partition` adds a second GPT
partition after the image's, holding the environment's config drive (ISO 9660, see
:mod:`imagebuilder.disk.configdrive`), and rewrites both GPT headers for the longer disk; the
image's partition keeps its bytes. The init mounts partitions as well as whole disks when it looks
for the config drive.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os
import queue
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from ...disk import gpt
from ...disk.model import Disk, FileSlice
from ...errors import HostError, UserError
from ...formats.bmap import BLOCK_SIZE, Bmap, disk_of_image, mapped_runs
from ...fsutil import disk_full
from .blockdev import Host, Target, check_target, refuse_sources
from .readback import UNIT, Progress, Unit, Verifier, check_disk_digest, verify_units

BUFFERS = 6
"""Buffers between the reader and the writer: the flash's memory is about BUFFERS * UNIT."""
_HEAD = gpt.FIRST_USABLE_LBA * gpt.SECTOR  # the protective MBR, primary header and entries
_WIPE = 5 * BLOCK_SIZE  # whole 4 KiB blocks over the primary GPT
_O_DIRECT = getattr(os, "O_DIRECT", 0)

def _open_target(target: Target, disk_size: int, private: bool = False) -> tuple[int, int]:
    """``(direct_fd, buffered_fd)``; the first is -1 when O_DIRECT is refused. A ``private``
    file target (one that will hold an environment's secrets) is created 0600, and an existing
    one loses its group and other permissions."""
    flags = os.O_RDWR | os.O_CLOEXEC
    if target.kind == "block":
        flags |= os.O_EXCL  # a mounted or otherwise claimed device gives EBUSY
    else:
        flags |= os.O_CREAT
    try:
        fd = os.open(target.path, flags, 0o600 if private else 0o644)
        if private and target.kind != "block":
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
            if mode & 0o077:
                os.fchmod(fd, mode & 0o700)
    except OSError as e:
        if e.errno == errno.EBUSY:
            raise UserError(f"{target.path} is in use (mounted, or held by another program): "
                            "refusing to write it") from None
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise UserError(f"cannot write {target.path}: {e.strerror}") from None
        raise HostError(f"cannot open {target.path}: {e.strerror}") from None
    direct = -1
    if _O_DIRECT:
        try:
            direct = os.open(target.path, (flags & ~os.O_EXCL & ~os.O_CREAT) | _O_DIRECT)
        except OSError:
            direct = -1
    return direct, fd


# --- the plan: what to write, and its digests --------------------------------------------------


def _pieces(disk: Disk) -> Iterator[tuple[int, memoryview]]:
    """The disk's non-zero runs, cut on UNIT boundaries."""
    for off, view in mapped_runs(disk):
        pos = 0
        while pos < len(view):
            o = off + pos
            n = min(len(view) - pos, (o // UNIT + 1) * UNIT - o)
            yield o, view[pos:pos + n]
            pos += n


def plan_of(disk: Disk) -> list[Unit]:
    """The units a flash of ``disk`` writes, with their digests (no writing)."""
    return [Unit(o, len(v), xxhash.xxh3_128_digest(v)) for o, v in _pieces(disk)]


_END = object()


@dataclass(frozen=True)
class MappedImage:
    """A raw image file and its block map: flashed range by range, checked against the map."""

    path: Path
    bmap: Bmap

    def disk(self) -> Disk:
        return disk_of_image(self.path, self.bmap)


def source_files(disk: Disk, image: MappedImage | None = None) -> list[Path]:
    """The files the flash reads the image from."""
    paths = {Path(e.source.path) for e in disk.extents if isinstance(e.source, FileSlice)}
    if image is not None:
        paths.add(image.path)
    return sorted(paths)


def _take(pool: queue.Queue[mmap.mmap], stop: threading.Event) -> mmap.mmap | None:
    while not stop.is_set():
        try:
            return pool.get(timeout=0.1)
        except queue.Empty:
            continue
    return None


def _reader(disk: Disk, work: queue.Queue[object], pool: queue.Queue[mmap.mmap],
            stop: threading.Event) -> None:
    """Disk model -> (offset, buffer, length, XXH3-128) items on ``work``."""
    try:
        for o, view in _pieces(disk):
            buf = _take(pool, stop)
            if buf is None:
                return
            n = len(view)
            buf[:n] = view
            digest = xxhash.xxh3_128_digest(memoryview(buf)[:n])
            _put(work, (o, buf, n, digest), stop)
        _put(work, _END, stop)
    except BaseException as e:  # crosses the queue; the writer raises it
        _put(work, e, stop)


def _image_reader(image: MappedImage, work: queue.Queue[object],
                  pool: queue.Queue[mmap.mmap], stop: threading.Event) -> None:
    """Raw image + block map -> (offset, buffer, length, XXH3-128) items, range by range; each
    range's SHA-256 is compared with the map's as it is read."""
    bs, size = image.bmap.block_size, image.bmap.image_size
    try:
        with open(image.path, "rb", buffering=0) as f:
            fd = f.fileno()
            for r in image.bmap.ranges:
                start, length = r.span(bs, size)
                h = hashlib.sha256() if r.sha256 else None
                pos, end = start, start + length
                while pos < end:
                    n = min(end, (pos // UNIT + 1) * UNIT) - pos
                    buf = _take(pool, stop)
                    if buf is None:
                        return
                    view = memoryview(buf)[:n]
                    got = os.preadv(fd, [view], pos)
                    if got != n:
                        raise UserError(f"{image.path} ended inside {r.describe(bs, size)}")
                    if h is not None:
                        h.update(view)
                    digest = xxhash.xxh3_128_digest(view)
                    del view
                    _put(work, (pos, buf, n, digest), stop)
                    pos += n
                if h is not None and h.hexdigest() != r.sha256:
                    raise UserError(f"{image.path} does not match its block map at "
                                    f"{r.describe(bs, size)}: checksum differs")
        _put(work, _END, stop)
    except OSError as e:
        _put(work, HostError(f"cannot read {image.path}: {e.strerror}"), stop)
    except BaseException as e:
        _put(work, e, stop)


def _put(work: queue.Queue[object], item: object, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            work.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def _pwrite(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        if n <= 0:
            raise OSError(errno.EIO, "short write")
        data, offset = data[n:], offset + n


@dataclass
class FlashResult:
    target: Path
    kind: str
    written: int
    units: int
    verified: bool
    o_direct: bool
    digests: list[Unit] = field(default_factory=list, repr=False)
    against: str = "the image's extents"
    """What the read-back bytes were compared with."""

    @property
    def verified_bytes(self) -> int:
        return sum(u.length for u in self.digests) if self.verified else 0


def flash(disk: Disk | MappedImage, target_path: Path, *, verify: bool = True,
          force: bool = False, progress: Progress | None = None,
          host: Host | None = None, private: bool = False,
          protected: Sequence[Path] = (), disk_digest: str | None = None) -> FlashResult:
    """Write ``disk`` (a disk model, or a raw image with its block map) onto ``target_path``
    (a whole-disk block device or a file) and verify it. ``private``: the disk holds an
    environment (a config partition), so a file target is made readable by its owner only.
    ``protected``: directories the target must not be in (the store and the cache).
    ``disk_digest``: the image's recorded disk digest; a file target is then also hashed whole
    (SHA-256, holes included as zeros) and must match it."""
    image = disk if isinstance(disk, MappedImage) else None
    model = image.disk() if image is not None else disk
    assert isinstance(model, Disk)
    refuse_sources(target_path, source_files(model, image), protected)
    total = image.bmap.mapped_blocks * image.bmap.block_size if image else model.data_size()
    if total == 0:
        raise UserError(f"{image.path if image else 'the disk'} holds no data (all zeros): "
                        "there is nothing to flash")
    target = check_target(target_path, model.size, force=force, host=host)
    direct, fd = _open_target(target, model.size, private)
    verifier: Verifier | None = None
    try:
        _prepare(target, fd, model.size)
        update = progress("write", total) if progress else None
        if verify:
            verifier = Verifier(target.path, "disk" if image is None else "image")
        units, tables = _write_data(image or model, model.size, target, direct, fd, verifier,
                                    update)
        _sync(target, fd)
        if verifier is not None:  # everything else is right before the tables make it a disk
            verifier.check()
        _write_tables(target, fd, tables)
        if verifier is not None:
            for unit, _data in tables:
                verifier.put(unit)
            v, verifier = verifier, None
            v.finish()
    finally:
        if verifier is not None:  # leaving on an error: stop it, keep the first error
            with contextlib.suppress(BaseException):
                verifier.finish()
        for f in (direct, fd):
            if f >= 0:
                os.close(f)
    against = ("the image's bytes, checked against its block map (SHA-256 per range)"
               if image is not None else "the image's bytes, read from its extents")
    if verify and disk_digest is not None and target.kind == "file":
        check_disk_digest(target.path, model.size, disk_digest)
        against += f"; the whole target's SHA-256 is the image's disk digest {disk_digest[:19]}"
    return FlashResult(target.path, target.kind, sum(u.length for u in units), len(units),
                       verify, direct >= 0, units, against)


def _write_data(source: Disk | MappedImage, disk_size: int, target: Target, direct: int,
                fd: int, verifier: Verifier | None, update: Callable[[int], None] | None
                ) -> tuple[list[Unit], list[tuple[Unit, bytes]]]:
    """Write what a reader thread reads from ``source``, unit by unit, handing each to the
    verifier; the units over the partition tables are not written but returned with their
    bytes (every unit, and those), to be written last."""
    backup = disk_size - gpt.BACKUP_SIZE
    pool: queue.Queue[mmap.mmap] = queue.Queue()
    for _ in range(BUFFERS):
        pool.put(mmap.mmap(-1, UNIT))
    work: queue.Queue[object] = queue.Queue(maxsize=BUFFERS)
    stop = threading.Event()
    reader = _start_reader(source, work, pool, stop)
    units: list[Unit] = []
    tables: list[tuple[Unit, bytes]] = []
    try:
        while (item := _next(work, verifier)) is not None:
            o, buf, n, digest = item
            unit = Unit(o, n, digest)
            units.append(unit)
            view = memoryview(buf)[:n]
            if o < _HEAD or o + n > backup:  # partition tables: written last
                tables.append((unit, bytes(view)))
                del view
                pool.put(buf)
            else:
                _write(target, direct, fd, view, unit)
                del view
                pool.put(buf)
                if verifier is not None:
                    verifier.put(unit)
            if update:
                update(n)
    finally:
        stop.set()
        reader.join()
    return units, tables


def _start_reader(source: Disk | MappedImage, work: queue.Queue[object],
                  pool: queue.Queue[mmap.mmap], stop: threading.Event) -> threading.Thread:
    read = _image_reader if isinstance(source, MappedImage) else _reader
    reader = threading.Thread(target=read, args=(source, work, pool, stop), daemon=True)
    reader.start()
    return reader


def _next(work: queue.Queue[object], verifier: Verifier | None
          ) -> tuple[int, mmap.mmap, int, bytes] | None:
    """The reader's next unit ``(offset, buffer, length, XXH3-128)``, None after the last;
    raises what the reader or the verifier failed with."""
    item = work.get()
    if item is _END:
        return None
    if isinstance(item, BaseException):
        raise item
    if verifier is not None and verifier.error is not None:
        raise verifier.error
    assert isinstance(item, tuple)
    return item


def _write_tables(target: Target, fd: int, tables: list[tuple[Unit, bytes]]) -> None:
    """The partition tables, last: the backup, then (after a sync) the primary."""
    tables.sort(key=lambda d: d[0].offset, reverse=True)
    for unit, data in tables:
        if unit.offset < _HEAD:
            _sync(target, fd)
        _write(target, -1, fd, memoryview(data), unit)
    _sync(target, fd)


def _prepare(target: Target, fd: int, disk_size: int) -> None:
    """Forget what was on the target: a file is emptied to the disk's size; a device's
    partition tables (start, and backup at its end) are zeroed and synced."""
    try:
        if target.kind == "file":
            os.ftruncate(fd, 0)
            os.ftruncate(fd, disk_size)
        else:
            _pwrite(fd, memoryview(bytes(_WIPE)), 0)
            end = target.size - gpt.BACKUP_SIZE
            end -= end % BLOCK_SIZE
            _pwrite(fd, memoryview(bytes(target.size - end)), end)
        os.fsync(fd)
    except OSError as e:
        raise _write_error(target, e, "preparing") from None


def _write(target: Target, direct: int, fd: int, view: memoryview, unit: Unit) -> None:
    try:
        if direct >= 0 and unit.offset % BLOCK_SIZE == 0 and len(view) % BLOCK_SIZE == 0:
            _pwrite(direct, view, unit.offset)
        else:
            _pwrite(fd, view, unit.offset)
    except OSError as e:
        raise _write_error(target, e, f"writing {unit.describe()}") from None


def _sync(target: Target, fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as e:
        raise _write_error(target, e, "flushing") from None


def _write_error(target: Target, e: OSError, what: str) -> Exception:
    full = disk_full(e, f"{target.path} ({what})")
    if full is not None:
        return full
    if e.errno in (errno.ENODEV, errno.ENXIO):
        return HostError(f"{target.path} disappeared while {what}: the disk is incomplete")
    return HostError(f"{what} of {target.path} failed: {e.strerror or e}; the disk is "
                     "incomplete")


def verify_target(disk: Disk, target: Path, *, progress: Progress | None = None) -> None:
    """Check that ``target`` holds ``disk`` (its non-zero blocks), as a flash's verify does."""
    verify_units(Path(target), plan_of(disk), progress=progress)
