"""The bootable GPT disk: its table and ESP as the real tools read them, reproducible bytes, and
real boots under QEMU TCG by SeaBIOS (legacy BIOS) and OVMF (UEFI) of a tiny three-layer image.

The boots use a real Debian kernel (fetched with the project's own fetcher, or the one named by
``IMAGEBUILDER_TEST_KERNEL``) and a payload of three initrd layers whose init prints a marker
naming every layer it found, then powers off. test_iso.py boots the same payload from the ISO.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from imagebuilder.disk import gpt
from imagebuilder.disk.boot import BootSource
from imagebuilder.disk.bootable import BootFiles, bootable_disk
from imagebuilder.errors import HostError, UserError
from imagebuilder.formats.raw import write_raw
from imagebuilder.layers.cpio import Tree, write_layer

MIB = 1 << 20
MARKER = "IB-BOOT-OK"
CMDLINE = "console=ttyS0 panic=-1 ib.check=cmdline-ok"
#: What the payload's init prints when every layer is there, unpacked in order.
EXPECTED = f"{MARKER} layers=base,jvm,app, top=app cmdline=ib.check=cmdline-ok"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
BOOT_TIMEOUT = 240

INIT = """#!/bin/busybox sh
bb=/bin/busybox
say() { echo "$*" > /dev/console; }
seen=
for n in 01 02 03; do
    [ -f /layers/$n ] || { say "IB-BOOT-FAIL layer $n missing"; $bb poweroff -f; }
    seen="$seen$($bb cat /layers/$n),"
done
$bb mount -t proc proc /proc
check=
for word in $($bb cat /proc/cmdline); do
    case "$word" in ib.check=*) check=$word ;; esac
done
say "IB-BOOT-OK layers=$seen top=$($bb cat /layers/top) cmdline=$check"
$bb poweroff -f
"""


def boot_files() -> BootFiles:
    try:
        return BootFiles.from_host()
    except HostError as exc:
        pytest.skip(str(exc))


def make_payload(dest: Path) -> list[tuple[str, Path]]:
    """Three zstd cpio layers: base (busybox, /init), jvm, app; each adds /layers/NN and
    overwrites /layers/top, so the init can tell that all were unpacked, in order."""
    dest.mkdir(parents=True, exist_ok=True)
    layers = []
    for n, name in enumerate(("base", "jvm", "app"), 1):
        tree = Tree()
        if name == "base":
            tree.add_file("bin/busybox", source=Path("/bin/busybox"), mode=0o755)
            tree.add_file("init", data=INIT.encode(), mode=0o755)
            tree.add_dir("proc")
            tree.add_dir("dev")
            tree.add_node("dev/console", "char", 5, 1)
        tree.add_file(f"layers/{n:02d}", data=name.encode())
        tree.add_file("layers/top", data=name.encode())
        path = dest / f"{name}.cpio.zst"
        write_layer(tree, path, mtime=0, level=3)
        layers.append((name, path))
    return layers


@functools.cache
def _fetched_kernel(cache: Path) -> Path:
    from imagebuilder.fetch.deb import extract_deb
    from imagebuilder.fetch.debian import Archive
    from imagebuilder.fetch.sources import mirror_from_apt

    archive = Archive(mirror_from_apt(), "trixie", cache / "debian")
    packages = archive.resolve(["linux-image-cloud-amd64"],
                               follow=lambda p: p.name.startswith("linux-image-"))
    image = next(p for p in packages if p.name.startswith("linux-image-")
                 and p.name != "linux-image-cloud-amd64")
    root = cache / "kernel" / image.sha256
    kernels = sorted((root / "boot").glob("vmlinuz-*")) if root.is_dir() else []
    if not kernels:
        tmp = root.with_name(f".{root.name}.{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        extract_deb(archive.fetch(image), tmp)
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
        kernels = sorted((root / "boot").glob("vmlinuz-*"))
    return kernels[0]


@pytest.fixture(scope="session")
def boot_kernel() -> Path:
    """A real x86-64 kernel: $IMAGEBUILDER_TEST_KERNEL, or Debian trixie's cloud kernel fetched
    (signed index, verified .deb) into ~/.cache/imagebuilder-tests."""
    override = os.environ.get("IMAGEBUILDER_TEST_KERNEL")
    if override:
        return Path(override)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return _fetched_kernel(cache / "imagebuilder-tests")


@pytest.fixture(scope="session")
def payload(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, Path]]:
    if not Path("/bin/busybox").is_file():
        pytest.skip("/bin/busybox missing (apt-get install busybox-static)")
    return make_payload(tmp_path_factory.mktemp("payload"))


def qemu_boot(tmp: Path, *drive: str, uefi: bool = False) -> str:
    """Boot a VM under TCG with ``drive`` options; its serial console output."""
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        pytest.skip("qemu-system-x86_64 missing (apt-get install qemu-system-x86)")
    argv = [qemu, "-accel", "tcg", "-machine", "pc", "-m", "256", "-nodefaults",
            "-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio", *drive]
    if uefi:
        if not (OVMF_CODE.is_file() and OVMF_VARS.is_file()):
            pytest.skip("OVMF missing (apt-get install ovmf)")
        vars_copy = tmp / "OVMF_VARS.fd"
        shutil.copyfile(OVMF_VARS, vars_copy)
        argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}"]
    try:
        result = subprocess.run(argv, capture_output=True, timeout=BOOT_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace")
        raise AssertionError(f"no power-off within {BOOT_TIMEOUT} s; console:\n{out[-3000:]}"
                             ) from None
    return (result.stdout + result.stderr).decode(errors="replace")


def assert_booted(console: str) -> None:
    assert EXPECTED in console, console[-3000:]


def _boot(kernel: Path, initrds: list[tuple[str, Path]], seed: bytes,
          cmdline: str = CMDLINE) -> BootSource:
    return BootSource.of_files(kernel, initrds, cmdline, seed=seed)
# -- structure ---------------------------------------------------------------------------------

@pytest.fixture
def fake(tmp_path: Path) -> tuple[Path, list[tuple[str, Path]]]:
    """A stand-in kernel and layers: enough for the layout, never booted."""
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"MZ" + bytes(range(256)) * 2000)
    initrds = []
    for name in ("base", "jvm", "app"):
        (tmp_path / name).write_bytes(name.encode() * 5000)
        initrds.append((name, tmp_path / name))
    return kernel, initrds


def _raw(tmp: Path, fake: tuple[Path, list[tuple[str, Path]]], name: str = "disk.raw",
         **kwargs: object) -> Path:
    kernel, initrds = fake
    disk = bootable_disk(_boot(kernel, initrds, b"seed"), boot_files=boot_files(),
                         **kwargs)  # type: ignore[arg-type]
    write_raw(disk, tmp / name)
    return tmp / name


def test_table_esp_and_boot_code(tmp_path: Path,
                                 fake: tuple[Path, list[tuple[str, Path]]]) -> None:
    work = tmp_path / "work"
    raw = _raw(tmp_path, fake, workdir=work)
    data = raw.read_bytes()
    assert len(data) % MIB == 0
    assert data[:440] == boot_files().gptmbr.read_bytes()[:440]
    assert data[510:512] == b"\x55\xaa" and data[450] == 0xEE
    esp = (work / "esp.img").read_bytes()
    assert data[MIB:MIB + len(esp)] == esp
    assert data[MIB + len(esp):-33 * 512] == bytes(len(data) - MIB - len(esp) - 33 * 512)
    assert data[512:520] == data[-512:-504] == b"EFI PART"

    sfdisk = shutil.which("sfdisk")
    if sfdisk:
        pt = json.loads(subprocess.run([sfdisk, "--json", str(raw)], capture_output=True,
                                       check=True).stdout)["partitiontable"]
        (part,) = pt["partitions"]
        assert (part["start"], part["size"]) == (2048, len(esp) // 512)
        assert part["type"] == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
        assert part["attrs"] == "LegacyBIOSBootable"
        assert part["uuid"].lower() == str(gpt.derived_guid(b"seed", "partition 1"))
        assert pt["id"].lower() == str(gpt.derived_guid(b"seed", "disk"))
    sgdisk = shutil.which("sgdisk")
    if sgdisk:
        out = subprocess.run([sgdisk, "-v", str(raw)], capture_output=True, text=True)
        assert out.returncode == 0 and "No problems found" in out.stdout, out.stdout


def test_disk_is_mostly_holes(tmp_path: Path, fake: tuple[Path, list[tuple[str, Path]]]) -> None:
    kernel, initrds = fake
    disk = bootable_disk(_boot(kernel, initrds, b"s"), boot_files=boot_files(),
                         size=1 << 30)
    assert disk.size == 1 << 30
    assert disk.data_size() < 4 * MIB, disk.extents
    assert disk.extents[-1].offset + disk.extents[-1].length == disk.size  # backup GPT


def test_size_must_fit_and_be_whole_mebibytes(
        tmp_path: Path, fake: tuple[Path, list[tuple[str, Path]]]) -> None:
    kernel, initrds = fake
    with pytest.raises(UserError, match="too small"):
        bootable_disk(_boot(kernel, initrds, b"s"), boot_files=boot_files(),
                      size=8 * MIB)
    with pytest.raises(UserError, match="multiple of 1 MiB"):
        bootable_disk(_boot(kernel, initrds, b"s"), boot_files=boot_files(),
                      size=(1 << 30) + 512)


def test_private_esp_file_goes_with_the_disk(fake: tuple[Path, list[tuple[str, Path]]]) -> None:
    kernel, initrds = fake
    disk = bootable_disk(_boot(kernel, initrds, b"s"), boot_files=boot_files())
    sources = {e.source.path for e in disk.extents if not isinstance(e.source, bytes)}
    (esp,) = sources
    assert esp.is_file()
    del disk
    gc.collect()
    assert not esp.exists() and not esp.parent.exists()


def test_same_inputs_give_the_same_disk_whatever_the_clock_and_zone(
        tmp_path: Path, fake: tuple[Path, list[tuple[str, Path]]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    first = _raw(tmp_path, fake, "a.raw")
    monkeypatch.setenv("TZ", "America/St_Johns")
    time.tzset()
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 9 * 365 * 86400)
    try:
        time.sleep(2.1)  # FAT timestamps count in 2 s steps
        second = _raw(tmp_path, fake, "b.raw")
    finally:
        monkeypatch.undo()
        time.tzset()
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (first, second)]
    assert digest[0] == digest[1]
    kernel, initrds = fake
    other = bootable_disk(_boot(kernel, initrds, b"other"), boot_files=boot_files())
    write_raw(other, tmp_path / "c.raw")
    assert (tmp_path / "c.raw").read_bytes() != first.read_bytes()


# -- real boots ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def payload_disk(tmp_path_factory: pytest.TempPathFactory, boot_kernel: Path,
                 payload: list[tuple[str, Path]]) -> Path:
    dest = tmp_path_factory.mktemp("disk") / "disk.raw"
    disk = bootable_disk(_boot(boot_kernel, payload, b"payload"),
                         boot_files=boot_files(), size=64 * MIB)
    write_raw(disk, dest)
    return dest


@pytest.mark.e2e
@pytest.mark.network
def test_boots_by_bios_seabios(tmp_path: Path, payload_disk: Path) -> None:
    assert_booted(qemu_boot(tmp_path, "-drive", f"file={payload_disk},format=raw,if=ide,"
                                                "snapshot=on"))


@pytest.mark.e2e
@pytest.mark.network
def test_boots_by_uefi_ovmf(tmp_path: Path, payload_disk: Path) -> None:
    assert_booted(qemu_boot(tmp_path, "-drive", f"file={payload_disk},format=raw,if=ide,"
                                                "snapshot=on", uefi=True))
