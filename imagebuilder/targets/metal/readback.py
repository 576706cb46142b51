"""Reading a flashed target back: every unit written is read from the device and its XXH3-128
compared with the one computed from the source (see :mod:`.flash`).

:class:`Verifier` does it on :data:`VERIFY_THREADS` threads while the writing goes on;
:func:`verify_units` afterwards; :func:`check_disk_digest` hashes a whole file target against
the image's disk digest. Reads go to the device (O_DIRECT, and the page cache's copy dropped),
not to what was just written to memory. A mismatch or a read error names the byte and block
range.
"""

from __future__ import annotations

import errno
import mmap
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import xxhash

from ...errors import HostError
from ...formats.bmap import BLOCK_SIZE
from ...hashing.core import digest_fd
from ...store.oci import oci_digest

UNIT = 4 << 20
"""Largest write (and verify read): aligned, so O_DIRECT accepts it."""
VERIFY_THREADS = 2
"""Read-back threads, each with its own UNIT buffer."""
_O_DIRECT = getattr(os, "O_DIRECT", 0)
_END = object()

Progress = Callable[[str, int], Callable[[int], None]]
"""``progress(phase, total_bytes)`` at the start of a phase returns ``update(n_bytes)``."""


@dataclass
class Unit:
    """One write: ``length`` bytes at ``offset`` whose XXH3-128 is ``digest``."""

    offset: int
    length: int
    digest: bytes

    def describe(self) -> str:
        end = self.offset + self.length
        first, last = self.offset // BLOCK_SIZE, (end - 1) // BLOCK_SIZE
        blocks = f"block {first}" if first == last else f"blocks {first}-{last}"
        return f"bytes {self.offset}-{end - 1} ({blocks})"


class Verifier:
    """Reads written units back on :data:`VERIFY_THREADS` threads while the writer goes on,
    and compares their XXH3-128 with the reader's. Two reads in flight keep the device busy
    where one, waiting on each read's latency, would not."""

    def __init__(self, target: Path, source: str) -> None:
        self.target = target
        self.source = source  # "disk" or "image": what a mismatch says the target differs from
        self.error: BaseException | None = None
        self.queue: queue.Queue[object] = queue.Queue()
        fd, _ = open_for_verify(target)  # fails here, in the caller, if it cannot be opened
        os.close(fd)
        self.threads = [threading.Thread(target=self._run, daemon=True,
                                         name=f"imagebuilder-flash-verify-{i}")
                        for i in range(VERIFY_THREADS)]
        for t in self.threads:
            t.start()

    def put(self, unit: Unit) -> None:
        self.queue.put(unit)

    def check(self) -> None:
        """Wait for the units put so far; raise the first mismatch or read error."""
        self.queue.join()
        if self.error is not None:
            raise self.error

    def finish(self) -> None:
        """Wait for every unit; raise the first mismatch or read error."""
        for _ in self.threads:
            self.queue.put(_END)
        for t in self.threads:
            t.join()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        reader: ReadBack | None = None
        try:
            while True:
                item = self.queue.get()
                try:
                    if item is _END:
                        return
                    assert isinstance(item, Unit)
                    if self.error is None:
                        reader = reader or ReadBack(self.target)
                        reader.check(item, self.source)
                except BaseException as e:
                    self.error = self.error or e
                finally:
                    self.queue.task_done()
        finally:
            if reader is not None:
                reader.close()


class ReadBack:
    """Reads units of a target into its own buffer, from the device (O_DIRECT) where it can."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.fd, self.direct = open_for_verify(target)
        self.buf = mmap.mmap(-1, UNIT)

    def read(self, unit: Unit) -> memoryview:
        view = memoryview(self.buf)[:unit.length]
        try:
            got = read_full(self.fd, view, unit.offset)
        except OSError as e:
            if e.errno != errno.EINVAL or not self.direct:
                raise HostError(f"verify: cannot read {unit.describe()} of {self.target}: "
                                f"{e.strerror}") from None
            os.close(self.fd)  # O_DIRECT refused this read: go on without it
            self.fd, self.direct = open_for_verify(self.target, direct=False)
            got = read_full(self.fd, view, unit.offset)
        if got < unit.length:
            raise HostError(f"verify: {self.target} ends before the end of {unit.describe()} "
                            "(it is shorter than the disk)")
        return view

    def check(self, unit: Unit, source: str) -> None:
        """Read ``unit`` back; HostError unless its XXH3-128 is the unit's (``source``: what the
        target is said to differ from, "disk" or "image")."""
        if xxhash.xxh3_128_digest(self.read(unit)) != unit.digest:
            raise HostError(f"verify: {self.target} differs from the {source} at "
                            f"{unit.describe()}; flash it again")

    def close(self) -> None:
        os.close(self.fd)


def check_disk_digest(target: Path, size: int, digest: str) -> None:
    """HostError unless the file ``target`` is ``size`` bytes whose SHA-256 is ``digest``."""
    fd, _ = open_for_verify(target, direct=False)
    try:
        got = digest_fd(fd, ("sha256",))
    finally:
        os.close(fd)
    if got.size != size or oci_digest(got.sha256) != digest:
        raise HostError(f"verify: {target} hashes to sha256:{got.sha256[:12]} ({got.size} bytes),"
                        f" not the image's disk digest {digest[:19]} ({size} bytes); flash it "
                        "again")


def verify_units(target: Path, units: list[Unit], *, progress: Progress | None = None) -> None:
    """Read every unit back from ``target`` and compare its XXH3-128; HostError naming the
    range for a mismatch, a read error or a target that ends too soon."""
    update = progress("verify", sum(u.length for u in units)) if progress else None
    reader = ReadBack(target)
    try:
        for unit in sorted(units, key=lambda u: u.offset):
            reader.check(unit, "disk")
            if update:
                update(unit.length)
    finally:
        reader.close()


def read_full(fd: int, view: memoryview, offset: int) -> int:
    """Read into ``view`` from ``offset``; the count read (short only at the end)."""
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n <= 0:
            break
        got += n
    return got


def open_for_verify(target: Path, direct: bool = True) -> tuple[int, bool]:
    try:
        if direct and _O_DIRECT:
            try:
                return os.open(target, os.O_RDONLY | os.O_CLOEXEC | _O_DIRECT), True
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
        fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise HostError(f"verify: {target} has disappeared") from None
    except OSError as e:
        raise HostError(f"verify: cannot open {target}: {e.strerror}") from None
    if hasattr(os, "posix_fadvise"):  # read the device, not what we just wrote to memory
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    return fd, False
