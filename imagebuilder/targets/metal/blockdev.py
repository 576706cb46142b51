"""Which disks a flash may write: the host's block devices as sysfs and the mount table show
them, and the refusals that keep a flash off the wrong disk.

A target is refused (UserError, exit 2) when it does not exist under ``/dev``, is neither a block
device nor a regular file, is (or holds a partition that is) mounted, is the disk the host runs
from (the device holding ``/`` and its parents in sysfs: LVM, dm-crypt, RAID), is smaller than
the disk, or is a partition rather than a whole disk (the one refusal ``--force`` overrides).
:class:`Host` reads ``/proc/self/mounts`` and ``/sys``; tests give it other roots.
"""

from __future__ import annotations

import fcntl
import os
import stat
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ...errors import UserError

# --- the host: mounts and sysfs ----------------------------------------------------------------


@dataclass(frozen=True)
class Host:
    """Where to read mounts and sysfs from, and the device holding ``/`` (tests pass fakes)."""

    mounts: Path = Path("/proc/self/mounts")
    sys: Path = Path("/sys")
    root_dev: int | None = None
    """``st_dev`` of ``/`` (default: stat it)."""

    def root_device(self) -> int:
        return self.root_dev if self.root_dev is not None else os.stat("/").st_dev

    def node(self, rdev: int) -> Path | None:
        """The sysfs directory of the block device numbered ``rdev``."""
        link = self.sys / "dev" / "block" / f"{os.major(rdev)}:{os.minor(rdev)}"
        return link.resolve() if link.exists() else None

    def by_name(self, name: str) -> Path | None:
        link = self.sys / "class" / "block" / name
        return link.resolve() if link.exists() else None


def _is_partition(node: Path) -> bool:
    return (node / "partition").exists()


def _whole_disk(node: Path) -> Path:
    return node.parent if _is_partition(node) else node


def _partitions(node: Path) -> list[Path]:
    try:
        return [c for c in node.iterdir() if c.is_dir() and _is_partition(c)]
    except OSError:
        return []


def _linked(node: Path, kind: str, host: Host) -> list[Path]:
    """The devices named in ``node/holders`` or ``node/slaves``."""
    out = []
    try:
        names = [p.name for p in (node / kind).iterdir()]
    except OSError:
        return []
    for name in names:
        other = host.by_name(name) or ((node / kind / name).resolve())
        out.append(other)
    return out


def _family(node: Path, host: Host) -> set[str]:
    """Names of ``node``, its partitions and everything stacked on them (holders)."""
    names: set[str] = set()
    todo = [node]
    while todo:
        n = todo.pop()
        if n.name in names:
            continue
        names.add(n.name)
        todo += _partitions(n)
        todo += _linked(n, "holders", host)
    return names


def _host_disks(host: Host) -> set[str]:
    """Names of the whole disks under ``/``: its device, through partitions and slaves."""
    node = host.node(host.root_device())
    if node is None:
        return set()
    disks: set[str] = set()
    seen: set[str] = set()
    todo = [node]
    while todo:
        n = todo.pop()
        if n.name in seen:
            continue
        seen.add(n.name)
        slaves = _linked(n, "slaves", host)
        if slaves:
            todo += slaves
        else:
            disks.add(_whole_disk(n).name)
    return disks


def _mounted(names: set[str], host: Host) -> tuple[str, str] | None:
    """``(device, mount point)`` of the first mount whose device is among ``names``."""
    try:
        lines = host.mounts.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) < 2 or not fields[0].startswith("/dev/"):
            continue
        source = fields[0]
        name = Path(os.path.realpath(source)).name if os.path.exists(source) else Path(source).name
        if name in names:
            return source, fields[1].replace("\\040", " ")
    return None


# --- the target --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A checked flash target."""

    path: Path
    kind: str  # "block" or "file"
    size: int


def check_target(path: Path, disk_size: int, *, force: bool = False,
                 host: Host | None = None) -> Target:
    """Refuse a target the disk must not be written to (see the module docstring)."""
    host = host or Host()
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if str(path.absolute()).startswith("/dev/"):
            raise UserError(f"{path}: no such device (list disks with 'lsblk -d')") from None
        if not path.parent.is_dir():
            raise UserError(f"{path}: directory {path.parent} does not exist") from None
        return Target(path, "file", 0)
    except OSError as e:
        raise UserError(f"{path}: {e.strerror}") from None
    if stat.S_ISREG(st.st_mode):
        return Target(path, "file", st.st_size)
    if not stat.S_ISBLK(st.st_mode):
        what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a block device"
        raise UserError(f"{path} is {what}: give a whole disk (e.g. /dev/sdb) or an image file")
    node = host.node(st.st_rdev)
    if node is not None:
        if _whole_disk(node).name in _host_disks(host):
            raise UserError(f"{path} is the disk this host runs from ({_whole_disk(node).name} "
                            "holds /): refusing to overwrite it")
        mount = _mounted(_family(node, host), host)
        if mount is not None:
            raise UserError(f"{path} is in use: {mount[0]} is mounted at {mount[1]}; unmount it "
                            "first")
        if _is_partition(node) and not force:
            raise UserError(f"{path} is a partition of /dev/{node.parent.name}, not a whole "
                            f"disk: flash /dev/{node.parent.name}, or pass --force to write the "
                            "disk into the partition")
    size = _device_size(path, node)
    if size < disk_size:
        raise UserError(f"{path} holds {size} bytes; the disk needs {disk_size}: use a larger "
                        "device")
    return Target(path, "block", size)


def _device_size(path: Path, node: Path | None) -> int:
    if node is not None and (node / "size").exists():  # sysfs counts 512-byte sectors
        return int((node / "size").read_text().strip()) * 512
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise UserError(f"cannot open {path}: {e.strerror}") from None
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


# --- the image's own files ---------------------------------------------------------------------

_LOOP_MAJOR = 7
_LOOP_GET_STATUS64 = 0x4C05
_LOOP_INFO64 = struct.Struct("=QQQQQIIII64s64s32s2Q")  # struct loop_info64 (linux/loop.h)


def refuse_sources(path: Path, sources: Iterable[Path | str],
                   protected: Iterable[Path] = ()) -> None:
    """UserError when writing ``path`` would overwrite a file the image is read from or any file
    in the ``protected`` directories (the store, the cache): the same file (also through a
    symlink or a hard link), a loop device backed by one, or a path inside a protected
    directory. Checked before the target is opened for writing."""
    path, protected = Path(path), tuple(protected)
    real = Path(os.path.realpath(path))
    for root in protected:
        if real == Path(os.path.realpath(root)) or Path(os.path.realpath(root)) in real.parents:
            raise UserError(f"{path} is inside {root}, where imagebuilder keeps the images "
                            "it reads: give a target outside it")
    try:
        st = os.stat(path)
    except OSError:
        return  # a new file: check_target reports what is wrong with its path
    block = stat.S_ISBLK(st.st_mode)
    ident = _loop_backing(path, st.st_rdev) if block else (st.st_dev, st.st_ino)
    if ident is None:
        return
    what = "is backed by" if block else "is the same file as"
    for source in sources:
        try:
            sst = os.stat(source)
        except OSError:
            continue
        if (sst.st_dev, sst.st_ino) == ident:
            raise UserError(f"{path} {what} {source}, which the image is read from: flashing "
                            "would destroy the image; give another target")
    for root in protected:
        for kept in _files_below(Path(root)):
            if kept[1] == ident:
                raise UserError(f"{path} {what} {kept[0]}, which imagebuilder keeps in {root}: "
                                "flashing would damage it; give another target")


def _files_below(root: Path) -> Iterator[tuple[str, tuple[int, int]]]:
    """Every file below ``root`` (links not followed) with its ``(st_dev, st_ino)``: the store's
    blobs and the cache's files share inodes, and a hard link or a loop device elsewhere may
    name any of them."""
    for folder, _, names in os.walk(root):
        for name in names:
            try:
                st = os.lstat(os.path.join(folder, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                yield os.path.join(folder, name), (st.st_dev, st.st_ino)


def _loop_backing(path: Path, rdev: int) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of the file behind loop device ``path``, or None."""
    if os.major(rdev) != _LOOP_MAJOR:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = fcntl.ioctl(fd, _LOOP_GET_STATUS64, bytes(_LOOP_INFO64.size))
    except OSError:  # ENXIO: no file attached
        return None
    finally:
        os.close(fd)
    device, inode = _LOOP_INFO64.unpack(info)[:2]
    return _dev_of_kernel(device), inode


def _dev_of_kernel(dev: int) -> int:
    """The kernel's ``lo_device`` (new_encode_dev) as ``st_dev`` numbers it."""
    major, minor = (dev >> 8) & 0xFFF, (dev & 0xFF) | ((dev >> 12) & 0xFFF00)
    return os.makedev(major, minor)
