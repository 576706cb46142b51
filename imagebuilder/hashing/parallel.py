"""The block-tree ``xxh3`` digest of a large file on several cores.

Leaves of the tree (see :mod:`imagebuilder.hashing.core`) are independent, so a file of many MiB is
hashed by a few threads at once: reads and XXH3 both release the GIL. The leaves are taken in
windows of :data:`imagebuilder.hashing.tree.WINDOW_LEAVES`, so memory stays bounded whatever the
file's size; holes cost nothing (a leaf of zeros has a precomputed digest). The result is the
same as the sequential walk of :func:`imagebuilder.hashing.core.digest_file`, byte for byte.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator

import xxhash

from .sparse import Extent
from .tree import WINDOW_LEAVES, XXH3_LEAF_SIZE, ZERO_LEAF, Tree, feed_zeros, pread_full


def _leaf_jobs(extents: list[Extent], size: int) -> Iterator[tuple[int, list[Extent]]]:
    """``(leaf index, data pieces within it)`` for each leaf holding data, and the last leaf if
    it is partial (its all-zero digest is not the precomputed one)."""
    cur = -1
    pieces: list[Extent] = []
    for start, length in extents:
        end = min(start + length, size)
        pos = start
        while pos < end:
            leaf = pos // XXH3_LEAF_SIZE
            stop = min(end, (leaf + 1) * XXH3_LEAF_SIZE)
            if leaf != cur:
                if cur >= 0:
                    yield cur, pieces
                cur, pieces = leaf, []
            pieces.append((pos, stop - pos))
            pos = stop
    last = (size - 1) // XXH3_LEAF_SIZE
    if cur >= 0:
        yield cur, pieces
    if size % XXH3_LEAF_SIZE and cur != last:
        yield last, []


def xxh3_parallel(fd: int, size: int, extents: list[Extent], threads: int) -> str:
    """The ``xxh3`` digest, leaves hashed by ``threads`` threads (reads release the GIL)."""
    tree = Tree()
    n_leaves = -(-size // XXH3_LEAF_SIZE)
    jobs = _leaf_jobs(extents, size)
    pending = next(jobs, None)
    for w0 in range(0, n_leaves, WINDOW_LEAVES):
        w1 = min(n_leaves, w0 + WINDOW_LEAVES)
        window: list[tuple[int, list[Extent]]] = []
        while pending is not None and pending[0] < w1:
            window.append(pending)
            pending = next(jobs, None)
        leaves = bytearray(ZERO_LEAF * (w1 - w0))
        if window:
            _hash_leaves(fd, size, window, leaves, w0, threads)
        tree.add_leaves(leaves, w1 - w0, min(size, w1 * XXH3_LEAF_SIZE) - w0 * XXH3_LEAF_SIZE)
    return tree.hexdigest() if n_leaves else xxhash.xxh3_128_hexdigest(b"")


def _hash_leaves(
    fd: int,
    size: int,
    window: list[tuple[int, list[Extent]]],
    leaves: bytearray,
    w0: int,
    threads: int,
) -> None:
    counter = itertools.count()
    errors: list[BaseException] = []

    def work() -> None:
        buf = memoryview(bytearray(XXH3_LEAF_SIZE))
        try:
            while not errors and (i := next(counter)) < len(window):
                leaf, pieces = window[i]
                base = leaf * XXH3_LEAF_SIZE
                leaf_len = min(XXH3_LEAF_SIZE, size - base)
                if len(pieces) == 1 and pieces[0] == (base, leaf_len):  # all data
                    pread_full(fd, buf[:leaf_len], base)
                    digest = xxhash.xxh3_128_digest(buf[:leaf_len])
                else:  # data and holes: stream the data, and the gaps from the zero buffer
                    h, pos = xxhash.xxh3_128(), 0
                    for start, length in pieces:
                        rel = start - base
                        feed_zeros(h, rel - pos)
                        pread_full(fd, buf[:length], start)
                        h.update(buf[:length])
                        pos = rel + length
                    feed_zeros(h, leaf_len - pos)
                    digest = h.digest()
                j = (leaf - w0) * 16
                leaves[j : j + 16] = digest
        except BaseException as e:
            errors.append(e)

    workers = [threading.Thread(target=work, daemon=True) for _ in range(threads - 1)]
    for t in workers:
        t.start()
    work()
    for t in workers:
        t.join()
    if errors:
        raise errors[0]
