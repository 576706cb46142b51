"""A small GPT disk model with the extents a block map must get right (random data, an
explicit zero MiB inside it, an unaligned end, a lone small extent), shared by the block-map
tests (test_bmap.py) and the flash tests (test_flash.py); and a file's SHA-256."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

from imagebuilder.disk import gpt
from imagebuilder.disk.model import Disk, DiskBuilder, FileSlice
from imagebuilder.formats.bmap import BLOCK_SIZE


def sample_disk(tmp: Path, size: int = 16 << 20, extra: int = 0) -> Disk:
    """A GPT disk with one partition: random data, a zero MiB inside it, an unaligned end."""
    data = tmp / "data.bin"
    if not data.exists():
        rnd = os.urandom
        data.write_bytes(rnd(1 << 20) + bytes(1 << 20) + rnd(3 * BLOCK_SIZE + 123)
                         + bytes(BLOCK_SIZE) + rnd(777))
    table = gpt.Gpt(size + extra, uuid.UUID(int=1), (gpt.Partition(
        gpt.ESP_TYPE, uuid.UUID(int=2), 2048, 2048 + 8 * 2048 - 1, "EFI System Partition",
        gpt.ATTR_LEGACY_BIOS_BOOTABLE),), b"\xeb\x63" + b"\x90" * 200, 0x1234)
    builder = DiskBuilder(size + extra)
    for offset, blob in table.regions():
        builder.put(offset, blob)
    builder.put(1 << 20, FileSlice(data, 0), data.stat().st_size)
    builder.put(12 << 20, b"\x01" * 100)  # a lone small extent, not block aligned at its end
    return builder.build()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
