"""End to end: examples/hello as bootable disks and ISO, validated by qemu-img and booted.

The raw disk boots by BIOS through `run` (tests/e2e/test_boot.py, the default) and by UEFI
(test_boot.py's SIGTERM test); here the qcow2 boots by BIOS and by UEFI and the ISO as a CD by
UEFI, and every format's guest content is compared with the raw by `qemu-img compare`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from imagebuilder.disk import gpt
from imagebuilder.targets.qemu.run import OVMF_CODE, OVMF_VARS, TCG_CPUS

from .conftest import Built, Cli, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.network]


@pytest.fixture(scope="module")
def exported(cli: Cli, hello: Built, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("disks")
    files = {}
    for fmt in ("raw", "qcow2", "vmdk", "vhd", "iso"):
        files[fmt] = out / f"hello.{fmt}"
        cli("export", hello.ref, "--format", fmt, "-o", str(files[fmt]))
    files["kernel-initrd"] = out / "kernel-initrd"
    cli("export", hello.ref, "--format", "kernel-initrd", "-o", str(files["kernel-initrd"]))
    return files


def _qemu_img(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=True)


def test_every_format_is_valid_and_has_the_raw_disks_content(exported: dict[str, Path]) -> None:
    raw = exported["raw"]
    info = json.loads(_qemu_img("info", "--output=json", "-f", "raw", str(raw)).stdout)
    # Sparse: the FAT's free space and the gaps are holes, not written zeros.
    assert info["actual-size"] < info["virtual-size"]
    for fmt, qemu_fmt in (("qcow2", "qcow2"), ("vmdk", "vmdk"), ("vhd", "vpc")):
        path = str(exported[fmt])
        if fmt in ("qcow2", "vmdk"):
            _qemu_img("check", "-f", qemu_fmt, path)
        info = json.loads(_qemu_img("info", "--output=json", "-f", qemu_fmt, path).stdout)
        assert info["format"] == qemu_fmt
        # vhd rounds the virtual size up to a whole MiB (Azure); the rest compares as zeros.
        _qemu_img("compare", "-f", "raw", "-F", qemu_fmt, str(raw), path)
    vmdk = json.loads(_qemu_img("info", "--output=json", str(exported["vmdk"])).stdout)
    assert vmdk["format-specific"]["data"]["create-type"] == "streamOptimized"


def test_raw_digest_is_the_disk_digest_inspect_shows(cli: Cli, hello: Built,
                                                    exported: dict[str, Path]) -> None:
    info = cli.json("inspect", hello.ref)
    assert isinstance(info, dict)
    digest = subprocess.run(["sha256sum", str(exported["raw"])], capture_output=True, text=True,
                            check=True).stdout.split()[0]
    assert info["config"]["disk"]["digest"] == f"sha256:{digest}"
    hashed = cli.json("hash", "--algo", "sha256", str(exported["raw"]))
    assert hashed[0]["digest"] == digest


def test_kernel_initrd_is_kernel_layers_and_cmdline(cli: Cli, hello: Built,
                                                    exported: dict[str, Path]) -> None:
    out = exported["kernel-initrd"]
    assert sorted(p.name for p in out.iterdir()) == ["cmdline", "initrd.img", "vmlinuz"]
    info = cli.json("inspect", hello.ref)
    layers = info["manifest"]["layers"]
    assert (out / "vmlinuz").stat().st_size == layers[0]["size"]
    assert (out / "initrd.img").stat().st_size == sum(layer["size"] for layer in layers[1:])
    assert (out / "cmdline").read_text().strip() == info["config"]["cmdline"]


def _boot_and_get(argv: list[str], port: int, seconds: float = 180) -> str:
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"qemu exited {proc.returncode}: {proc.stdout.read()!r}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    return r.read().decode()
            except OSError:
                time.sleep(0.3)
        raise AssertionError("no HTTP answer")
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()


def _qemu(port: int) -> list[str]:
    return ["qemu-system-x86_64", "-nodefaults", "-display", "none", "-no-reboot",
            "-accel", "tcg", "-m", "1024", "-smp", str(TCG_CPUS), "-serial", "stdio",
            "-netdev", f"user,id=n,hostfwd=tcp:127.0.0.1:{port}-:8080",
            "-device", "virtio-net-pci,netdev=n", "-device", "virtio-rng-pci"]


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_qcow2_boots(exported: dict[str, Path], tmp_path: Path, firmware: str) -> None:
    port = free_port()
    argv = [*_qemu(port), "-drive", f"file={exported['qcow2']},format=qcow2,if=virtio,"
            "snapshot=on"]
    if firmware == "uefi":
        shutil.copyfile(OVMF_VARS, tmp_path / "vars.fd")
        argv += ["-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                 "-drive", f"if=pflash,format=raw,file={tmp_path / 'vars.fd'}"]
    assert _boot_and_get(argv, port) == "hello from imagebuilder: GREETING=unset\n"


def test_iso_boots_as_a_cd_by_uefi(exported: dict[str, Path], tmp_path: Path) -> None:
    port = free_port()
    shutil.copyfile(OVMF_VARS, tmp_path / "vars.fd")
    argv = [*_qemu(port), "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,file={tmp_path / 'vars.fd'}",
            "-cdrom", str(exported["iso"])]
    assert _boot_and_get(argv, port) == "hello from imagebuilder: GREETING=unset\n"


def test_disk_size_option_and_bad_input(cli: Cli, hello: Built, tmp_path: Path) -> None:
    big = tmp_path / "big.raw"
    cli("export", hello.ref, "--format", "raw", "--size", "2G", "-o", str(big))
    assert big.stat().st_size == 2 << 30
    table = json.loads(subprocess.run(["sfdisk", "--json", str(big)], capture_output=True,
                                      text=True, check=True).stdout)["partitiontable"]
    assert table["label"] == "gpt" and table["lastlba"] == (2 << 30) // 512 - 34
    for args, message in (
        (["--format", "raw", "--size", "10M"], "is too small"),
        (["--format", "raw", "--size", "3x"], "expected a size"),
        (["--format", "iso", "--size", "2G"], "--size applies to the disk formats"),
        (["--format", "tar"], "unknown format 'tar'"),
    ):
        result = cli("export", hello.ref, *args, "-o", str(tmp_path / "out.img"), check=False)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("ERROR: ")
    missing = cli("export", hello.ref, "--format", "raw", "-o", str(tmp_path / "no" / "x.raw"),
                  check=False)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert not (tmp_path / "out.img").exists()


def _cached(stages: Path, offset: int, magic: bytes) -> list[Path]:
    found = []
    for path in stages.rglob("*"):
        if path.is_file() and path.suffix != ".xxh3" and path.stat().st_size > offset + 8:
            with open(path, "rb") as f:
                f.seek(offset)
                if f.read(len(magic)) == magic:
                    found.append(path)
    return found


def _in_disk(raw: bytes, candidates: list[Path]) -> list[Path]:
    """The ``candidates`` that are the contents of one of the disk ``raw``'s partitions: the
    cached pieces hello's disk is made of (other tests' images have theirs in the same cache,
    which must stay sound for their own checks)."""
    table = gpt.parse(raw[:gpt.FIRST_USABLE_LBA * gpt.SECTOR], len(raw))
    found = []
    for path in candidates:
        data = path.read_bytes()
        if any(len(data) <= p.size and raw[p.offset:p.offset + len(data)] == data
               for p in table.partitions):
            found.append(path)
    return found


def test_a_corrupted_cached_esp_or_layer_image_is_rebuilt(
        cli: Cli, hello: Built, exported: dict[str, Path], tmp_path: Path) -> None:
    stages = cli.home / "cache" / "stages"
    raw = exported["raw"].read_bytes()
    esps = _in_disk(raw, _cached(stages, 82, b"FAT32   "))
    erofs = _in_disk(raw, _cached(stages, 1024, (0xE0F5E1E2).to_bytes(4, "little")))
    assert len(esps) == 1, "no cached ESP of hello's disk found"
    assert len(erofs) >= 3, "no cached EROFS image of each layer"
    for path in [*esps, erofs[0]]:
        with open(path, "r+b") as f:
            f.seek(1 << 20 if path in esps else 2048)
            f.write(b"corrupted")
    again = tmp_path / "again.raw"
    cli("export", hello.ref, "--format", "raw", "-o", str(again))
    assert again.read_bytes() == exported["raw"].read_bytes()
