"""The commands about the images in the local store: ``images``, ``inspect`` and ``rm``.

Parse, call :mod:`imagebuilder.store` and :mod:`imagebuilder.registry.promote` (which environments
an image is in), print: a table or lines for a person, one JSON value with ``--json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from ..errors import ImageBuilderError, UserError
from . import get_home, human_size
from .options import json_option
from .render import emit_json, reporter

if TYPE_CHECKING:
    from ..store.layout import Image, Store


def _image_json(image: Image) -> dict[str, Any]:
    return {
        "ref": image.ref, "name": image.name, "version": image.version, "digest": image.digest,
        "size": image.size, "refs": list(image.refs),
    }


@click.command("images")
@json_option("Print the images as JSON.")
def images_cmd(as_json: bool) -> None:
    """List the images in the local store and the environments they are promoted to."""
    from ..registry.promote import environments_of
    store = get_home().store
    images = store.images()
    envs = {i.ref: environments_of(store, i.name, i.digest) for i in images}
    if as_json:
        emit_json([{**_image_json(i), "environments": envs[i.ref]} for i in images])
        return
    rows = [("NAME", "VERSION", "DIGEST", "SIZE", "ENVIRONMENTS")]
    rows += [(i.name, i.version, i.digest[:19], human_size(i.size), ",".join(envs[i.ref]) or "-")
             for i in images]
    widths = [max(len(r[c]) for r in rows) for c in range(5)]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@click.command("inspect")
@click.argument("ref")
@json_option("Print the manifest and config as JSON.")
@click.option("--sizes", is_flag=True,
              help="Show what each layer carries: its size stored and unpacked, the directories "
                   "holding most of it and its largest files.")
@click.option("--sbom", type=click.Choice(["cyclonedx", "spdx"]),
              help="Print the image's software bill of materials, as the build stored it "
                   "(CycloneDX 1.6 or SPDX 2.3 JSON).")
def inspect_cmd(ref: str, as_json: bool, sizes: bool, sbom: str | None) -> None:
    """Show an image's kernel, command line, layers, environments and promotion history."""
    import dataclasses

    from ..registry.promote import environments_of, history
    store = get_home().store
    image = store.resolve(ref)
    if sbom:
        click.echo(_sbom(store, image, sbom), nl=False)  # bytes: written as they are
        return
    if sizes:
        _print_sizes(store, image, as_json)
        return
    envs = environments_of(store, image.name, image.digest)
    needs = _memory_needs(image)
    if as_json:
        promotions = [dataclasses.asdict(p) for p in history(store, image.name)]
        emit_json({**_image_json(image), "config": image.config, "manifest": image.manifest,
                   "environments": envs, "promotions": promotions,
                   "memory": needs.to_json() if needs else None})
        return
    _print_image(image, envs, needs)


def _print_image(image: Image, envs: list[str], needs: Any) -> None:
    from ..store.layout import TITLE_ANNOTATION
    cfg = image.config
    click.echo(f"image:    {image.ref}")
    click.echo(f"digest:   {image.digest}")
    click.echo(f"envs:     {', '.join(envs) or '-'}")
    click.echo(f"size:     {human_size(image.size)}")
    disk = cfg.get("disk", {})
    if disk:
        click.echo(f"disk:     {disk.get('digest')} ({human_size(int(disk.get('size', 0)))} raw, "
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
        click.echo(f"  {title:<9} {human_size(layer.size):>10}  {layer.digest}")


def _sbom(store: Store, image: Image, key: str) -> bytes:
    """The stored SBOM of ``image`` in format ``key``, its bytes as the build wrote them
    (UserError if it has several: a pull keeps what a registry lists; none is chosen)."""
    from ..sbom.formats import FORMATS
    from ..store import attachments
    fmt = FORMATS[key]
    found = attachments.the_one(store, image.digest, fmt.media_type, image.ref)
    if found is None:
        raise UserError(f"{image.ref} has no {fmt.title} SBOM: it was built (or pushed) before "
                        "imagebuilder made SBOMs; build it again to make them")
    return attachments.payload(store, found)


def _memory_needs(image: Image) -> Any:
    """The image's :class:`~imagebuilder.targets.qemu.memory.Needs`, or None if its layers cannot
    be read."""
    from ..targets.qemu import memory
    home = get_home()
    try:
        return memory.image_needs(home.cache, home.store, image)
    except ImageBuilderError as exc:
        reporter().warn(f"memory needs unknown: {exc}")
        return None


def _print_sizes(store: Store, image: Image, as_json: bool) -> None:
    from ..store.sizes import layer_sizes
    report = layer_sizes(store, image)
    if as_json:
        emit_json({"ref": image.ref, "digest": image.digest,
                   "stored": sum(layer.stored for layer in report),
                   "unpacked": sum(layer.unpacked for layer in report),
                   "layers": [layer.to_json() for layer in report]})
        return
    click.echo(f"image:    {image.ref} ({human_size(sum(r.stored for r in report))} stored, "
               f"{human_size(sum(r.unpacked for r in report[1:]))} unpacked in RAM)")
    for layer in report:
        click.echo(f"{layer.title}: {human_size(layer.stored)} stored, "
                   f"{human_size(layer.unpacked)} unpacked, {layer.files} files")
        for path, size in layer.dirs:
            click.echo(f"  {human_size(size):>10}  {path.rstrip('/')}/  (directory)")
        for path, size in layer.largest:
            click.echo(f"  {human_size(size):>10}  {path}")


@click.command("rm")
@click.argument("refs", nargs=-1, required=True, metavar="REF...")
@json_option("Print what was removed as JSON: [{ref, digest}, ...].")
def rm_cmd(refs: Sequence[str], as_json: bool) -> None:
    """Remove images from the local store (blobs other images use are kept). A reference that
    is not there stops the command; those before it are removed (and printed)."""
    store = get_home().store
    removed: list[dict[str, str]] = []
    try:
        for ref in refs:
            removed.append({"ref": ref, "digest": store.remove(ref)})
            if not as_json:
                click.echo(f"removed {ref} ({removed[-1]['digest']})")
    finally:
        if as_json:
            emit_json(removed)


COMMANDS: list[click.Command] = [images_cmd, inspect_cmd, rm_cmd]
