"""GUID partition tables, written as bytes: no partitioning tool, no loop device, no root.

A bootable disk needs a partition table that both kinds of firmware read: UEFI looks for the
EFI system partition in the GPT, and a legacy BIOS runs the boot code of the protective MBR,
which (for syslinux's ``gptmbr.bin``) finds the GPT partition whose "legacy BIOS bootable"
attribute (bit 2) is set and chains to that partition's first sector. This module lays the
structures out (UEFI 2.10, section 5): the protective MBR at LBA 0, the primary header at LBA 1
and its 128 entries at LBAs 2-33, and at the end of the disk the backup entries followed by the
backup header in the last LBA, each header and entry array guarded by its CRC32.

Everything is a pure function of its inputs. The disk GUID, the partitions' unique GUIDs and the
MBR disk signature come from :func:`derived_guid` / :func:`derived_u32` over a caller's seed (a
content hash), never from a random source, so the same image gives the same disk bytes.
Partitions start and end on 1 MiB boundaries, as every disk format and cloud importer prefers.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

SECTOR = 512
ALIGN = 1 << 20
ENTRY_SIZE = 128
ENTRY_COUNT = 128
ENTRIES_SECTORS = ENTRY_SIZE * ENTRY_COUNT // SECTOR  # 32
HEADER_SIZE = 92
SIGNATURE = b"EFI PART"
REVISION = 0x00010000
#: The first LBA a partition may use: after the MBR, the header and the 32 entry sectors.
FIRST_USABLE_LBA = 2 + ENTRIES_SECTORS
#: Bytes at the end of the disk the backup entries and header take.
BACKUP_SIZE = (ENTRIES_SECTORS + 1) * SECTOR
#: Size of the boot code area of an MBR (before the disk signature).
MBR_BOOT_CODE_SIZE = 440

ESP_TYPE = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
BIOS_BOOT_TYPE = uuid.UUID("21686148-6449-6e6f-744e-656564454649")
LINUX_FILESYSTEM_TYPE = uuid.UUID("0fc63daf-8483-4772-8e79-3d69d8477de4")
LINUX_ROOT_X86_64_TYPE = uuid.UUID("4f68bce3-e8cd-4db1-96e7-fbcaf984b709")

#: Attribute bits (UEFI 2.10, table 5.8).
ATTR_REQUIRED = 1 << 0
ATTR_NO_BLOCK_IO_PROTOCOL = 1 << 1
ATTR_LEGACY_BIOS_BOOTABLE = 1 << 2

_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")
_ENTRY = struct.Struct("<16s16sQQQ72s")
_MBR_PARTITION = struct.Struct("<B3sB3sII")
_PROTECTIVE_TYPE = 0xEE


def derived_guid(seed: bytes, purpose: str) -> uuid.UUID:
    """A version-4-shaped GUID that is a pure function of ``seed`` and ``purpose``.

    Different purposes ("disk", "partition 1", ...) give unrelated GUIDs from one seed.
    """
    digest = hashlib.sha256(b"imagebuilder guid\0" + purpose.encode() + b"\0" + seed).digest()
    return uuid.UUID(bytes=digest[:16], version=4)


def derived_u32(seed: bytes, purpose: str) -> int:
    """A 32-bit number (volume serial, MBR disk signature) derived like :func:`derived_guid`;
    never 0, which some tools read as "unset"."""
    digest = hashlib.sha256(b"imagebuilder u32\0" + purpose.encode() + b"\0" + seed).digest()
    return int.from_bytes(digest[:4], "little") or 1


def align_up(value: int, alignment: int = ALIGN) -> int:
    return -(-value // alignment) * alignment


@dataclass(frozen=True)
class Partition:
    """One GPT entry. LBAs are in 512-byte sectors; ``last_lba`` is inclusive, as on disk."""

    type_guid: uuid.UUID
    guid: uuid.UUID
    first_lba: int
    last_lba: int
    name: str = ""
    attributes: int = 0

    @property
    def offset(self) -> int:
        return self.first_lba * SECTOR

    @property
    def size(self) -> int:
        return (self.last_lba - self.first_lba + 1) * SECTOR

    def entry(self) -> bytes:
        """The 128-byte partition entry."""
        name = self.name.encode("utf-16-le")
        if len(name) > 72:
            raise ValueError(f"partition name {self.name!r} is longer than 36 UTF-16 units")
        return _ENTRY.pack(self.type_guid.bytes_le, self.guid.bytes_le, self.first_lba,
                           self.last_lba, self.attributes, name)


@dataclass(frozen=True)
class Gpt:
    """A whole partition table for a disk of ``disk_size`` bytes.

    ``boot_code`` (at most 440 bytes, e.g. syslinux's gptmbr.bin) goes at the start of the
    protective MBR; ``mbr_signature`` is the MBR's 32-bit disk signature.
    """

    disk_size: int
    disk_guid: uuid.UUID
    partitions: tuple[Partition, ...]
    boot_code: bytes = b""
    mbr_signature: int = 0

    def __post_init__(self) -> None:
        if self.disk_size % SECTOR:
            raise ValueError(f"disk size {self.disk_size} is not a multiple of {SECTOR}")
        if self.total_lbas < FIRST_USABLE_LBA + ENTRIES_SECTORS + 2:
            raise ValueError(f"disk size {self.disk_size} is too small for a GPT")
        if len(self.boot_code) > MBR_BOOT_CODE_SIZE:
            raise ValueError(f"MBR boot code is {len(self.boot_code)} bytes; at most 440 fit")
        if len(self.partitions) > ENTRY_COUNT:
            raise ValueError(f"{len(self.partitions)} partitions; a GPT holds {ENTRY_COUNT}")
        if not 0 <= self.mbr_signature <= 0xFFFFFFFF:
            raise ValueError(f"MBR signature {self.mbr_signature} does not fit 32 bits")
        spans = sorted((p.first_lba, p.last_lba) for p in self.partitions)
        for first, last in spans:
            if not FIRST_USABLE_LBA <= first <= last <= self.last_usable_lba:
                raise ValueError(
                    f"partition LBAs {first}-{last} are outside the usable "
                    f"{FIRST_USABLE_LBA}-{self.last_usable_lba}"
                )
        for (_, last), (first, _) in itertools.pairwise(spans):
            if first <= last:
                raise ValueError(f"partitions overlap at LBA {first}")

    @property
    def total_lbas(self) -> int:
        return self.disk_size // SECTOR

    @property
    def backup_header_lba(self) -> int:
        return self.total_lbas - 1

    @property
    def backup_entries_lba(self) -> int:
        return self.total_lbas - 1 - ENTRIES_SECTORS

    @property
    def last_usable_lba(self) -> int:
        return self.backup_entries_lba - 1

    @property
    def backup_offset(self) -> int:
        """Where :meth:`backup` goes: the last 33 sectors of the disk."""
        return self.backup_entries_lba * SECTOR

    def entries(self) -> bytes:
        """The partition entry array (128 entries of 128 bytes; unused ones are zeros)."""
        used = b"".join(p.entry() for p in self.partitions)
        return used.ljust(ENTRY_SIZE * ENTRY_COUNT, b"\0")

    def header(self, *, primary: bool) -> bytes:
        """The primary (LBA 1) or backup (last LBA) header, padded to a sector."""
        entries_crc = zlib.crc32(self.entries())
        if primary:
            my_lba, alternate, entries_lba = 1, self.backup_header_lba, 2
        else:
            my_lba, alternate, entries_lba = self.backup_header_lba, 1, self.backup_entries_lba
        fields = [SIGNATURE, REVISION, HEADER_SIZE, 0, 0, my_lba, alternate, FIRST_USABLE_LBA,
                  self.last_usable_lba, self.disk_guid.bytes_le, entries_lba, ENTRY_COUNT,
                  ENTRY_SIZE, entries_crc]
        crc = zlib.crc32(_HEADER.pack(*fields))
        fields[3] = crc
        return _HEADER.pack(*fields).ljust(SECTOR, b"\0")

    def protective_mbr(self) -> bytes:
        """LBA 0: the boot code, the disk signature and one 0xEE partition over the disk.

        The entry is not marked active (UEFI requires boot indicator 0); gptmbr.bin does not
        need it, it reads the GPT.
        """
        size = min(self.total_lbas - 1, 0xFFFFFFFF)
        entry = _MBR_PARTITION.pack(0x00, b"\x00\x02\x00", _PROTECTIVE_TYPE, b"\xff\xff\xff", 1,
                                    size)
        mbr = (self.boot_code.ljust(MBR_BOOT_CODE_SIZE, b"\0")
               + struct.pack("<IH", self.mbr_signature, 0)
               + entry + b"\0" * (3 * _MBR_PARTITION.size) + b"\x55\xaa")
        assert len(mbr) == SECTOR
        return mbr

    def primary(self) -> bytes:
        """LBAs 0-33: protective MBR, primary header, entries."""
        return self.protective_mbr() + self.header(primary=True) + self.entries()

    def backup(self) -> bytes:
        """The last 33 LBAs: backup entries, then the backup header."""
        return self.entries() + self.header(primary=False)

    def regions(self) -> list[tuple[int, bytes]]:
        """``(offset, bytes)`` of everything the table writes on the disk."""
        return [(0, self.primary()), (self.backup_offset, self.backup())]


def layout(sizes: Sequence[int], *, min_disk_size: int = 0,
           align: int = ALIGN) -> tuple[int, list[tuple[int, int]]]:
    """Place partitions of ``sizes`` bytes one after another on ``align`` boundaries.

    Returns the disk size and each partition's ``(first_lba, last_lba)``. The first partition
    starts at ``align`` (1 MiB), each partition is rounded up to ``align``, and the disk ends
    ``align`` after the last one (room for the backup table), or at ``min_disk_size`` if that is
    larger (rounded up to ``align``).
    """
    if align % SECTOR or align < FIRST_USABLE_LBA * SECTOR:
        raise ValueError(f"alignment {align} must be a multiple of {SECTOR} and hold the GPT")
    offset = align
    spans = []
    for size in sizes:
        if size <= 0:
            raise ValueError(f"partition size {size} must be positive")
        length = align_up(size, align)
        spans.append((offset // SECTOR, (offset + length) // SECTOR - 1))
        offset += length
    disk_size = max(offset + align, align_up(min_disk_size, align))
    return disk_size, spans


def parse(head: bytes, disk_size: int) -> Gpt:
    """The partition table whose protective MBR, primary header and entries are ``head`` (the
    first :data:`FIRST_USABLE_LBA` sectors of a disk of ``disk_size`` bytes), checked by its
    CRCs; ValueError naming what is wrong."""
    if len(head) < FIRST_USABLE_LBA * SECTOR:
        raise ValueError("too short to hold a GPT")
    fields = _HEADER.unpack_from(head, SECTOR)
    sig, _rev, hsize, crc, _r, _my, _alt, _first, _last, guid, elba, count, esize, ecrc = fields
    if sig != SIGNATURE:
        raise ValueError("no GPT")
    if not (HEADER_SIZE <= hsize <= SECTOR and esize == ENTRY_SIZE and count <= ENTRY_COUNT
            and elba * SECTOR + count * esize <= len(head)):
        raise ValueError("GPT header out of bounds")
    check = bytearray(head[SECTOR:SECTOR + hsize])
    check[16:20] = bytes(4)
    entries = head[elba * SECTOR:elba * SECTOR + count * esize]
    if zlib.crc32(check) != crc or zlib.crc32(entries) != ecrc:
        raise ValueError("GPT is corrupt (CRC mismatch)")
    parts = []
    for i in range(count):
        t, g, first, last, attrs, name = _ENTRY.unpack_from(entries, i * esize)
        if t == bytes(16):
            continue
        parts.append(Partition(uuid.UUID(bytes_le=t), uuid.UUID(bytes_le=g), first, last,
                               name.decode("utf-16-le").rstrip("\0"), attrs))
    boot_code = head[:MBR_BOOT_CODE_SIZE].rstrip(b"\0")
    signature = int.from_bytes(head[440:444], "little")
    return Gpt(disk_size, uuid.UUID(bytes_le=guid), tuple(parts), boot_code, signature)
