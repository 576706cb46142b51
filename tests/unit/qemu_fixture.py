"""A fake image in a real store, as ``build`` would put it (a kernel that is not one, small
layers), for the tests of ``run``'s preparation and QEMU command line; and the mark that skips a
test when QEMU is missing."""

from __future__ import annotations

import shutil

import pytest

from imagebuilder.store.layout import INITRD_LAYER_MEDIA_TYPE, KERNEL_MEDIA_TYPE, Image, Store

needs_qemu = pytest.mark.skipif(
    shutil.which("qemu-system-x86_64") is None,
    reason="qemu-system-x86_64 not installed (apt-get install qemu-system-x86)",
)

KERNEL = b"\x7fbzImage: not really a kernel"
LAYERS = [("base", b"base layer bytes " * 100), ("jvm", b"jvm layer " * 300),
          ("app", b"app layer")]


def fake_image(store: Store, ref: str = "hello:1.0.0", port: int | None = 8080,
               layers: list[tuple[str, bytes]] = LAYERS) -> Image:
    """A fake kernel and layers in a real store, as ``build`` would put them."""
    kernel = store.add_blob_bytes(KERNEL, KERNEL_MEDIA_TYPE,
                                  {"org.opencontainers.image.title": "vmlinuz"})
    descriptors = [store.add_blob_bytes(data, INITRD_LAYER_MEDIA_TYPE,
                                        {"org.opencontainers.image.title": name})
                   for name, data in layers]
    config = {"cmdline": "console=ttyS0 quiet panic=-1", "memory": 512,
              "app": {"jar": "app.jar", "port": port, "healthcheck": "/"}}
    store.put_image(ref, config, [kernel, *descriptors])
    return store.resolve(ref)
