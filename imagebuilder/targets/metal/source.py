"""What ``flash`` writes: a stored image's bootable disk, or a raw image file someone exported.

A reference names a stored image: its bootable disk is assembled from the store and the written
disk is checked against the disk digest the build recorded. A path names a raw image file: with
its block map (given, or the ``FILE.bmap`` beside it) only the mapped ranges are written and
checked against the map; without one, every block that holds data. An environment adds a config
partition after the image's, which makes another disk than the recorded digest's, so that digest
is then not checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...disk.configpart import with_config_partition
from ...disk.model import Disk
from ...errors import UserError
from ...formats import bmap as bmap_mod
from ...formats.export import BootSource, bootable
from ...store.cache import Cache
from ...store.layout import Store
from .flash import MappedImage


@dataclass(frozen=True)
class FlashSource:
    """The disk to write, the name it goes by in messages, and what the result must equal."""

    disk: Disk | MappedImage
    name: str
    """The image's reference, or the image file's path."""
    disk_digest: str | None
    """The recorded digest a file target must equal (None: a file source, or a config
    partition was added)."""
    image_config: Mapping[str, Any] | None = None
    """The stored image's config (None for an image file)."""

    @property
    def disk_size(self) -> int:
        return self.disk.disk().size if isinstance(self.disk, MappedImage) else self.disk.size


def flash_source(store: Store, cache: Cache, ref: str, bmap_path: str | None = None,
                 env: tuple[str, Mapping[str, str]] | None = None,
                 digest: str | None = None) -> FlashSource:
    """What to flash for ``ref`` (an existing file is an image file, else a reference into
    ``store``), with environment ``env`` (its name and boot variables) in a config partition.
    ``digest`` (what a signed-only gate verified): the store's image of exactly that digest."""
    path = Path(ref)
    source = (_of_file(path, bmap_path) if digest is None and path.is_file()
              else _of_image(store, cache, digest or ref, bmap_path))
    if env is None:
        return source
    disk = source.disk
    if isinstance(disk, MappedImage):
        bmap_mod.check_image(disk.path, disk.bmap)
        disk = disk.disk()
    return FlashSource(with_config_partition(disk, *env), source.name, None, source.image_config)


def _of_file(path: Path, bmap_path: str | None) -> FlashSource:
    map_path = Path(bmap_path) if bmap_path else path.with_name(path.name + ".bmap")
    if map_path.exists():
        return FlashSource(MappedImage(path, bmap_mod.read_bmap(map_path)), str(path), None)
    if bmap_path:
        raise UserError(f"block map {bmap_path} does not exist")
    return FlashSource(Disk.from_file(path), str(path), None)


def _of_image(store: Store, cache: Cache, ref: str, bmap_path: str | None) -> FlashSource:
    if bmap_path:
        raise UserError("--bmap goes with a raw image file, not an image reference")
    image = store.resolve(ref)
    boot = BootSource.of_image(store, image)
    return FlashSource(bootable(cache, boot), image.ref, boot.disk_digest, image.config)
