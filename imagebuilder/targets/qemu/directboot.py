"""What a direct kernel boot on microvm is handed: the kernel and the layers, decompressed.

Under TCG every instruction the guest runs is emulated, so decompression in the guest is slow
and on the host it is nearly free. Two things the guest would otherwise decompress are
therefore decompressed once on the host and cached by digest:

* the kernel: a bzImage carries the kernel (an ELF file, vmlinux) compressed, with a stub that
  decompresses it at boot (about 1.5 s of TCG for Debian's zstd-compressed 57 MB kernel). A
  vmlinux that has a PVH entry point (the ``XEN_ELFNOTE_PHYS32_ENTRY`` note, which Debian's
  kernels carry) is booted by QEMU as it is. A bzImage whose payload cannot be decompressed
  here, or whose vmlinux has no PVH entry, boots as before.
* the initrd: the layers' zstd-compressed cpio archives become one plain cpio (the kernel
  unpacks concatenated uncompressed archives as it does compressed ones), which skips the
  kernel's zstd decompression of the initramfs (about 2 s of TCG for hello). It is only used
  when it fits comfortably (:data:`PLAIN_INITRD_SHARE` of the guest's memory): the guest holds
  the initrd and the unpacked root at once until the initrd is freed.

The image itself (its digests, its disk, what BIOS/UEFI boots) does not change.
"""

from __future__ import annotations

import lzma
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import zstandard

from ...fsutil import write_atomic
from ...store.layout import Image, Store

#: A plain initrd is used when it is at most this share of the guest's memory.
PLAIN_INITRD_SHARE = 0.25
_ZSTD_LAYER = "+zstd"
_XEN_NOTE = b"Xen\x00"
_XEN_ELFNOTE_PHYS32_ENTRY = 18
_CHUNK = 1 << 20


def vmlinux(bzimage: bytes) -> bytes | None:
    """The ELF kernel inside a bzImage, if its payload is zstd, xz or gzip and it has a PVH
    entry point; else None."""
    if len(bzimage) < 0x250 or bzimage[0x202:0x206] != b"HdrS":
        return None
    if struct.unpack_from("<H", bzimage, 0x206)[0] < 0x208:
        return None  # boot protocol before 2.08: no payload fields
    setup = ((bzimage[0x1F1] or 4) + 1) * 512
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    payload = bzimage[setup + offset:setup + offset + length]
    if len(payload) != length:
        return None
    try:
        kernel = _decompress(payload)
    except (zstandard.ZstdError, lzma.LZMAError, zlib.error):
        return None
    return kernel if kernel is not None and has_pvh_entry(kernel) else None


def _decompress(payload: bytes) -> bytes | None:
    # The kernel's build appends the decompressed size (le32) to the compressed stream.
    if payload.startswith(b"\x28\xb5\x2f\xfd"):
        return zstandard.ZstdDecompressor(max_window_size=1 << 31).decompressobj().decompress(
            payload)
    if payload.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
    if payload.startswith(b"\x1f\x8b"):
        return zlib.decompressobj(wbits=31).decompress(payload)
    return None


def has_pvh_entry(elf: bytes) -> bool:
    """Whether a 64-bit little-endian ELF file has a Xen PHYS32_ENTRY note (PVH boot)."""
    if elf[:6] != b"\x7fELF\x02\x01":
        return False
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        base = phoff + i * phentsize
        if base + 56 > len(elf):
            return False
        kind, _flags, offset, _va, _pa, size = struct.unpack_from("<IIQQQQ", elf, base)
        if kind == 4 and _has_note(elf[offset:offset + size]):  # PT_NOTE
            return True
    return False


def _has_note(notes: bytes) -> bool:
    pos = 0
    while pos + 12 <= len(notes):
        namesz, descsz, kind = struct.unpack_from("<III", notes, pos)
        name = notes[pos + 12:pos + 12 + namesz]
        if name == _XEN_NOTE and kind == _XEN_ELFNOTE_PHYS32_ENTRY:
            return True
        pos += 12 + _align4(namesz) + _align4(descsz)
    return False


def _align4(n: int) -> int:
    return (n + 3) & ~3


def kernel_for(store: Store, image: Image, cache_dir: Path) -> Path:
    """The kernel to boot on microvm: the cached vmlinux when the image's bzImage has one that
    QEMU can boot, else the bzImage itself."""
    digest = image.layers[0].digest
    bzimage = store.verified_blob(digest)
    path = cache_dir / f"{digest.removeprefix('sha256:')}.vmlinux"
    none = path.with_suffix(".none")  # this bzImage has no bootable vmlinux: not tried again
    if path.exists():
        return path
    if none.exists():
        return bzimage
    cache_dir.mkdir(parents=True, exist_ok=True)
    kernel = vmlinux(bzimage.read_bytes())
    if kernel is None:
        none.touch()
        return bzimage
    write_atomic(path, kernel)
    return path


def plain_initrd_for(store: Store, image: Image, cache_dir: Path) -> Path:
    """The image's layers decompressed into one plain cpio file (cached by image digest)."""
    path = cache_dir / f"{image.digest.removeprefix('sha256:')}.cpio"
    if not path.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(path, _plain_layers(store, image))
    return path


def _plain_layers(store: Store, image: Image) -> Iterator[bytes]:
    for layer in image.layers[1:]:
        path = store.verified_blob(layer.digest)
        with open(path, "rb") as f:
            if not layer.media_type.endswith(_ZSTD_LAYER):
                yield from iter(lambda: f.read(_CHUNK), b"")
                continue
            reader = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
            yield from iter(lambda: reader.read(_CHUNK), b"")  # noqa: B023


def fits(initrd: Path, memory_mib: int) -> bool:
    """Whether a plain initrd of this size leaves the guest enough memory (see the module
    docstring)."""
    return initrd.stat().st_size <= memory_mib * (1 << 20) * PLAIN_INITRD_SHARE

