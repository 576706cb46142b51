"""End to end: examples/hello boots under QEMU (TCG) and behaves as a production server should.

Three boots in all: one in the background (`run --wait`, from the raw disk by BIOS, in 128 MiB:
the root's layers are EROFS partitions, not unpacked into RAM) for the HTTP checks and the boot
phases, one in the foreground (the default: the kernel directly on
QEMU's microvm machine) with 256 MiB of memory whose app exits with a status, and one by UEFI
stopped by SIGTERM.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import urllib.request

import pytest

from .conftest import Built, Cli, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.network]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def _wait_http(url: str, proc: subprocess.Popen[str], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"run exited {proc.returncode}: {proc.communicate()}")
        try:
            _get(url)
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer in {seconds} s")


def test_run_wait_serves_http_with_injected_env_as_unprivileged_user_on_ro_root(
        cli: Cli, hello: Built, vms: list[str]) -> None:
    port = free_port()
    result = cli("run", hello.ref, "--env", "test", "--accel", "tcg", "--boot", "bios", "--wait",
                 "--memory", "128", "--json", "-p", f"127.0.0.1:{port}:8080", cwd=hello.app)
    started = json.loads(result.stdout)
    vms.append(started["id"])
    assert started["url"] == f"http://127.0.0.1:{port}/health"
    assert [vm["id"] for vm in cli.json("ps")] == [started["id"]]
    # The init's boot phases, in order, as the guest's uptime (seconds since the kernel started).
    phases = started["phases"]
    assert list(phases) == ["kernel", "drivers", "network", "environment", "app"]
    assert phases["kernel"] > 0 and list(phases.values()) == sorted(phases.values())

    assert _get(f"http://127.0.0.1:{port}/") == "hello from imagebuilder: GREETING=hi\n"
    info = json.loads(_get(f"http://127.0.0.1:{port}/info"))
    assert info["env"] == "test"
    assert info["user"] == "app" and info["uid"] == 1000
    assert info["root_ro"] is True and info["root_writable"] is False
    assert info["tmp_writable"] is True
    assert info["java"].startswith("21.")

    console = (cli.home / "run" / started["id"] / "console.log").read_text()
    assert "environment test from config drive /dev/vdb" in console
    # The disk's root: the layers' EROFS partitions stacked by overlayfs, in 128 MiB.
    assert "root: EROFS layers base=vda2 jvm=vda3 app=vda4 mounted and stacked read-only" \
        in console, console
    # /app an overlay on a tmpfs, on that overlay of EROFS layers (overlayfs's deepest stack).
    assert "/app is writable, in RAM: its writes vanish at power-off" in console, console
    assert "MemTotal" in console and "FATAL" not in console
    cli("stop", started["id"])
    vms.remove(started["id"])
    assert cli.json("ps") == []


def test_foreground_run_in_256_mib_exits_with_the_apps_status(cli: Cli, hello: Built) -> None:
    port = free_port()
    proc = subprocess.Popen(
        cli.argv(["run", hello.ref, "--config", str(hello.app), "--env", "prod", "--accel",
                  "tcg", "--memory", "256", "-p", f"127.0.0.1:{port}:8080", "--jit", "c1"]),
        env=cli.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", proc)
        assert "GREETING=hello, production" in _get(f"http://127.0.0.1:{port}/")
        _get(f"http://127.0.0.1:{port}/exit?code=3")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, err
    assert "app exited with status 3" in out
    # microvm: virtio over MMIO, found by the init through the ACPI device's modalias.
    drivers = next(line for line in out.splitlines() if "] drivers: " in line).split()
    assert "virtio_mmio" in drivers and "virtio_net" in drivers
    # Under TCG, run adds what spares emulated work to the image's own command line, and
    # --jit c1 asks for C1 only, with stacks large enough for its frames.
    cmdline = next(line for line in out.splitlines() if "] kernel command line: " in line)
    assert re.search(r": console=tty0 console=ttyS0 quiet panic=-1 pci=off tsc_early_khz=\d+ "
                     r"tsc=reliable cryptomgr\.notests imagebuilder\.jit=c1$", cmdline), cmdline
    assert ("imagebuilder.jit=c1: the JVM compiles with C1 only (-XX:TieredStopAtLevel=1), with"
            " 16 MiB thread stacks (-Xss16m: C1's frames are larger than C2's), in this run") in out
    assert "environment prod from config drive /dev/vda" in out


def test_sigterm_stops_the_vm_cleanly_and_exits_0(cli: Cli, hello: Built) -> None:
    port = free_port()
    proc = subprocess.Popen(
        cli.argv(["run", hello.ref, "--accel", "auto", "--boot", "uefi",
                  "-p", f"127.0.0.1:{port}:8080"]),
        env=cli.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", proc)
        assert _get(f"http://127.0.0.1:{port}/") == "hello from imagebuilder: GREETING=unset\n"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "no environment config found" in out
    assert "C1 only" not in out  # a disk boot's loader takes no added option
    assert "stopping the app" in out and "app exited with status" in out
