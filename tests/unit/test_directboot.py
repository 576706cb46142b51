"""targets.directboot: the vmlinux inside a bzImage (PVH or not, each payload compression) and the
plain initrd, over a real image store; and that `run` hands them to QEMU on microvm."""

from __future__ import annotations

import gzip
import lzma
import struct
from pathlib import Path

import pytest
import zstandard

from imagebuilder.errors import DamagedError
from imagebuilder.store.layout import INITRD_LAYER_MEDIA_TYPE, KERNEL_MEDIA_TYPE, Image, Store
from imagebuilder.targets.qemu import directboot, microvm
from imagebuilder.targets.qemu.run import RunSpec, _boot_media, qemu_argv
from tests.unit.qemu_fixture import needs_qemu


def _note(name: bytes, kind: int, desc: bytes) -> bytes:
    def pad(b: bytes) -> bytes:
        return b + b"\0" * (-len(b) % 4)
    return struct.pack("<III", len(name), len(desc), kind) + pad(name) + pad(desc)


def _elf(notes: bytes) -> bytes:
    """A 64-bit ELF file with one PT_NOTE program header holding ``notes``."""
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x20, 64)  # e_phoff
    struct.pack_into("<HH", header, 0x36, 56, 1)  # e_phentsize, e_phnum
    phdr = struct.pack("<IIQQQQQQ", 4, 4, 64 + 56, 0, 0, len(notes), len(notes), 4)
    return bytes(header) + phdr + notes + b"kernel text" * 50


PVH = _elf(_note(b"Linux\0", 6, b"6.12\0") + _note(b"Xen\0", 18, struct.pack("<I", 0x1000000)))
NO_PVH = _elf(_note(b"Xen\0", 6, b"linux\0"))


def _bzimage(payload: bytes, setup_sects: int = 3) -> bytes:
    """A bzImage: setup sectors with the boot header, then the protected-mode part whose
    compressed payload the header locates; the build appends the size, as Linux's does."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x20F)
    stub = b"\x90" * 300  # the decompressor stub before the payload
    struct.pack_into("<II", setup, 0x248, len(stub), len(payload))
    return bytes(setup) + stub + payload + b"\0" * 64


def _zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=3).compress(data) + struct.pack("<I", len(data))


@pytest.mark.parametrize("compress", [
    _zstd,
    lambda d: lzma.compress(d, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    + struct.pack("<I", len(d)),
    lambda d: gzip.compress(d, mtime=0),
])
def test_vmlinux_of_each_payload(compress) -> None:  # type: ignore[no-untyped-def]
    assert directboot.vmlinux(_bzimage(compress(PVH))) == PVH


def test_vmlinux_none_when_not_bootable() -> None:
    assert directboot.vmlinux(_bzimage(_zstd(NO_PVH))) is None  # no PVH entry point
    assert directboot.vmlinux(_bzimage(b"\x02\x21\x4c\x18lz4 payload")) is None  # unknown
    assert directboot.vmlinux(_bzimage(b"\x28\xb5\x2f\xfdgarbage")) is None  # corrupt
    assert directboot.vmlinux(b"\x7fbzImage: not really a kernel") is None
    bad_length = bytearray(_bzimage(_zstd(PVH)))
    struct.pack_into("<I", bad_length, 0x24C, 1 << 30)
    assert directboot.vmlinux(bytes(bad_length)) is None


def test_has_pvh_entry() -> None:
    assert directboot.has_pvh_entry(PVH)
    assert not directboot.has_pvh_entry(NO_PVH)
    assert not directboot.has_pvh_entry(b"\x7fELF\x01\x01 32-bit")


def _image(store: Store, kernel: bytes, layers: list[bytes]) -> Image:
    descriptors = [store.add_blob_bytes(kernel, KERNEL_MEDIA_TYPE)]
    descriptors += [store.add_blob_bytes(zstandard.ZstdCompressor().compress(data),
                                         INITRD_LAYER_MEDIA_TYPE) for data in layers]
    store.put_image("hello:1.0.0", {"cmdline": "console=ttyS0"}, descriptors)
    return store.resolve("hello:1.0.0")


def test_kernel_for_caches_the_vmlinux(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    image = _image(store, _bzimage(_zstd(PVH)), [b"x"])
    path = directboot.kernel_for(store, image, tmp_path / "kernel")
    assert path.read_bytes() == PVH
    assert list(path.parent.iterdir()) == [path]  # no temporary left
    assert directboot.kernel_for(store, image, tmp_path / "kernel") == path


def test_kernel_for_falls_back_to_the_bzimage(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    image = _image(store, _bzimage(_zstd(NO_PVH)), [b"x"])
    blob = store.blob_path(image.layers[0].digest)
    assert directboot.kernel_for(store, image, tmp_path / "kernel") == blob
    assert directboot.kernel_for(store, image, tmp_path / "kernel") == blob


def test_plain_initrd_is_the_layers_decompressed(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    layers = [b"base cpio " * 1000, b"jvm cpio " * 5000, b"app cpio"]
    image = _image(store, b"kernel", layers)
    path = directboot.plain_initrd_for(store, image, tmp_path / "initrd")
    assert path.read_bytes() == b"".join(layers)
    assert directboot.fits(path, 1)
    big = tmp_path / "big"
    big.write_bytes(b"\0" * (300 << 10))
    assert not directboot.fits(big, 1)  # 300 KiB is over a quarter of 1 MiB


def test_corrupt_layer_leaves_no_plain_initrd(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    image = _image(store, b"kernel", [b"base", b"jvm"])
    blob = store.blob_path(image.layers[2].digest)
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes()[:-1] + b"!")
    with pytest.raises(DamagedError):
        directboot.plain_initrd_for(store, image, tmp_path / "initrd")
    assert not any((tmp_path / "initrd").iterdir())


@needs_qemu
def test_microvm_boots_the_vmlinux_and_plain_initrd(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(microvm, "host_tsc_khz", lambda: 2000000)
    store = Store(tmp_path / "store")
    image = _image(store, _bzimage(_zstd(PVH)), [b"base", b"jvm"])
    spec = RunSpec(image, None, {}, [], "tcg", memory=1024, boot="microvm")
    media = _boot_media(spec, store, tmp_path / "cache")
    argv = qemu_argv(spec, store, media, tmp_path, "tcg", "stdio")
    assert Path(argv[argv.index("-kernel") + 1]).read_bytes() == PVH
    assert Path(argv[argv.index("-initrd") + 1]).read_bytes() == b"basejvm"
    # pc (direct) and a guest too small for the plain initrd keep the compressed files
    for boot, memory in (("direct", 1024), ("microvm", 0)):
        spec = RunSpec(image, None, {}, [], "tcg", memory=memory, boot=boot)
        media = _boot_media(spec, store, tmp_path / "cache")
        argv = qemu_argv(spec, store, media, tmp_path, "tcg", "stdio")
        assert argv[argv.index("-initrd") + 1].endswith(".initrd")
        kernel = argv[argv.index("-kernel") + 1]
        assert kernel.endswith(".vmlinux") == (boot == "microvm")
