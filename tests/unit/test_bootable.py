"""The bootable GPT disk: its table and ESP as the real tools read them, reproducible bytes, and
real boots under QEMU TCG by SeaBIOS (legacy BIOS) and OVMF (UEFI) of a tiny three-layer image.

The boots use a real Debian kernel (fetched with the project's own fetcher, or the one named by
``IMAGEBUILDER_TEST_KERNEL``) and a payload of three initrd layers whose init prints a marker
naming every layer it found, then powers off. test_iso.py boots the same payload from the ISO.
"""

from __future__ import annotations

import gc
import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from imagebuilder.disk import gpt
from imagebuilder.disk.boot import BootSource
from imagebuilder.disk.bootable import bootable_disk
from imagebuilder.errors import UserError
from imagebuilder.formats.raw import write_raw
from tests.unit.boot_fixture import CMDLINE, assert_booted, boot_files, qemu_boot

MIB = 1 << 20


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
