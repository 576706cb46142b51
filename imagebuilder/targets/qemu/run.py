"""Booting an image in QEMU: `imagebuilder run`, in the foreground or in the background.

The kernel boots directly (-kernel/-initrd) on QEMU's microvm machine (no firmware, no PCI:
virtio over MMIO; the kernel and layers decompressed on the host, see directboot) when the
image carries virtio_mmio, else the image's disk boots through
SeaBIOS (or OVMF, or the kernel directly on the pc machine, on request), with virtio devices,
user-mode networking with the
requested port forwards, and the environment's config drive as a read-only virtio disk. The
serial console is the app's stdout. A QMP socket lets imagebuilder press the ACPI power button
(`system_powerdown`) so the init stops the app cleanly; the init prints the app's exit status,
which becomes ours.

On some hosts /dev/kvm exists but guests hang before the kernel prints anything: with
``--accel auto`` a KVM guest that has not reached the init within a few seconds is restarted
under TCG, with a warning.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ...disk.configdrive import write_config_drive
from ...errors import HostError, UserError
from ...fsutil import write_atomic
from ...proc import require
from ...store import blobs
from ...store.layout import Image, Store
from . import bootlog, directboot, microvm, vms
from .vms import Vm

INIT_MARKER = b"imagebuilder: ["
EXIT_RE = re.compile(rb"imagebuilder: \[[0-9.]+\] app exited with status (\d+)")
KVM_GRACE_SECONDS = 8.0
TCG_CPUS = 1
"""vCPUs of an emulated (TCG) guest. With 2, QEMU 7.2's multi-threaded TCG broke about one boot
in four on a busy host: a guest kernel died of an int3 left from patching its own text, and
JIT-compiled Java code computed an ArrayDeque index of -757281608 (code rewritten on one vCPU
apparently run stale on the other). With one vCPU (one TCG thread) the same boots never failed."""
CONSOLE_TAIL_LINES = 20
#: Console logs of VMs that stopped before their app answered, kept in the run directory.
KEPT_CONSOLES = 10
"""Console lines quoted when a VM stops before its app answers: enough for a JVM crash header."""
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
STOP_TIMEOUT_SECONDS = 30.0
_PORT_RE = re.compile(r"^(?:(?P<ip>[0-9.]+):)?(?P<host>\d{1,5}):(?P<guest>\d{1,5})$")


@dataclass(frozen=True)
class PortForward:
    host_ip: str
    host_port: int
    guest_port: int

    @classmethod
    def parse(cls, text: str) -> PortForward:
        """``[IP:]HOSTPORT:GUESTPORT``."""
        match = _PORT_RE.fullmatch(text)
        if not match or not all(0 < int(match[k]) < 65536 for k in ("host", "guest")):
            raise UserError(f"-p {text}: expected [IP:]HOSTPORT:GUESTPORT, e.g. 8080:8080")
        if match["ip"] is not None:
            try:
                ipaddress.IPv4Address(match["ip"])
            except ValueError:
                raise UserError(f"-p {text}: '{match['ip']}' is not an IPv4 address") from None
        return cls(match["ip"] or "127.0.0.1", int(match["host"]), int(match["guest"]))

    def qemu(self) -> str:
        return f"hostfwd=tcp:{self.host_ip}:{self.host_port}-:{self.guest_port}"


@dataclass
class RunSpec:
    """What to boot and how."""

    image: Image
    env_name: str | None
    env_vars: dict[str, str]
    ports: list[PortForward]
    accel: str = "auto"
    memory: int = 1024
    cpus: int = 2
    # direct (-kernel/-initrd on pc), microvm (-kernel/-initrd on QEMU's microvm machine), bios
    # (SeaBIOS) or uefi (OVMF) from the disk; auto: microvm when the image can, else bios.
    boot: str = "direct"
    # The kernel to boot directly when it is not the image's bzImage (set by prepare: see
    # directboot).
    kernel_file: Path | None = None
    # auto, full: the JVM's own tiers, as in production; c1: a direct or microvm boot asks the
    # init for C1 only (see JIT_C1).
    jit: str = "auto"


#: Added to a direct or microvm boot's command line by ``run --jit c1``: the init then runs the
#: JVM with -XX:TieredStopAtLevel=1 and, unless the app sets its own, 16 MiB thread stacks
#: (-Xss16m). Emulated, C2's start-up compilations cost more than they return in a local run
#: (Tomcat with a war answered in 43 s instead of 68 s). It is not the default: C1's frames are
#: larger than C2's, by a factor that grows with the calls C2 inlines (4.6x for a recursive
#: descent parser, 10x for a three-method visitor, 16x for six; docs/running.md), so no stack size
#: keeps every deep recursion that runs in production from overflowing. Disk boots cannot
#: take it: their boot loaders refuse added options.
JIT_C1 = "imagebuilder.jit=c1"


def check_port_free(forward: PortForward) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((forward.host_ip, forward.host_port))
        except OSError as exc:
            raise UserError(f"host port {forward.host_ip}:{forward.host_port} is not free "
                            f"({exc.strerror}): pick another with -p HOSTPORT:{forward.guest_port}"
                            ) from None


def kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def initrd_for(store: Store, image: Image, cache_dir: Path) -> Path:
    """The image's layers concatenated into one initrd file (cached by image digest)."""
    path = cache_dir / f"{image.digest.removeprefix('sha256:')}.initrd"
    if path.exists():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (chunk for layer in image.layers[1:]
                        for chunk in blobs.verified_chunks(store.blob_path(layer.digest),
                                                           layer.digest)))
    return path


def _opt(path: Path) -> str:
    """A path as a QEMU option value: commas are doubled."""
    return str(path).replace(",", ",,")


def qemu_argv(spec: RunSpec, store: Store, media: Path, run_dir: Path, accel: str,
              console: str) -> list[str]:
    """The qemu-system-x86_64 command line; ``console`` is a -chardev backend spec, ``media``
    the initrd (direct boot) or the raw bootable disk (bios, uefi)."""
    qemu = require("qemu-system-x86_64", "qemu-system-x86")
    kernel = spec.kernel_file or store.verified_blob(spec.image.layers[0].digest)
    cmdline = spec.image.config.get("cmdline", "console=ttyS0")
    netdev = ",".join(["user,id=net0", *(p.qemu() for p in spec.ports)])
    on_microvm = spec.boot == "microvm"
    # microvm: virtio over MMIO, described to the kernel by ACPI (which also carries the power
    # button), so QEMU need not add virtio_mmio.device= to the command line.
    machine = "microvm,acpi=on,auto-kernel-cmdline=off" if on_microvm else "pc"
    bus = "device" if on_microvm else "pci"
    argv = [
        qemu, "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-machine", f"{machine},accel={accel}", "-cpu", "host" if accel == "kvm" else "max",
        "-m", str(spec.memory), "-smp", str(spec.cpus if accel == "kvm" else TCG_CPUS),
        "-chardev", f"{console},id=console", "-serial", "chardev:console",
        "-netdev", netdev, "-device", f"virtio-net-{bus},netdev=net0",
        "-device", f"virtio-rng-{bus}",
        "-qmp", f"unix:{_opt(run_dir / 'qmp.sock')},server=on,wait=off",
        "-pidfile", str(run_dir / "qemu.pid"),
    ]
    if spec.boot in ("direct", "microvm"):
        append = microvm.cmdline(cmdline, accel, microvm.host_tsc_khz()) if on_microvm \
            else cmdline
        if spec.jit == "c1":
            append += " " + JIT_C1
        argv += ["-kernel", str(kernel), "-initrd", str(media), "-append", append]
    else:
        argv += ["-drive", f"file={_opt(media)},if=none,id=boot,format=raw,readonly=on",
                 "-device", "virtio-blk-pci,drive=boot,bootindex=0"]
    if spec.boot == "uefi":
        argv += ["-drive", f"if=pflash,format=raw,readonly=on,file={_opt(OVMF_CODE)}",
                 "-drive", f"if=pflash,format=raw,file={_opt(run_dir / 'ovmf-vars.fd')}"]
    drive = run_dir / "config.iso"
    if drive.exists():
        argv += ["-drive", f"file={_opt(drive)},if=none,id=config,format=raw,readonly=on",
                 "-device", f"virtio-blk-{bus},drive=config"]
    return argv


def resolve_boot(spec: RunSpec, store: Store) -> str:
    """``auto`` made concrete: microvm when the image and host can boot there, else BIOS."""
    if spec.boot not in ("auto", "microvm"):
        return spec.boot
    accels, tsc_khz = _accels(spec.accel), microvm.host_tsc_khz()
    if spec.boot == "auto":
        usable = microvm.usable(store, spec.image, accels, tsc_khz)
        return "microvm" if usable else "bios"
    if "tcg" in accels and tsc_khz is None:
        raise UserError("--boot microvm under TCG needs the host's TSC rate, which this host's "
                        "/proc/cpuinfo does not give: use --boot bios (or --accel kvm)")
    if not microvm.image_can_boot(store, spec.image):
        raise UserError(f"{spec.image.ref} has no virtio_mmio driver for microvm: add "
                        "\"virtio_mmio\" to [system] modules, or use --boot bios")
    return "microvm"


def qmp(run_dir: Path, command: str) -> None:
    """Send one QMP command to the VM whose socket is in ``run_dir``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(run_dir / "qmp.sock"))
        reader = sock.makefile("rb")
        reader.readline()  # greeting
        for cmd in ("qmp_capabilities", command):
            sock.sendall(json.dumps({"execute": cmd}).encode() + b"\n")
            while True:
                reply = json.loads(reader.readline() or b"{}")
                if "return" in reply or "error" in reply or not reply:
                    break


def prepare(spec: RunSpec, store: Store, runs: Path) -> tuple[str, Path, Path]:
    """A run directory with the config drive; the VM id, the directory and the initrd."""
    from ...store.cache import Cache
    cache = Cache(runs.parent / "cache")
    cache.remove_stale()  # what a killed run or build left half-written: first, whatever fails
    spec.image.boot_layers()
    for forward in spec.ports:
        check_port_free(forward)
    require("qemu-system-x86_64", "qemu-system-x86")
    spec.boot = resolve_boot(spec, store)
    if spec.jit == "c1" and spec.boot not in ("direct", "microvm"):
        raise UserError(f"--jit c1 needs a microvm or direct boot ({spec.boot} boots the disk, "
                        "whose boot loader takes no added option): add --boot microvm or direct")
    from . import memory
    needs = memory.image_needs(cache, store, spec.image)
    memory.check(needs, spec.memory, spec.boot, spec.image.ref)
    media = _boot_media(spec, store, runs.parent / "cache")
    vm_id = vms.new_vm_id(spec.image.name)
    run_dir = runs / vm_id
    run_dir.mkdir(parents=True)
    if spec.env_name is not None:
        write_config_drive(run_dir / "config.iso", spec.env_name, spec.env_vars)
    if spec.boot == "uefi":
        shutil.copyfile(OVMF_VARS, run_dir / "ovmf-vars.fd")
    write_atomic(run_dir / "image", f"{spec.image.ref} {spec.image.digest}\n".encode())
    return vm_id, run_dir, media


def _boot_media(spec: RunSpec, store: Store, cache_dir: Path) -> Path:
    """The initrd for a direct boot, else the image's raw bootable disk (cached by content).
    On microvm, the kernel and the initrd decompressed where they can be (see directboot)."""
    if spec.boot == "microvm":
        spec.kernel_file = directboot.kernel_for(store, spec.image, cache_dir / "kernel")
        plain = directboot.plain_initrd_for(store, spec.image, cache_dir / "initrd")
        if directboot.fits(plain, spec.memory):
            return plain
    if spec.boot in ("direct", "microvm"):
        return initrd_for(store, spec.image, cache_dir / "initrd")
    if spec.boot == "uefi" and not (OVMF_CODE.exists() and OVMF_VARS.exists()):
        raise HostError(f"{OVMF_CODE} not found: install it with 'apt-get install ovmf'")
    from ...formats.export import BootSource, raw_disk_file
    from ...store.cache import Cache
    return raw_disk_file(Cache(cache_dir), BootSource.of_image(store, spec.image),
                         cache_dir / "disks")


def _accels(requested: str) -> list[str]:
    if requested == "tcg":
        return ["tcg"]
    if requested == "kvm":
        if not kvm_usable():
            raise HostError("/dev/kvm is not usable here: use --accel tcg (or auto)")
        return ["kvm"]
    return ["kvm", "tcg"] if kvm_usable() else ["tcg"]


class _ConsolePump(threading.Thread):
    """Copies the guest console to ``out`` and notes the init's markers."""

    def __init__(self, stream: IO[bytes], out: IO[bytes]) -> None:
        super().__init__(daemon=True)
        self.stream, self.out = stream, out
        self.started = threading.Event()
        self.exit_status: int | None = None

    def run(self) -> None:
        pending = b""
        while chunk := self.stream.read1(65536):  # type: ignore[attr-defined]
            self.out.write(chunk)
            self.out.flush()
            pending = (pending + chunk)[-4096:]
            if INIT_MARKER in pending:
                self.started.set()
            match = EXIT_RE.search(pending)
            if match:
                self.exit_status = int(match[1])


def run_foreground(spec: RunSpec, store: Store, runs: Path,
                   warn: Callable[[str], None] = lambda s: None) -> int:
    """Boot, stream the console to stdout, return the app's exit status (0 if we stopped it)."""
    _, run_dir, initrd = prepare(spec, store, runs)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        accels = _accels(spec.accel)
        for i, accel in enumerate(accels):
            argv = qemu_argv(spec, store, initrd, run_dir, accel, "stdio,signal=off")
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)
            pump = _ConsolePump(proc.stdout, sys.stdout.buffer)  # type: ignore[arg-type]
            pump.start()
            if accel == "kvm" and i + 1 < len(accels):
                _wait_for(lambda: pump.started.is_set() or proc.poll() is not None,  # noqa: B023
                          KVM_GRACE_SECONDS, stop)
                if not pump.started.is_set() and not stop.is_set():
                    _kill(proc)
                    warn(_kvm_fallback_message(proc))
                    (run_dir / "qemu.pid").unlink(missing_ok=True)
                    continue
            stopped_by_us = _supervise(proc, run_dir, stop)
            pump.join(timeout=5)
            if stopped_by_us:
                return 0
            if pump.exit_status is None:
                err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
                raise HostError(f"qemu exited with code {proc.returncode} before the app did"
                                + (f": {err.splitlines()[-1]}" if err else ""))
            return pump.exit_status
        raise HostError("the VM did not start")
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        shutil.rmtree(run_dir, ignore_errors=True)


def _kvm_fallback_message(proc: subprocess.Popen[bytes]) -> str:
    how = (f"exited with code {proc.returncode}" if proc.returncode not in (None, -9)
           else f"did not reach the init in {KVM_GRACE_SECONDS:.0f} s")
    return f"the KVM guest {how}: restarting it under TCG (use --accel tcg to skip KVM)"


def _wait_for(condition: Callable[[], bool], seconds: float, stop: threading.Event) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not stop.is_set():
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _supervise(proc: subprocess.Popen[bytes], run_dir: Path, stop: threading.Event) -> bool:
    """Wait for QEMU to exit; on a stop request press the power button. True if we stopped it."""
    while proc.poll() is None:
        if stop.wait(0.2):
            powerdown(proc.pid, run_dir)
            try:
                proc.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                _kill(proc)
            return True
    return False


def powerdown(pid: int, run_dir: Path) -> None:
    """Press the ACPI power button; kill QEMU if its monitor does not answer."""
    try:
        qmp(run_dir, "system_powerdown")
    except OSError:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait()


def run_background(spec: RunSpec, store: Store, runs: Path, healthcheck: str, timeout: float,
                   warn: Callable[[str], None] = lambda s: None) -> tuple[Vm, float]:
    """Boot in the background and return once the app answers HTTP; the VM and the seconds."""
    if not spec.ports:
        raise UserError("--wait needs a port to probe: set [app] port or pass -p HOST:GUEST")
    vm_id, run_dir, initrd = prepare(spec, store, runs)
    vm = Vm(vm_id, run_dir)
    url = f"http://{spec.ports[0].host_ip}:{spec.ports[0].host_port}{healthcheck}"
    console = run_dir / "console.log"
    accels = _accels(spec.accel)
    start = time.monotonic()
    for i, accel in enumerate(accels):
        start = time.monotonic()
        argv = qemu_argv(spec, store, initrd, run_dir, accel, f"file,path={_opt(console)}")
        with open(run_dir / "qemu.log", "wb") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True)
        never = threading.Event()
        if accel == "kvm" and i + 1 < len(accels):
            _wait_for(lambda: _console_has(console, INIT_MARKER)
                      or proc.poll() is not None,  # noqa: B023
                      KVM_GRACE_SECONDS, never)
            if not _console_has(console, INIT_MARKER):
                _kill(proc)
                warn(_kvm_fallback_message(proc))
                (run_dir / "qemu.pid").unlink(missing_ok=True)
                console.unlink(missing_ok=True)
                continue
        break
    while True:
        if proc.poll() is not None:
            kept = _keep_console(console, runs / f"{vm_id}.console.log")
            shutil.rmtree(run_dir, ignore_errors=True)
            raise HostError(f"the VM stopped before the app answered {url}; the console "
                            f"({kept}) ends: {_tail(kept, CONSOLE_TAIL_LINES)}")
        if _http_ok(url):
            return vm, time.monotonic() - start
        if time.monotonic() - start > timeout:
            stop_vm(vm)
            raise HostError(f"the app did not answer {url} within {timeout:.0f} s "
                            f"(console: {_tail(console)})")
        time.sleep(0.1)


def boot_phases(vm: Vm) -> dict[str, float]:
    """The init's boot phases so far (guest uptime seconds), from the VM's console log."""
    try:
        text = (vm.dir / "console.log").read_bytes().decode(errors="replace")
    except OSError:
        return {}
    return bootlog.parse_phases(text)


def _console_has(path: Path, marker: bytes) -> bool:
    try:
        return marker in path.read_bytes()
    except OSError:
        return False


def _keep_console(console: Path, kept: Path) -> Path:
    """Move a stopped VM's console log out of its run directory, so it can be read later; only
    the newest :data:`KEPT_CONSOLES` such logs stay."""
    try:
        console.replace(kept)
    except OSError:
        return console
    logs = []
    for log in kept.parent.glob("*.console.log"):
        with contextlib.suppress(OSError):
            logs.append((log.stat().st_mtime_ns, log.name, log))
    for _, _, old in sorted(logs, reverse=True)[KEPT_CONSOLES:]:
        old.unlink(missing_ok=True)
    return kept


def _tail(path: Path, count: int = 3) -> str:
    try:
        lines = path.read_bytes().decode(errors="replace").strip().splitlines()
    except OSError:
        return "no console output"
    return " | ".join(lines[-count:]) or "no console output"


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def stop_vm(vm: Vm, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
    """Press the power button, wait for QEMU to exit, kill it if it does not (see
    :func:`imagebuilder.targets.qemu.vms.stop_vm`: only a process proven to be the VM)."""
    vms.stop_vm(vm, _press_power_button, timeout)


def _press_power_button(run_dir: Path) -> bool:
    try:
        qmp(run_dir, "system_powerdown")
    except OSError:
        return False
    return True
