"""The config partition: an image's disk with an environment added, for ``flash --env``.

A server flashed from an image gets its environment as a small ISO 9660 config drive (the one
``run`` attaches, see :mod:`imagebuilder.disk.configdrive`) in a GPT partition after the image's
own, so the image's bytes stay untouched: the new disk is the old one's extents, the ISO, and both
GPTs rewritten to name the extra partition.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import UserError
from . import gpt
from .model import Disk, DiskBuilder, Extent, FileSlice

CONFIG_PARTITION_NAME = "imagebuilder-config"
_HEAD = gpt.FIRST_USABLE_LBA * gpt.SECTOR  # the protective MBR, primary header and entries


def read_gpt(disk: Disk) -> gpt.Gpt:
    """The partition table of ``disk`` (its primary GPT), checked by its CRCs."""
    try:
        return gpt.parse(disk.read(0, _HEAD), disk.size)
    except ValueError as e:
        what = "has no GPT" if str(e) == "no GPT" else f"has a bad GPT ({e})"
        raise UserError(f"the disk {what}: cannot add a config partition") from None


def with_config_partition(disk: Disk, env_name: str, env_vars: Mapping[str, str]) -> Disk:
    """``disk`` with a config-drive partition after its partitions and both GPTs rewritten."""
    from .configdrive import build_iso, env_file

    iso = build_iso(env_file(env_name, env_vars))
    table = read_gpt(disk)
    lo, hi = _HEAD, disk.size - gpt.BACKUP_SIZE
    used = max([(p.last_lba + 1) * gpt.SECTOR for p in table.partitions]
               + [min(e.end, hi) for e in disk.extents if e.offset < hi])
    start = gpt.align_up(used)  # after the partitions and any data outside them
    length = gpt.align_up(len(iso))
    size = start + length + gpt.ALIGN
    config = gpt.Partition(gpt.LINUX_FILESYSTEM_TYPE,
                           gpt.derived_guid(table.disk_guid.bytes, "config partition"),
                           start // gpt.SECTOR, (start + length) // gpt.SECTOR - 1,
                           CONFIG_PARTITION_NAME)
    new = gpt.Gpt(size, table.disk_guid, (*table.partitions, config), table.boot_code,
                  table.mbr_signature)
    builder = DiskBuilder(size)
    for offset, data in new.regions():
        builder.put(offset, data)
    for ext in disk.extents:
        for piece in _clip(ext, lo, hi):
            builder.put(piece.offset, piece.source, piece.length)
    builder.put(start, iso)
    return builder.build()


def _clip(ext: Extent, lo: int, hi: int) -> list[Extent]:
    a, b = max(ext.offset, lo), min(ext.end, hi)
    if a >= b:
        return []
    rel = a - ext.offset
    src = ext.source
    if isinstance(src, bytes):
        return [Extent(a, b - a, src[rel:rel + b - a])]
    return [Extent(a, b - a, FileSlice(src.path, src.offset + rel))]
