"""The ``iso`` format: a hybrid ISO 9660 image that boots from a CD and from a USB disk.

Machines that boot from optical media (or virtual CD drives of server consoles) take an ISO, not
a disk image. This one boots four ways:

- a BIOS booting the CD: El Torito "no emulation" entry for ``isolinux.bin``, which loads
  ``ldlinux.c32`` and reads ``/isolinux/isolinux.cfg`` (the same template as syslinux.cfg): the
  kernel ``/boot/vmlinuz`` and the layers ``/boot/01_base.img``, ...;
- UEFI booting the CD: a second El Torito entry (platform 0xEF) pointing at a FAT image, the
  same EFI system partition the disk image has (built by :mod:`imagebuilder.disk.esp`, with
  systemd-boot and its own copy of the kernel and layers, since UEFI reads no ISO 9660);
- a BIOS booting it as a hard disk (written to a USB stick): the isohybrid MBR (syslinux's
  ``isohdpfx.bin``) loads isolinux.bin from the ISO;
- UEFI booting it as a hard disk: the isohybrid MBR's second partition (type 0xEF) is the FAT
  image (the first, over the whole image, has type 0 so that UEFI skips it). There is no GPT:
  pycdlib's (``add_isohybrid(efi=True)``) overwrites the image's last sectors, and the MBR
  partition is all PC firmware needs.

ISO 9660 names use only capitals, digits and '_' (so the layer ``my-layer`` is
``01_MY_LAYER.IMG``); Rock Ridge and Joliet names are the same in lower case, so isolinux finds
a file whichever tree it reads.

The bytes are reproducible: pycdlib's dates are fixed with the config drive's helpers
(:mod:`imagebuilder.disk.configdrive`), and the isohybrid MBR id, which pycdlib draws at random, is
derived from the caller's seed. The file is written to a temporary name, fsynced
and renamed (:func:`imagebuilder.fsutil.atomic_output`).
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import pycdlib
from pycdlib import isohybrid

from ..disk import gpt
from ..disk.boot import BootSource
from ..disk.configdrive import fix_descriptor_dates, fix_record_dates
from ..disk.esp import BootFiles, build_esp, check_initrds, syslinux_cfg
from ..errors import HostError, UserError
from . import atomic_output

#: The volume label; not the config drive's (IMAGEBUILDER), which the guest's init looks for.
VOLUME_ID = "IMAGEBUILDER_ISO"  # at most 16 characters (Joliet)
BOOT_DIR = "boot"
ISOLINUX_DIR = "isolinux"
ESP_IMAGE = "efiboot.img"
_SECTOR = 2048
_VD_AREA = 32 * _SECTOR  # system area and volume descriptors: patched after writing
_ELTORITO_MAX_SECTORS = 0xFFFF
_ISOHYBRID_CODE = 432  # isohdpfx.bin: the MBR boot code up to the "rba" field
_MBR_ESP_ENTRY = 446 + 16  # MBR partition entry 2


def iso_names(initrds: Sequence[tuple[str, Path]]) -> list[str]:
    """The layers' file names on the ISO (lower case): ``01_base.img``, ``02_jvm.img``, ..."""
    return [f"{i:02d}_{name.replace('-', '_')}.img" for i, (name, _) in enumerate(initrds, 1)]


def write_iso(source: BootSource, dest: Path, *, boot_files: BootFiles,
              volume_id: str = VOLUME_ID, title: str = "imagebuilder", sync: bool = True) -> None:
    """Write the hybrid ISO booting ``source`` (its kernel, every initrd layer, its command
    line) to ``dest``; the source's seed determines every identifier in it."""
    dest = Path(dest)
    if not dest.parent.is_dir():
        raise UserError(f"output directory {dest.parent} does not exist")
    boot_files.require("isolinux_bin", "ldlinux_c32", "isohdpfx", "systemd_boot")
    kernel, initrds, seed = source.kernel, source.initrds, source.seed
    check_initrds(initrds)
    if not Path(kernel).is_file():
        raise UserError(f"kernel {kernel} is not a file")
    names = iso_names(initrds)
    config = syslinux_cfg(f"/{BOOT_DIR}/vmlinuz", [f"/{BOOT_DIR}/{n}" for n in names],
                          source.cmdline)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.", dir=dest.parent) as tmp_name:
        tmp = Path(tmp_name)
        esp = tmp / ESP_IMAGE
        build_esp(esp, source, boot_files=boot_files, bios=False, fat_bits=16, title=title)
        cfg = tmp / "isolinux.cfg"
        cfg.write_bytes(config.encode())
        files = [
            (f"{ISOLINUX_DIR}/isolinux.bin", Path(boot_files.isolinux_bin)),
            (f"{ISOLINUX_DIR}/ldlinux.c32", Path(boot_files.ldlinux_c32)),
            (f"{ISOLINUX_DIR}/isolinux.cfg", cfg),
            (f"{BOOT_DIR}/vmlinuz", Path(kernel)),
            *((f"{BOOT_DIR}/{n}", Path(p)) for n, (_, p) in zip(names, initrds, strict=True)),
            (f"{BOOT_DIR}/{ESP_IMAGE}", esp),
        ]
        with atomic_output(dest, sync=sync) as fd, os.fdopen(os.dup(fd), "r+b") as out:
            esp_lba = _write(out, files, esp, volume_id=volume_id, boot_files=boot_files,
                             seed=seed)
            out.seek(0)
            head = bytearray(fix_descriptor_dates(out.read(_VD_AREA)))
            head[_MBR_ESP_ENTRY:_MBR_ESP_ENTRY + 16] = _esp_mbr_entry(esp_lba, esp.stat().st_size)
            out.seek(0)
            out.write(head)
            out.flush()


def _iso_path(path: str) -> str:
    """'/boot/01_base.img' -> '/BOOT/01_BASE.IMG;1'; 'boot/vmlinuz' -> '/BOOT/VMLINUZ.;1'."""
    parts = path.strip("/").upper().split("/")
    leaf = parts[-1] if "." in parts[-1] else parts[-1] + "."
    return "/" + "/".join([*parts[:-1], leaf]) + ";1"


def _esp_mbr_entry(first_lba: int, size: int) -> bytes:
    """MBR partition entry 2: the FAT image as an EFI system partition (type 0xEF), which UEFI
    firmware boots from when the ISO is a disk. Partition 1 has type 0, which UEFI skips, so the
    two do not overlap in its eyes (the layout of ``isohybrid --uefi``). The CHS fields use the
    isohybrid geometry (64 heads, 32 sectors)."""
    sectors = -(-size // 512)
    return struct.pack("<B3sB3sII", 0, _chs(first_lba), 0xEF, _chs(first_lba + sectors - 1),
                       first_lba, sectors)


def _chs(lba: int, heads: int = 64, sectors: int = 32) -> bytes:
    cylinder, rest = divmod(lba, heads * sectors)
    if cylinder > 1023:
        return b"\xfe\xff\xff"
    head, sector = divmod(rest, sectors)
    return bytes([head, sector + 1 | (cylinder >> 2) & 0xC0, cylinder & 0xFF])


def _write(out: BinaryIO, files: list[tuple[str, Path]], esp: Path, *, volume_id: str,
           boot_files: BootFiles, seed: bytes) -> int:
    """Write the ISO with pycdlib; the first 512-byte LBA of the FAT image in it."""
    iso = pycdlib.PyCdlib()
    try:
        iso.new(interchange_level=3, vol_ident=volume_id, app_ident_str="IMAGEBUILDER",
                joliet=3, rock_ridge="1.09")
        for d in sorted({p.rsplit("/", 1)[0] for p, _ in files}):
            iso.add_directory("/" + d.upper(), rr_name=d, joliet_path="/" + d)
        for path, source in files:
            iso.add_file(str(source), _iso_path(path), rr_name=path.rsplit("/", 1)[1],
                         joliet_path="/" + path, file_mode=0o100444)
        isolinux = _iso_path(f"{ISOLINUX_DIR}/isolinux.bin")
        iso.add_eltorito(isolinux, bootcatfile=_iso_path(f"{ISOLINUX_DIR}/boot.cat"),
                         rr_bootcatname="boot.cat", joliet_bootcatfile=f"/{ISOLINUX_DIR}/boot.cat",
                         boot_load_size=4, boot_info_table=True)
        sectors = -(-esp.stat().st_size // 512)
        # The El Torito count is 16 bits: 0 means "to the end of the medium" to UEFI firmware
        # (EDK2), which then reads the FAT volume's own size.
        iso.add_eltorito(_iso_path(f"{BOOT_DIR}/{ESP_IMAGE}"), efi=True,
                         boot_load_size=sectors if sectors <= _ELTORITO_MAX_SECTORS else 0)
        _add_isohybrid(iso, boot_files, seed)
        fix_record_dates(iso)
        iso.write_fp(out)
        esp_extent: int = iso.get_record(iso_path=_iso_path(f"{BOOT_DIR}/{ESP_IMAGE}")
                                         ).extent_location()
        return esp_extent * (_SECTOR // 512)
    except pycdlib.pycdlibexception.PyCdlibException as exc:
        raise HostError(f"could not build the ISO image: {exc}") from None
    finally:
        iso.close()


class _MbrOnlyIsoHybrid(isohybrid.IsoHybrid):
    """pycdlib's isohybrid record that ignores the UEFI El Torito entry (pycdlib refuses one on
    a hybrid without its GPT); the entry's MBR partition is added after writing."""

    __slots__ = ()

    def update_efi(self, current_extent: int, sector_count: int, iso_size: int) -> None:
        pass


def _add_isohybrid(iso: Any, boot_files: BootFiles, seed: bytes) -> None:
    """The isohybrid MBR: isohdpfx.bin's code (not pycdlib's older built-in copy) and an id
    derived from ``seed`` (pycdlib's default is random).

    pycdlib's own EFI variant (``efi=True``) is not used: it adds a GPT whose backup copy it
    writes over the last 16.5 KiB of the image's data when the image is a whole number of
    cylinders. The EFI partition is an MBR entry written after the fact (:func:`_esp_mbr_entry`).
    """
    code = Path(boot_files.isohdpfx).read_bytes()
    if len(code) < _ISOHYBRID_CODE:
        raise HostError(f"{boot_files.isohdpfx} is {len(code)} bytes, not an isohdpfx.bin")
    iso.add_isohybrid(mbr_id=gpt.derived_u32(seed, "iso mbr id"), part_type=0, efi=False)
    hybrid = iso.isohybrid_mbr
    hybrid.__class__ = _MbrOnlyIsoHybrid
    hybrid.header = code[:32]
    hybrid.mbr = code[32:_ISOHYBRID_CODE]
