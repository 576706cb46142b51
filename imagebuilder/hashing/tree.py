"""The block-tree ``xxh3`` digest's parts, shared by the sequential walk
(:mod:`imagebuilder.hashing.core`) and the parallel one (:mod:`imagebuilder.hashing.parallel`):
the leaf size and root seed that define it, the precomputed digest of a leaf of zeros, the tree
that is fed leaves or bytes in any pieces, and the exact positional read both walks use.
"""

from __future__ import annotations

import errno
import os

import xxhash

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    class Hash(Protocol):
        """What every streaming digest offers (hashlib's and xxhash's objects)."""

        def update(self, data: Buffer, /) -> object: ...

        def hexdigest(self) -> str: ...

        def copy(self) -> Hash: ...


XXH3_LEAF_SIZE = 1 << 20
"""Leaf size of the block-tree ``xxh3`` digest. Part of its definition: never change it."""

XXH3_TREE_SEED = int.from_bytes(b"ib-xxh3t", "big")
"""XXH3-128 seed of the ``xxh3`` root over the leaf digests (keeps roots apart from leaves)."""

ZERO = bytes(XXH3_LEAF_SIZE)
ZERO_MV = memoryview(ZERO)
ZERO_LEAF = xxhash.xxh3_128_digest(ZERO_MV[:XXH3_LEAF_SIZE])
ZERO_LEAF_BATCH = 1 << 16  # leaf digests fed to the root at once for long holes (1 MiB)
WINDOW_LEAVES = 1 << 12  # leaves per window of the parallel walk: bounds its memory (64 KiB)


Buffer = bytes | bytearray | memoryview


def feed_zeros(h: Hash, n: int) -> None:
    while n > 0:
        k = min(n, len(ZERO))
        h.update(ZERO_MV[:k])
        n -= k


class Tree:
    """The block-tree ``xxh3`` (see the module docstring), fed in any pieces."""

    def __init__(self) -> None:
        self._leaf = xxhash.xxh3_128()  # the current, incomplete leaf, streamed (no copies)
        self._fill = 0  # bytes fed to _leaf
        self._count = 0  # completed leaves
        self._bytes = 0  # bytes in completed leaves
        self._first = b""  # the first leaf's digest, held until we know there is a second
        self._root = xxhash.xxh3_128(seed=XXH3_TREE_SEED)

    def add_leaves(self, digests: Buffer, count: int, nbytes: int | None = None) -> None:
        """Append ``count`` completed leaf digests (16 bytes each, in order) of ``nbytes`` of
        content (default: ``count`` whole leaves; less when the last one is the short tail)."""
        if self._fill:
            raise RuntimeError("leaves can only be appended at a leaf boundary")
        if count <= 0:
            return
        self._bytes += count * XXH3_LEAF_SIZE if nbytes is None else nbytes
        mv = memoryview(digests)
        if self._count == 0:
            self._first = bytes(mv[:16])
            self._count, mv, count = 1, mv[16:], count - 1
            if not count:
                return
        if self._count == 1:
            self._root.update(self._first)
        self._root.update(mv[: 16 * count])
        self._count += count

    def _zero_leaves(self, k: int) -> None:
        while k > 0:
            batch = min(k, ZERO_LEAF_BATCH)
            self.add_leaves(ZERO_LEAF * batch, batch)
            k -= batch

    def _partial(self, data: memoryview) -> None:
        """Feed ``data`` (at most what the current leaf lacks) to the current leaf."""
        self._leaf.update(data)
        self._fill += len(data)
        if self._fill == XXH3_LEAF_SIZE:
            digest = self._leaf.digest()
            self._leaf.reset()
            self._fill = 0
            self.add_leaves(digest, 1)

    def update(self, data: memoryview) -> None:
        pos, n = 0, len(data)
        if self._fill:
            pos = min(XXH3_LEAF_SIZE - self._fill, n)
            self._partial(data[:pos])
        while n - pos >= XXH3_LEAF_SIZE:  # whole leaves in one call
            self.add_leaves(xxhash.xxh3_128_digest(data[pos : pos + XXH3_LEAF_SIZE]), 1)
            pos += XXH3_LEAF_SIZE
        if pos < n:
            self._partial(data[pos:])

    def zeros(self, n: int) -> None:
        if self._fill:
            take = min(XXH3_LEAF_SIZE - self._fill, n)
            self._partial(ZERO_MV[:take])
            n -= take
        if n >= XXH3_LEAF_SIZE:
            self._zero_leaves(n // XXH3_LEAF_SIZE)
            n %= XXH3_LEAF_SIZE
        if n:
            self._partial(ZERO_MV[:n])

    def hexdigest(self) -> str:
        tail = self._leaf.digest() if self._fill else b""
        if self._count == 0:
            return self._leaf.hexdigest()
        if self._count == 1 and not tail:
            return self._first.hex()
        if self._count == 1:
            root = xxhash.xxh3_128(self._first, seed=XXH3_TREE_SEED)
        else:
            root = self._root.copy()
        root.update(tail)
        root.update((self._bytes + self._fill).to_bytes(8, "little"))
        return root.hexdigest()


def pread_full(fd: int, buf: memoryview, offset: int) -> None:
    """Fill ``buf`` from ``fd`` at ``offset``; a short file is an error (it shrank under us)."""
    done, n = 0, len(buf)
    while done < n:
        got = os.preadv(fd, [buf[done:]], offset + done)
        if got == 0:
            raise OSError(errno.EIO, f"file shrank while being read (at byte {offset + done})")
        done += got
