"""Blobs read for export, run, serve and push are checked against their digests as they are read,
and the store replaces a damaged blob rather than keeping it (it de-duplicates by digest)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from imagebuilder.disk.boot import BootSource
from imagebuilder.disk.bootable import BootFiles
from imagebuilder.errors import DamagedError, HostError
from imagebuilder.formats.export import esp_image, export
from imagebuilder.store import blobs
from imagebuilder.store.cache import Cache
from imagebuilder.store.layout import INITRD_LAYER_MEDIA_TYPE, KERNEL_MEDIA_TYPE, Store
from tests.unit.layer_fixture import tiny_layer

TITLE = "org.opencontainers.image.title"


def _image(store: Store) -> BootSource:
    kernel = store.add_blob_bytes(b"K" * 5000, KERNEL_MEDIA_TYPE, {TITLE: "vmlinuz"})
    layers = [store.add_blob_bytes(tiny_layer(name.encode() * 3000), INITRD_LAYER_MEDIA_TYPE,
                                   {TITLE: name})
              for name in ("base", "jvm", "app")]
    store.put_image("hello:1.0.0", {"cmdline": "console=ttyS0"}, [kernel, *layers])
    return BootSource.of_image(store, store.resolve("hello:1.0.0"))


def _flip(path: Path, offset: int = 100) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def _jvm(source: BootSource) -> Path:
    return dict(source.initrds)["jvm"]


def test_verify_accepts_an_intact_blob_and_names_a_damaged_one(tmp_path: Path) -> None:
    source = _image(Store(tmp_path / "store"))
    source.verify()
    _flip(_jvm(source))
    with pytest.raises(DamagedError, match=r"blob sha256:[0-9a-f]{12} in the image store is "
                                           r"damaged .* run 'imagebuilder check'"):
        source.verify()


def test_verified_chunks_raise_after_the_last_chunk_of_a_damaged_blob(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"x" * 10000)
    digest = "sha256:" + hashlib.sha256(b"x" * 10000).hexdigest()
    assert b"".join(blobs.verified_chunks(path, digest, 4096)) == b"x" * 10000
    _flip(path)
    with pytest.raises(DamagedError):
        list(blobs.verified_chunks(path, digest, 4096))
    path.unlink()
    with pytest.raises(DamagedError, match="is missing from the image store"):
        list(blobs.verified_chunks(path, digest))


def test_kernel_initrd_export_of_a_damaged_layer_writes_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    source = _image(store)
    export(Cache(tmp_path / "cache"), source, "kernel-initrd", tmp_path / "good")
    assert (tmp_path / "good" / "initrd.img").read_bytes() == b"".join(
        tiny_layer(name * 3000) for name in (b"base", b"jvm", b"app"))
    _flip(_jvm(source))
    with pytest.raises(DamagedError):
        export(Cache(tmp_path / "cache"), source, "kernel-initrd", tmp_path / "bad")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good", "store"]


def test_kernel_initrd_export_with_the_kernel_blob_missing(tmp_path: Path) -> None:
    source = _image(Store(tmp_path / "store"))
    source.kernel.unlink()
    with pytest.raises(DamagedError, match=r"blob sha256:[0-9a-f]{12} is missing from the image "
                                           r"store .*rebuild"):
        export(Cache(tmp_path / "cache"), source, "kernel-initrd", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _boot_files() -> BootFiles:
    try:
        return BootFiles.from_host()
    except HostError as exc:
        pytest.skip(str(exc))


def test_no_esp_is_built_or_cached_from_a_damaged_blob(tmp_path: Path) -> None:
    files = _boot_files()
    source = _image(Store(tmp_path / "store"))
    cache = Cache(tmp_path / "cache")
    _flip(_jvm(source))
    with pytest.raises(DamagedError):
        esp_image(cache, source, files)
    assert not cache.stages_dir.exists() or not any(cache.stages_dir.rglob("*"))


def test_an_esp_whose_disk_is_not_the_recorded_disk_digest_is_refused(tmp_path: Path) -> None:
    files = _boot_files()
    source = _image(Store(tmp_path / "store"))
    cache = Cache(tmp_path / "cache")
    wrong = BootSource(source.kernel, source.initrds, source.cmdline, source.digests,
                       disk_digest="sha256:" + "0" * 64)
    with pytest.raises(DamagedError, match="not its recorded disk digest sha256:000000000000"):
        esp_image(cache, wrong, files)
    from imagebuilder.formats.export import disk_digest, disk_from_esp, layer_images
    layers = layer_images(cache, source)
    # no ESP is kept; the layers' EROFS images and the formatted volume without files, right
    # whatever the disk, are
    stored = {p for p in cache.stages_dir.rglob("*") if p.is_file()
              and not p.name.endswith(".xxh3")}
    volumes = stored - {image for _, image in layers}
    assert len(volumes) == 1 and b"K" * 5000 not in volumes.pop().read_bytes()
    esp, hit = esp_image(cache, source, files)
    right = disk_digest(disk_from_esp(esp, source, boot_files=files, layers=layers))
    cache.invalidate(esp.name)
    esp, hit = esp_image(cache, BootSource(source.kernel, source.initrds, source.cmdline,
                                           source.digests, disk_digest=right), files)
    assert not hit


def test_a_blob_the_store_just_hashed_is_not_read_again_until_it_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[int] = []
    digest_fd = blobs.digest_fd
    monkeypatch.setattr(blobs, "digest_fd", lambda fd, algos: reads.append(fd) or digest_fd(
        fd, algos))
    store = Store(tmp_path / "store")
    layer = tmp_path / "layer"
    layer.write_bytes(b"layer bytes" * 1000)
    desc = store.add_blob_file(layer, INITRD_LAYER_MEDIA_TYPE)
    blobs.verify(store.blob_path(desc.digest), desc.digest)
    blobs.verify(layer, desc.digest)  # the same file: the build's name for it
    assert reads == []
    _flip(layer)
    st = layer.stat()
    os.utime(layer, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))  # what a later write does
    with pytest.raises(DamagedError, match="is damaged"):
        blobs.verify(store.blob_path(desc.digest), desc.digest)
    assert len(reads) == 1


def test_adding_a_blob_again_replaces_a_damaged_copy_of_the_same_size(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    layer = tmp_path / "layer"
    layer.write_bytes(b"layer bytes" * 1000)
    desc = store.add_blob_file(layer, INITRD_LAYER_MEDIA_TYPE)
    blob = store.blob_path(desc.digest)
    blob.unlink()  # not the hard link to our source: a copy, then damaged in place
    blob.write_bytes(b"layer bytes" * 1000)
    _flip(blob)
    assert store.has_blob(desc.digest, desc.size)
    assert not store.has_intact_blob(desc.digest, desc.size)
    store.add_blob_file(layer, INITRD_LAYER_MEDIA_TYPE)
    assert store.has_intact_blob(desc.digest, desc.size)

    small = store.add_blob_bytes(b"small config", "application/json")
    _flip(store.blob_path(small.digest), 2)
    store.add_blob_bytes(b"small config", "application/json")
    assert store.read_blob(small.digest) == b"small config"
