"""The command line: parse, call the library, print. Nothing else lives here.

Every ImageBuilderError becomes one ``ERROR: ...`` line on stderr and its exit code (2 for the
user's mistakes, 1 for the environment's failures); ``--debug`` keeps the traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from . import __version__
from .commands import env_config, get_home
from .commands import human_size as _human
from .errors import ImageBuilderError, UserError
from .text import printable

if TYPE_CHECKING:
    from .config import parse as config_mod
    from .store.home import Home
    from .store.layout import Image, Store

# Commands import what they need when they run: `imagebuilder hash` or `images` must not pay
# for loading the build pipeline.


def _err(message: str) -> None:
    """One message on stderr; whatever in it came from outside (an app's log, a registry's
    reply) cannot drive the terminal."""
    click.echo(printable(message, keep="\n\t"), err=True)


def _load_config(source: str | None, name: str | None, version: str | None,
                 mirror: str | None) -> config_mod.Config:
    from .config import parse as config_mod
    path = Path(source or ".")
    if path.suffix == ".jar":
        cfg = config_mod.from_jar(path, name, version)
    else:
        cfg = config_mod.load(path)
    return config_mod.with_overrides(cfg, name=name, version=version, mirror=mirror)




def _image_json(image: Image) -> dict[str, Any]:
    return {
        "ref": image.ref, "name": image.name, "version": image.version, "digest": image.digest,
        "size": image.size, "refs": list(image.refs),
    }


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="imagebuilder")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Build minimal, immutable machine images from Java apps, and run them."""
    ctx.obj = {"debug": debug}


@cli.command("build")
@click.argument("source", required=False, metavar="[DIR | APP.jar]")
@click.option("--name", help="Image name (overrides [image] name; required for a bare jar).")
@click.option("--version", "version", help="Image version (overrides [image] version).")
@click.option("--mirror", help="Debian mirror URL (default: the host's apt configuration).")
@click.option("--format", "formats", multiple=True, metavar="FORMAT",
              help="Also write the image as raw, qcow2, vmdk, vhd, iso or kernel-initrd "
                   "(repeatable) into the -o directory.")
@click.option("-o", "--output", "output", type=click.Path(), default=".", show_default=True,
              help="Directory for the --format files (NAME-VERSION.FORMAT).")
@click.option("--sync", is_flag=True,
              help="fsync the output before it appears (default: like qemu-img convert, leave "
                   "writing it to disk to the kernel; it still appears whole or not at all).")
@click.option("--aot/--no-aot", default=None,
              help="Run the app once at build time and ship the class data it leaves, so it "
                   "starts faster (overrides [jvm] aot; see the README before you do).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def build_cmd(source: str | None, name: str | None, version: str | None, mirror: str | None,
              formats: Sequence[str], output: str, sync: bool, aot: bool | None,
              as_json: bool) -> None:
    """Build the app in DIR (its imagebuilder.toml; default: the current directory), or a bare
    executable jar with --name and --version, into the local image store."""
    from .build.plan import build
    from .formats import export
    for fmt in formats:
        export.check_format(fmt)
    out_dir = Path(output)
    if formats and not out_dir.is_dir():
        raise UserError(f"output directory {out_dir} does not exist")
    from .config.parse import with_aot
    cfg = with_aot(_load_config(source, name, version, mirror), aot)
    home = get_home()
    result = build(cfg, home, mirror=mirror, report=lambda s: None if as_json else _err(s))
    written = []
    if formats:
        image = home.store.resolve(result.ref)
        boot = export.BootSource.of_image(home.store, image)
        for fmt in formats:
            dest = out_dir / f"{image.name}-{image.version}{export.SUFFIXES[fmt]}"
            _export_with_progress(home, boot, fmt, dest, quiet=as_json, sync=sync)
            written.append({"format": fmt, "path": str(dest)})
    if as_json:
        click.echo(json.dumps({
            "ref": result.ref, "digest": result.digest, "size": result.size,
            "disk_digest": result.disk_digest, "outputs": written,
            "stages": [{"name": s.name, "cached": s.hit, "seconds": round(s.seconds, 3)}
                       for s in result.stages],
        }))
    else:
        click.echo(f"{result.ref} {result.digest} ({_human(result.size)})")
        for item in written:
            click.echo(f"wrote {item['path']}")


def _export_with_progress(home: Home, boot: Any, fmt: str, dest: Path, *, quiet: bool,
                          sync: bool, size: int | None = None) -> None:
    from tqdm import tqdm

    from .formats import export
    with tqdm(desc=f"{fmt} {dest.name}", unit="B", unit_scale=True, unit_divisor=1024,
              disable=True if quiet else None, leave=False) as bar:
        export.export(home.cache, boot, fmt, dest, progress=bar.update, size=size, sync=sync)


@cli.command("export")
@click.argument("ref")
@click.option("--format", "fmt", required=True, metavar="FORMAT",
              help="raw, qcow2, vmdk, vhd, iso or kernel-initrd (a directory of three files).")
@click.option("-o", "--output", "output", type=click.Path(), required=True,
              help="The file to write (for kernel-initrd: a new directory).")
@click.option("--size", "size_text", metavar="SIZE",
              help="Disk size for raw/qcow2/vmdk/vhd, e.g. 2G (default: what the image needs).")
@click.option("--bmap", "with_bmap", is_flag=True,
              help="With --format raw: also write FILE.bmap, its block map for `bmaptool copy` "
                   "and `imagebuilder flash`.")
@click.option("--sync", is_flag=True,
              help="fsync the output before it appears (default: like qemu-img convert, leave "
                   "writing it to disk to the kernel; it still appears whole or not at all).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def export_cmd(ref: str, fmt: str, output: str, size_text: str | None, with_bmap: bool,
               sync: bool, as_json: bool) -> None:
    """Write image REF as a bootable disk (BIOS and UEFI), a hybrid ISO, or kernel + initrd."""
    from .formats import export
    export.check_format(fmt)
    if with_bmap and fmt != "raw":
        raise UserError(f"--bmap goes with --format raw, not {fmt}")
    size = export.parse_size(size_text) if size_text is not None else None
    home = get_home()
    image = home.store.resolve(ref)
    boot = export.BootSource.of_image(home.store, image)
    dest = Path(output)
    bmap = None
    if with_bmap:
        from tqdm import tqdm

        from .formats.bmap import write_raw_with_bmap
        if not dest.parent.is_dir():
            raise UserError(f"output directory {dest.parent} does not exist")
        disk = export.bootable(home.cache, boot, size=size)
        with tqdm(desc=f"raw {dest.name}", unit="B", unit_scale=True, unit_divisor=1024,
                  disable=True if as_json else None, leave=False) as bar:
            write_raw_with_bmap(disk, dest, progress=bar.update, sync=sync)
        bmap = f"{dest}.bmap"
    else:
        _export_with_progress(home, boot, fmt, dest, quiet=as_json, sync=sync, size=size)
    if as_json:
        click.echo(json.dumps({"ref": image.ref, "format": fmt, "path": str(dest),
                               "bmap": bmap}))
    else:
        click.echo(f"wrote {dest}")
        if bmap:
            click.echo(f"wrote {bmap}")


@cli.command("hash")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False),
                metavar="FILE...")
@click.option("--algo", type=click.Choice(["xxh3", "sha256", "xxh128"]), default="xxh3",
              show_default=True,
              help="xxh3: block-tree XXH3-128 that skips holes of sparse files; sha256: "
                   "standard; xxh128: plain XXH3-128 as `xxhsum -H2` prints it.")
@click.option("--json", "as_json", is_flag=True, help="Print the digests as JSON.")
def hash_cmd(files: Sequence[str], algo: str, as_json: bool) -> None:
    """Hash files in one pass each, reading only the data of sparse files."""
    from .hashing.core import hash_paths
    for name in files:
        if not Path(name).is_file():
            raise UserError(f"{name}: no such file")
    results = hash_paths([Path(f) for f in files], algo)
    if as_json:
        click.echo(json.dumps([{"path": str(p), "algo": algo, "digest": d, "size": n}
                               for p, d, n in results]))
        return
    for path, digest, _size in results:
        click.echo(f"{digest}  {path}")


@cli.command("images")
@click.option("--json", "as_json", is_flag=True, help="Print the images as JSON.")
def images_cmd(as_json: bool) -> None:
    """List the images in the local store and the environments they are promoted to."""
    from .registry.promote import environments_of
    store = get_home().store
    images = store.images()
    envs = {i.ref: environments_of(store, i.name, i.digest) for i in images}
    if as_json:
        click.echo(json.dumps([{**_image_json(i), "environments": envs[i.ref]} for i in images]))
        return
    rows = [("NAME", "VERSION", "DIGEST", "SIZE", "ENVIRONMENTS")]
    rows += [(i.name, i.version, i.digest[:19], _human(i.size), ",".join(envs[i.ref]) or "-")
             for i in images]
    widths = [max(len(r[c]) for r in rows) for c in range(5)]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@cli.command("inspect")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest and config as JSON.")
@click.option("--sizes", is_flag=True,
              help="Show what each layer carries: its size stored and unpacked, the directories "
                   "holding most of it and its largest files.")
def inspect_cmd(ref: str, as_json: bool, sizes: bool) -> None:
    """Show an image's kernel, command line, layers, environments and promotion history."""
    import dataclasses

    from .registry.promote import environments_of, history
    from .store.layout import TITLE_ANNOTATION
    store = get_home().store
    image = store.resolve(ref)
    if sizes:
        _print_sizes(store, image, as_json)
        return
    envs = environments_of(store, image.name, image.digest)
    promotions = [dataclasses.asdict(p) for p in history(store, image.name)]
    needs = _memory_needs(image)
    if as_json:
        click.echo(json.dumps({**_image_json(image), "config": image.config,
                               "manifest": image.manifest, "environments": envs,
                               "promotions": promotions,
                               "memory": needs.to_json() if needs else None}))
        return
    cfg = image.config
    click.echo(f"image:    {image.ref}")
    click.echo(f"digest:   {image.digest}")
    click.echo(f"envs:     {', '.join(envs) or '-'}")
    click.echo(f"size:     {_human(image.size)}")
    disk = cfg.get("disk", {})
    if disk:
        click.echo(f"disk:     {disk.get('digest')} ({_human(int(disk.get('size', 0)))} raw, "
                   f"boots by {' and '.join(disk.get('boot', []))})")
    kernel = cfg.get("kernel", {})
    click.echo(f"kernel:   {kernel.get('package')} {kernel.get('version')}")
    click.echo(f"cmdline:  {cfg.get('cmdline')}")
    app = cfg.get("app", {})
    click.echo(f"app:      {app.get('jar')} port {app.get('port')} "
               f"healthcheck {app.get('healthcheck')}")
    jvm = cfg.get("jvm", {})
    click.echo(f"jvm:      {jvm.get('version')} ({', '.join(jvm.get('modules', []))})")
    if needs:
        click.echo(f"memory:   {needs.disk} MiB from its disk (run --boot bios|uefi and the disk "
                   f"formats: the root is EROFS on the disk); {needs.initramfs} MiB with its "
                   f"root in RAM (run --boot microvm|direct, iso, kernel-initrd, serve: "
                   f"{needs.root_in_ram} MiB unpacked)")
    click.echo("layers:")
    for layer in image.layers:
        title = (layer.annotations or {}).get(TITLE_ANNOTATION, "?")
        click.echo(f"  {title:<9} {_human(layer.size):>10}  {layer.digest}")


def _memory_needs(image: Image) -> Any:
    """The image's :class:`~imagebuilder.targets.qemu.memory.Needs`, or None if its layers cannot
    be read."""
    from .targets.qemu import memory
    home = get_home()
    try:
        return memory.image_needs(home.cache, home.store, image)
    except ImageBuilderError as exc:
        _warn(f"memory needs unknown: {exc}")
        return None


def _print_sizes(store: Store, image: Image, as_json: bool) -> None:
    from .store.sizes import layer_sizes
    report = layer_sizes(store, image)
    if as_json:
        click.echo(json.dumps({"ref": image.ref, "digest": image.digest,
                               "stored": sum(layer.stored for layer in report),
                               "unpacked": sum(layer.unpacked for layer in report),
                               "layers": [layer.to_json() for layer in report]}))
        return
    click.echo(f"image:    {image.ref} ({_human(sum(r.stored for r in report))} stored, "
               f"{_human(sum(r.unpacked for r in report[1:]))} unpacked in RAM)")
    for layer in report:
        click.echo(f"{layer.title}: {_human(layer.stored)} stored, {_human(layer.unpacked)} "
                   f"unpacked, {layer.files} files")
        for path, size in layer.dirs:
            click.echo(f"  {_human(size):>10}  {path.rstrip('/')}/  (directory)")
        for path, size in layer.largest:
            click.echo(f"  {_human(size):>10}  {path}")


@cli.command("rm")
@click.argument("refs", nargs=-1, required=True, metavar="REF...")
def rm_cmd(refs: Sequence[str]) -> None:
    """Remove images from the local store (blobs other images use are kept)."""
    store = get_home().store
    for ref in refs:
        digest = store.remove(ref)
        click.echo(f"removed {ref} ({digest})")


@cli.command("run")
@click.argument("ref")
@click.option("--env", "env_name", help="Environment whose [env.NAME] vars the app gets.")
@click.option("--config", "config_path", type=click.Path(),
              help="imagebuilder.toml holding the environments (default: ./imagebuilder.toml).")
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
@click.option("--json", "as_json", is_flag=True, help="With --wait: print the result as JSON.")
def run_cmd(ref: str, env_name: str | None, config_path: str | None, ports: Sequence[str],
            accel: str, memory: int | None, boot: str, jit: str, wait: bool, timeout: float,
            as_json: bool) -> None:
    """Boot image REF (NAME:VERSION) in QEMU. The console is the app's output; Ctrl-C stops the
    VM cleanly. Exits with the app's exit status."""
    from .targets.qemu import bootlog
    from .targets.qemu import run as qemu
    home = get_home()
    image = home.store.resolve(ref)
    env_vars: dict[str, str] = {}
    if env_name is not None:
        env_vars = env_config(config_path).env(env_name).boot_vars()
    app = image.config.get("app", {})
    forwards = [qemu.PortForward.parse(p) for p in ports]
    if not forwards and app.get("port"):
        forwards = [qemu.PortForward("127.0.0.1", app["port"], app["port"])]
    spec = qemu.RunSpec(image, env_name, env_vars, forwards, accel,
                        memory or image.config.get("memory", 1024), boot=boot, jit=jit)
    if not wait:
        sys.exit(qemu.run_foreground(spec, home.store, home.runs, warn=_warn))
    vm, seconds = qemu.run_background(spec, home.store, home.runs, app.get("healthcheck", "/"),
                                      timeout, warn=_warn)
    forward = forwards[0]
    url = f"http://{forward.host_ip}:{forward.host_port}{app.get('healthcheck', '/')}"
    phases = qemu.boot_phases(vm)
    if as_json:
        click.echo(json.dumps({"id": vm.id, "pid": vm.pid, "url": url, "seconds": seconds,
                               "phases": phases, "console": str(vm.dir / "console.log")}))
    else:
        click.echo(f"{image.ref} answered {url} in {seconds:.1f} s")
        if phases:
            click.echo(f"boot phases (guest uptime): {bootlog.describe(phases)}")
        click.echo(f"running as {vm.id} (console: {vm.dir / 'console.log'}); "
                   f"stop it with: imagebuilder stop {vm.id}")


@cli.command("ps")
@click.option("--json", "as_json", is_flag=True, help="Print the VMs as JSON.")
def ps_cmd(as_json: bool) -> None:
    """List VMs started with `run --wait` that are still running."""
    from .targets.qemu import vms
    running = vms.running(get_home().runs)
    if as_json:
        click.echo(json.dumps([{"id": vm.id, "pid": vm.pid} for vm in running]))
        return
    for vm in running:
        image = (vm.dir / "image").read_text().split()[0] if (vm.dir / "image").exists() else "?"
        click.echo(f"{vm.id}  pid {vm.pid}  {image}")


@cli.command("stop")
@click.argument("vm_ids", nargs=-1, required=True, metavar="ID...")
def stop_cmd(vm_ids: Sequence[str]) -> None:
    """Stop VMs started with `run --wait` (ACPI power button, then kill after 30 s)."""
    from .targets.qemu import run as qemu
    from .targets.qemu import vms
    runs = get_home().runs
    for vm_id in vm_ids:
        qemu.stop_vm(vms.find_vm(runs, vm_id))
        click.echo(f"stopped {vm_id}")


def _register_command_groups() -> None:
    from .commands.aws import COMMANDS as AWS_COMMANDS
    from .commands.baremetal import COMMANDS as BAREMETAL_COMMANDS
    from .commands.registry import COMMANDS as REGISTRY_COMMANDS
    from .commands.store import COMMANDS as STORE_COMMANDS
    for command in (*REGISTRY_COMMANDS, *BAREMETAL_COMMANDS, *AWS_COMMANDS, *STORE_COMMANDS):
        cli.add_command(command)


_register_command_groups()


def _warn(message: str) -> None:
    _err(f"WARNING: {message}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (callable from tests)."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="imagebuilder",
                 standalone_mode=False)
    except ImageBuilderError as exc:
        if debug:
            raise
        _err(f"ERROR: {exc}")
        return exc.exit_code
    except click.exceptions.Abort:
        _err("aborted")
        return 130
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "imagebuilder"
        _err(f"ERROR: {exc.format_message()} (see '{command} --help')")
        return 2
    except click.ClickException as exc:
        _err(f"ERROR: {exc.format_message()}")
        return exc.exit_code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except OSError as exc:  # a disk or the system failed (EIO, ENOSPC, EFBIG...): exit 1
        if debug:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        _err(f"ERROR: {exc.strerror or exc}{where}: fix the cause (a full or failing disk?) "
             "and run the command again")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())  # pragma: no cover
