"""Disks: the extent model every disk format is written from (see :mod:`.model`), and what a
boot loader boots (:class:`~.boot.BootSource`, passed whole to the ESP, the bootable disk and
the formats)."""

from .model import SECTOR_SIZE, Disk, DiskBuilder, Extent, FileSlice

__all__ = ["SECTOR_SIZE", "Disk", "DiskBuilder", "Extent", "FileSlice"]
