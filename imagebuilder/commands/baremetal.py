"""The bare-metal commands: ``flash`` (write an image onto a server's disk) and ``serve``
(boot it over the network). Parse, call :mod:`imagebuilder.targets.metal.flash` and
:mod:`imagebuilder.targets.metal.netboot`, print; the lead registers :data:`COMMANDS` on the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import UserError
from . import env_vars as read_env_vars
from . import get_home

if TYPE_CHECKING:
    from ..disk.model import Disk
    from ..targets.metal.flash import MappedImage


def _source(ref: str, bmap_path: str | None) -> tuple[Disk | MappedImage, str, str | None]:
    """What to flash: a stored image's bootable disk (with its recorded disk digest), or a raw
    image file (with the block map beside it or given: then its ranges are what is written and
    checked)."""
    from ..disk.model import Disk
    from ..formats import bmap as bmap_mod
    from ..targets.metal.flash import MappedImage

    path = Path(ref)
    if path.is_file():
        map_path = Path(bmap_path) if bmap_path else path.with_name(path.name + ".bmap")
        if map_path.exists():
            return MappedImage(path, bmap_mod.read_bmap(map_path)), str(path), None
        if bmap_path:
            raise UserError(f"block map {bmap_path} does not exist")
        return Disk.from_file(path), str(path), None
    if bmap_path:
        raise UserError("--bmap goes with a raw image file, not an image reference")
    from ..formats.export import BootSource, bootable
    home = get_home()
    image = home.store.resolve(ref)
    warn_without_metal(image.config)
    boot = BootSource.of_image(home.store, image)
    return bootable(home.cache, boot), image.ref, boot.disk_digest


def warn_without_metal(config: dict[str, Any]) -> None:
    """Warn that a physical server may find no network driver in an image built without the
    ``metal`` driver set (images built before driver sets existed have none)."""
    if "metal" in config.get("hardware", []):
        return
    sets = config.get("hardware", [])
    suggested = ", ".join(f'"{s}"' for s in [*sets, "metal"])
    click.echo(f"WARNING: {config.get('name', 'the image')} was built without the 'metal' driver"
               " set: a physical server may have no driver for its network card; add"
               f" [system] hardware = [{suggested}] to imagebuilder.toml and rebuild", err=True)


Start = Callable[[str, int], Callable[[int], None]]


def _progress(quiet: bool) -> tuple[Start, Callable[[], None]]:
    from tqdm import tqdm

    bars: list[Any] = []

    def start(phase: str, total: int) -> Callable[[int], None]:
        close()
        bar = tqdm(desc="flash" if phase == "write" else phase, total=total, unit="B",
                   unit_scale=True, unit_divisor=1024, disable=True if quiet else None,
                   leave=False)
        bars.append(bar)
        return bar.update  # type: ignore[no-any-return]

    def close() -> None:
        while bars:
            bars.pop().close()

    return start, close


@click.command("flash")
@click.argument("ref")
@click.argument("target", type=click.Path())
@click.option("--env", "env_name", help="Environment whose [env.NAME] vars the server gets "
              "(written to a small config partition after the image's).")
@click.option("--config", "config_path", type=click.Path(),
              help="imagebuilder.toml holding the environments (default: ./imagebuilder.toml).")
@click.option("--bmap", "bmap_path", type=click.Path(dir_okay=False),
              help="With a raw image file as REF: its block map (default: REF.bmap if present).")
@click.option("--no-verify", is_flag=True, help="Do not read the disk back to check it.")
@click.option("--force", is_flag=True,
              help="Write into a partition rather than refusing (never a mounted disk, the "
                   "host's own disk or one too small).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def flash_cmd(ref: str, target: str, env_name: str | None, config_path: str | None,
              bmap_path: str | None, no_verify: bool, force: bool, as_json: bool) -> None:
    """Write image REF (NAME:VERSION, or a raw image file) onto TARGET, a whole disk such as
    /dev/sdb or a disk image file: only the blocks holding data, then read back and verified."""
    from ..targets.metal import flash as baremetal

    env_vars = read_env_vars(env_name, config_path)
    source, name, disk_digest = _source(ref, bmap_path)
    if env_name is not None:  # another disk than the one the digest was recorded for
        disk_digest = None
        from ..disk.configpart import with_config_partition

        if isinstance(source, baremetal.MappedImage):
            from ..formats.bmap import check_image

            check_image(source.path, source.bmap)
            source = source.disk()
        source = with_config_partition(source, env_name, env_vars)
    home = get_home()
    start, close = _progress(as_json)
    try:
        result = baremetal.flash(source, Path(target), verify=not no_verify, force=force,
                                 progress=start, private=env_name is not None,
                                 protected=(home.store.root, home.cache.root),
                                 disk_digest=disk_digest)
    finally:
        close()
    disk_size = source.disk().size if isinstance(source, baremetal.MappedImage) else source.size
    if as_json:
        click.echo(json.dumps({"ref": name, "target": str(result.target), "kind": result.kind,
                               "written": result.written, "ranges": result.units,
                               "verified": result.verified,
                               "verified_bytes": result.verified_bytes,
                               "compared_with": result.against if result.verified else None,
                               "env": env_name, "disk_size": disk_size}))
        return
    state = (f"verified: all {result.verified_bytes} bytes read back from the target equal "
             f"{result.against}" if result.verified else "NOT verified (--no-verify)")
    click.echo(f"flashed {name} onto {result.target}: {result.written} bytes written in "
               f"{result.units} ranges, {state}")


@click.command("serve")
@click.argument("ref")
@click.option("--listen", required=True, metavar="IP:PORT",
              help="Address to serve on, e.g. 10.0.0.1:8000; servers chain-load "
                   "http://IP:PORT/boot.ipxe.")
@click.option("--env", "env_name", help="Environment whose [env.NAME] vars the server gets "
              "(as an extra initrd).")
@click.option("--config", "config_path", type=click.Path(),
              help="imagebuilder.toml holding the environments (default: ./imagebuilder.toml).")
@click.option("--allow", "allow", multiple=True, metavar="CIDR",
              help="With --env: a client network (or address) that may fetch the environment; "
                   "repeatable. Required unless --listen is a loopback address; others get 403.")
@click.option("--quiet", is_flag=True, help="Do not log requests.")
def serve_cmd(ref: str, listen: str, env_name: str | None, config_path: str | None,
              allow: tuple[str, ...], quiet: bool) -> None:
    """Serve image REF (NAME:VERSION, or a kernel-initrd export directory) for network boot:
    /boot.ipxe, /vmlinuz and /initrd/N.img over HTTP, until interrupted."""
    from ..targets.metal import netboot

    address = netboot.parse_listen(listen)
    allowed = netboot.parse_allow(allow)
    netboot.check_allow(address[0], allowed, env_name is not None)
    env_vars = read_env_vars(env_name, config_path)
    path = Path(ref)
    if path.is_dir():
        source = netboot.NetbootSource.of_directory(path)
    else:
        home = get_home()
        image = home.store.resolve(ref)
        warn_without_metal(image.config)
        source = netboot.NetbootSource.of_image(home.store, image)
    if env_name is not None:
        source = source.with_env(env_name, env_vars)
    log = None if quiet else (lambda line: click.echo(line, err=True))
    server = netboot.NetbootServer(source, address, log=log, allow=allowed)
    click.echo(f"serving {source.title} at {server.url} (Ctrl-C stops)", err=True)
    if env_name is not None:
        clients = ", ".join(str(n) for n in server.env_clients)
        click.echo(f"environment {env_name} only for {clients}; other clients get 403", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


COMMANDS = [flash_cmd, serve_cmd]
