"""The commands about VMs on this machine: ``run`` (in the foreground, or in the background with
``--wait``), ``ps`` and ``stop``.

Parse, call :mod:`imagebuilder.targets.qemu.run` and :mod:`imagebuilder.targets.qemu.vms`, print.
A foreground run's console is the app's output and its exit status the app's, so it prints no
result and takes no ``--json``: ``run --json`` without ``--wait`` is a usage error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from ..errors import UserError
from . import env_vars, gated_image, get_home, require_signed
from .options import env_options, json_option
from .render import emit_json, reporter


@click.command("run")
@click.argument("ref")
@env_options("Environment whose [env.NAME] vars the app gets.")
@click.option("-p", "--publish", "ports", multiple=True, metavar="[IP:]HOST:GUEST",
              help="Forward a host port to a guest port (default: the app's port to itself).")
@click.option("--accel", type=click.Choice(["auto", "kvm", "tcg"]), default="auto",
              show_default=True, help="QEMU accelerator; auto falls back to TCG if KVM hangs.")
@click.option("--memory", type=click.IntRange(128, 1 << 20), help="Guest memory in MiB.")
@click.option("--boot", type=click.Choice(["auto", "microvm", "bios", "uefi", "direct"]),
              default="auto", show_default=True,
              help="microvm: the kernel directly on QEMU's microvm machine (the fastest); bios, "
                   "uefi: the image's disk through SeaBIOS or OVMF; direct: the kernel directly "
                   "on the pc machine; auto: microvm if the image carries virtio_mmio, else bios.")
@click.option("--jit", type=click.Choice(["auto", "full", "c1"]), default="auto",
              show_default=True,
              help="auto, full: the JVM's own tiers, as in production; c1: a microvm or direct "
                   "boot runs the JVM with C1 only (-XX:TieredStopAtLevel=1) and 16 MiB thread "
                   "stacks unless the app sets -Xss: faster under TCG, but C1's larger frames "
                   "can overflow a deep recursion that C2 runs.")
@click.option("--wait", is_flag=True,
              help="Return once the app answers HTTP, leaving the VM running in the background.")
@click.option("--timeout", type=float, default=180.0, show_default=True,
              help="With --wait: seconds to wait for the app.")
@json_option("With --wait: print the result as JSON.")
@click.pass_context
def run_cmd(ctx: click.Context, ref: str, env_name: str | None, config_path: str | None,
            ports: Sequence[str], accel: str, memory: int | None, boot: str, jit: str,
            wait: bool, timeout: float, as_json: bool) -> None:
    """Boot image REF (NAME:VERSION) in QEMU. The console is the app's output; Ctrl-C stops the
    VM cleanly. Exits with the app's exit status."""
    from ..targets.qemu import run as qemu
    if as_json and not wait:
        raise UserError("--json goes with --wait: without it, run shows the app's console and "
                        "exits with its status")
    home = get_home()
    boot_vars = env_vars(env_name, config_path)
    verified = require_signed(ref, env_name, config_path)
    image = gated_image(home.store, ref, verified)
    app = image.config.get("app", {})
    forwards = [qemu.PortForward.parse(p) for p in ports]
    if not forwards and app.get("port"):
        forwards = [qemu.PortForward("127.0.0.1", app["port"], app["port"])]
    spec = qemu.RunSpec(image, env_name, boot_vars, forwards, accel,
                        memory or image.config.get("memory", 1024), boot=boot, jit=jit)
    if not wait:
        ctx.exit(qemu.run_foreground(spec, home.store, home.runs, warn=reporter().warn))
    vm, seconds = qemu.run_background(spec, home.store, home.runs, app.get("healthcheck", "/"),
                                      timeout, warn=reporter().warn)
    forward = forwards[0]
    url = f"http://{forward.host_ip}:{forward.host_port}{app.get('healthcheck', '/')}"
    _print_started(image.ref, vm, url, seconds, as_json)


def _print_started(ref: str, vm: Any, url: str, seconds: float, as_json: bool) -> None:
    from ..targets.qemu import bootlog
    from ..targets.qemu import run as qemu
    phases = qemu.boot_phases(vm)
    if as_json:
        emit_json({"id": vm.id, "pid": vm.pid, "url": url, "seconds": seconds,
                   "phases": phases, "console": str(vm.dir / "console.log")})
        return
    click.echo(f"{ref} answered {url} in {seconds:.1f} s")
    if phases:
        click.echo(f"boot phases (guest uptime): {bootlog.describe(phases)}")
    click.echo(f"running as {vm.id} (console: {vm.dir / 'console.log'}); "
               f"stop it with: imagebuilder stop {vm.id}")


@click.command("ps")
@json_option("Print the VMs as JSON.")
def ps_cmd(as_json: bool) -> None:
    """List VMs started with `run --wait` that are still running."""
    from ..targets.qemu import vms
    running = vms.running(get_home().runs)
    if as_json:
        emit_json([{"id": vm.id, "pid": vm.pid} for vm in running])
        return
    for vm in running:
        image = (vm.dir / "image").read_text().split()[0] if (vm.dir / "image").exists() else "?"
        click.echo(f"{vm.id}  pid {vm.pid}  {image}")


@click.command("stop")
@click.argument("vm_ids", nargs=-1, required=True, metavar="ID...")
@json_option("Print the VMs stopped as JSON: [{id, pid}, ...].")
def stop_cmd(vm_ids: Sequence[str], as_json: bool) -> None:
    """Stop VMs started with `run --wait` (ACPI power button, then kill after 30 s). An ID that
    is not running stops the command; the VMs before it are stopped (and printed)."""
    from ..targets.qemu import run as qemu
    from ..targets.qemu import vms
    runs = get_home().runs
    stopped: list[dict[str, Any]] = []
    try:
        for vm_id in vm_ids:
            vm = vms.find_vm(runs, vm_id)
            pid = vm.pid
            qemu.stop_vm(vm)
            stopped.append({"id": vm_id, "pid": pid})
            if not as_json:
                click.echo(f"stopped {vm_id}")
    finally:
        if as_json:
            emit_json(stopped)


COMMANDS: list[click.Command] = [run_cmd, ps_cmd, stop_cmd]
