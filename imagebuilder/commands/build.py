"""The commands that write an image: ``build`` (into the store, and files with ``--format``)
and ``export`` (a stored image as a disk, an ISO or kernel + initrd).

``-o``/``--output`` names the one file a command writes (export, userdata); build's ``--format``
files go into a directory, ``--output-dir``. Parse, call :mod:`imagebuilder.build.plan` and
:mod:`imagebuilder.formats.export`, print.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import UserError
from . import get_home, human_size
from .options import json_option
from .render import emit_json, reporter

if TYPE_CHECKING:
    from ..config.parse import Config

SYNC_HELP = ("fsync the output before it appears (default: like qemu-img convert, leave writing "
             "it to disk to the kernel; it still appears whole or not at all).")


def _load_config(source: str | None, name: str | None, version: str | None,
                 mirror: str | None) -> Config:
    from ..config import parse as config_mod
    path = Path(source or ".")
    if path.suffix == ".jar":
        cfg = config_mod.from_jar(path, name, version)
    else:
        cfg = config_mod.load(path)
    return config_mod.with_overrides(cfg, name=name, version=version, mirror=mirror)


def _refuse_old_output(_ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        raise UserError(f"build -o is now --output-dir {value}: the directory of the --format "
                        "files (-o names the one file export and userdata write)")


def _output_dir(formats: Sequence[str], output_dir: str) -> Path:
    from ..formats import export
    for fmt in formats:
        export.check_format(fmt)
    out_dir = Path(output_dir)
    if formats and not out_dir.is_dir():
        raise UserError(f"output directory {out_dir} does not exist")
    return out_dir


@click.command("build")
@click.argument("source", required=False, metavar="[DIR | APP.jar]")
@click.option("--name", help="Image name (overrides [image] name; required for a bare jar).")
@click.option("--version", "version", help="Image version (overrides [image] version).")
@click.option("--mirror", help="Debian mirror URL (default: the host's apt configuration).")
@click.option("--format", "formats", multiple=True, metavar="FORMAT",
              help="Also write the image as raw, qcow2, vmdk, vhd, iso or kernel-initrd "
                   "(repeatable) into the --output-dir directory.")
@click.option("--output-dir", "output_dir", type=click.Path(file_okay=False), default=".",
              show_default=True, help="Directory for the --format files (NAME-VERSION.FORMAT).")
@click.option("-o", "--output", "old_output", hidden=True, expose_value=False,
              callback=_refuse_old_output)
@click.option("--sync", is_flag=True, help=SYNC_HELP)
@click.option("--aot/--no-aot", default=None,
              help="Run the app once at build time and ship the class data it leaves, so it "
                   "starts faster (overrides [jvm] aot; see docs/aot.md before you do).")
@json_option()
def build_cmd(source: str | None, name: str | None, version: str | None, mirror: str | None,
              formats: Sequence[str], output_dir: str, sync: bool, aot: bool | None,
              as_json: bool) -> None:
    """Build the app in DIR (its imagebuilder.toml; default: the current directory), or a bare
    executable jar with --name and --version, into the local image store."""
    from ..build.plan import build
    from ..config.parse import with_aot
    from ..formats import export
    out_dir = _output_dir(formats, output_dir)
    cfg = with_aot(_load_config(source, name, version, mirror), aot)
    home = get_home()
    result = build(cfg, home, mirror=mirror, report=reporter().info)
    written = []
    if formats:
        image = home.store.resolve(result.ref)
        boot = export.BootSource.of_image(home.store, image)
        for fmt in formats:
            dest = out_dir / f"{image.name}-{image.version}{export.SUFFIXES[fmt]}"
            with reporter().progress(None, f"{fmt} {dest.name}") as advance:
                export.export(home.cache, boot, fmt, dest, progress=advance, sync=sync)
            written.append({"format": fmt, "path": str(dest)})
    if as_json:
        emit_json({"ref": result.ref, "digest": result.digest, "size": result.size,
                   "disk_digest": result.disk_digest, "sboms": result.sboms,
                   "outputs": written,
                   "stages": [{"name": s.name, "cached": s.hit, "seconds": round(s.seconds, 3)}
                              for s in result.stages]})
        return
    click.echo(f"{result.ref} {result.digest} ({human_size(result.size)})")
    for item in written:
        click.echo(f"wrote {item['path']}")


@click.command("export")
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
@click.option("--sync", is_flag=True, help=SYNC_HELP)
@json_option()
def export_cmd(ref: str, fmt: str, output: str, size_text: str | None, with_bmap: bool,
               sync: bool, as_json: bool) -> None:
    """Write image REF as a bootable disk (BIOS and UEFI), a hybrid ISO, or kernel + initrd."""
    from ..formats import export
    export.check_format(fmt)
    size = export.parse_size(size_text) if size_text is not None else None
    home = get_home()
    image = home.store.resolve(ref)
    boot = export.BootSource.of_image(home.store, image)
    dest = Path(output)
    with reporter().progress(None, f"{fmt} {dest.name}") as advance:
        bmap = export.export(home.cache, boot, fmt, dest, progress=advance, size=size,
                             sync=sync, bmap=with_bmap)
    result: dict[str, Any] = {"ref": image.ref, "format": fmt, "path": str(dest),
                              "bmap": str(bmap) if bmap else None}
    if as_json:
        emit_json(result)
        return
    click.echo(f"wrote {dest}")
    if bmap:
        click.echo(f"wrote {bmap}")


COMMANDS: list[click.Command] = [build_cmd, export_cmd]
