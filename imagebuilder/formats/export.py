"""From a stored image to files: a bootable disk in any format, a hybrid ISO, or kernel + initrd.

Every output is derived from the image's kernel, initrd layers and command line alone, so the
same image gives the same bytes whatever the environment or machine. The ESP (the FAT partition
holding kernel, base layer and both boot loaders) is the one slow part; it is cached like a build
stage, keyed by the layers' digests, and the disk around it is assembled in memory as extents.

Two roots. The disk formats (raw, qcow2, vmdk, vhd: what BIOS and UEFI firmware boot) keep the
root on the disk: every layer is also an EROFS partition (named ``ib-`` + the first 32 hex digits
of the layer's digest; its image is cached by that digest), the boot loader loads only the kernel
and the base layer, and the base layer's init mounts the partitions that the kernel command line
lists (``imagebuilder.layers=NAME:HEX,...``, lowest first) and stacks them with overlayfs: the
page cache then holds what the app reads, not the whole root. The ISO and kernel-initrd (and so
netboot and `run`'s direct kernel boot) unpack every layer into RAM (an initramfs), as before.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..disk.boot import BootSource
from ..disk.bootable import BootFiles, disk_from_esp, write_esp
from ..disk.model import Disk
from ..errors import DamagedError, UserError
from ..fsutil import commit
from ..hashing.core import digest_regions
from ..layers.erofslayer import write_erofs
from ..store import blobs
from ..store.cache import Cache
from ..store.oci import oci_digest
from . import DISK_FORMATS, Progress, write_disk
from .bmap import write_raw_with_bmap

FORMATS: tuple[str, ...] = (*DISK_FORMATS, "iso", "kernel-initrd")
SUFFIXES = {"raw": ".raw", "qcow2": ".qcow2", "vmdk": ".vmdk", "vhd": ".vhd", "iso": ".iso",
            "kernel-initrd": ""}
ESP_STAGE_VERSION = 3  # 3: the kernel and the base layer only; the layers are EROFS partitions
EROFS_STAGE_VERSION = 1


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UserError(f"unknown format '{fmt}': choose one of {', '.join(FORMATS)}")
    return fmt


def esp_image(cache: Cache, source: BootSource, boot_files: BootFiles) -> tuple[Path, bool]:
    """The cached ESP image of ``source`` (built on the first call), and whether it was."""
    key = cache.stage_key("esp", ESP_STAGE_VERSION, {
        "layers": list(source.digests), "cmdline": source.cmdline,
        "boot": [hashlib.sha256(Path(p).read_bytes()).hexdigest()
                 for p in (boot_files.systemd_boot, boot_files.gptmbr)],
    })

    def skeletons(inputs: Mapping[str, object], make: Callable[[Path], None]) -> Path:
        return cache.get_or_make(cache.stage_key("esp-volume", 1, inputs), make)[0]

    def produce(dest: Path) -> None:
        source.verify()
        write_esp(dest, source.on_disk(), boot_files=boot_files, skeletons=skeletons)
        if source.disk_digest is not None:  # proven once here, the cache then keeps it intact
            check_disk(disk_from_esp(dest, source, boot_files=boot_files,
                                     layers=layer_images(cache, source)),
                       source.disk_digest)
    return cache.get_or_make(key, produce)


def layer_images(cache: Cache, source: BootSource) -> list[tuple[str, Path]]:
    """Each layer's EROFS image (cached by the layer's digest, made on a miss from the verified
    layer), with its partition name, lowest layer first."""
    images = []
    for (_, layer), digest, (_, part) in zip(source.initrds, source.digests[1:],
                                             source.partitions, strict=True):
        key = cache.stage_key("erofs", EROFS_STAGE_VERSION, {"layer": digest})

        def produce(dest: Path, layer: Path = layer, digest: str = digest) -> None:
            blobs.verify(layer, digest)
            write_erofs(layer, dest, seed=digest.encode())
        images.append((part, cache.get_or_make(key, produce)[0]))
    return images


def check_disk(disk: Disk, recorded: str) -> None:
    """DamagedError unless ``disk`` hashes to the ``recorded`` disk digest."""
    actual = disk_digest(disk)
    if actual != recorded:
        raise DamagedError(
            f"the disk assembled from the image hashes to {actual[:19]}, not its recorded disk "
            f"digest {recorded[:19]} (its blobs verified, so the boot loader files of this host "
            "differ from those it was built with?): rebuild the image here")


def bootable(cache: Cache, source: BootSource, boot_files: BootFiles | None = None,
             size: int | None = None) -> Disk:
    """The image's bootable GPT disk (BIOS and UEFI) as extents; ``size`` in bytes (a multiple
    of 1 MiB) makes it larger than its content needs, e.g. for a cloud volume."""
    return bootable_with_hit(cache, source, boot_files, size)[0]


def bootable_with_hit(cache: Cache, source: BootSource, boot_files: BootFiles | None = None,
                      size: int | None = None) -> tuple[Disk, bool]:
    """:func:`bootable`, and whether its ESP came from the cache. The layers' EROFS images
    are looked up or made in a thread meanwhile: both stages mostly wait for their tools."""
    files = boot_files or BootFiles.from_host()
    with ThreadPoolExecutor(max_workers=1) as pool:
        layers = pool.submit(layer_images, cache, source)
        esp, hit = esp_image(cache, source, files)
        return disk_from_esp(esp, source, boot_files=files, size=size,
                             layers=layers.result()), hit


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``2G``, ``512M``, ``1073741824``: a disk size in bytes, a whole number of MiB."""
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = value[-1:] if value[-1:] in _UNITS and value[-1:] else ""
    number = value[:-1] if unit else value
    if not number.isdigit() or int(number) == 0:
        raise UserError(f"--size {text}: expected a size such as 2G, 512M or 4096M")
    size = int(number) * _UNITS[unit]
    if size % (1 << 20):
        raise UserError(f"--size {text}: a disk size must be a whole number of MiB")
    return size


def disk_digest(disk: Disk) -> str:
    """SHA-256 of the raw disk: what AMIs and flashed servers are checked against."""
    return oci_digest(digest_regions(disk.iter_regions(), disk.size, ("sha256",)).sha256)


def raw_disk_file(cache: Cache, source: BootSource, dest_dir: Path) -> Path:
    """The raw disk as a (sparse) file, kept by content (and the disk layout's version) for
    QEMU to boot from."""
    path = dest_dir / f"{source.seed.hex()}.v{ESP_STAGE_VERSION}.raw"
    if not path.exists():
        dest_dir.mkdir(parents=True, exist_ok=True)
        write_disk(bootable(cache, source), path, "raw")
    return path


def export(cache: Cache, source: BootSource, fmt: str, dest: Path,
           progress: Progress | None = None, size: int | None = None,
           sync: bool = False, bmap: bool = False) -> Path | None:
    """Write the image as ``fmt`` to ``dest`` (for kernel-initrd: a new directory); ``size`` is
    the disk size of the disk formats (default: what the content needs). It appears whole or
    not at all; ``sync`` also makes it durable (fsynced) before it appears, which the default
    leaves to the kernel's write-back (see :mod:`imagebuilder.formats`). ``bmap`` (raw only):
    also write the disk's block map beside it in the same pass; returns the map's path."""
    check_format(fmt)
    if bmap and fmt != "raw":
        raise UserError(f"--bmap goes with --format raw, not {fmt}")
    if size is not None and fmt not in DISK_FORMATS:
        raise UserError(f"--size applies to the disk formats ({', '.join(DISK_FORMATS)}), "
                        f"not to {fmt}")
    if not dest.parent.is_dir():
        raise UserError(f"output directory {dest.parent} does not exist")
    if fmt == "kernel-initrd":
        _kernel_initrd(source, dest, sync=sync)
    elif fmt == "iso":
        from .iso import write_iso  # pycdlib: not for a build, which makes no ISO

        source.verify()
        write_iso(source, dest, boot_files=BootFiles.from_host(), sync=sync)
    elif bmap:
        write_raw_with_bmap(bootable(cache, source, size=size), dest, progress=progress, sync=sync)
        return dest.with_name(dest.name + ".bmap")
    else:
        write_disk(bootable(cache, source, size=size), dest, fmt, progress=progress, sync=sync)
    return None


def _kernel_initrd(source: BootSource, dest: Path, *, sync: bool) -> None:
    """``dest/vmlinuz``, ``dest/initrd.img`` (the layers concatenated) and ``dest/cmdline``,
    for direct boots and PXE; the directory appears whole or not at all."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UserError(f"{dest} exists: kernel-initrd writes a new directory; remove it first")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        with open(tmp / "vmlinuz", "wb") as out:
            for chunk in source.chunks(source.kernel):
                out.write(chunk)
        with open(tmp / "initrd.img", "wb") as out:
            for _name, layer in source.initrds:
                for chunk in source.chunks(layer):
                    out.write(chunk)
        (tmp / "cmdline").write_text(source.cmdline + "\n")
        for name in ("vmlinuz", "initrd.img", "cmdline") if sync else ():
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        tmp.chmod(0o755)
        if dest.exists():
            dest.rmdir()
        commit(tmp, dest, sync=sync)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
