"""An image's disk: the ESP with the kernel and the base layer only, then one EROFS partition
per layer named by its digest, as sfdisk, mtools and fsck.erofs read them back."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from imagebuilder.disk.boot import BootSource
from imagebuilder.disk.bootable import BootFiles
from imagebuilder.errors import HostError
from imagebuilder.formats.export import bootable, layer_images
from imagebuilder.formats.raw import write_raw
from imagebuilder.store.cache import Cache
from imagebuilder.store.layout import INITRD_LAYER_MEDIA_TYPE, KERNEL_MEDIA_TYPE, Store
from tests.unit.layer_fixture import tiny_layer

TITLE = "org.opencontainers.image.title"
pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("sfdisk", "mtype", "fsck.erofs")),
    reason="needs fdisk, mtools and erofs-utils (scripts/setup.sh installs them)")


def _source(store: Store) -> BootSource:
    kernel = store.add_blob_bytes(b"K" * 5000, KERNEL_MEDIA_TYPE, {TITLE: "vmlinuz"})
    layers = [store.add_blob_bytes(tiny_layer(name.encode() * 3000, f"etc/{name}"),
                                   INITRD_LAYER_MEDIA_TYPE, {TITLE: name})
              for name in ("base", "jvm", "app")]
    store.put_image("hello:1.0.0", {"cmdline": "console=ttyS0"}, [kernel, *layers])
    return BootSource.of_image(store, store.resolve("hello:1.0.0"))


def _boot_files() -> BootFiles:
    try:
        return BootFiles.from_host()
    except HostError as exc:
        pytest.skip(str(exc))


def test_the_disk_carries_the_base_in_its_esp_and_every_layer_as_erofs(tmp_path: Path) -> None:
    files = _boot_files()
    source = _source(Store(tmp_path / "store"))
    cache = Cache(tmp_path / "cache")
    raw = tmp_path / "disk.raw"
    write_raw(bootable(cache, source, files), raw)
    table = json.loads(subprocess.run(["sfdisk", "--json", str(raw)], capture_output=True,
                                      check=True).stdout)["partitiontable"]
    esp, *parts = table["partitions"]
    digests = [d.removeprefix("sha256:") for d in source.digests[1:]]
    assert [p["name"] for p in parts] == [f"ib-{d[:32]}" for d in digests]
    assert all(p["type"] == "0FC63DAF-8483-4772-8E79-3D69D8477DE4" for p in parts)
    images = dict(layer_images(cache, source))
    with open(raw, "rb") as disk:
        for part, (name, _) in zip(parts, source.initrds, strict=True):
            disk.seek(part["start"] * 512)
            image = images[part["name"]].read_bytes()
            assert disk.read(len(image)) == image
            out = tmp_path / name
            subprocess.run(["fsck.erofs", f"--extract={out}", str(images[part["name"]])],
                           check=True, capture_output=True)
            assert (out / "etc" / name).read_bytes() == name.encode() * 3000
        disk.seek(esp["start"] * 512)
        (tmp_path / "esp.img").write_bytes(disk.read(esp["size"] * 512))
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    listing = subprocess.run(["mdir", "-i", str(tmp_path / "esp.img"), "-b", "::/initrd"],
                             capture_output=True, check=True, env=env).stdout.decode()
    assert [line.rsplit("/", 1)[-1] for line in listing.split()] == ["01-base.img"]
    entry = subprocess.run(["mtype", "-i", str(tmp_path / "esp.img"),
                            "::/loader/entries/imagebuilder.conf"], capture_output=True,
                           check=True, env=env).stdout.decode()
    layers = ",".join(f"{n}:{d[:32]}" for (n, _), d in zip(source.initrds, digests, strict=True))
    assert f"options console=ttyS0 imagebuilder.layers={layers}\n" in entry
    assert source.disk_cmdline == f"console=ttyS0 imagebuilder.layers={layers}"
