"""The EFI system partition image: its files and rendered boot configs as mtools reads them back,
a clean fsck.fat, fixed timestamps and serial, byte-identical rebuilds, clear errors."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from imagebuilder.disk import esp, gpt
from imagebuilder.disk.boot import BootSource
from imagebuilder.errors import HostError, UserError
from imagebuilder.hashing.sparse import data_extents

CMDLINE = "console=ttyS0 panic=-1 quiet"


def _boot(kernel: Path, initrds: list[tuple[str, Path]], seed: bytes,
          cmdline: str = CMDLINE) -> BootSource:
    return BootSource.of_files(kernel, initrds, cmdline, seed=seed)
SEED = b"esp-test-seed"

needs_tools = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("mkfs.fat", "mcopy", "syslinux", "fsck.fat")),
    reason="needs dosfstools, mtools and syslinux (scripts/setup.sh installs them)",
)


def _boot_files() -> esp.BootFiles:
    try:
        return esp.BootFiles.from_host()
    except HostError as exc:
        pytest.skip(str(exc))


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, list[tuple[str, Path]]]:
    src = tmp_path / "src"
    src.mkdir()
    kernel = src / "kernel"
    kernel.write_bytes(bytes(range(256)) * 1200)
    initrds = []
    for i, name in enumerate(("base", "jvm", "app")):
        path = src / f"{name}.cpio.zst"
        path.write_bytes(name.encode() * (1000 + 7000 * i))
        initrds.append((name, path))
    return kernel, initrds


def _build(dest: Path, inputs: tuple[Path, list[tuple[str, Path]]], **kwargs: object) -> Path:
    kernel, initrds = inputs
    args: dict[str, object] = dict(boot_files=_boot_files(), bios=True, fat_bits=32,
                                   hidden_sectors=2048)
    args.update(kwargs)
    seed = args.pop("seed", SEED)
    source = _boot(kernel, initrds, seed)  # type: ignore[arg-type]
    esp.build_esp(dest, source, **args)  # type: ignore[arg-type]
    return dest


def _mtools(*argv: str) -> str:
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    return subprocess.run(argv, capture_output=True, check=True, env=env).stdout.decode()


def _mtype(image: Path, path: str) -> bytes:
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    return subprocess.run(["mtype", "-i", str(image), f"::{path}"], capture_output=True,
                          check=True, env=env).stdout


def _files(image: Path) -> set[str]:
    """Every file path on the volume (mdir -/ -b prints one path per line)."""
    out = _mtools("mdir", "-i", str(image), "-/", "-b", "-a", "::/")
    return {line.strip()[2:].rstrip("/") for line in out.splitlines() if line.strip()}


@needs_tools
def test_holds_loaders_configs_kernel_and_layers(tmp_path: Path, inputs: tuple[Path, list[
        tuple[str, Path]]]) -> None:
    image = _build(tmp_path / "esp.img", inputs)
    kernel, initrds = inputs
    files = _files(image)
    for wanted in ("/EFI/BOOT/BOOTX64.EFI", "/loader/loader.conf",
                   "/loader/entries/imagebuilder.conf", "/syslinux/syslinux.cfg",
                   "/syslinux/ldlinux.sys", "/syslinux/ldlinux.c32", "/vmlinuz",
                   "/initrd/01-base.img", "/initrd/02-jvm.img", "/initrd/03-app.img"):
        assert wanted in files, sorted(files)
    assert _mtype(image, "/EFI/BOOT/BOOTX64.EFI") == _boot_files().systemd_boot.read_bytes()
    assert _mtype(image, "/vmlinuz") == kernel.read_bytes()
    for i, (name, path) in enumerate(initrds, 1):
        assert _mtype(image, f"/initrd/{i:02d}-{name}.img") == path.read_bytes()

    entry = _mtype(image, "/loader/entries/imagebuilder.conf").decode()
    lines = [line for line in entry.splitlines() if line and not line.startswith("#")]
    assert lines == ["title imagebuilder", "linux /vmlinuz", "initrd /initrd/01-base.img",
                     "initrd /initrd/02-jvm.img", "initrd /initrd/03-app.img",
                     f"options {CMDLINE}"]
    loader = _mtype(image, "/loader/loader.conf").decode()
    assert "default imagebuilder.conf" in loader.splitlines()
    assert "timeout 0" in loader.splitlines() and "editor no" in loader.splitlines()

    cfg = _mtype(image, "/syslinux/syslinux.cfg").decode()
    words = [line.split(None, 1) for line in cfg.splitlines() if line and line[0] != "#"]
    directives = {w[0].upper(): w[1] if len(w) > 1 else "" for w in words}
    assert directives["DEFAULT"] == "linux" and directives["LABEL"] == "linux"
    assert directives["LINUX"] == "/vmlinuz"
    assert directives["INITRD"] == "/initrd/01-base.img,/initrd/02-jvm.img,/initrd/03-app.img"
    assert directives["APPEND"] == CMDLINE
    # Nobody at the console changes what boots (tests/e2e/test_guest.py holds Shift).
    assert (directives["PROMPT"], directives["NOESCAPE"], directives["ALLOWOPTIONS"]) == (
        "0", "1", "0")
    assert not {"UI", "MENU", "SERIAL", "F1", "SAY", "INCLUDE"} & set(directives)


@needs_tools
def test_fsck_clean_syslinux_boot_sector_serial_and_hidden_sectors(
        tmp_path: Path, inputs: tuple[Path, list[tuple[str, Path]]]) -> None:
    image = _build(tmp_path / "esp.img", inputs)
    result = subprocess.run(["fsck.fat", "-n", str(image)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "differences" not in result.stdout and "Dirty" not in result.stdout, result.stdout
    raw = image.read_bytes()
    boot = raw[:512]
    assert boot[3:11] == b"SYSLINUX"  # syslinux's boot sector is installed
    backup = struct.unpack_from("<H", boot, 50)[0]
    assert raw[backup * 512:backup * 512 + 512] == boot  # FAT32 backup boot sector in sync
    assert boot[82:90] == b"FAT32   "
    assert struct.unpack_from("<I", boot, 28)[0] == 2048  # hidden sectors = partition start
    assert struct.unpack_from("<I", boot, 67)[0] == gpt.derived_u32(SEED, "esp volume id")
    assert image.stat().st_size % (1 << 20) == 0


@needs_tools
def test_iso_flavour_is_fat16_without_syslinux(tmp_path: Path,
                                               inputs: tuple[Path, list[tuple[str, Path]]]
                                               ) -> None:
    image = _build(tmp_path / "esp.img", inputs, bios=False, fat_bits=16, hidden_sectors=0)
    boot = image.read_bytes()[:512]
    assert boot[54:62] == b"FAT16   "
    assert struct.unpack_from("<I", boot, 39)[0] == gpt.derived_u32(SEED, "esp volume id")
    files = _files(image)
    assert not any(f.startswith("/syslinux") for f in files), files
    assert "/loader/entries/imagebuilder.conf" in files
    assert image.stat().st_size < 8 << 20  # sized to the content, not to FAT32's minimum
    result = subprocess.run(["fsck.fat", "-n", str(image)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def _fat_dir_timestamps(image: Path) -> set[bytes]:
    """The date/time fields (creation, access, write) of every directory entry of the volume."""
    raw = image.read_bytes()
    bps, spc, reserved, nfats, root_entries, _, _, fat16 = struct.unpack_from(
        "<HBHBHHBH", raw, 11)
    fat_size = fat16 or struct.unpack_from("<I", raw, 36)[0]
    root_cluster = struct.unpack_from("<I", raw, 44)[0] if fat16 == 0 else 0
    fat = raw[reserved * bps:(reserved + fat_size) * bps]
    root_start = (reserved + nfats * fat_size) * bps
    data_start = root_start + root_entries * 32
    cluster_size = bps * spc

    def chain(cluster: int) -> bytes:
        out = b""
        while 2 <= cluster < (0x0FFFFFF8 if fat16 == 0 else 0xFFF8):
            out += raw[data_start + (cluster - 2) * cluster_size:][:cluster_size]
            cluster = (struct.unpack_from("<I", fat, cluster * 4)[0] & 0x0FFFFFFF if fat16 == 0
                       else struct.unpack_from("<H", fat, cluster * 2)[0])
        return out

    stamps: set[bytes] = set()
    todo = [chain(root_cluster) if fat16 == 0 else raw[root_start:data_start]]
    while todo:
        data = todo.pop()
        for i in range(0, len(data), 32):
            entry = data[i:i + 32]
            if entry[0] == 0:
                break
            if entry[0] == 0xE5 or entry[11] == 0x0F:  # deleted, long-name part
                continue
            stamps.add(entry[13:20] + entry[22:26])
            if entry[11] & 0x10 and entry[0:1] != b".":
                first = struct.unpack_from("<H", entry, 26)[0] | struct.unpack_from(
                    "<H", entry, 20)[0] << 16
                todo.append(chain(first))
    return stamps


@needs_tools
def test_every_timestamp_is_1980_01_01(tmp_path: Path,
                                       inputs: tuple[Path, list[tuple[str, Path]]]) -> None:
    image = _build(tmp_path / "esp.img", inputs)
    stamps = _fat_dir_timestamps(image)
    # creation (10 ms, time, date), access date, write (time, date) of every entry, the volume
    # label's included: 1980-01-01 00:00:00 is date 0x0021, time 0
    date, midnight = b"\x21\x00", b"\x00\x00"
    assert stamps == {b"\x00" + midnight + date + date + midnight + date}, stamps
    out = _mtools("mdir", "-i", str(image), "-/", "-a", "::/")
    assert set(re.findall(r"\d{4}-\d\d-\d\d", out)) == {"1980-01-01"}


@needs_tools
def test_rebuild_is_byte_identical_whatever_clock_and_time_zone(
        tmp_path: Path, inputs: tuple[Path, list[tuple[str, Path]]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    first = _build(tmp_path / "a.img", inputs).read_bytes()
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    time.tzset()
    try:
        time.sleep(2.1)  # FAT times have a 2 s resolution
        second = _build(tmp_path / "b.img", inputs).read_bytes()
    finally:
        monkeypatch.undo()
        time.tzset()
    assert first == second
    other = _build(tmp_path / "c.img", inputs, seed=b"another").read_bytes()
    assert other != first and len(other) == len(first)


@needs_tools
@pytest.mark.parametrize("flavour", [{"bios": True, "fat_bits": 32, "hidden_sectors": 2048},
                                     {"bios": False, "fat_bits": 16, "hidden_sectors": 0}])
def test_a_kept_formatted_volume_gives_the_bytes_of_a_new_one(
        tmp_path: Path, inputs: tuple[Path, list[tuple[str, Path]]],
        flavour: dict[str, object]) -> None:
    kept: dict[str, Path] = {}

    def skeletons(key: object, make: Callable[[Path], None]) -> Path:
        name = repr(sorted(dict(key).items()))  # type: ignore[call-overload]
        if name not in kept:
            kept[name] = tmp_path / f"volume{len(kept)}"
            make(kept[name])
        return kept[name]

    for seed in (b"one", b"two"):  # the second reuses the first's volume with another serial
        new = _build(tmp_path / "new.img", inputs, seed=seed, **flavour).read_bytes()
        made = _build(tmp_path / "kept.img", inputs, seed=seed, skeletons=skeletons, **flavour)
        assert made.read_bytes() == new
        assert data_extents(made) == data_extents(tmp_path / "new.img")  # as sparse
    assert len(kept) == 1


@needs_tools
def test_image_is_sparse_so_the_disk_skips_its_free_space(
        tmp_path: Path, inputs: tuple[Path, list[tuple[str, Path]]]) -> None:
    image = _build(tmp_path / "esp.img", inputs)
    data = sum(length for _, length in data_extents(image))
    assert image.stat().st_size >= 32 << 20  # FAT32 needs 65525 clusters
    assert data < 4 << 20, data_extents(image)


@needs_tools
@pytest.mark.parametrize("name", ["Base", "-x", "a/b", "", "x" * 25, "dot.ted"])
def test_bad_layer_names_are_user_errors(tmp_path: Path, name: str,
                                         inputs: tuple[Path, list[tuple[str, Path]]]) -> None:
    kernel, initrds = inputs
    with pytest.raises(UserError, match="layer name"):
        esp.build_esp(tmp_path / "esp.img", _boot(kernel, [(name, initrds[0][1])], SEED),
                      boot_files=_boot_files())
    assert not (tmp_path / "esp.img").exists()


@needs_tools
@pytest.mark.parametrize("cmdline", ["a\nb", "a\0b", "x" * 2048])
def test_bad_command_lines_are_user_errors(tmp_path: Path, cmdline: str,
                                           inputs: tuple[Path, list[tuple[str, Path]]]) -> None:
    kernel, initrds = inputs
    with pytest.raises(UserError, match="command line"):
        esp.build_esp(tmp_path / "esp.img", _boot(kernel, initrds, SEED, cmdline),
                      boot_files=_boot_files())


def test_missing_inputs(tmp_path: Path, inputs: tuple[Path, list[tuple[str, Path]]]) -> None:
    kernel, initrds = inputs
    files = esp.BootFiles(*(tmp_path / n for n in ("a", "b", "c", "d", "e")))
    with pytest.raises(HostError, match="apt-get install systemd-boot-efi"):
        esp.build_esp(tmp_path / "esp.img", _boot(kernel, initrds, SEED), boot_files=files)
    with pytest.raises(UserError, match="not a file"):
        esp.esp_files(_boot(tmp_path / "nokernel", initrds, SEED),
                      boot_files=files, bios=True)
    with pytest.raises(UserError, match="at least one"):
        esp.esp_files(_boot(kernel, [], SEED), boot_files=files,
                      bios=True)


def test_from_host_names_the_package_of_a_missing_file(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    monkeypatch.setitem(esp._HOST_FILES, "isohdpfx", (tmp_path / "isohdpfx.bin", "isolinux"))
    with pytest.raises(HostError, match=r"isohdpfx.bin not found.*apt-get install isolinux"):
        esp.BootFiles.from_host()
