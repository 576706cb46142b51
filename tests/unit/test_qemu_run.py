"""targets.qemu without booting: -p parsing, busy ports, the QEMU command line, the initrd and
the config drive, over a real image store."""

from __future__ import annotations

import io
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pycdlib
import pytest

from imagebuilder.disk.configdrive import VOLUME_ID
from imagebuilder.errors import UserError
from imagebuilder.store.layout import Store
from imagebuilder.targets.qemu.run import (
    PortForward,
    RunSpec,
    check_port_free,
    initrd_for,
    prepare,
    qemu_argv,
)
from support.servers import free_port
from tests.unit.layer_fixture import tiny_layer
from tests.unit.qemu_fixture import KERNEL, LAYERS, fake_image, needs_qemu

# Real (tiny) layers, for `prepare`, which reads what the root takes in RAM.
CPIO_LAYERS = [(name, tiny_layer(data)) for name, data in LAYERS]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "home" / "store")


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port someone else is listening on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]



# -- -p [IP:]HOST:GUEST -------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("8080:80", PortForward("127.0.0.1", 8080, 80)),
    ("1:65535", PortForward("127.0.0.1", 1, 65535)),
    ("0.0.0.0:8443:443", PortForward("0.0.0.0", 8443, 443)),
    ("192.168.1.10:2222:22", PortForward("192.168.1.10", 2222, 22)),
])
def test_port_forward_parse_valid(text: str, expected: PortForward) -> None:
    assert PortForward.parse(text) == expected


@pytest.mark.parametrize("text", [
    "", "8080", "8080:", ":8080", "a:b", "8080:http", "0:80", "80:0", "65536:80", "80:65536",
    "123456:80", "localhost:80:80", "::1:80:80", "[::1]:80:80", " 80:80", "80:80 ",
    "80:80/udp", "-1:80", "1.2.3.4:80", "1.2.3.4:",
])
def test_port_forward_parse_invalid(text: str) -> None:
    with pytest.raises(UserError) as info:
        PortForward.parse(text)
    assert str(info.value) == f"-p {text}: expected [IP:]HOSTPORT:GUESTPORT, e.g. 8080:8080"
    assert info.value.exit_code == 2


@pytest.mark.parametrize("text", ["1..2:80:80", "999.1.1.1:80:80", "80:80:80"])
def test_port_forward_parse_rejects_non_addresses(text: str) -> None:
    with pytest.raises(UserError, match="is not an IPv4 address"):
        PortForward.parse(text)


def test_port_forward_qemu_option() -> None:
    assert PortForward.parse("0.0.0.0:8443:443").qemu() == "hostfwd=tcp:0.0.0.0:8443-:443"
    assert PortForward.parse("8080:80").qemu() == "hostfwd=tcp:127.0.0.1:8080-:80"


def test_check_port_free_on_a_busy_port(held_port: int) -> None:
    with pytest.raises(UserError) as info:
        check_port_free(PortForward("127.0.0.1", held_port, 8080))
    assert str(info.value) == (
        f"host port 127.0.0.1:{held_port} is not free (Address already in use): "
        "pick another with -p HOSTPORT:8080"
    )
    assert info.value.exit_code == 2


def test_check_port_free_on_afree_port() -> None:
    port = free_port()
    check_port_free(PortForward("127.0.0.1", port, 80))
    check_port_free(PortForward("127.0.0.1", port, 80))  # and it did not keep it


# -- the initrd ---------------------------------------------------------------------------------


def test_initrd_concatenates_the_layers_in_order(store: Store, tmp_path: Path) -> None:
    image = fake_image(store)
    initrd = initrd_for(store, image, tmp_path / "cache")
    assert initrd.read_bytes() == b"".join(data for _, data in LAYERS)
    assert initrd.name == image.digest.removeprefix("sha256:") + ".initrd"
    assert list((tmp_path / "cache").iterdir()) == [initrd]  # no temporary file left


def test_initrd_is_reused(store: Store, tmp_path: Path) -> None:
    image = fake_image(store)
    first = initrd_for(store, image, tmp_path / "cache")
    inode = first.stat().st_ino
    assert initrd_for(store, image, tmp_path / "cache") == first
    assert first.stat().st_ino == inode


def test_initrd_perfake_image(store: Store, tmp_path: Path) -> None:
    one = initrd_for(store, fake_image(store), tmp_path / "cache")
    v2 = fake_image(store, "hello:2.0.0", layers=[*LAYERS[:2], ("app", b"app layer v2")])
    two = initrd_for(store, v2, tmp_path / "cache")
    assert one != two
    assert two.read_bytes().endswith(b"app layer v2")
    assert one.read_bytes().endswith(b"app layer")


# -- the command line ---------------------------------------------------------------------------


def _option(argv: list[str], name: str) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv) if word == name]


@needs_qemu
def test_qemu_argv(store: Store, tmp_path: Path) -> None:
    image = fake_image(store)
    forwards = [PortForward.parse("8080:8080"), PortForward.parse("0.0.0.0:2222:22")]
    spec = RunSpec(image, None, {}, forwards, memory=768, cpus=2)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    initrd = tmp_path / "x.initrd"
    argv = qemu_argv(spec, store, initrd, run_dir, "tcg", "stdio,signal=off")

    assert argv[0] == shutil.which("qemu-system-x86_64")
    assert _option(argv, "-kernel") == [str(store.blob_path(image.layers[0].digest))]
    assert store.blob_path(image.layers[0].digest).read_bytes() == KERNEL
    assert _option(argv, "-initrd") == [str(initrd)]
    # The JVM's own tiers, as in production, even under TCG; --jit c1 asks the init for C1 only.
    assert _option(argv, "-append") == ["console=ttyS0 quiet panic=-1"]
    spec.jit = "c1"
    assert _option(qemu_argv(spec, store, initrd, run_dir, "tcg", "stdio"), "-append") == [
        "console=ttyS0 quiet panic=-1 imagebuilder.jit=c1"]
    assert _option(argv, "-m") == ["768"]
    assert _option(argv, "-smp") == ["1"]  # TCG: one vCPU, see TCG_CPUS
    assert _option(argv, "-machine") == ["pc,accel=tcg"]
    assert _option(argv, "-cpu") == ["max"]
    assert _option(argv, "-netdev") == [
        "user,id=net0,hostfwd=tcp:127.0.0.1:8080-:8080,hostfwd=tcp:0.0.0.0:2222-:22"]
    assert _option(argv, "-chardev") == ["stdio,signal=off,id=console"]
    assert _option(argv, "-qmp") == [f"unix:{run_dir / 'qmp.sock'},server=on,wait=off"]
    assert _option(argv, "-pidfile") == [str(run_dir / "qemu.pid")]
    assert "-drive" not in argv
    assert "-nodefaults" in argv and "-no-reboot" in argv


@needs_qemu
def test_qemu_argv_kvm_and_no_ports(store: Store, tmp_path: Path) -> None:
    spec = RunSpec(fake_image(store, port=None), None, {}, [])
    argv = qemu_argv(spec, store, tmp_path / "i", tmp_path, "kvm", "file,path=/x/console.log")
    assert _option(argv, "-machine") == ["pc,accel=kvm"]
    assert _option(argv, "-cpu") == ["host"]
    assert _option(argv, "-append") == ["console=ttyS0 quiet panic=-1"]  # KVM: all JIT tiers
    assert _option(argv, "-netdev") == ["user,id=net0"]
    assert _option(argv, "-m") == ["1024"]
    assert _option(argv, "-chardev") == ["file,path=/x/console.log,id=console"]


@needs_qemu
def test_prepare_without_env_has_no_config_drive(store: Store, tmp_path: Path) -> None:
    runs = tmp_path / "home" / "run"
    spec = RunSpec(fake_image(store, layers=CPIO_LAYERS), None, {},
                   [PortForward("127.0.0.1", free_port(), 8080)])
    vm_id, run_dir, initrd = prepare(spec, store, runs)
    assert vm_id.startswith("hello-") and run_dir == runs / vm_id
    assert initrd.parent == tmp_path / "home" / "cache" / "initrd"
    assert initrd.read_bytes() == b"".join(data for _, data in CPIO_LAYERS)
    assert not (run_dir / "config.iso").exists()
    assert (run_dir / "image").read_text() == f"hello:1.0.0 {spec.image.digest}\n"
    argv = qemu_argv(spec, store, initrd, run_dir, "tcg", "stdio")
    assert "-drive" not in argv


@needs_qemu
@pytest.mark.parametrize("boot", ["bios", "uefi"])
def test_c1_only_needs_a_kernel_boot(store: Store, tmp_path: Path, boot: str) -> None:
    runs = tmp_path / "home" / "run"
    spec = RunSpec(fake_image(store, layers=CPIO_LAYERS), None, {}, [], "tcg", boot=boot, jit="c1")
    with pytest.raises(UserError, match=f"^--jit c1 needs a microvm or direct boot \\({boot} boots"
                                        " the disk, whose boot loader takes no added option\\): "
                                        "add --boot microvm or direct$"):
        prepare(spec, store, runs)
    assert not runs.exists()


@needs_qemu
def test_prepare_with_env_writes_a_config_drive(store: Store, tmp_path: Path) -> None:
    runs = tmp_path / "home" / "run"
    env = {"DB_URL": "jdbc:postgresql://test-db/app", "GREETING": "hi there $USER"}
    spec = RunSpec(fake_image(store, layers=CPIO_LAYERS), "test", env, [])
    _, run_dir, initrd = prepare(spec, store, runs)
    drive = run_dir / "config.iso"
    assert drive.is_file()
    assert drive.stat().st_mode & 0o777 == 0o600

    iso = pycdlib.PyCdlib()
    iso.open(str(drive))
    try:
        assert iso.pvd.volume_identifier.decode().strip() == VOLUME_ID
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, rr_path="/imagebuilder/env")
    finally:
        iso.close()
    assert out.getvalue() == (
        b"DB_URL=jdbc:postgresql://test-db/app\nGREETING=hi there $USER\nIMAGEBUILDER_ENV=test\n")

    argv = qemu_argv(spec, store, initrd, run_dir, "tcg", "stdio")
    assert _option(argv, "-drive") == [f"file={drive},if=none,id=config,format=raw,readonly=on"]
    assert "virtio-blk-pci,drive=config" in _option(argv, "-device")


@needs_qemu
def test_prepare_refuses_a_busy_port_before_writing_anything(store: Store, tmp_path: Path,
                                                            held_port: int) -> None:
    runs = tmp_path / "home" / "run"
    spec = RunSpec(fake_image(store), "test", {"A": "b"}, [PortForward("127.0.0.1", held_port, 80)])
    with pytest.raises(UserError, match=f"host port 127.0.0.1:{held_port} is not free"):
        prepare(spec, store, runs)
    assert not runs.exists()


def test_only_the_newest_kept_console_logs_stay(tmp_path: Path) -> None:
    from imagebuilder.targets.qemu.run import KEPT_CONSOLES, _keep_console
    runs = tmp_path / "run"
    runs.mkdir()
    for i in range(KEPT_CONSOLES + 2):
        log = runs / f"old{i:02d}.console.log"
        log.write_text("x")
        os.utime(log, ns=(i * 10**9, i * 10**9))
    (runs / "vm-1").mkdir()
    (runs / "vm-1" / "console.log").write_text("FATAL")
    kept = _keep_console(runs / "vm-1" / "console.log", runs / "vm-1.console.log")
    assert kept.read_text() == "FATAL"
    names = sorted(p.name for p in runs.glob("*.console.log"))
    assert len(names) == KEPT_CONSOLES and "vm-1.console.log" in names
    assert "old00.console.log" not in names and "old02.console.log" not in names
    assert "old11.console.log" in names
