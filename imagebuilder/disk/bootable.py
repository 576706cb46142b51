"""The bootable disk: one GPT disk that legacy BIOS and UEFI firmware both boot.

Clouds, hypervisors and servers boot an image from a disk through their firmware, and which
firmware they have (SeaBIOS or another legacy BIOS, OVMF or another UEFI) is not ours to choose.
So every disk imagebuilder writes boots either way, from one partition:

- LBA 0 is a protective MBR carrying syslinux's ``gptmbr.bin``: a BIOS runs it, it finds the GPT
  partition marked "legacy BIOS bootable" and runs that partition's boot sector (syslinux);
- the GPT holds the EFI system partition (FAT32, at 1 MiB, marked legacy BIOS
  bootable), which UEFI firmware finds by its type and boots ``\\EFI\\BOOT\\BOOTX64.EFI`` from
  (systemd-boot);
- both loaders read the kernel and the initrd layers from that partition (see
  :mod:`imagebuilder.disk.esp`), with the same command line;
- an image's disk (see :mod:`imagebuilder.formats.export`) puts only the base layer there and
  carries every layer as an EROFS partition after the ESP, which the base layer's init mounts.

The result is a :class:`~imagebuilder.disk.Disk` (extents), not a file: the partition table is
bytes in memory and the partition is the FAT image file, whose holes are never read. Nothing
needs root, a loop device or a mount. Every identifier (disk and partition GUIDs, MBR signature,
FAT serial) is derived from the boot source's seed, a content hash, so the same image gives the
same disk bytes on any machine.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path

from ..errors import UserError
from ..hashing.sparse import data_extents
from ..scratch import acquire, release, remove_stale
from . import gpt
from .boot import BootSource
from .esp import BootFiles, Skeletons, build_esp
from .model import Disk, DiskBuilder, FileSlice

__all__ = ["ESP_NAME", "BootFiles", "bootable_disk", "disk_from_esp", "write_esp"]

ESP_NAME = "EFI System Partition"
_ESP_FIRST_LBA = gpt.ALIGN // gpt.SECTOR


def bootable_disk(source: BootSource, *, boot_files: BootFiles, size: int | None = None,
                  workdir: Path | None = None, title: str = "imagebuilder") -> Disk:
    """The GPT disk booting ``source`` (its kernel, every initrd layer in unpack order and its
    command line, all on the ESP) by BIOS and by UEFI.

    The source's seed determines every identifier on the disk. ``size`` is the disk's size in
    bytes (a multiple of 1 MiB; default: just what the content needs); the space after the
    partition stays unpartitioned.

    The returned disk reads the ESP from a FAT image file, ``workdir/esp.img`` if ``workdir`` is
    given (it must outlive the disk's use), otherwise a private temporary directory removed
    when the disk object is garbage-collected (or at exit).
    """
    boot_files.require("systemd_boot", "gptmbr")
    if size is not None and (size <= 0 or size % gpt.ALIGN):
        raise UserError(f"disk size {size} bytes: give a positive multiple of 1 MiB")
    owned: Path | None = None
    if workdir is None:
        remove_stale(_TMP, _PREFIX)
        token = acquire(_TMP, _PREFIX)
        owned = workdir = Path(tempfile.mkdtemp(prefix=f"{token}.disk-", dir=_TMP))
    try:
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        write_esp(workdir / "esp.img", source, boot_files=boot_files, title=title)
        disk = disk_from_esp(workdir / "esp.img", source, boot_files=boot_files, size=size)
    except BaseException:
        if owned is not None:
            _discard(owned)
        raise
    if owned is not None:
        weakref.finalize(disk, _discard, owned)  # also runs at exit
    return disk


_TMP = tempfile.gettempdir()
_PREFIX = "imagebuilder-"


def _discard(workdir: Path) -> None:
    shutil.rmtree(workdir, ignore_errors=True)
    release(_TMP, _PREFIX)


def write_esp(dest: Path, source: BootSource, *, boot_files: BootFiles,
              title: str = "imagebuilder", skeletons: Skeletons | None = None) -> None:
    """The ESP image of :func:`bootable_disk` alone, for callers that cache it (an image's
    disk boots ``source.on_disk()``: see :class:`~imagebuilder.disk.boot.BootSource`)."""
    build_esp(dest, source, boot_files=boot_files, bios=True, fat_bits=32,
              hidden_sectors=_ESP_FIRST_LBA, title=title, skeletons=skeletons)


def disk_from_esp(esp: Path, source: BootSource, *, boot_files: BootFiles,
                  size: int | None = None, layers: Sequence[tuple[str, Path]] = ()) -> Disk:
    """The bootable GPT disk around an ESP image made by :func:`write_esp` from ``source``
    (whose seed gives the disk's identifiers), and after it one partition per ``layers`` entry
    ``(partition name, filesystem image)``, in order (the layers a disk boot mounts, see
    :mod:`imagebuilder.formats.export`)."""
    seed = source.seed
    boot_files.require("gptmbr")
    esp_size = esp.stat().st_size
    sizes = [esp_size, *(image.stat().st_size for _, image in layers)]
    disk_size, spans = gpt.layout(sizes, min_disk_size=size or 0)
    if size is not None and disk_size > size:
        raise UserError(f"the image needs a disk of {_mib(disk_size)} MiB; {_mib(size)} MiB is "
                        "too small: give a larger size or leave it unset")
    (first, last), *layer_spans = spans
    assert first == _ESP_FIRST_LBA, "the FAT's hidden sectors must match the partition start"
    esp_part = gpt.Partition(
        type_guid=gpt.ESP_TYPE,
        guid=gpt.derived_guid(seed, "partition 1"),
        first_lba=first,
        last_lba=last,
        name=ESP_NAME,
        attributes=gpt.ATTR_LEGACY_BIOS_BOOTABLE,
    )
    layer_parts = [
        gpt.Partition(type_guid=gpt.LINUX_FILESYSTEM_TYPE,
                      guid=gpt.derived_guid(seed, f"layer partition {i}"),
                      first_lba=a, last_lba=b, name=name)
        for i, ((name, _), (a, b)) in enumerate(zip(layers, layer_spans, strict=True), 1)
    ]
    table = gpt.Gpt(
        disk_size=disk_size,
        disk_guid=gpt.derived_guid(seed, "disk"),
        partitions=(esp_part, *layer_parts),
        boot_code=Path(boot_files.gptmbr).read_bytes(),
        mbr_signature=gpt.derived_u32(seed, "mbr signature"),
    )
    builder = DiskBuilder(disk_size)
    for offset, data in table.regions():
        builder.put(offset, data)
    for part, path in [(esp_part, esp), *zip(layer_parts, (p for _, p in layers), strict=True)]:
        for offset, length in data_extents(path):
            builder.put(part.offset + offset, FileSlice(path, offset), length)
    return builder.build()


def _mib(n: int) -> str:
    return f"{n / (1 << 20):g}"
