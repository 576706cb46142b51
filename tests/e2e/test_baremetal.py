"""End to end: examples/hello flashed onto a file and a loop device, checked against the disk
digest, booted from the flashed file with its config partition, and booted over the network by
QEMU's iPXE from `imagebuilder serve`; its block map is accepted by Debian's `bmaptool copy`.

Two boots under TCG: the flashed disk (with --env test) and the network boot (with --env prod).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagebuilder.targets.qemu.run import TCG_CPUS

from .conftest import Built, Cli, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.network]

IPXE_ROM = Path("/usr/lib/ipxe/qemu/efi-virtio.rom")


def sha256_of(path: Path, length: int | None = None, offset: int = 0) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        left = length
        while left is None or left > 0:
            chunk = f.read(1 << 20 if left is None else min(1 << 20, left))
            if not chunk:
                break
            h.update(chunk)
            if left is not None:
                left -= len(chunk)
    return h.hexdigest()


@pytest.fixture(scope="module")
def raw(cli: Cli, hello: Built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bm") / "hello.raw"
    cli("export", hello.ref, "--format", "raw", "-o", str(path))
    return path


def _disk_info(cli: Cli, ref: str) -> dict[str, object]:
    info = cli.json("inspect", ref)
    assert isinstance(info, dict)
    disk = info["config"]["disk"]
    assert isinstance(disk, dict)
    return disk


def test_flash_onto_a_file_matches_the_disk_digest(cli: Cli, hello: Built,
                                                   tmp_path: Path) -> None:
    target = tmp_path / "server.img"
    out = json.loads(cli("flash", hello.ref, str(target), "--json").stdout)
    assert out["verified"] is True and out["kind"] == "file"
    disk = _disk_info(cli, hello.ref)
    assert f"sha256:{sha256_of(target)}" == disk["digest"]
    assert target.stat().st_size == disk["size"]


def test_flash_onto_a_loop_device(cli: Cli, hello: Built, tmp_path: Path) -> None:
    losetup = shutil.which("losetup")
    if losetup is None or os.geteuid() != 0:
        pytest.skip("needs root and losetup")
    disk = _disk_info(cli, hello.ref)
    size = int(str(disk["size"]))
    backing = tmp_path / "backing.img"
    with open(backing, "wb") as f:
        f.truncate(size + (8 << 20))
    made = subprocess.run([losetup, "-f", "--show", str(backing)], capture_output=True,
                          text=True)
    if made.returncode != 0:
        pytest.skip(f"losetup does not work here: {made.stderr.strip()}")
    device = Path(made.stdout.strip())
    try:
        out = json.loads(cli("flash", hello.ref, str(device), "--json").stdout)
        assert out["verified"] is True and out["kind"] == "block"
        assert f"sha256:{sha256_of(device, size)}" == disk["digest"]
    finally:
        subprocess.run([losetup, "-d", str(device)], check=False)


@pytest.mark.skipif(shutil.which("bmaptool") is None, reason="apt-get install bmap-tools")
def test_bmap_of_the_real_disk_round_trips_through_bmaptool(cli: Cli, hello: Built, raw: Path,
                                                            tmp_path: Path) -> None:
    from imagebuilder.formats.bmap import write_raw_with_bmap
    from imagebuilder.formats.export import BootSource, bootable
    from imagebuilder.store.home import Home

    home = Home(cli.home)
    disk = bootable(home.cache, BootSource.of_image(home.store, home.store.resolve(hello.ref)))
    write_raw_with_bmap(disk, tmp_path / "hello.raw")
    assert sha256_of(tmp_path / "hello.raw") == sha256_of(raw)
    subprocess.run(["bmaptool", "copy", str(tmp_path / "hello.raw"), str(tmp_path / "t.img")],
                   check=True, capture_output=True)
    assert sha256_of(tmp_path / "t.img") == sha256_of(raw)
    # and our flash takes the raw image with its block map
    out = json.loads(cli("flash", str(tmp_path / "hello.raw"), str(tmp_path / "u.img"),
                        "--json").stdout)
    assert out["verified"] is True and sha256_of(tmp_path / "u.img") == sha256_of(raw)


def _wait_http(proc: subprocess.Popen[bytes], port: int, seconds: float = 180) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else b""
            raise AssertionError(f"qemu exited {proc.returncode}: {out[-3000:]!r}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                return str(r.read().decode())
        except OSError:
            time.sleep(0.3)
    raise AssertionError("no HTTP answer")


def _qemu(port: int, *extra: str, netdev: str = "") -> subprocess.Popen[bytes]:
    argv = ["qemu-system-x86_64", "-nodefaults", "-display", "none", "-no-reboot",
            "-accel", "tcg", "-m", "1024", "-smp", str(TCG_CPUS), "-serial", "stdio",
            "-netdev", f"user,id=n,hostfwd=tcp:127.0.0.1:{port}-:8080{netdev}",
            "-device", "virtio-net-pci,netdev=n", "-device", "virtio-rng-pci", *extra]
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()
        for pipe in (proc.stdout, proc.stderr):  # else a ResourceWarning: -W error
            if pipe is not None:
                pipe.close()


def test_flashed_disk_with_env_boots_and_keeps_the_image_partition(
        cli: Cli, hello: Built, raw: Path, tmp_path: Path,
        processes: list[subprocess.Popen[bytes]]) -> None:
    target = tmp_path / "server.img"
    cli("flash", hello.ref, str(target), "--env", "test", cwd=hello.app)
    table = json.loads(subprocess.run(["sfdisk", "--json", str(target)], capture_output=True,
                                      text=True, check=True).stdout)["partitiontable"]
    # the image's partitions (the ESP, then the layers' EROFS images) unchanged, then the config
    *image_parts, config = table["partitions"]
    assert config["name"] == "imagebuilder-config" and config["start"] > image_parts[-1]["start"]
    assert [p["name"][:3] for p in image_parts[1:]] == ["ib-"] * 3
    for part in image_parts:
        ours = sha256_of(target, part["size"] * 512, part["start"] * 512)
        assert ours == sha256_of(raw, part["size"] * 512, part["start"] * 512)
    port = free_port()
    proc = _qemu(port, "-drive", f"file={target},format=raw,if=virtio,snapshot=on")
    processes.append(proc)
    assert _wait_http(proc, port) == "hello from imagebuilder: GREETING=hi\n"


@pytest.mark.skipif(not IPXE_ROM.exists(), reason="apt-get install ipxe-qemu")
def test_network_boot_with_ipxe_and_env(cli: Cli, hello: Built,
                                        processes: list[subprocess.Popen[bytes]]) -> None:
    http_port = free_port()
    server = subprocess.Popen(cli.argv(["serve", hello.ref, "--env", "prod",
                                        "--listen", f"127.0.0.1:{http_port}"]), cwd=hello.app,
                              env=cli.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    processes.append(server)
    deadline = time.monotonic() + 30
    script = ""
    while time.monotonic() < deadline and not script:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/boot.ipxe") as r:
                script = r.read().decode()
        except OSError:
            time.sleep(0.2)
    assert script.startswith("#!ipxe") and "initrd/env.img" in script
    port = free_port()
    # QEMU's virtio-net ROM is iPXE (ipxe-qemu); SeaBIOS runs it only with a display adapter.
    proc = _qemu(port, "-device", "VGA", "-boot", "n",
                 netdev=f",bootfile=http://10.0.2.2:{http_port}/boot.ipxe")
    processes.append(proc)
    assert _wait_http(proc, port) == "hello from imagebuilder: GREETING=hello, production\n"
