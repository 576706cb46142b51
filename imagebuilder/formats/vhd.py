"""vhd, fixed: a raw image followed by a 512-byte footer, the disk format Azure takes.

Structure (Microsoft "Virtual Hard Disk Image Format Specification"; big-endian): the guest's
bytes, then the **hard disk footer**: cookie ``conectix``, features 2 (the reserved bit that must
be set), format version 1.0, data offset all ones (a fixed disk has no dynamic header), a
timestamp in seconds since 2000-01-01 UTC, creator application ``qem2``, creator version and host
(``Wi2k``), original and current size, a CHS geometry computed by the specification's algorithm,
disk type 2 (fixed), a checksum (the one's complement of the sum of the footer's bytes, the
checksum field counting as zero), a 16-byte unique id, and the saved-state flag.

Azure accepts only fixed VHDs whose virtual size is a whole number of MiB, so the virtual size is
the disk's size **rounded up to a whole MiB**; the added sectors read as zeros. (Build disks whose
size already is a multiple of 1 MiB, so that a GPT's backup header stays at the very end.)

Reproducible: the timestamp is ``SOURCE_DATE_EPOCH`` (0 when unset, never the wall clock) and the
unique id is a hash of the size and content. The data part is written like :mod:`.raw`: a sparse
file whose holes are the zeros.

The creator application is ``qem2``, what ``qemu-img convert -O vpc -o force_size`` (the command
Azure documents for making upload VHDs) writes: readers that know it, QEMU among them, take the
disk's size from the footer's current size. For other creators QEMU derives the size from the
CHS geometry, which rounds down and would cut the end (and the backup GPT) off the disk.
"""

from __future__ import annotations

import os
import struct

from ..disk import Disk
from . import ContentId, Progress, Record, atomic_output, pwrite_all, source_date_epoch
from .raw import write_blocks

FOOTER_SIZE = 512
COOKIE = b"conectix"
FEATURES = 0x0000_0002
FORMAT_VERSION = 0x0001_0000
FIXED_DATA_OFFSET = 0xFFFF_FFFF_FFFF_FFFF
DISK_TYPE_FIXED = 2
CREATOR_APP = b"qem2"
CREATOR_VERSION = 0x0001_0000
CREATOR_HOST_OS = b"Wi2k"
VHD_EPOCH = 946_684_800
"""2000-01-01T00:00:00Z as a Unix time: VHD timestamps count from here."""
ALIGNMENT = 1 << 20

TYPE_CHECKING = False
if TYPE_CHECKING:  # pathlib (with re and enum) costs ~8 ms of every export's start-up
    from pathlib import Path


def vhd_size(size: int) -> int:
    """The VHD's virtual size for a disk of ``size`` bytes: rounded up to a whole MiB."""
    return -(-size // ALIGNMENT) * ALIGNMENT


def chs_geometry(size: int) -> tuple[int, int, int]:
    """``(cylinders, heads, sectors per track)`` by the VHD specification's algorithm."""
    total = min(size // 512, 65535 * 16 * 255)
    if total >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cth = total // spt
    else:
        spt = 17
        cth = total // spt
        heads = max(4, (cth + 1023) // 1024)
        if cth >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cth = total // spt
        if cth >= heads * 1024:
            spt, heads = 63, 16
            cth = total // spt
    return cth // heads, heads, spt


def vhd_timestamp(unix_time: int) -> int:
    """Seconds since 2000-01-01 UTC (0 for anything earlier), as a VHD footer stores them."""
    return min(max(0, unix_time - VHD_EPOCH), 0xFFFF_FFFF)


class VhdFooter(Record):
    """The 512-byte hard disk footer (the whole metadata of a fixed VHD)."""

    FORMAT = ">8sIIQI4sI4sQQHBBII16sB427x"
    __slots__ = (
        "creator_app",
        "creator_host_os",
        "creator_version",
        "current_size",
        "cylinders",
        "data_offset",
        "disk_type",
        "features",
        "format_version",
        "heads",
        "original_size",
        "saved_state",
        "sectors_per_track",
        "timestamp",
        "unique_id",
    )

    def __init__(
        self,
        current_size: int,
        unique_id: bytes,
        timestamp: int = 0,
        original_size: int = -1,
        cylinders: int = -1,
        heads: int = -1,
        sectors_per_track: int = -1,
        features: int = FEATURES,
        format_version: int = FORMAT_VERSION,
        data_offset: int = FIXED_DATA_OFFSET,
        creator_app: bytes = CREATOR_APP,
        creator_version: int = CREATOR_VERSION,
        creator_host_os: bytes = CREATOR_HOST_OS,
        disk_type: int = DISK_TYPE_FIXED,
        saved_state: int = 0,
    ) -> None:
        self.current_size = current_size
        self.unique_id = unique_id
        self.timestamp = timestamp
        self.original_size = original_size
        self.cylinders = cylinders
        self.heads = heads
        self.sectors_per_track = sectors_per_track
        self.features = features
        self.format_version = format_version
        self.data_offset = data_offset
        self.creator_app = creator_app
        self.creator_version = creator_version
        self.creator_host_os = creator_host_os
        self.disk_type = disk_type
        self.saved_state = saved_state

    @classmethod
    def new(cls, size: int, unique_id: bytes, timestamp: int = 0) -> VhdFooter:
        """A fixed-disk footer for ``size`` bytes (already a whole number of MiB)."""
        c, h, s = chs_geometry(size)
        return cls(
            current_size=size,
            original_size=size,
            unique_id=unique_id,
            timestamp=timestamp,
            cylinders=c,
            heads=h,
            sectors_per_track=s,
        )

    def _pack(self, checksum: int) -> bytes:
        return struct.pack(
            self.FORMAT,
            COOKIE,
            self.features,
            self.format_version,
            self.data_offset,
            self.timestamp,
            self.creator_app,
            self.creator_version,
            self.creator_host_os,
            self.original_size,
            self.current_size,
            self.cylinders,
            self.heads,
            self.sectors_per_track,
            self.disk_type,
            checksum,
            self.unique_id,
            self.saved_state,
        )

    def checksum(self) -> int:
        return ~sum(self._pack(0)) & 0xFFFF_FFFF

    def record(self) -> bytes:
        return self._pack(self.checksum())

    @classmethod
    def parse(cls, data: bytes) -> VhdFooter:
        """Parse and verify a footer (cookie and checksum)."""
        if len(data) != FOOTER_SIZE or data[:8] != COOKIE:
            raise ValueError("not a VHD footer (bad cookie or size)")
        f = struct.unpack(cls.FORMAT, data)
        footer = cls(
            features=f[1],
            format_version=f[2],
            data_offset=f[3],
            timestamp=f[4],
            creator_app=f[5],
            creator_version=f[6],
            creator_host_os=f[7],
            original_size=f[8],
            current_size=f[9],
            cylinders=f[10],
            heads=f[11],
            sectors_per_track=f[12],
            disk_type=f[13],
            unique_id=f[15],
            saved_state=f[16],
        )
        computed = ~sum(data[:64] + data[68:]) & 0xFFFF_FFFF
        if computed != f[14]:
            raise ValueError(f"VHD footer checksum {f[14]:#x}, computed {computed:#x}")
        return footer


def write_vhd(
    disk: Disk,
    dest: Path | str,
    *,
    progress: Progress | None = None,
    timestamp: int | None = None,
    sync: bool = True,
) -> None:
    """Write ``disk`` to ``dest`` as a fixed VHD of ``vhd_size(disk.size)`` bytes plus footer.

    ``timestamp`` is a Unix time for the footer; by default ``SOURCE_DATE_EPOCH`` or 0.
    """
    size = vhd_size(disk.size)
    unix_time = source_date_epoch() if timestamp is None else timestamp
    content = ContentId(size)
    with atomic_output(dest, sync=sync) as fd:
        os.ftruncate(fd, size + FOOTER_SIZE)
        write_blocks(fd, disk, content_id=content, progress=progress, sync=sync)
        footer = VhdFooter.new(size, content.digest(), vhd_timestamp(unix_time))
        pwrite_all(fd, footer.record(), size)
