"""The hashing core: read a file once, skipping its holes, and feed every digest that needs it.

A build hashes large files (kernels, JDK runtimes, disk images of many GiB that are mostly holes)
several ways: XXH3 for cache keys and change detection, SHA-256 where a format or a trust boundary
demands it (OCI digests, published disk digests), per-block SHA-256 for bmap ranges and EBS
snapshot blocks. Reading such a file once per consumer, or reading its holes at all, would make
hashing cost as much as the apparent size. So :func:`digest_file` asks the filesystem where the
data is (:mod:`imagebuilder.hashing.sparse`), reads only that, in large reads into one reused
buffer, and hands each piece to every digest; holes are fed as zeros from a preallocated zero
buffer, or skipped in O(1) per block where the digest allows it. Disk-format writers hash what they
write in the same pass through :class:`MultiHasher` (``update`` for data, ``zeros`` for holes) or
:func:`digest_regions`.

Digest definitions (names are the ``algos`` accepted everywhere; results are lower-case hex, no
prefix). Every one is a function of the content only, never of where the holes happen to be: a
sparse file and the same bytes fully written hash the same.

``sha256``, ``sha512``
    The standard digests of the whole content (equal to hashlib's and ``sha256sum``'s).
``xxh128``
    Plain XXH3-128 (seed 0) of the whole content, equal to ``xxhsum -H2``; for interoperability.
    Holes are fed as zeros: XXH3's state update over zeros has no closed form, so this one costs
    time proportional to the apparent size. ``xxh64`` is plain XXH64 (``xxhsum -H1``).
``xxh3``
    Block-tree XXH3-128, the digest of cache keys and change detection. The content is cut into
    leaves of :data:`XXH3_LEAF_SIZE` (1 MiB; the last one may be shorter) and each leaf is hashed
    with XXH3-128. A content of at most one leaf hashes to that leaf's digest, i.e. to its plain
    XXH3-128 (so ``xxh3`` equals ``xxh128`` and ``xxhsum -H2`` up to 1 MiB). A longer content
    hashes to XXH3-128 with seed :data:`XXH3_TREE_SEED` over the concatenated 16-byte canonical
    (big-endian) leaf digests followed by the content length as 8 bytes little-endian. A leaf of
    zeros, hole or written, has the digest of 1 MiB of zeros, precomputed, so a hole costs O(1)
    per leaf and no reading; leaves are independent, so dense stretches are hashed on several
    cores. Digests of pre-sparse versions of this module (plain XXH3-128 of files over 1 MiB)
    differ: the cache treats such entries as corrupt and rebuilds them once.
Per-block SHA-256 (``block_size=N``)
    :attr:`Digests.blocks` holds the SHA-256 of each ``N``-byte block (the last may be shorter), or
    None for a block that is all zeros, whether hole or written.

All reading of whole files goes through :func:`digest_file`; readers that need the bytes
themselves feed a :class:`MultiHasher` as they go (see :mod:`imagebuilder.store.blobs`).

Cache keys over structured values are :func:`imagebuilder.hashing.keys.key_of`.
"""

from __future__ import annotations

import itertools
import os
import stat
from collections.abc import Callable, Iterable, Sequence

import xxhash

from .sparse import Extent, data_extents, layout
from .tree import XXH3_LEAF_SIZE, Buffer, Tree, feed_zeros, pread_full

# Imported where used, or for type checking only: ``imagebuilder hash`` starts a process per
# call, and hashlib (OpenSSL), threading, typing and dataclasses would add ~10 ms to each.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Protocol

    from .tree import Hash as _Hash

    class _Sink(Protocol):
        def update(self, data: memoryview) -> None: ...

        def zeros(self, n: int) -> None: ...


CHUNK_SIZE = 1 << 20
"""Bytes per read: large enough to amortise syscalls, small enough to keep memory flat."""

DEFAULT_ALGOS: tuple[str, ...] = ("xxh3", "sha256")

PARALLEL_MIN_BYTES = 64 << 20
"""Data below this is hashed on one thread: starting threads would cost more than they save."""

MAX_THREADS = 4



def _sha256() -> _Hash:
    import hashlib

    return hashlib.sha256()


def _sha512() -> _Hash:
    import hashlib

    return hashlib.sha512()


_FACTORIES: dict[str, Callable[[], _Hash]] = {
    "xxh128": xxhash.xxh3_128,
    "xxh64": xxhash.xxh64,
    "sha256": _sha256,
    "sha512": _sha512,
}
_TREE = "xxh3"


def supported_algos() -> tuple[str, ...]:
    """Names accepted by :class:`MultiHasher`, :func:`digest_file` and :func:`hash_file`."""
    return tuple(sorted([*_FACTORIES, _TREE]))


class _Plain:
    """A standard streaming digest: holes are fed as zeros from the zero buffer."""

    def __init__(self, h: _Hash) -> None:
        self.h = h

    def update(self, data: memoryview) -> None:
        self.h.update(data)

    def zeros(self, n: int) -> None:
        feed_zeros(self.h, n)

    def hexdigest(self) -> str:
        return self.h.hexdigest()


class _Blocks:
    """SHA-256 of each ``block_size`` block; None for blocks of zeros."""

    def __init__(self, block_size: int) -> None:
        self.size = block_size
        self.digests: list[str | None] = []
        self._h: _Hash | None = None
        self._fill = 0
        zero = _sha256()
        feed_zeros(zero, block_size)
        self._zero_hex = zero.hexdigest()

    def _zero_hex_of(self, n: int) -> str:
        if n == self.size:
            return self._zero_hex
        h = _sha256()
        feed_zeros(h, n)
        return h.hexdigest()

    def _close(self) -> None:
        assert self._h is not None
        hexd = self._h.hexdigest()
        self.digests.append(None if hexd == self._zero_hex else hexd)
        self._h, self._fill = None, 0

    def update(self, data: memoryview) -> None:
        pos, n = 0, len(data)
        while pos < n:
            if self._h is None:
                self._h = _sha256()
            take = min(self.size - self._fill, n - pos)
            self._h.update(data[pos : pos + take])
            self._fill += take
            pos += take
            if self._fill == self.size:
                self._close()

    def zeros(self, n: int) -> None:
        if self._fill:
            take = min(self.size - self._fill, n)
            assert self._h is not None
            feed_zeros(self._h, take)
            self._fill += take
            n -= take
            if self._fill == self.size:
                self._close()
        if n >= self.size:
            self.digests.extend(itertools.repeat(None, n // self.size))
            n %= self.size
        if n:
            self._h = _sha256()
            feed_zeros(self._h, n)
            self._fill = n

    def result(self) -> list[str | None]:
        if not self._fill:
            return list(self.digests)
        assert self._h is not None
        hexd = self._h.copy().hexdigest()
        return [*self.digests, None if hexd == self._zero_hex_of(self._fill) else hexd]


class Digests:
    """What one pass over a content produced.

    ``hexdigests`` maps each requested algorithm to its hex digest, in the order asked for;
    ``blocks`` holds the per-block SHA-256 (None for all-zero blocks) when a ``block_size`` was
    given, else is empty. ``data_bytes`` counts the bytes actually read or fed as data (the rest
    of ``size`` was holes).
    """

    __slots__ = ("block_size", "blocks", "data_bytes", "hexdigests", "size")

    def __init__(
        self,
        size: int,
        hexdigests: dict[str, str],
        block_size: int | None = None,
        blocks: list[str | None] | None = None,
        data_bytes: int = 0,
    ) -> None:
        self.size = size
        self.hexdigests = hexdigests
        self.block_size = block_size
        self.blocks: list[str | None] = blocks if blocks is not None else []
        self.data_bytes = data_bytes

    def _fields(self) -> tuple[object, ...]:
        return (self.size, self.hexdigests, self.block_size, self.blocks, self.data_bytes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Digests) and self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Digests(size={self.size}, hexdigests={self.hexdigests}, "
            f"block_size={self.block_size}, blocks=[{len(self.blocks)} blocks], "
            f"data_bytes={self.data_bytes})"
        )

    def __getitem__(self, algo: str) -> str:
        return self.hexdigests[algo]

    @property
    def xxh3(self) -> str:
        return self.hexdigests["xxh3"]

    @property
    def sha256(self) -> str:
        return self.hexdigests["sha256"]


def _check_algos(algos: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(algos, str):
        algos = (algos,)
    unknown = [a for a in algos if a != _TREE and a not in _FACTORIES]
    if unknown:
        raise ValueError(
            f"unknown hash algorithm(s) {', '.join(unknown)}; "
            f"supported: {', '.join(supported_algos())}"
        )
    return tuple(dict.fromkeys(algos))


class MultiHasher:
    """Several digests (and optionally per-block SHA-256) over one stream of bytes and holes.

    Feed data with :meth:`update` and runs of zeros (holes) with :meth:`zeros`, in content order;
    the caller may reuse its buffer after each call. ``algos`` are the names of the module
    docstring. Digests are lower-case hex without an algorithm prefix.
    """

    def __init__(
        self, algos: Sequence[str] | str = DEFAULT_ALGOS, block_size: int | None = None
    ) -> None:
        self.algos: tuple[str, ...] = _check_algos(algos)
        if not self.algos and block_size is None:
            raise ValueError("MultiHasher needs at least one algorithm or a block size")
        if block_size is not None and block_size <= 0:
            raise ValueError(f"block size must be positive, not {block_size}")
        self._digests: dict[str, _Plain | Tree] = {
            a: Tree() if a == _TREE else _Plain(_FACTORIES[a]()) for a in self.algos
        }
        self._blocks = _Blocks(block_size) if block_size is not None else None
        self._sinks: list[_Sink] = [*self._digests.values()]
        if self._blocks is not None:
            self._sinks.append(self._blocks)
        self.size = 0
        """Bytes fed so far, data and zeros."""
        self.data_bytes = 0
        """Bytes fed through :meth:`update`."""

    def update(self, data: Buffer) -> None:
        """Feed ``data`` to every digest."""
        mv = memoryview(data)
        if mv.ndim != 1 or mv.format not in ("B", "b", "c"):
            mv = mv.cast("B")
        for sink in self._sinks:
            sink.update(mv)
        self.size += len(mv)
        self.data_bytes += len(mv)

    def zeros(self, n: int) -> None:
        """Feed ``n`` zero bytes (a hole): never materialised, skipped where a digest allows."""
        if n < 0:
            raise ValueError(f"negative hole length {n}")
        for sink in self._sinks:
            sink.zeros(n)
        self.size += n

    def hexdigests(self) -> dict[str, str]:
        """``{algo: hex}`` for every algorithm, in the order they were asked for."""
        return {a: d.hexdigest() for a, d in self._digests.items()}

    def digests(self) -> Digests:
        """Everything computed so far (feeding may continue afterwards)."""
        return Digests(
            size=self.size,
            hexdigests=self.hexdigests(),
            block_size=self._blocks.size if self._blocks is not None else None,
            blocks=self._blocks.result() if self._blocks is not None else [],
            data_bytes=self.data_bytes,
        )


# --- files ------------------------------------------------------------------------------------


def _digest_sequential(fd: int, size: int, extents: list[Extent], hasher: MultiHasher) -> None:
    buf = memoryview(bytearray(CHUNK_SIZE))
    for offset, length, is_data in layout(extents, size):
        if not is_data:
            hasher.zeros(length)
            continue
        pos, end = offset, offset + length
        while pos < end:
            # Reads end on CHUNK_SIZE boundaries of the file, so they line up with xxh3 leaves.
            stop = min(end, (pos // CHUNK_SIZE + 1) * CHUNK_SIZE)
            piece = buf[: stop - pos]
            pread_full(fd, piece, pos)
            hasher.update(piece)
            pos = stop


def _digest_stream(fd: int, hasher: MultiHasher) -> None:
    """Pipes and devices: no size, no holes, read to the end."""
    buf = memoryview(bytearray(CHUNK_SIZE))
    while got := os.readv(fd, [buf]):
        hasher.update(buf[:got])


def _auto_threads() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_THREADS))


def digest_fd(
    fd: int,
    algos: Sequence[str] | str = ("xxh3",),
    block_size: int | None = None,
    *,
    threads: int | None = None,
) -> Digests:
    """:func:`digest_file` of an open file descriptor: a regular file is read with pread (its
    position is kept); a pipe or device is read from its position to its end."""
    hasher = MultiHasher(algos, block_size)  # validates before any reading
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        _digest_stream(fd, hasher)
        return hasher.digests()
    size = st.st_size
    extents = data_extents(fd, size)
    data = sum(length for _, length in extents)
    if threads is None:
        threads = _auto_threads() if data >= PARALLEL_MIN_BYTES else 1
    if threads > 1 and hasher.algos == (_TREE,) and block_size is None:
        from .parallel import xxh3_parallel  # only big files need the threads

        digest = xxh3_parallel(fd, size, extents, threads)
        return Digests(size=size, hexdigests={_TREE: digest}, data_bytes=data)
    _digest_sequential(fd, size, extents, hasher)
    return hasher.digests()


def digest_file(
    path: Path | str,
    algos: Sequence[str] | str = ("xxh3",),
    block_size: int | None = None,
    *,
    threads: int | None = None,
) -> Digests:
    """Every digest in ``algos`` (and per-block SHA-256 if ``block_size``) of the file at ``path``.

    The file is read once, only where it holds data; holes cost nothing for ``xxh3`` and
    per-block digests and are fed from a zero buffer to the others. ``threads`` (default: the
    available CPUs, up to :data:`MAX_THREADS`, for large files) only matters when ``xxh3`` is
    the sole digest; the result never depends on it.
    """
    _check_algos(algos)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        return digest_fd(fd, algos, block_size, threads=threads)
    finally:
        os.close(fd)


Region = tuple[int, Buffer | int]
"""``(offset, data)`` or ``(offset, hole length)``, as
:func:`imagebuilder.hashing.sparse.iter_regions` yields them."""


def digest_regions(
    regions: Iterable[Region],
    total_size: int | None = None,
    algos: Sequence[str] | str = ("xxh3",),
    block_size: int | None = None,
) -> Digests:
    """The digests of a content given as regions in increasing offset order.

    Each region is ``(offset, bytes-like)`` for data or ``(offset, length)`` for zeros (a hole).
    A gap between regions is zeros, and so is the tail up to ``total_size`` (default: the end of
    the last region). Overlapping or backwards regions, or regions past ``total_size``, raise
    ValueError. This is how a writer hashes the disk it writes, in the same pass.
    """
    hasher = MultiHasher(algos, block_size)
    pos = 0
    for offset, item in regions:
        if offset < pos:
            raise ValueError(f"region at {offset} overlaps or precedes the previous one (at {pos})")
        if offset > pos:
            hasher.zeros(offset - pos)
        if isinstance(item, int):
            if item < 0:
                raise ValueError(f"negative hole length {item} at {offset}")
            hasher.zeros(item)
            pos = offset + item
        else:
            hasher.update(item)
            pos = hasher.size
        if total_size is not None and pos > total_size:
            raise ValueError(f"region ending at {pos} is past the total size {total_size}")
    if total_size is not None and total_size > pos:
        hasher.zeros(total_size - pos)
    return hasher.digests()


def hash_paths(
    paths: Iterable[Path | str], algo: str = "xxh3"
) -> list[tuple[Path | str, str, int]]:
    """``[(path, hexdigest, size), ...]`` for each file, in order: what ``imagebuilder hash``
    prints. Raises ValueError for an unknown algorithm before reading anything."""
    _check_algos(algo)
    out = []
    for p in paths:
        d = digest_file(p, (algo,))
        out.append((p, d[algo], d.size))
    return out


def hash_file(path: Path | str, algos: Sequence[str] = ("xxh3",)) -> dict[str, str]:
    """``{algo: hex}`` of the file at ``path``, read once, holes skipped."""
    return digest_file(path, algos).hexdigests


def xxh3_file(path: Path | str) -> str:
    """Block-tree ``xxh3`` hex digest of a file (see the module docstring)."""
    return digest_file(path, (_TREE,)).hexdigests[_TREE]


def sha256_file(path: Path | str) -> str:
    """SHA-256 hex digest of a file (no ``sha256:`` prefix)."""
    return digest_file(path, ("sha256",)).hexdigests["sha256"]


def xxh3_bytes(data: Buffer) -> str:
    """Block-tree ``xxh3`` hex digest of ``data`` (plain XXH3-128 up to 1 MiB)."""
    if len(data) <= XXH3_LEAF_SIZE:
        return xxhash.xxh3_128_hexdigest(data)
    h = MultiHasher((_TREE,))
    h.update(data)
    return h.hexdigests()[_TREE]


def sha256_bytes(data: Buffer) -> str:
    """SHA-256 hex digest of ``data`` (no ``sha256:`` prefix)."""
    import hashlib

    return hashlib.sha256(data).hexdigest()
