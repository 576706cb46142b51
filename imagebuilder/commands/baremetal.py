"""The bare-metal commands: ``flash`` (write an image onto a server's disk) and ``serve``
(boot it over the network). Parse, call :mod:`imagebuilder.targets.metal.source` (what to
write), :mod:`imagebuilder.targets.metal.flash` and :mod:`imagebuilder.targets.metal.netboot`,
print."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from . import env_vars as read_env_vars
from . import gated_image, get_home, require_signed
from .options import env_options, json_option, reporting
from .render import emit_json, err, phases


def warn_without_metal(config: Any) -> None:
    """Warn that a physical server may find no network driver in an image built without the
    ``metal`` driver set (images built before driver sets existed have none)."""
    if "metal" in config.get("hardware", []):
        return
    sets = config.get("hardware", [])
    suggested = ", ".join(f'"{s}"' for s in [*sets, "metal"])
    err(f"WARNING: {config.get('name', 'the image')} was built without the 'metal' driver set: a"
        " physical server may have no driver for its network card; add [system] hardware ="
        f" [{suggested}] to imagebuilder.toml and rebuild")


@click.command("flash")
@click.argument("ref")
@click.argument("target", type=click.Path())
@env_options("Environment whose [env.NAME] vars the server gets (written to a small config "
             "partition after the image's).")
@click.option("--bmap", "bmap_path", type=click.Path(dir_okay=False),
              help="With a raw image file as REF: its block map (default: REF.bmap if present).")
@click.option("--no-verify", is_flag=True, help="Do not read the disk back to check it.")
@click.option("--force", is_flag=True,
              help="Write into a partition rather than refusing (never a mounted disk, the "
                   "host's own disk or one too small).")
@json_option()
def flash_cmd(ref: str, target: str, env_name: str | None, config_path: str | None,
              bmap_path: str | None, no_verify: bool, force: bool, as_json: bool) -> None:
    """Write image REF (NAME:VERSION, or a raw image file) onto TARGET, a whole disk such as
    /dev/sdb or a disk image file: only the blocks holding data, then read back and verified."""
    from ..targets.metal import flash as baremetal
    from ..targets.metal.source import flash_source

    env_vars = read_env_vars(env_name, config_path)
    verified = require_signed(ref, env_name, config_path, paths=True)
    home = get_home()
    if verified is not None:
        gated_image(home.store, ref, verified)  # still there, or one line saying it changed
    source = flash_source(home.store, home.cache, ref, bmap_path,
                          env=(env_name, env_vars) if env_name is not None else None,
                          digest=verified)
    if source.image_config is not None:
        warn_without_metal(source.image_config)
    with phases() as bars:
        result = baremetal.flash(
            source.disk, Path(target), verify=not no_verify, force=force,
            progress=lambda phase, total: bars.start(total, "flash" if phase == "write"
                                                     else phase),
            private=env_name is not None, protected=(home.store.root, home.cache.root),
            disk_digest=source.disk_digest)
    if as_json:
        emit_json({"ref": source.name, "target": str(result.target), "kind": result.kind,
                   "written": result.written, "ranges": result.units,
                   "verified": result.verified, "verified_bytes": result.verified_bytes,
                   "compared_with": result.against if result.verified else None,
                   "env": env_name, "disk_size": source.disk_size})
        return
    state = (f"verified: all {result.verified_bytes} bytes read back from the target equal "
             f"{result.against}" if result.verified else "NOT verified (--no-verify)")
    click.echo(f"flashed {source.name} onto {result.target}: {result.written} bytes written in "
               f"{result.units} ranges, {state}")


@click.command("serve")
@click.argument("ref")
@click.option("--listen", required=True, metavar="IP:PORT",
              help="Address to serve on, e.g. 10.0.0.1:8000; servers chain-load "
                   "http://IP:PORT/boot.ipxe.")
@env_options("Environment whose [env.NAME] vars the server gets (as an extra initrd).")
@click.option("--allow", "allow", multiple=True, metavar="CIDR",
              help="With --env: a client network (or address) that may fetch the environment; "
                   "repeatable. Required unless --listen is a loopback address; others get 403.")
@click.option("--quiet", is_flag=True, help="Do not log requests.")
@reporting
def serve_cmd(ref: str, listen: str, env_name: str | None, config_path: str | None,
              allow: tuple[str, ...], quiet: bool) -> None:
    """Serve image REF (NAME:VERSION, or a kernel-initrd export directory) for network boot:
    /boot.ipxe, /vmlinuz and /initrd/N.img over HTTP, until interrupted."""
    from ..targets.metal import netboot

    address = netboot.parse_listen(listen)
    allowed = netboot.parse_allow(allow)
    netboot.check_allow(address[0], allowed, env_name is not None)
    env_vars = read_env_vars(env_name, config_path)
    verified = require_signed(ref, env_name, config_path, paths=True)
    path = Path(ref)
    if verified is None and path.is_dir():
        source = netboot.NetbootSource.of_directory(path)
    else:  # the gate verified exactly this digest: the store's image of it, never a path
        home = get_home()
        image = gated_image(home.store, ref, verified)
        warn_without_metal(image.config)
        source = netboot.NetbootSource.of_image(home.store, image)
    if env_name is not None:
        source = source.with_env(env_name, env_vars)
    log = None if quiet else err
    server = netboot.NetbootServer(source, address, log=log, allow=allowed)
    err(f"serving {source.title} at {server.url} (Ctrl-C stops)")
    if env_name is not None:
        clients = ", ".join(str(n) for n in server.env_clients)
        err(f"environment {env_name} only for {clients}; other clients get 403")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


COMMANDS: list[click.Command] = [flash_cmd, serve_cmd]
