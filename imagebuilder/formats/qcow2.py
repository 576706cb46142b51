"""qcow2 (version 3): QEMU's native format, written in one sequential pass.

On-disk structures (QEMU docs/interop/qcow2.txt; all numbers big-endian), with 64 KiB clusters:

- the **header** in cluster 0: magic ``QFI\\xfb``, version 3, cluster_bits 16, the virtual size,
  where the L1 and refcount tables are, refcount_order 4 (16-bit refcounts), header_length 112;
  then header extensions, here only the end-of-extensions marker (type 0, length 0).
- **L1 table**: one 8-byte entry per 512 MiB of guest space, pointing to an **L2 table** (one
  cluster, 8192 entries, each mapping one guest cluster to a host cluster). Bit 63 ("COPIED")
  says the refcount is exactly 1. An entry of 0 is unallocated and, with no backing file, reads
  as zeros: that is how zero clusters are never stored.
- **refcount table**: 8-byte pointers to **refcount blocks** (one cluster, 32768 16-bit counts,
  one per host cluster). Every cluster of the file is used exactly once, so every count is 1.

Layout: guest clusters with data are appended from cluster 1 in guest order, each L2 table right
after the data it maps (so only one L2 table is held in memory), then the L1 table, the refcount
table and the refcount blocks; the header goes into cluster 0 last. Zero clusters inside extents
are found while streaming, so the metadata sizes are only known at the end: the refcount
structures, which must count themselves, come from a small fixed-point iteration
(:func:`plan_metadata`). No compression, no backing file, no snapshots; ``qemu-img check`` finds
neither errors nor leaks.
"""

from __future__ import annotations

import struct
import sys
from array import array

from ..disk import Disk
from . import (
    WRITEBACK,
    Output,
    Progress,
    ProgressTracker,
    Record,
    atomic_output,
    pwrite_all,
)

MAGIC = b"QFI\xfb"
VERSION = 3
CLUSTER_BITS = 16
CLUSTER_SIZE = 1 << CLUSTER_BITS
L2_ENTRIES = CLUSTER_SIZE // 8
REFCOUNT_ORDER = 4
REFCOUNTS_PER_BLOCK = CLUSTER_SIZE * 8 // (1 << REFCOUNT_ORDER)
COPIED = 1 << 63
"""L1/L2 entry flag: the cluster's refcount is exactly one (qemu-img check insists on it)."""
OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00

TYPE_CHECKING = False
if TYPE_CHECKING:  # pathlib (with re and enum) costs ~8 ms of every export's start-up
    from pathlib import Path


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _be(values: array) -> bytes:  # type: ignore[type-arg]
    """An array of integers as big-endian bytes."""
    if sys.byteorder == "little":
        values = array(values.typecode, values)
        values.byteswap()
    return values.tobytes()


class Qcow2Header(Record):
    """The version 3 header (112 bytes with the compression_type field and its padding)."""

    FORMAT = ">4sIQIIQIIQQIIQQQQIIB7x"
    SIZE = struct.calcsize(FORMAT)
    __slots__ = (
        "autoclear_features",
        "backing_file_offset",
        "backing_file_size",
        "cluster_bits",
        "compatible_features",
        "compression_type",
        "crypt_method",
        "header_length",
        "incompatible_features",
        "l1_size",
        "l1_table_offset",
        "nb_snapshots",
        "refcount_order",
        "refcount_table_clusters",
        "refcount_table_offset",
        "size",
        "snapshots_offset",
        "version",
    )

    def __init__(
        self,
        size: int,
        l1_size: int,
        l1_table_offset: int,
        refcount_table_offset: int,
        refcount_table_clusters: int,
        cluster_bits: int = CLUSTER_BITS,
        version: int = VERSION,
        refcount_order: int = REFCOUNT_ORDER,
        backing_file_offset: int = 0,
        backing_file_size: int = 0,
        crypt_method: int = 0,
        nb_snapshots: int = 0,
        snapshots_offset: int = 0,
        incompatible_features: int = 0,
        compatible_features: int = 0,
        autoclear_features: int = 0,
        header_length: int = SIZE,
        compression_type: int = 0,
    ) -> None:
        self.size = size
        self.l1_size = l1_size
        self.l1_table_offset = l1_table_offset
        self.refcount_table_offset = refcount_table_offset
        self.refcount_table_clusters = refcount_table_clusters
        self.cluster_bits = cluster_bits
        self.version = version
        self.refcount_order = refcount_order
        self.backing_file_offset = backing_file_offset
        self.backing_file_size = backing_file_size
        self.crypt_method = crypt_method
        self.nb_snapshots = nb_snapshots
        self.snapshots_offset = snapshots_offset
        self.incompatible_features = incompatible_features
        self.compatible_features = compatible_features
        self.autoclear_features = autoclear_features
        self.header_length = header_length
        self.compression_type = compression_type

    def record(self) -> bytes:
        """The header followed by the end-of-extensions marker."""
        return struct.pack(
            self.FORMAT,
            MAGIC,
            self.version,
            self.backing_file_offset,
            self.backing_file_size,
            self.cluster_bits,
            self.size,
            self.crypt_method,
            self.l1_size,
            self.l1_table_offset,
            self.refcount_table_offset,
            self.refcount_table_clusters,
            self.nb_snapshots,
            self.snapshots_offset,
            self.incompatible_features,
            self.compatible_features,
            self.autoclear_features,
            self.refcount_order,
            self.header_length,
            self.compression_type,
        ) + struct.pack(">II", 0, 0)

    @classmethod
    def parse(cls, data: bytes) -> Qcow2Header:
        if len(data) < cls.SIZE or data[:4] != MAGIC:
            raise ValueError("not a qcow2 header (bad magic or too short)")
        f = struct.unpack_from(cls.FORMAT, data)
        if f[1] != VERSION:
            raise ValueError(f"qcow2 version {f[1]}, expected {VERSION}")
        return cls(
            version=f[1],
            backing_file_offset=f[2],
            backing_file_size=f[3],
            cluster_bits=f[4],
            size=f[5],
            crypt_method=f[6],
            l1_size=f[7],
            l1_table_offset=f[8],
            refcount_table_offset=f[9],
            refcount_table_clusters=f[10],
            nb_snapshots=f[11],
            snapshots_offset=f[12],
            incompatible_features=f[13],
            compatible_features=f[14],
            autoclear_features=f[15],
            refcount_order=f[16],
            header_length=f[17],
            compression_type=f[18],
        )


class MetadataPlan(Record):
    """Where the L1 table and refcount structures go, in clusters, after ``used`` clusters."""

    __slots__ = (
        "l1_cluster",
        "l1_clusters",
        "refcount_block_cluster",
        "refcount_blocks",
        "refcount_table_cluster",
        "refcount_table_clusters",
    )

    def __init__(
        self,
        l1_cluster: int,
        l1_clusters: int,
        refcount_table_cluster: int,
        refcount_table_clusters: int,
        refcount_block_cluster: int,
        refcount_blocks: int,
    ) -> None:
        self.l1_cluster = l1_cluster
        self.l1_clusters = l1_clusters
        self.refcount_table_cluster = refcount_table_cluster
        self.refcount_table_clusters = refcount_table_clusters
        self.refcount_block_cluster = refcount_block_cluster
        self.refcount_blocks = refcount_blocks

    @property
    def total_clusters(self) -> int:
        return self.refcount_block_cluster + self.refcount_blocks


def plan_metadata(used: int, l1_size: int) -> MetadataPlan:
    """Place the L1 table and the refcount table and blocks after ``used`` clusters.

    The refcount blocks must count every cluster, themselves and the table included, and the
    table must point to every block: iterate until the sizes stop changing (two or three rounds).
    """
    l1_clusters = _ceil_div(l1_size * 8, CLUSTER_SIZE)
    before = used + l1_clusters
    blocks = table = 0
    while True:
        total = before + table + blocks
        new_blocks = _ceil_div(total, REFCOUNTS_PER_BLOCK)
        new_table = max(1, _ceil_div(new_blocks * 8, CLUSTER_SIZE))
        if (new_blocks, new_table) == (blocks, table):
            break
        blocks, table = new_blocks, new_table
    return MetadataPlan(used, l1_clusters, before, table, before + table, blocks)


def write_qcow2(disk: Disk, dest: Path | str, *, progress: Progress | None = None,
                sync: bool = True) -> None:
    """Write ``disk`` to ``dest`` as a qcow2 v3 image (64 KiB clusters, no compression)."""
    l1_size = _ceil_div(disk.size, CLUSTER_SIZE * L2_ENTRIES)
    l1 = array("Q", bytes(8 * l1_size))
    tracker = ProgressTracker(progress, disk.size)
    with atomic_output(dest, sync=sync) as fd:
        out = Output(fd, writeback=WRITEBACK if sync else 0)
        pos = CLUSTER_SIZE  # where the next cluster goes: data and L2 tables in one sequence
        l2 = array("Q", bytes(CLUSTER_SIZE))
        l2_index = -1
        for off, view, where in disk.iter_nonzero(CLUSTER_SIZE):
            tracker.advance_to(off + len(view))
            first = off // CLUSTER_SIZE
            count = len(view) // CLUSTER_SIZE
            done = 0
            while done < count:  # the part of the run that one L2 table maps
                cluster = first + done
                if cluster // L2_ENTRIES != l2_index:
                    if l2_index >= 0:
                        l1[l2_index] = pos | COPIED
                        out.write(pos, _be(l2))
                        pos += CLUSTER_SIZE
                        l2 = array("Q", bytes(CLUSTER_SIZE))
                    l2_index = cluster // L2_ENTRIES
                i = cluster % L2_ENTRIES
                k = min(count - done, L2_ENTRIES - i)
                entries = range(pos | COPIED, (pos + k * CLUSTER_SIZE) | COPIED, CLUSTER_SIZE)
                l2[i : i + k] = array("Q", entries)
                piece = view[done * CLUSTER_SIZE : (done + k) * CLUSTER_SIZE]
                if where is None:
                    out.write(pos, piece)
                else:
                    out.copy(pos, where[0], where[1] + done * CLUSTER_SIZE, piece)
                pos += k * CLUSTER_SIZE
                done += k
        if l2_index >= 0:
            l1[l2_index] = pos | COPIED
            out.write(pos, _be(l2))
            pos += CLUSTER_SIZE

        plan = plan_metadata(pos // CLUSTER_SIZE, l1_size)
        if plan.l1_clusters:
            out.write(pos, _pad(_be(l1)))
            pos += plan.l1_clusters * CLUSTER_SIZE
        table = array("Q", bytes(8 * plan.refcount_blocks))
        for i in range(plan.refcount_blocks):
            table[i] = (plan.refcount_block_cluster + i) * CLUSTER_SIZE
        out.write(pos, _pad(_be(table)))
        pos += plan.refcount_table_clusters * CLUSTER_SIZE
        full = b"\x00\x01" * REFCOUNTS_PER_BLOCK
        for i in range(plan.refcount_blocks):
            counted = min(REFCOUNTS_PER_BLOCK, plan.total_clusters - i * REFCOUNTS_PER_BLOCK)
            out.write(pos, full if counted == REFCOUNTS_PER_BLOCK else _pad(full[: 2 * counted]))
            pos += CLUSTER_SIZE
        out.flush()
        assert pos == plan.total_clusters * CLUSTER_SIZE, "qcow2 layout out of step"

        header = Qcow2Header(
            size=disk.size,
            l1_size=l1_size,
            l1_table_offset=plan.l1_cluster * CLUSTER_SIZE if plan.l1_clusters else 0,
            refcount_table_offset=plan.refcount_table_cluster * CLUSTER_SIZE,
            refcount_table_clusters=plan.refcount_table_clusters,
        )
        pwrite_all(fd, header.record(), 0)
        tracker.done()


def _pad(data: bytes) -> bytes:
    """``data`` zero-padded to a whole number of clusters."""
    rest = -len(data) % CLUSTER_SIZE
    return data + bytes(rest) if rest else data
