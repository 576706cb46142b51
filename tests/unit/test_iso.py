"""The hybrid ISO: El Torito entries, files and isohybrid MBR as pycdlib and the host tools read
them, reproducible bytes, and real boots under QEMU TCG as a CD and as a hard disk, by BIOS and
by UEFI (the same three-layer payload as test_bootable.py)."""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pycdlib
import pytest

from imagebuilder.disk import gpt
from imagebuilder.disk.boot import BootSource
from imagebuilder.errors import HostError, UserError
from imagebuilder.formats.iso import VOLUME_ID, write_iso
from tests.unit import boot_fixture as tb

CMDLINE = tb.CMDLINE


def _boot(kernel: Path, initrds: list[tuple[str, Path]], seed: bytes) -> BootSource:
    return BootSource.of_files(kernel, initrds, CMDLINE, seed=seed)
SEED = b"iso-seed"


@pytest.fixture
def fake(tmp_path: Path) -> tuple[Path, list[tuple[str, Path]]]:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"MZ" + bytes(range(256)) * 3000)
    initrds = []
    for name in ("base", "my-jvm", "app"):
        (tmp_path / name).write_bytes(name.encode() * 3000)
        initrds.append((name, tmp_path / name))
    return kernel, initrds


def _iso(tmp: Path, fake: tuple[Path, list[tuple[str, Path]]], name: str = "x.iso",
         seed: bytes = SEED) -> Path:
    kernel, initrds = fake
    write_iso(_boot(kernel, initrds, seed), tmp / name, boot_files=tb.boot_files())
    return tmp / name


def _get(iso: pycdlib.PyCdlib, rr_path: str) -> bytes:
    out = io.BytesIO()
    iso.get_file_from_iso_fp(out, rr_path=rr_path)
    return out.getvalue()


def test_files_configs_and_el_torito_entries(tmp_path: Path,
                                             fake: tuple[Path, list[tuple[str, Path]]]) -> None:
    image = _iso(tmp_path, fake)
    kernel, initrds = fake
    iso = pycdlib.PyCdlib()
    iso.open(str(image))
    try:
        assert iso.pvd.volume_identifier.decode().strip() == VOLUME_ID
        assert _get(iso, "/boot/vmlinuz") == kernel.read_bytes()
        for name, rr in (("base", "01_base.img"), ("my-jvm", "02_my_jvm.img"),
                         ("app", "03_app.img")):
            assert _get(iso, f"/boot/{rr}") == dict(initrds)[name].read_bytes()
        cfg = _get(iso, "/isolinux/isolinux.cfg").decode()
        assert "  LINUX /boot/vmlinuz" in cfg.splitlines()
        assert "  INITRD /boot/01_base.img,/boot/02_my_jvm.img,/boot/03_app.img" in cfg
        assert f"  APPEND {CMDLINE}" in cfg.splitlines()
        # Nobody at the console changes what boots (tests/e2e/test_guest.py holds Shift).
        assert {"PROMPT 0", "NOESCAPE 1", "ALLOWOPTIONS 0"} <= set(cfg.splitlines())
        assert _get(iso, "/isolinux/ldlinux.c32") == tb.boot_files().ldlinux_c32.read_bytes()
        # the ISO 9660 names say the same in capitals (isolinux may read either tree)
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, iso_path="/BOOT/02_MY_JVM.IMG;1")
        assert out.getvalue() == dict(initrds)["my-jvm"].read_bytes()

        catalog = iso.eltorito_boot_catalog
        assert catalog is not None
        assert catalog.validation_entry.platform_id == 0  # x86 BIOS: isolinux.bin
        assert catalog.initial_entry.sector_count == 4
        (section,) = catalog.sections
        assert section.platform_id == 0xEF  # UEFI
        esp = _get(iso, "/boot/efiboot.img")
    finally:
        iso.close()
    (tmp_path / "esp.img").write_bytes(esp)
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    entry = subprocess.run(["mtype", "-i", str(tmp_path / "esp.img"),
                            "::/loader/entries/imagebuilder.conf"], env=env, check=True,
                           capture_output=True).stdout.decode()
    assert "initrd /initrd/02-my-jvm.img" in entry.splitlines()
    assert subprocess.run(["fsck.fat", "-n", str(tmp_path / "esp.img")],
                          capture_output=True).returncode == 0


def test_isohybrid_mbr_is_isohdpfx_with_derived_ids(
        tmp_path: Path, fake: tuple[Path, list[tuple[str, Path]]]) -> None:
    data = _iso(tmp_path, fake).read_bytes()
    assert data[:432] == tb.boot_files().isohdpfx.read_bytes()[:432]
    assert struct.unpack_from("<I", data, 440)[0] == gpt.derived_u32(SEED, "iso mbr id")
    assert data[510:512] == b"\x55\xaa"
    first = data[446:462]
    second = data[462:478]
    assert first[0] == 0x80 and first[4] == 0  # active, type 0 (UEFI skips it): the image
    assert second[4] == 0xEF  # the FAT image, for UEFI booting the ISO as a disk
    esp_lba = struct.unpack_from("<I", second, 8)[0]
    assert data[esp_lba * 512 + 54:esp_lba * 512 + 62] == b"FAT16   "
    sfdisk = shutil.which("sfdisk")
    if sfdisk:
        out = subprocess.run([sfdisk, "-d", str(tmp_path / "x.iso")], capture_output=True,
                             text=True, check=True).stdout
        assert "type=ef" in out, out


def test_same_inputs_give_the_same_iso_whatever_the_clock_and_zone(
        tmp_path: Path, fake: tuple[Path, list[tuple[str, Path]]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    first = _iso(tmp_path, fake, "a.iso").read_bytes()
    monkeypatch.setenv("TZ", "Asia/Kathmandu")
    time.tzset()
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 3 * 365 * 86400 + 12345)
    try:
        second = _iso(tmp_path, fake, "b.iso").read_bytes()
    finally:
        monkeypatch.undo()
        time.tzset()
    assert first == second
    assert b"1980010100000000" in first[16 * 2048:17 * 2048]  # the primary descriptor's dates
    assert _iso(tmp_path, fake, "c.iso", seed=b"other").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".iso") == [
        "a.iso", "b.iso", "c.iso"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftovers


def test_isoinfo_reads_it(tmp_path: Path, fake: tuple[Path, list[tuple[str, Path]]]) -> None:
    isoinfo = shutil.which("isoinfo")
    if isoinfo is None:
        pytest.skip("isoinfo missing (apt-get install genisoimage)")
    image = _iso(tmp_path, fake)
    out = subprocess.run([isoinfo, "-d", "-i", str(image)], capture_output=True, text=True,
                         check=True).stdout
    assert f"Volume id: {VOLUME_ID}" in out
    assert "El Torito" in out and "Rock Ridge" in out and "Joliet" in out


def test_failures_leave_nothing_behind(tmp_path: Path,
                                       fake: tuple[Path, list[tuple[str, Path]]]) -> None:
    kernel, initrds = fake
    broken = tb.BootFiles(**{**tb.boot_files().__dict__, "isolinux_bin": tmp_path / "nope"})
    with pytest.raises(HostError, match="apt-get install isolinux"):
        write_iso(_boot(kernel, initrds, SEED), tmp_path / "x.iso", boot_files=broken)
    with pytest.raises(UserError, match="does not exist"):
        write_iso(_boot(kernel, initrds, SEED), tmp_path / "missing" / "x.iso",
                  boot_files=tb.boot_files())
    with pytest.raises(UserError, match="layer name"):
        write_iso(_boot(kernel, [("Bad Name", kernel)], SEED), tmp_path / "x.iso",
                  boot_files=tb.boot_files())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app", "base", "my-jvm", "vmlinuz"]


# -- real boots ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def payload_iso(tmp_path_factory: pytest.TempPathFactory, boot_kernel: Path,
                payload: list[tuple[str, Path]]) -> Path:
    dest = tmp_path_factory.mktemp("iso") / "payload.iso"
    write_iso(_boot(boot_kernel, payload, b"payload"), dest, boot_files=tb.boot_files())
    return dest


@pytest.mark.e2e
@pytest.mark.network
def test_cd_boots_by_bios(tmp_path: Path, payload_iso: Path) -> None:
    tb.assert_booted(tb.qemu_boot(tmp_path, "-cdrom", str(payload_iso)))


@pytest.mark.e2e
@pytest.mark.network
def test_cd_boots_by_uefi(tmp_path: Path, payload_iso: Path) -> None:
    tb.assert_booted(tb.qemu_boot(tmp_path, "-cdrom", str(payload_iso), uefi=True))


@pytest.mark.e2e
@pytest.mark.network
def test_iso_as_hard_disk_boots_by_bios(tmp_path: Path, payload_iso: Path) -> None:
    tb.assert_booted(tb.qemu_boot(
        tmp_path, "-drive", f"file={payload_iso},format=raw,if=ide,snapshot=on"))


@pytest.mark.e2e
@pytest.mark.network
def test_iso_as_hard_disk_boots_by_uefi_from_its_mbr_esp_partition(tmp_path: Path,
                                                                   payload_iso: Path) -> None:
    # OVMF would also find El Torito on a disk; most PC firmware does not. Hide the boot record
    # so that OVMF has to boot the way they do: from the MBR's 0xEF partition.
    disk = tmp_path / "usb.img"
    shutil.copyfile(payload_iso, disk)
    with open(disk, "rb+") as f:
        f.seek(17 * 2048)
        record = f.read(32)
        assert record[1:6] == b"CD001" and record[7:30] == b"EL TORITO SPECIFICATION"
        f.seek(17 * 2048 + 7)
        f.write(b"NO TORITO")
    tb.assert_booted(tb.qemu_boot(
        tmp_path, "-drive", f"file={disk},format=raw,if=ide,snapshot=on", uefi=True))
