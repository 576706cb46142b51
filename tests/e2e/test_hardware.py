"""End to end: the image gets a network on hardware that is not virtio.

Exported disks boot under plain QEMU (TCG) with no virtio device at all, the way each platform
presents them, and the app answers HTTP on every network card:

* VirtualBox: i440fx, the vmdk on AHCI, an e1000 card, a VGA screen that shows the init's and
  the app's lines;
* VMware: the vmdk on PVSCSI, a vmxnet3 and an e1000e card (both answer);
* Hyper-V generation 1: the vhd on IDE, the legacy (tulip) card;
* a physical server: q35, the `metal` image flashed with an environment onto a disk behind a
  MegaRAID SAS controller, an NVMe disk beside it, an e1000e card set up by the environment's
  static address.

Devices QEMU cannot emulate (ENA, gVNIC, netvsc, storvsc, MANA, mlx5, bnxt_en, ice, igb, tg3,
r8169) are checked by resolving their real PCI/VMBus modaliases against the modules.alias and
modules.dep the images carry.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zstandard

from imagebuilder.store.home import Home
from imagebuilder.targets.qemu.run import TCG_CPUS

from .conftest import Built, Cli, compile_example, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.network]

BOOT_SECONDS = 300
GREETING = "from the flashed disk"


@pytest.fixture(scope="module")
def metal(cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> Built:
    """examples/hello with both driver sets and an environment with a static address (the one
    QEMU's user network expects, so the static path is what makes HTTP work)."""
    app = compile_example(tmp_path_factory.mktemp("metal"))
    toml = app / "imagebuilder.toml"
    toml.write_text(toml.read_text().replace("[env.test]", f"""\
[system]
hardware = ["virtual", "metal"]

[env.lab]
vars = {{ GREETING = "{GREETING}" }}
network = {{ address = "10.0.2.15/24", gateway = "10.0.2.2", dns = ["10.0.2.3"] }}

[env.test]"""))
    out = cli.json("build", str(app), "--version", "1.0.0-metal")
    assert isinstance(out, dict)
    return Built(app, out["ref"], out["digest"], out["stages"])


@pytest.fixture(scope="module")
def disks(cli: Cli, hello: Built, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("hw-disks")
    files = {}
    for fmt in ("vmdk", "vhd", "raw"):
        files[fmt] = out / f"hello.{fmt}"
        cli("export", hello.ref, "--format", fmt, "-o", str(files[fmt]))
    return files


# -- booting -----------------------------------------------------------------------------------


def _qemu(machine: str, console: Path, qmp: Path, *devices: str) -> list[str]:
    return ["qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none",
            "-no-reboot", "-machine", f"{machine},accel=tcg", "-cpu", "max", "-m", "1024",
            "-smp", str(TCG_CPUS), "-serial", f"file:{console}",
            "-qmp", f"unix:{qmp},server=on,wait=off", *devices]


def _nic(model: str, port: int, net: str, ident: str) -> list[str]:
    return ["-netdev", f"user,id={ident},net={net},hostfwd=tcp:127.0.0.1:{port}-:8080",
            "-device", f"{model},netdev={ident}"]


def _get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
        return str(r.read().decode())


class Vm:
    """A QEMU guest started by a test, killed at the end whatever happens."""

    def __init__(self, argv: list[str], console: Path, qmp: Path) -> None:
        self.console = console
        self.qmp_path = qmp
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)

    def wait_http(self, port: int) -> str:
        deadline = time.monotonic() + BOOT_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"qemu exited {self.proc.returncode}: "
                                     f"{self.proc.stdout.read() if self.proc.stdout else b''!r}"
                                     f"\nconsole: {self.log()}")
            try:
                return _get(port)
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"no HTTP answer on port {port}; console:\n{self.log()}")

    def log(self) -> str:
        return self.console.read_text(errors="replace") if self.console.exists() else ""

    def qmp(self, command: str, **arguments: object) -> object:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(30)
            sock.connect(str(self.qmp_path))
            with sock.makefile("rb") as reader:
                reader.readline()
                for cmd, args in (("qmp_capabilities", {}), (command, arguments)):
                    sock.sendall(json.dumps({"execute": cmd, "arguments": args}).encode()
                                 + b"\n")
                    while True:
                        reply = json.loads(reader.readline() or b"{}")
                        if "return" in reply or "error" in reply or not reply:
                            break
            assert "error" not in reply, reply
            return reply.get("return")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


Boot = Callable[..., Vm]


@pytest.fixture
def boot(tmp_path: Path) -> Iterator[Boot]:
    """Starts QEMU guests (machine type, then devices); kills them after the test."""
    started: list[Vm] = []

    def start(machine: str, *devices: str) -> Vm:
        vm = Vm(_qemu(machine, tmp_path / f"console{len(started)}.log",
                      tmp_path / f"qmp{len(started)}.sock", *devices),
                tmp_path / f"console{len(started)}.log", tmp_path / f"qmp{len(started)}.sock")
        started.append(vm)
        return vm

    yield start
    for vm in started:
        vm.kill()


def _network_lines(log: str) -> dict[str, str]:
    """``network eth0: driver e1000, ...`` lines of the init, by interface."""
    return dict(re.findall(r"imagebuilder: \[[0-9.]+\] network (\w+): (.*)", log))


def _screen_text(vm: Vm, dest: Path) -> str:
    """The VGA text memory (80-column rows from 0xB8000: character, attribute, ...) as lines:
    all 32 KiB of it, since the kernel's console scrolls by moving the visible 80x25 window
    through that memory, not the text."""
    size = 0x8000
    vm.qmp("pmemsave", val=0xB8000, size=size, filename=str(dest))
    deadline = time.monotonic() + 10
    while (not dest.exists() or dest.stat().st_size < size) and time.monotonic() < deadline:
        time.sleep(0.1)
    cells = dest.read_bytes()[0::2]
    return "\n".join(cells[i:i + 80].decode("cp437").rstrip() for i in range(0, len(cells), 80))


# -- the platforms -----------------------------------------------------------------------------


def test_virtualbox_ahci_e1000_and_the_screen(disks: dict[str, Path], boot: Boot,
                                             tmp_path: Path) -> None:
    port = free_port()
    vm = boot("pc",
              "-device", "ahci,id=ahci",
              "-drive", f"file={disks['vmdk']},format=vmdk,if=none,id=d,snapshot=on",
              "-device", "ide-hd,drive=d,bus=ahci.0,bootindex=0",
              *_nic("e1000", port, "10.0.2.0/24", "n0"),
              "-device", "VGA")
    assert vm.wait_http(port) == "hello from imagebuilder: GREETING=unset\n"
    log = vm.log()
    assert "driver e1000, mac 52:54:00:12:34:56, link up, address 10.0.2.15/24" in \
        _network_lines(log)["eth0"]
    assert re.search(r"drivers: .*\bahci\b", log)
    # The screen shows what the serial console shows: the init's lines and the app's output.
    screen = _screen_text(vm, tmp_path / "vga.bin")
    assert "imagebuilder: [" in screen and "starting hello 1.0.0" in screen, screen
    assert "hello: listening on port 8080" in screen, screen


def test_vmware_pvscsi_vmxnet3_and_e1000e(disks: dict[str, Path], boot: Boot) -> None:
    ports = free_port(), free_port()
    vm = boot("pc",
              "-device", "pvscsi,id=pv",
              "-drive", f"file={disks['vmdk']},format=vmdk,if=none,id=d,snapshot=on",
              "-device", "scsi-hd,drive=d,bus=pv.0,bootindex=0",
              *_nic("vmxnet3", ports[0], "10.0.2.0/24", "n0"),
              *_nic("e1000e", ports[1], "10.0.3.0/24", "n1"))
    # Both cards got an address by DHCP at the same time, and both carry the app.
    for port in ports:
        assert vm.wait_http(port) == "hello from imagebuilder: GREETING=unset\n"
    nics = _network_lines(vm.log())
    drivers = {line.split(",")[0] for line in nics.values()}
    assert drivers == {"driver vmxnet3", "driver e1000e"}, nics
    addresses = sorted(re.findall(r"address (\S+)", " ".join(nics.values())))
    assert addresses == ["10.0.2.15/24", "10.0.3.15/24"], nics
    assert re.search(r"drivers: .*\bvmw_pvscsi\b", vm.log())


def test_hyperv_gen1_ide_tulip(disks: dict[str, Path], boot: Boot) -> None:
    port = free_port()
    vm = boot("pc",
              "-drive", f"file={disks['vhd']},format=vpc,if=ide,snapshot=on",
              *_nic("tulip", port, "10.0.2.0/24", "n0"))
    assert vm.wait_http(port) == "hello from imagebuilder: GREETING=unset\n"
    assert _network_lines(vm.log())["eth0"].startswith("driver tulip,")


def test_server_megaraid_nvme_e1000e_static_address(
        cli: Cli, metal: Built, disks: dict[str, Path], boot: Boot, tmp_path: Path) -> None:
    target = tmp_path / "server-disk.raw"
    flashed = cli("flash", metal.ref, str(target), "--env", "lab", cwd=metal.app)
    assert "WARNING" not in flashed.stderr  # built with metal: no warning
    port = free_port()
    vm = boot("q35",
              "-device", "megasas-gen2,id=raid",
              "-drive", f"file={target},format=raw,if=none,id=d",
              "-device", "scsi-hd,drive=d,bus=raid.0,bootindex=0",
              "-drive", f"file={disks['raw']},format=raw,if=none,id=nv,snapshot=on",
              "-device", "nvme,drive=nv,serial=imagebuilder1",
              *_nic("e1000e", port, "10.0.2.0/24", "n0"))
    assert vm.wait_http(port) == f"hello from imagebuilder: GREETING={GREETING}\n"
    log = vm.log()
    assert re.search(r"drivers: .*\bmegaraid_sas\b", log) and re.search(r"drivers: .*\bnvme\b",
                                                                         log)
    assert re.search(r"environment lab from config drive /dev/sd[a-z]\d", log), log
    eth0 = _network_lines(log)["eth0"]
    assert eth0.startswith("driver e1000e,") and eth0.endswith("address 10.0.2.15/24 (static)")


# -- no boot -----------------------------------------------------------------------------------


def test_flash_of_an_image_without_metal_warns(cli: Cli, hello: Built, tmp_path: Path) -> None:
    result = cli("flash", hello.ref, str(tmp_path / "disk.raw"))
    assert ("WARNING: hello was built without the 'metal' driver set: a physical server may"
            " have no driver for its network card; add [system] hardware = [\"virtual\","
            " \"metal\"] to imagebuilder.toml and rebuild") in result.stderr


# Real modaliases of devices QEMU cannot emulate (vendor:device of shipping hardware; VMBus
# devices by their class GUID, bytes as the kernel prints them).
CLOUD = {
    "ena": "pci:v00001D0Fd0000EC20sv00001D0Fsd00000000bc02sc00i00",  # AWS ENA
    "gve": "pci:v00001AE0d00000042sv00001AE0sd00000058bc02sc00i00",  # GCE gVNIC
    "hv_netvsc": "vmbus:635161f83edfc546913ff2d2f965ed0e",  # Hyper-V network
    "hv_storvsc": "vmbus:d96361baa104294db60572e2ffb1dc7f",  # Hyper-V SCSI
    "mana": "pci:v00001414d000000BAsv00001414sd00000000bc02sc00i00",  # Azure MANA
}
SERVERS = {
    "bnxt_en": "pci:v000014E4d000016D7sv000014E4sd00001402bc02sc00i00",  # BCM57414
    "ice": "pci:v00008086d00001592sv00008086sd00000002bc02sc00i00",  # E810-C
    "igb": "pci:v00008086d00001521sv00008086sd00000001bc02sc00i00",  # I350
    "tg3": "pci:v000014E4d0000165Fsv00001028sd000004F7bc02sc00i00",  # BCM5720
    "r8169": "pci:v000010ECd00008168sv00001043sd00008677bc02sc00i00",  # RTL8168
    "mlx5_core": "pci:v000015B3d00001017sv000015B3sd00000020bc02sc00i00",  # ConnectX-5
    "mlx4_core": "pci:v000015B3d00001004sv000015B3sd00000000bc02sc00i00",  # ConnectX-3 VF
}


def _base_files(cli: Cli, ref: str, suffixes: tuple[str, ...]) -> dict[str, bytes]:
    """Files of the image's base layer (a zstd newc cpio) whose names end with ``suffixes``."""
    image = Home(cli.home).store.resolve(ref)
    blob = Home(cli.home).store.blob_path(image.layers[1].digest)
    data = zstandard.ZstdDecompressor().decompressobj().decompress(blob.read_bytes())
    files: dict[str, bytes] = {}
    offset = 0
    while data[offset:offset + 6] == b"070701":
        size = int(data[offset + 54:offset + 62], 16)
        namesize = int(data[offset + 94:offset + 102], 16)
        name = data[offset + 110:offset + 110 + namesize - 1].decode()
        start = (offset + 110 + namesize + 3) & ~3
        if name == "TRAILER!!!":
            break
        if name.endswith(suffixes):
            files[name] = data[start:start + size]
        offset = (start + size + 3) & ~3
    return files


def _resolver(cli: Cli, ref: str) -> Callable[[str], set[str]]:
    """Which shipped modules of image ``ref`` claim a device's modalias (as modprobe would)."""
    files = _base_files(cli, ref, ("modules.alias", "modules.dep"))
    aliases = [line.split()[1:] for line in next(v for k, v in files.items()
                                                 if k.endswith("alias")).decode().splitlines()
               if line.startswith("alias ")]
    dep = next(v for k, v in files.items() if k.endswith("dep")).decode()
    shipped = {re.sub(r"\.ko(\.xz)?$", "", line.split(":")[0].rsplit("/", 1)[-1])
               .replace("-", "_") for line in dep.splitlines()}

    def modules_for(modalias: str) -> set[str]:
        found = {module for pattern, module in aliases if fnmatch.fnmatchcase(modalias, pattern)}
        return found & shipped  # the module file itself is in the image too

    return modules_for


def test_cloud_and_server_devices_resolve_to_shipped_drivers(cli: Cli, hello: Built,
                                                             metal: Built) -> None:
    virtual = _resolver(cli, hello.ref)
    for module, modalias in CLOUD.items():
        assert virtual(modalias) == {module}, (module, modalias)
    # Server cards (and Azure's older Mellanox VFs) are not in the virtual set ...
    for module, modalias in SERVERS.items():
        assert virtual(modalias) == set(), module
    # ... and metal has them all, the cloud ones as well.
    both = _resolver(cli, metal.ref)
    for module, modalias in {**CLOUD, **SERVERS}.items():
        assert both(modalias) == {module}, (module, modalias)
    firmware = _base_files(cli, metal.ref, (".fw", ".bin", ".pkg"))
    assert any("rtl_nic/" in name for name in firmware)  # r8169's, from firmware-realtek
    assert any("bnx2x/" in name for name in firmware)  # bnx2x's, from firmware-bnx2x
    assert not _base_files(cli, hello.ref, (".fw", ".bin", ".pkg"))


def test_unknown_module_and_set_are_refused(cli: Cli, hello: Built, tmp_path: Path) -> None:
    app = tmp_path / "hello"
    shutil.copytree(hello.app, app)
    toml = app / "imagebuilder.toml"
    base = toml.read_text()
    toml.write_text(base.replace("[env.test]", '[system]\nmodules = ["e1000x"]\n\n[env.test]'))
    result = cli("build", str(app), check=False)
    assert result.returncode == 2
    assert re.search(r"ERROR: system.modules: kernel 'debian' \(\S+\) has no module 'e1000x'"
                     r" \(closest: e1000e?, e1000e?", result.stderr), result.stderr
    toml.write_text(base.replace("[env.test]", '[system]\nhardware = ["metl"]\n\n[env.test]'))
    result = cli("build", str(app), check=False)
    assert result.returncode == 2
    assert "system.hardware[0]: kernel 'debian' has no driver set \"metl\" (closest: metal)" \
        in result.stderr
