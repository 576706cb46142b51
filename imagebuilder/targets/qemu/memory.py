"""The memory an image needs to boot and start its app, by the root it boots with.

An initramfs root (netboot, the ISO, kernel-initrd, and so `run`'s direct kernel boots) is
unpacked into RAM and stays there: the machine needs the kernel's own share, the compressed
layers while the kernel unpacks them, the whole unpacked root, and room for the JVM. A disk
boot's root is EROFS on the disk (see :mod:`imagebuilder.formats.export`): only the base layer is
unpacked (and freed again once the init switches to the disk's root), and the page cache holds
what the app reads, which the kernel can drop and read again.

The numbers are a model checked by bench/memory.py (the smallest ``run --memory`` that serves
examples/hello and WireMock by each path): what the machine loses before MemTotal, the kernel's
own use, the root in RAM (which must also fit the kernel's rootfs while it is unpacked: see
:func:`needs`), and the least memory a JVM starts in (``APP_FLOOR_MIB``, which the init checks
too, against MemAvailable, before it starts the app). A layer's size in RAM is read from the
layer once and cached by its digest.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ...errors import UserError
from ...layers.base import APP_FLOOR_MIB  # the init's, rendered into it
from ...layers.cpioread import layer_members
from ...store.cache import Cache
from ...store.layout import Image, Store

#: Machine memory MemTotal never shows (firmware, the kernel's image), MiB, besides the
#: struct pages, 1/64 of it.
RESERVED_MIB = 40
#: What the kernel and the init use when the app starts, besides the root (slab, modules,
#: page tables, the init's processes), MiB.
KERNEL_USE_MIB = 24
#: While the kernel unpacks the initramfs its init sections are not yet freed (about 8 MiB),
#: and some slack: MiB.
UNPACK_SLACK_MIB = 16
#: A disk root's working set: the share of the layers above the base (the runtime, the app's
#: classes and libraries, unpacked) that the JVM keeps in memory while the app starts: pages of
#: libjvm, the CDS archive and the modules it maps, the class metadata of what it loads, its
#: heap. From bench/memory.py: with the app listening, WireMock (160 MiB above the base) had
#: 44 MiB more in use than hello (66 MiB); hello served in 104 MiB, WireMock not.
DISK_WORKING_SHARE = 0.6
#: A file in a ramfs takes whole pages, and each entry an inode and a dentry.
_PAGE = 4096
_ENTRY_BYTES = 1024
_STAGE_VERSION = 1
_ROUND_MIB = 8
_MIB = 1 << 20

INITRAMFS_PATHS = ("microvm", "direct")
DISK_PATHS = ("bios", "uefi")


@dataclass(frozen=True)
class LayerRam:
    """A layer's size compressed (as the boot loader loads it) and unpacked into a ramfs."""

    stored: int
    unpacked: int


@dataclass(frozen=True)
class Needs:
    """The least guest memory (MiB) by root: unpacked into RAM, or EROFS on the disk."""

    initramfs: int
    disk: int
    root_in_ram: int
    """The unpacked root's size in RAM, MiB (rounded up)."""

    def for_boot(self, boot: str) -> int:
        return self.disk if boot in DISK_PATHS else self.initramfs

    def to_json(self) -> dict[str, int]:
        return {"initramfs_mib": self.initramfs, "disk_mib": self.disk,
                "root_in_ram_mib": self.root_in_ram, "app_floor_mib": APP_FLOOR_MIB}


def ram_of_members(sizes: Sequence[tuple[str, int]]) -> int:
    """Bytes a ramfs holding members ``(kind, size)`` takes."""
    return sum(-(-size // _PAGE) * _PAGE if kind == "file" else 0 for kind, size in sizes) \
        + _ENTRY_BYTES * len(sizes)


def layer_ram(cache: Cache, layer: Path, digest: str) -> LayerRam:
    """``layer``'s :class:`LayerRam` (read once from the verified layer, then cached)."""
    key = cache.stage_key("layer-ram", _STAGE_VERSION, {"layer": digest})

    def produce(dest: Path) -> None:
        from ...store import blobs
        blobs.verify(layer, digest)
        members = [(m.kind, m.size) for m in layer_members(layer)]
        dest.write_text(json.dumps({"stored": layer.stat().st_size,
                                    "unpacked": ram_of_members(members)}))
    path, _ = cache.get_or_make(key, produce)
    data = json.loads(path.read_text())
    return LayerRam(int(data["stored"]), int(data["unpacked"]))


def _mib_up(n: float) -> int:
    return -(-int(n) // _MIB)


def _rounded(mib: int) -> int:
    return -(-mib // _ROUND_MIB) * _ROUND_MIB


def needs(layers: Sequence[LayerRam]) -> Needs:
    """What an image of ``layers`` (base first) needs, by root.

    The kernel unpacks an initramfs into its rootfs, a tmpfs limited to half the memory the
    kernel has at that moment (MemTotal less the initrd it is unpacking, freed afterwards): the
    root must fit in that half. Then the root stays, and the app needs its floor beside the
    kernel's own use. A disk root unpacks only the base layer, and is then read on demand: the
    app needs its floor or, more, the working set of the layers above (``DISK_WORKING_SHARE``).
    """
    if not layers:
        raise ValueError("an image has at least one layer")
    stored = _mib_up(sum(layer.stored for layer in layers))
    unpacked = _mib_up(sum(layer.unpacked for layer in layers))
    initramfs = _machine(max(stored + 2 * unpacked + UNPACK_SLACK_MIB,
                             KERNEL_USE_MIB + unpacked + APP_FLOOR_MIB))
    base = layers[0]
    working = _mib_up(DISK_WORKING_SHARE * sum(layer.unpacked for layer in layers[1:]))
    disk = _machine(max(_mib_up(base.stored) + 2 * _mib_up(base.unpacked) + UNPACK_SLACK_MIB,
                        KERNEL_USE_MIB + max(APP_FLOOR_MIB, working)))
    return Needs(_rounded(initramfs), _rounded(disk), unpacked)


def _machine(memtotal: int) -> int:
    """The machine size (MiB) whose MemTotal is ``memtotal``."""
    return -(-(memtotal + RESERVED_MIB) * 64 // 63)


def image_needs(cache: Cache, store: Store, image: Image) -> Needs:
    """What the stored ``image`` needs (its layers read once, then cached by digest)."""
    _, layers = image.boot_layers()
    return needs([layer_ram(cache, store.blob_path(layer.digest), layer.digest)
                  for layer in layers])


def check(needs: Needs, memory: int, boot: str, ref: str) -> None:
    """UserError (one line, naming the minimum) when ``memory`` MiB is too little for ``ref``
    booted by ``boot`` (microvm, direct, bios or uefi)."""
    least = needs.for_boot(boot)
    if memory >= least:
        return
    if boot in DISK_PATHS:
        raise UserError(f"{ref} needs at least {least} MiB of memory to boot from its disk "
                        f"(--boot {boot}); {memory} MiB is too little: give --memory {least} "
                        "or more")
    hint = (f", or --boot bios: its root stays on the disk and {needs.disk} MiB is enough"
            if needs.disk <= memory else "")
    raise UserError(f"{ref} needs at least {least} MiB of memory to boot by {boot} (its root, "
                    f"{needs.root_in_ram} MiB, is unpacked into RAM); {memory} MiB is too "
                    f"little: give --memory {least} or more{hint}")
