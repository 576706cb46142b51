"""The EFI system partition: a FAT filesystem image that both kinds of firmware boot from.

One FAT volume carries everything a disk boot needs, so the same partition serves UEFI and
legacy BIOS:

- UEFI firmware runs ``/EFI/BOOT/BOOTX64.EFI`` (systemd-boot), which reads
  ``/loader/loader.conf`` and the entry ``/loader/entries/imagebuilder.conf``: the kernel, one
  ``initrd`` line per layer (in order; the kernel unpacks them in turn) and the command line.
- a BIOS runs the partition's first sector, syslinux's boot sector, which loads
  ``/syslinux/ldlinux.sys`` and ``ldlinux.c32`` and reads ``/syslinux/syslinux.cfg``: the same
  kernel, the layers as one comma-separated ``INITRD`` list, the same command line.
- the kernel is ``/vmlinuz`` and the layers ``/initrd/01-base.img``, ``/initrd/02-jvm.img``...
  (long names: both loaders read VFAT long names, and compare case-insensitively).

The volume is built on a plain file with dosfstools and mtools (``mkfs.fat -C``, ``mmd``,
``mcopy``) and syslinux's mtools installer: no root, loop device or mount. It is sized to its
content plus a little slack. The bytes are reproducible: the volume serial is derived from the
caller's seed, every timestamp is 1980-01-01 00:00:00 (mtools takes the time from
``SOURCE_DATE_EPOCH``, read in UTC), directories and files go in in a fixed order, and no user
configuration of mtools is read. The configuration files come from the jinja2 templates
``loader.conf.j2``, ``loader-entry.conf.j2`` and ``syslinux.cfg.j2``.

Note that the mtools installer writes ``ldlinux.sys`` and its own, matching ``ldlinux.c32``
(both built into the ``syslinux`` binary); a BIOS disk therefore boots with the host installer's
syslinux, and :attr:`BootFiles.ldlinux_c32` (syslinux-common) serves isolinux on ISO images.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

from ..errors import HostError, UserError
from ..fsutil import commit
from ..hashing.sparse import data_extents
from ..proc import require, run
from ..resources import render
from . import gpt
from .boot import BootSource

#: 1980-01-01 00:00:00 UTC, the earliest time a FAT directory entry can hold.
FAT_EPOCH = 315532800
#: Where the kernel and the layers live on the volume.
KERNEL_PATH = "/vmlinuz"
INITRD_DIR = "/initrd"
SYSLINUX_DIR = "/syslinux"
ENTRY_NAME = "imagebuilder.conf"
LABEL = "ESP"
#: Longest kernel command line the x86 boot protocol takes (COMMAND_LINE_SIZE - 1).
MAX_CMDLINE = 2047
_LAYER_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,23}$")
_SYSLINUX_RESERVE = 256 << 10  # ldlinux.sys and ldlinux.c32 together are about 180 KiB
_FAT16_MAX_CLUSTERS = 65524
_FAT16_MIN_CLUSTERS = 4085
_FAT32_MIN_CLUSTERS = 65525
_FAT_MAX_FILE = (1 << 32) - 1
#: Gets a formatted volume by its inputs, making it with the callable on a miss (a cache stage).
_SKELETON_SERIAL = 0x5CE1E7A1  # the serial a kept formatted volume has until one is written in
Skeletons = Callable[[Mapping[str, object], Callable[[Path], None]], Path]


@dataclass(frozen=True)
class BootFiles:
    """The boot loaders' files a disk or ISO image is made with; a plain set of paths.

    ``from_host`` takes them from the host's Debian packages; they may as well come from the
    Debian archive, as long as ``isolinux_bin`` and ``ldlinux_c32`` come from the same syslinux
    build.
    """

    systemd_boot: Path  #: systemd-bootx64.efi (systemd-boot-efi)
    gptmbr: Path  #: gptmbr.bin, the BIOS boot code of the protective MBR (syslinux-common)
    ldlinux_c32: Path  #: BIOS ldlinux.c32, which isolinux.bin loads (syslinux-common)
    isolinux_bin: Path  #: isolinux.bin, the El Torito BIOS boot image (isolinux)
    isohdpfx: Path  #: isohdpfx.bin, the isohybrid MBR code (isolinux)

    @classmethod
    def from_host(cls) -> BootFiles:
        """The files where Debian's packages install them; a HostError naming the package to
        install for any that is missing."""
        files = cls(**{name: path for name, (path, _) in _HOST_FILES.items()})
        files.require(*_HOST_FILES)
        return files

    def require(self, *names: str) -> None:
        """Check that the files ``names`` (field names; default all) exist."""
        for name in names or tuple(f.name for f in fields(self)):
            path = Path(getattr(self, name))
            if not path.is_file():
                package = _HOST_FILES[name][1]
                raise HostError(
                    f"{path} not found ({name}): install it with 'apt-get install {package}'"
                )


_HOST_FILES: dict[str, tuple[Path, str]] = {
    "systemd_boot": (Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi"), "systemd-boot-efi"),
    "gptmbr": (Path("/usr/lib/syslinux/mbr/gptmbr.bin"), "syslinux-common"),
    "ldlinux_c32": (Path("/usr/lib/syslinux/modules/bios/ldlinux.c32"), "syslinux-common"),
    "isolinux_bin": (Path("/usr/lib/ISOLINUX/isolinux.bin"), "isolinux"),
    "isohdpfx": (Path("/usr/lib/ISOLINUX/isohdpfx.bin"), "isolinux"),
}


def check_cmdline(cmdline: str) -> str:
    """``cmdline`` if the boot loaders' one-line configs and the kernel can take it."""
    if any(c in cmdline for c in "\n\r\x00"):
        raise UserError("kernel command line: a newline or NUL cannot be passed to the kernel")
    if len(cmdline.encode()) > MAX_CMDLINE:
        raise UserError(f"kernel command line is {len(cmdline.encode())} bytes; the kernel "
                        f"takes at most {MAX_CMDLINE}")
    return cmdline


def check_initrds(initrds: Sequence[tuple[str, Path]]) -> None:
    """Layer names usable as file names on FAT and ISO 9660; every file present."""
    if not initrds:
        raise UserError("an image needs at least one initrd layer")
    if len(initrds) > 99:
        raise UserError(f"{len(initrds)} initrd layers; at most 99 are supported")
    for name, path in initrds:
        if not _LAYER_NAME_RE.fullmatch(name):
            raise UserError(f"layer name {name!r}: expected 1-24 of a-z, 0-9, '-', '_', "
                            "starting with a letter or digit")
        if not Path(path).is_file():
            raise UserError(f"initrd layer {name}: {path} is not a file")


def initrd_file_names(initrds: Sequence[tuple[str, Path]]) -> list[str]:
    """The layers' file names, numbered in boot order: ``01-base.img``, ``02-jvm.img``, ..."""
    return [f"{i:02d}-{name}.img" for i, (name, _) in enumerate(initrds, 1)]


def syslinux_cfg(kernel: str, initrds: Sequence[str], cmdline: str) -> str:
    """syslinux.cfg / isolinux.cfg booting ``kernel`` with ``initrds`` (paths on the volume)."""
    return render("syslinux.cfg.j2", kernel=kernel, initrds=list(initrds),
                  cmdline=check_cmdline(cmdline))


def loader_entry(kernel: str, initrds: Sequence[str], cmdline: str, title: str) -> str:
    """A systemd-boot (Boot Loader Specification type 1) entry."""
    if not title or any(c in title for c in "\n\r\x00"):
        raise UserError(f"boot menu title {title!r}: give one non-empty line")
    return render("loader-entry.conf.j2", kernel=kernel, initrds=list(initrds),
                  cmdline=check_cmdline(cmdline), title=title)


@dataclass(frozen=True)
class FatFile:
    """A file to put on the volume: ``path`` is absolute on the volume ('/EFI/BOOT/X.EFI')."""

    path: str
    source: Path | bytes

    def size(self) -> int:
        if isinstance(self.source, bytes):
            return len(self.source)
        return Path(self.source).stat().st_size


def esp_files(source: BootSource, *, boot_files: BootFiles, bios: bool,
              title: str = "imagebuilder") -> list[FatFile]:
    """What the ESP booting ``source`` holds (but syslinux's own files, which its installer
    writes)."""
    kernel, initrds, cmdline = source.kernel, source.initrds, source.cmdline
    check_initrds(initrds)
    if not Path(kernel).is_file():
        raise UserError(f"kernel {kernel} is not a file")
    names = [f"{INITRD_DIR}/{n}" for n in initrd_file_names(initrds)]
    files = [
        FatFile("/EFI/BOOT/BOOTX64.EFI", Path(boot_files.systemd_boot)),
        FatFile("/loader/loader.conf", render("loader.conf.j2", entry=ENTRY_NAME).encode()),
        FatFile(f"/loader/entries/{ENTRY_NAME}",
                loader_entry(KERNEL_PATH, names, cmdline, title).encode()),
        FatFile(KERNEL_PATH, Path(kernel)),
        *(FatFile(n, Path(p)) for n, (_, p) in zip(names, initrds, strict=True)),
    ]
    if bios:
        files.append(FatFile(f"{SYSLINUX_DIR}/syslinux.cfg",
                             syslinux_cfg(KERNEL_PATH, names, cmdline).encode()))
    for f in files:
        if f.size() > _FAT_MAX_FILE:
            raise UserError(f"{f.path}: {f.size()} bytes; a FAT file holds less than 4 GiB")
    return files


def build_esp(dest: Path, source: BootSource, *, boot_files: BootFiles, bios: bool = True,
              fat_bits: Literal[16, 32] = 32, hidden_sectors: int = 0,
              title: str = "imagebuilder", skeletons: Skeletons | None = None) -> None:
    """Write the EFI system partition image booting ``source`` (its kernel, every one of its
    initrd layers, its command line) to ``dest``.

    ``bios`` also installs syslinux (for a GPT disk; an ISO boots BIOSes through isolinux).
    ``hidden_sectors`` is the partition's first LBA on its disk. The source's seed gives the
    volume serial.
    """
    boot_files.require("systemd_boot")
    files = esp_files(source, boot_files=boot_files, bios=bios, title=title)
    make_fat(dest, files, fat_bits=fat_bits,
             volume_id=gpt.derived_u32(source.seed, "esp volume id"),
             hidden_sectors=hidden_sectors, syslinux_dir=SYSLINUX_DIR if bios else None,
             skeletons=skeletons)


def fat_geometry(files: Sequence[FatFile], *, fat_bits: Literal[16, 32],
                 extra: int = 0) -> tuple[int, int]:
    """``(size in bytes, sectors per cluster)`` of a volume that holds ``files`` (and ``extra``
    bytes in a few more files) with some slack; the size is a multiple of 1 MiB."""
    dirs = _directories([f.path for f in files])
    payload = sum(f.size() for f in files) + extra
    if fat_bits == 32:
        spc = 1 if payload < (512 << 20) else 8
    else:
        spc = 1
        while payload // (512 * spc) > _FAT16_MAX_CLUSTERS * 7 // 8:
            spc *= 2
            if spc > 128:
                raise UserError(f"{payload} bytes do not fit a FAT16 volume; use FAT32")
    cluster = 512 * spc
    clusters = sum(-(-f.size() // cluster) for f in files) + -(-extra // cluster) + 4
    for d in [*dirs, "/"]:
        names = sum(1 for p in [*dirs, *(f.path for f in files)] if _parent(p) == d)
        clusters += -(-(names * 5 + 2) * 32 // cluster)  # 8.3 entry + up to 4 long-name ones
    clusters += clusters // 64 + (1 << 20) // cluster  # slack: 1.5% and 1 MiB
    minimum = _FAT32_MIN_CLUSTERS if fat_bits == 32 else _FAT16_MIN_CLUSTERS
    clusters = max(clusters, minimum + 256)
    fat_bytes = 2 * (fat_bits // 8) * (clusters + 2)
    overhead = 32 * 512 + (512 * 32 if fat_bits == 16 else 0) + 2 * cluster
    size = gpt.align_up(overhead + fat_bytes + clusters * cluster)
    if fat_bits == 16 and (size - overhead - fat_bytes) // cluster > _FAT16_MAX_CLUSTERS:
        # rounding up to 1 MiB pushed a small-cluster FAT16 past its limit: trim it back
        size = (overhead + fat_bytes + _FAT16_MAX_CLUSTERS * cluster) // (1 << 20) * (1 << 20)
    return size, spc


def make_fat(dest: Path, files: Sequence[FatFile], *, fat_bits: Literal[16, 32],
             volume_id: int, label: str = LABEL, hidden_sectors: int = 0,
             syslinux_dir: str | None = None, skeletons: Skeletons | None = None) -> None:
    """Write a FAT volume holding ``files`` to ``dest`` (atomically), with syslinux installed in
    ``syslinux_dir`` if given. Reproducible: see the module's docstring.

    ``skeletons`` keeps formatted volumes (label, directories, syslinux; no files) by everything
    that decides their bytes but the volume serial, which is then written in: the same bytes as
    formatting this volume anew, without the mkfs.fat and syslinux runs."""
    mkfs = require("mkfs.fat", "dosfstools")
    mcopy = require("mcopy", "mtools")
    syslinux = require("syslinux", "syslinux") if syslinux_dir else None
    dest = Path(dest)
    paths = [f.path for f in files]
    if len(set(p.lower() for p in paths)) != len(paths):
        raise ValueError(f"duplicate paths on the FAT volume: {sorted(paths)}")
    size, spc = fat_geometry(files, fat_bits=fat_bits,
                             extra=_SYSLINUX_RESERVE if syslinux_dir else 0)
    dirs = _directories([*paths, *([f"{syslinux_dir}/x"] if syslinux_dir else [])])
    with tempfile.TemporaryDirectory(prefix=".esp-", dir=dest.parent) as tmp_name:
        tmp = Path(tmp_name)
        image = tmp / "fat.img"
        env = _mtools_env(tmp)

        def format_volume(out: Path, serial: int) -> None:
            run([mkfs, "-C", "--invariant", "-F", str(fat_bits), "-S", "512", "-s", str(spc),
                 "-f", "2", "-i", f"{serial:08X}", "-h", str(hidden_sectors),
                 str(out), str(size // 1024)], env=env)
            # the label through mtools, whose directory entry then gets the fixed time
            # (mkfs.fat's --invariant stamps it 2015-03-14)
            _mtools("mlabel", out, env, f"::{label}")
            _mtools("mmd", out, env, *(f"::{d}" for d in dirs))  # one run, parents first
            if syslinux_dir and syslinux:
                # first, so that ldlinux.sys sits near the start of the volume in one piece
                run([syslinux, "--install", "--directory", syslinux_dir, str(out)], env=env)

        if skeletons is None:
            format_volume(image, volume_id)
        else:
            inputs = {"fat_bits": fat_bits, "spc": spc, "size": size, "label": label,
                      "hidden_sectors": hidden_sectors, "dirs": dirs,
                      "syslinux_dir": syslinux_dir or "",
                      "tools": [_file_sha256(t) for t in (mkfs, mcopy, syslinux) if t]}
            _sparse_copy(skeletons(inputs, lambda out: format_volume(out, _SKELETON_SERIAL)),
                         image)
            _set_volume_id(image, volume_id)
        for directory, sources in _copy_runs(files, tmp / "staged"):
            _mtools("mcopy", image, env, *map(str, sources), f"::{directory}/")
        if syslinux_dir:
            _sync_backup_boot_sector(image)
        commit(image, dest)  # fsync, rename, directory fsync


def _copy_runs(files: Sequence[FatFile], staging: Path) -> list[tuple[str, list[Path]]]:
    """The files in byte order of their paths, as runs of one directory each: a directory on
    the volume and files named as on the volume (links to the sources, or the bytes), for one
    ``mcopy`` per run that copies them in the same order as one ``mcopy`` per file would."""
    runs: list[tuple[str, list[Path]]] = []
    for i, f in enumerate(sorted(files, key=lambda f: f.path.encode())):
        directory, name = f.path.rsplit("/", 1)
        if not runs or runs[-1][0] != directory:
            runs.append((directory, []))
        staged = staging / str(i) / name
        staged.parent.mkdir(parents=True)
        if isinstance(f.source, bytes):
            staged.write_bytes(f.source)
        else:
            staged.symlink_to(Path(f.source).absolute())
        runs[-1][1].append(staged)
    return runs


def _file_sha256(path: Path | str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _sparse_copy(src: Path, dest: Path) -> None:
    """Copy ``src`` to a new ``dest`` with its holes (a formatted volume is mostly one)."""
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        size = os.fstat(fin.fileno()).st_size
        for offset, length in data_extents(fin.fileno(), size):
            done = 0
            while done < length:
                done += os.copy_file_range(fin.fileno(), fout.fileno(), length - done,
                                           offset + done, offset + done)
        fout.truncate(size)


def _set_volume_id(image: Path, volume_id: int) -> None:
    """Replace :data:`_SKELETON_SERIAL` by ``volume_id`` in the boot sector and in every copy
    of it in the reserved sectors (FAT32's backup; the one syslinux's installer keeps)."""
    with open(image, "rb+") as f:
        boot = f.read(512)
        is_fat32 = int.from_bytes(boot[22:24], "little") == 0  # BPB_FATSz16 is 0 on FAT32
        at = 67 if is_fat32 else 39  # BS_VolID, after the extended boot signature 0x29
        f.seek(0)
        reserved = f.read(512 * int.from_bytes(boot[14:16], "little"))
        placeholder = _SKELETON_SERIAL.to_bytes(4, "little")
        for sector in range(len(reserved) // 512):
            copy = reserved[sector * 512:(sector + 1) * 512]
            if (copy[11:36] == boot[11:36] and copy[at - 1] == 0x29
                    and copy[at:at + 4] == placeholder):
                f.seek(sector * 512 + at)
                f.write(volume_id.to_bytes(4, "little"))


def _mtools(tool: str, image: Path, env: dict[str, str], *args: str) -> None:
    result = run([tool, "-i", str(image), *args], env=env, check=False)
    if result.returncode != 0:
        message = (result.stderr or result.stdout).decode(errors="replace").strip()
        if "full" in message.lower():
            raise HostError(f"{tool} {' '.join(args)}: the FAT volume is full (its size was "
                            f"estimated too small; this is a bug): {message}")
        raise HostError(f"{tool} {' '.join(args)} failed: {message}")


def _mtools_env(home: Path) -> dict[str, str]:
    """An environment that pins every input mtools reads: time, time zone, configuration."""
    return {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "HOME": str(home),  # no ~/.mtoolsrc
        "MTOOLSRC": os.devnull,
        "LC_ALL": "C",
        "TZ": "UTC",
        "SOURCE_DATE_EPOCH": str(FAT_EPOCH),
        "MTOOLS_SKIP_CHECK": "1",
        "MTOOLS_NO_VFAT": "0",
        "MTOOLS_LOWER_CASE": "0",
        "MTOOLS_NAME_NUMERIC_TAIL": "1",
        "MTOOLS_FAT_COMPATIBILITY": "0",
    }


def _parent(path: str) -> str:
    parent = path.rsplit("/", 1)[0]
    return parent or "/"


def _directories(paths: Sequence[str]) -> list[str]:
    """Every directory above ``paths`` (not the root), parents first, in byte order."""
    dirs: set[str] = set()
    for path in paths:
        parent = _parent(path)
        while parent != "/":
            dirs.add(parent)
            parent = _parent(parent)
    return sorted(dirs, key=lambda d: (d.count("/"), d.encode()))


def _sync_backup_boot_sector(image: Path) -> None:
    """Copy the boot sector syslinux rewrote to FAT32's backup boot sector (fsck compares them)."""
    with open(image, "rb+") as f:
        boot = f.read(512)
        is_fat32 = int.from_bytes(boot[22:24], "little") == 0  # BPB_FATSz16 is 0 on FAT32
        backup = int.from_bytes(boot[50:52], "little")
        if is_fat32 and backup not in (0, 0xFFFF):
            f.seek(backup * 512)
            f.write(boot)
