"""targets.microvm and the microvm command line, without booting: which images and hosts can
boot there, and what QEMU and the kernel are told."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from imagebuilder.errors import UserError
from imagebuilder.layers.cpio import Tree, write_layer
from imagebuilder.store.layout import INITRD_LAYER_MEDIA_TYPE, KERNEL_MEDIA_TYPE, Image, Store
from imagebuilder.targets.qemu import microvm
from imagebuilder.targets.qemu.run import RunSpec, qemu_argv, resolve_boot

needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                                reason="qemu-system-x86_64 not installed")

KVM_GUEST_CPUINFO = """\
processor\t: 0
vendor_id\t: AuthenticAMD
cpu MHz\t\t: 2596.122
flags\t\t: fpu tsc msr constant_tsc rep_good nopl hypervisor
"""


def _image(store: Store, tmp_path: Path, modules: list[str]) -> Image:
    """An image whose base layer is a real cpio.zst holding ``modules`` under usr/lib/modules."""
    tree = Tree()
    tree.add_file("init", data=b"#!/bin/sh\n", mode=0o755)
    for name in modules:
        tree.add_file(f"usr/lib/modules/6.12/kernel/drivers/virtio/{name}", data=b"ko")
    layer = tmp_path / f"base-{len(modules)}.cpio.zst"
    write_layer(tree, layer, mtime=0)
    kernel = store.add_blob_bytes(b"bzImage", KERNEL_MEDIA_TYPE,
                                  {"org.opencontainers.image.title": "vmlinuz"})
    base = store.add_blob_bytes(layer.read_bytes(), INITRD_LAYER_MEDIA_TYPE,
                                {"org.opencontainers.image.title": "base"})
    ref = f"m:{len(modules)}"
    store.put_image(ref, {"cmdline": "console=ttyS0 quiet", "app": {"port": 8080}},
                    [kernel, base])
    return store.resolve(ref)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def test_an_image_with_virtio_mmio_can_boot_there(store: Store, tmp_path: Path) -> None:
    assert microvm.image_can_boot(store, _image(store, tmp_path, ["virtio_mmio.ko.xz"]))
    assert not microvm.image_can_boot(store, _image(store, tmp_path, ["virtio_pci.ko.xz",
                                                                      "not_virtio_mmio.ko"]))


def test_host_tsc_rate_only_from_a_virtual_machine_host_with_a_constant_tsc(
        tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(KVM_GUEST_CPUINFO)
    assert microvm.host_tsc_khz(cpuinfo) == 2596122
    cpuinfo.write_text(KVM_GUEST_CPUINFO.replace(" hypervisor", ""))
    assert microvm.host_tsc_khz(cpuinfo) is None  # bare metal: cpu MHz may be the current clock
    cpuinfo.write_text(KVM_GUEST_CPUINFO.replace("constant_tsc ", ""))
    assert microvm.host_tsc_khz(cpuinfo) is None
    assert microvm.host_tsc_khz(tmp_path / "missing") is None


def test_kernel_command_line() -> None:
    assert microvm.cmdline("console=ttyS0", "kvm", 2596122) == "console=ttyS0 pci=off"
    assert microvm.cmdline("console=ttyS0", "tcg", 2596122) == (
        "console=ttyS0 pci=off tsc_early_khz=2596122 tsc=reliable "
        "cryptomgr.notests")


def test_usable_needs_the_driver_and_under_tcg_the_tsc_rate(store: Store, tmp_path: Path) -> None:
    image = _image(store, tmp_path, ["virtio_mmio.ko.xz"])
    assert microvm.usable(store, image, ["tcg"], 2596122)
    assert microvm.usable(store, image, ["kvm"], None)
    assert not microvm.usable(store, image, ["kvm", "tcg"], None)
    assert not microvm.usable(store, _image(store, tmp_path, []), ["kvm"], 1)


def test_auto_falls_back_to_bios_and_an_explicit_microvm_says_why_not(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with_mmio = _image(store, tmp_path, ["virtio_mmio.ko.xz"])
    without = _image(store, tmp_path, [])
    monkeypatch.setattr(microvm, "host_tsc_khz", lambda: 2596122)
    assert resolve_boot(RunSpec(with_mmio, None, {}, [], "tcg", boot="auto"), store) == "microvm"
    assert resolve_boot(RunSpec(without, None, {}, [], "tcg", boot="auto"), store) == "bios"
    assert resolve_boot(RunSpec(without, None, {}, [], "tcg", boot="uefi"), store) == "uefi"
    with pytest.raises(UserError, match="no virtio_mmio driver"):
        resolve_boot(RunSpec(without, None, {}, [], "tcg", boot="microvm"), store)
    monkeypatch.setattr(microvm, "host_tsc_khz", lambda: None)
    assert resolve_boot(RunSpec(with_mmio, None, {}, [], "tcg", boot="auto"), store) == "bios"
    with pytest.raises(UserError, match="TSC rate"):
        resolve_boot(RunSpec(with_mmio, None, {}, [], "tcg", boot="microvm"), store)


@needs_qemu
def test_microvm_argv(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(microvm, "host_tsc_khz", lambda: 2000000)
    image = _image(store, tmp_path, ["virtio_mmio.ko.xz"])
    (tmp_path / "config.iso").write_bytes(b"iso")
    spec = RunSpec(image, "test", {}, [], boot="microvm")
    argv = qemu_argv(spec, store, tmp_path / "x.initrd", tmp_path, "tcg", "stdio")
    options = {word: argv[i + 1] for i, word in enumerate(argv) if word.startswith("-")
               and i + 1 < len(argv) and word not in ("-device", "-drive")}
    assert options["-machine"] == "microvm,acpi=on,auto-kernel-cmdline=off,accel=tcg"
    assert options["-append"] == (
        "console=ttyS0 quiet pci=off tsc_early_khz=2000000 tsc=reliable cryptomgr.notests")
    spec.jit = "c1"
    assert qemu_argv(spec, store, tmp_path / "x.initrd", tmp_path, "tcg", "stdio")[
        argv.index("-append") + 1].endswith(" cryptomgr.notests imagebuilder.jit=c1")
    assert options["-initrd"] == str(tmp_path / "x.initrd")
    devices = [argv[i + 1] for i, word in enumerate(argv) if word == "-device"]
    assert devices == ["virtio-net-device,netdev=net0", "virtio-rng-device",
                       "virtio-blk-device,drive=config"]
    assert not any("pci" in d for d in devices)
