"""What a registry says an image is, checked in shape before anything acts on it.

A manifest or config pulled from a registry is input from whoever controls that registry. It is
bounded in size (a manifest is read as a stream and the read stops at :data:`MAX_MANIFEST_BYTES`;
a config larger than :data:`MAX_CONFIG_BYTES` is not fetched), parsed, and checked field by field
against what imagebuilder's own images hold, so that a malformed, hostile or merely foreign
document is one line naming what is wrong, never a traceback or an image that crashes ``export``
or ``run`` later: a manifest has a config and a kernel followed by at least one initrd layer,
each a descriptor with a sha256 digest and a size in bounds; a config is an object whose fields
have the types the commands read, and its kernel command line is one plain line
(:func:`imagebuilder.layers.cmdline.check_cmdline`: it becomes boot-loader and iPXE text).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from ..errors import FetchError, UserError
from ..layers.cmdline import check_cmdline
from ..store.layout import (
    ARTIFACT_TYPE,
    CONFIG_MEDIA_TYPE,
    INITRD_LAYER_MEDIA_TYPE,
    KERNEL_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    Descriptor,
    split_ref,
)

MAX_MANIFEST_BYTES = 4 << 20
"""The distribution spec's limit for manifests registries must accept."""
MAX_CONFIG_BYTES = 1 << 20
"""imagebuilder's configs are a few hundred bytes of JSON."""
MAX_LAYERS = 64
MAX_LAYER_BYTES = (4 << 30) - 1
"""A layer is a file on the ESP, and a FAT file holds less than 4 GiB."""
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class MalformedError(FetchError):
    """A manifest or config from a registry is not well-formed: it was not used."""


@dataclass(frozen=True)
class ImageManifest:
    """An image manifest's parts, checked: the config and the kernel and initrd layers."""

    config: Descriptor
    layers: tuple[Descriptor, ...]

    @property
    def descriptors(self) -> list[Descriptor]:
        return [self.config, *self.layers]


def load_object(data: bytes, what: str) -> dict[str, Any]:
    """``data`` as a JSON object; MalformedError naming ``what`` if it is not one."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise MalformedError(f"{what} is not JSON ({_short(e)})") from None
    if not isinstance(obj, dict):
        raise MalformedError(f"{what} is not a JSON object")
    return obj


def _descriptor(obj: Any, what: str, media_types: tuple[str, ...], max_size: int) -> Descriptor:
    if not isinstance(obj, dict):
        raise MalformedError(f"{what} is not a descriptor object")
    media_type, digest, size = obj.get("mediaType"), obj.get("digest"), obj.get("size")
    if media_type not in media_types:
        raise MalformedError(f"{what} has media type {_short(media_type)}, not "
                             f"{' or '.join(media_types)}")
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise MalformedError(f"{what} has no sha256 digest ({_short(digest)})")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= max_size:
        raise MalformedError(f"{what} has size {_short(size)}; at most {max_size} bytes allowed")
    annotations = _annotations(obj.get("annotations"), what)
    return Descriptor(media_type, digest, size, annotations)


def _annotations(value: Any, what: str) -> dict[str, str] | None:
    """``value`` as annotations (an object of strings, each at most 1 KiB), or None if absent."""
    if value is not None and not (
            isinstance(value, dict)
            and all(isinstance(k, str) and isinstance(v, str) and len(v) <= 1024
                    for k, v in value.items())):
        raise MalformedError(f"{what} has annotations that are not short strings")
    return dict(value) if value else None


def parse_manifest(data: bytes, where: str) -> ImageManifest:
    """The image manifest ``data`` (from ``where``), checked; UserError if it is another kind of
    image (a container image: use skopeo), MalformedError if it is not well-formed."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise MalformedError(f"the manifest of {where} is larger than {MAX_MANIFEST_BYTES} bytes")
    manifest = load_object(data, f"the manifest of {where}")
    config = manifest.get("config")
    media_type = manifest.get("mediaType", MANIFEST_MEDIA_TYPE)
    config_type = config.get("mediaType") if isinstance(config, dict) else None
    if media_type != MANIFEST_MEDIA_TYPE or config_type != CONFIG_MEDIA_TYPE:
        raise UserError(f"{where} is not an imagebuilder image ({_short(media_type)}, config "
                        f"{_short(config_type)}); pull it with skopeo instead")
    if manifest.get("artifactType", ARTIFACT_TYPE) != ARTIFACT_TYPE:
        raise UserError(f"{where} is a {_short(manifest.get('artifactType'))}, not an image")
    if manifest.get("schemaVersion") != 2:
        raise MalformedError(f"the manifest of {where} has schemaVersion "
                             f"{_short(manifest.get('schemaVersion'))}, not 2")
    _annotations(manifest.get("annotations"), f"the manifest of {where}")
    layers = manifest.get("layers")
    if not isinstance(layers, list) or not 2 <= len(layers) <= MAX_LAYERS:
        count = len(layers) if isinstance(layers, list) else "no list of"
        raise MalformedError(f"the manifest of {where} has {count} layers; an image has a "
                             f"kernel and 1 to {MAX_LAYERS - 1} initrd layers")
    return ImageManifest(
        config=_descriptor(config, f"the config descriptor of {where}", (CONFIG_MEDIA_TYPE,),
                           MAX_CONFIG_BYTES),
        layers=tuple(
            _descriptor(layer, f"layer {i} of {where}",
                        (KERNEL_MEDIA_TYPE,) if i == 0 else (INITRD_LAYER_MEDIA_TYPE,),
                        MAX_LAYER_BYTES)
            for i, layer in enumerate(layers)),
    )


def parse_artifact_layer(data: bytes, where: str, media_type: str, max_size: int) -> Descriptor:
    """The one layer of the artifact manifest ``data`` from ``where`` (a promotion history),
    checked like an image's: a sha256 digest, a size up to ``max_size``, string annotations."""
    manifest = load_object(data, f"the manifest of {where}")
    _annotations(manifest.get("annotations"), f"the manifest of {where}")
    layers = manifest.get("layers")
    if not isinstance(layers, list) or len(layers) != 1:
        raise MalformedError(f"the manifest of {where} has no list of one layer")
    return _descriptor(layers[0], f"the layer of {where}", (media_type,), max_size)


_CONFIG_TYPES: dict[str, type | tuple[type, ...]] = {
    "name": str, "version": str, "cmdline": str, "memory": int, "suite": str,
    "layers": list, "app": dict, "jvm": dict, "kernel": dict, "disk": dict,
}


def parse_config(data: bytes, where: str) -> dict[str, Any]:
    """The image config ``data`` (from ``where``), checked in the fields commands read."""
    config = load_object(data, f"the config of {where}")
    for key, kind in _CONFIG_TYPES.items():
        if key in config and (not isinstance(config[key], kind)
                              or isinstance(config[key], bool)):
            raise MalformedError(f"the config of {where} has a {key} that is not "
                                 f"{getattr(kind, '__name__', kind)}")
    if "name" in config or "version" in config:
        try:
            split_ref(f"{config.get('name')}:{config.get('version')}")
        except UserError:
            raise MalformedError(f"the config of {where} names the image "
                                 f"{_short(config.get('name'))}:{_short(config.get('version'))}"
                                 ", not a valid NAME:VERSION") from None
    if "cmdline" in config:
        try:
            check_cmdline(config["cmdline"])
        except UserError as e:
            raise MalformedError(f"the config of {where}: {e}") from None
    app = config.get("app") or {}
    port, health = app.get("port"), app.get("healthcheck", "/")
    if (port is not None and (not isinstance(port, int) or not 0 < port < 65536)) \
            or not isinstance(health, str):
        raise MalformedError(f"the config of {where} has an app port or health check of the "
                             "wrong type")
    disk = config.get("disk")
    if disk is not None and not (isinstance(disk.get("digest"), str)
                                 and _DIGEST.fullmatch(disk["digest"])
                                 and isinstance(disk.get("size"), int)):
        raise MalformedError(f"the config of {where} has a disk without a sha256 digest and size")
    return config


def _short(value: Any) -> str:
    text = value if isinstance(value, str) and value.isprintable() else repr(value)
    return text if len(text) <= 80 else text[:80] + "..."
