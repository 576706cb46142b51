"""Disks: the extent model every disk format is written from (see :mod:`.model`)."""

from .model import SECTOR_SIZE, Disk, DiskBuilder, Extent, FileSlice

__all__ = ["SECTOR_SIZE", "Disk", "DiskBuilder", "Extent", "FileSlice"]
