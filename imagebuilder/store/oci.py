"""The OCI structures of imagebuilder's images: media types, annotations, descriptors, the image
as the store hands it out, and the grammar of image references.

An image is an OCI artifact manifest whose config is imagebuilder's boot configuration and whose
layers are the kernel and the initrd layers, each named by digest; its SHA-256 is the image
digest. Manifests, configs and the index are canonical JSON (:func:`canonical_json`), so the same
inputs give the same digests on every machine. A reference is ``NAME:VERSION`` in the grammar of
the ``org.opencontainers.image.ref.name`` annotation, matched whole (no trailing newline).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import DamagedError, ImageBuilderError, UserError

OCI_LAYOUT_VERSION = "1.0.0"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
ARTIFACT_TYPE = "application/vnd.imagebuilder.image.v1"
CONFIG_MEDIA_TYPE = "application/vnd.imagebuilder.image.config.v1+json"
KERNEL_MEDIA_TYPE = "application/vnd.imagebuilder.kernel.v1"
INITRD_LAYER_MEDIA_TYPE = "application/vnd.imagebuilder.initrd.layer.v1.cpio+zstd"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
TITLE_ANNOTATION = "org.opencontainers.image.title"
"""Names a layer (vmlinuz, base, jvm, app) in the manifest."""
ENV_ANNOTATION = "io.imagebuilder.environment"
"""On an index entry that is an environment tag: the environment's name."""
HISTORY_ANNOTATION = "io.imagebuilder.promotions"
"""On an index entry that is an image name's promotion history ("true")."""
SUBJECT_ANNOTATION = "io.imagebuilder.subject"
"""On an index entry that is an attachment (:mod:`imagebuilder.store.attachments`): the digest
of the manifest it is about."""
HISTORY_TAG = "_promotions"
"""The tag of the promotion history (no environment or usual version is spelt like it)."""
MIN_DIGEST_PREFIX = 12
# annotations.md grammar for ref.name components; the version follows the last ':'.
_COMPONENT = r"[A-Za-z0-9]+(?:(?:[-._+@]|--)[A-Za-z0-9]+)*"
_NAME_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]{0,127}$")
RESERVED_VERSION_PREFIX = "_"
"""Versions (tags) beginning so are imagebuilder's own records (:data:`HISTORY_TAG`)."""


def canonical_json(obj: Any) -> bytes:
    """The one JSON encoding used for manifests, configs and the index (sorted keys, no spaces)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def split_ref(ref: str) -> tuple[str, str]:
    """``"name:version"`` -> ``("name", "version")``; a UserError if it is not of that form."""
    name, sep, version = ref.rpartition(":")
    if not sep or not _NAME_RE.fullmatch(name) or not _VERSION_RE.fullmatch(version):
        raise UserError(
            f"'{ref}' is not an image reference of the form NAME:VERSION (e.g. hello:1.0.0)"
        )
    if version.startswith(RESERVED_VERSION_PREFIX):
        raise UserError(f"'{ref}': a version beginning with '{RESERVED_VERSION_PREFIX}' is "
                        f"imagebuilder's own (NAME:{HISTORY_TAG} holds the promotion history); "
                        "choose another version")
    return name, version


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: what a blob is, its digest and size."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] | None = None
    artifact_type: str | None = None
    """The ``artifactType`` of the manifest it names (an OCI 1.1 referrer's), if any."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type, "digest": self.digest, "size": self.size,
        }
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Descriptor:
        try:
            annotations, artifact_type = obj.get("annotations"), obj.get("artifactType")
            return cls(
                media_type=str(obj["mediaType"]), digest=str(obj["digest"]), size=int(obj["size"]),
                annotations=dict(annotations) if annotations else None,
                artifact_type=artifact_type if isinstance(artifact_type, str) else None,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ImageBuilderError(f"malformed OCI descriptor {obj!r}: {e}") from None


DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
"""An OCI digest as imagebuilder writes and accepts it (match it whole)."""


def oci_digest(sha256_hex: str) -> str:
    """The OCI digest (``sha256:<hex>``) of a SHA-256 given in hex: the one place it is spelt."""
    return f"sha256:{sha256_hex}"


def sha256_digest(data: bytes) -> str:
    """The OCI digest of ``data``."""
    return oci_digest(hashlib.sha256(data).hexdigest())


def index_entry_problem(entry: object) -> str | None:
    """What is wrong with one entry of an OCI image index's ``manifests`` (None if nothing):
    imagebuilder reads an object with a ``sha256:<64 hex>`` digest and, if present, annotations
    that are an object of strings."""
    if not isinstance(entry, dict):
        return "an entry is not a JSON object"
    digest = entry.get("digest")
    if not isinstance(digest, str) or not DIGEST_RE.fullmatch(digest):
        return f"entry digest {str(digest)[:80]!r} is not sha256:<64 hex digits>"
    annotations = entry.get("annotations")
    if annotations is not None and not (
            isinstance(annotations, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in annotations.items())):
        return f"the annotations of entry {digest[:19]} are not an object of strings"
    return None


@dataclass
class Image:
    """An image in the store: its reference, manifest digest, manifest and config."""

    ref: str
    digest: str
    manifest: dict[str, Any]
    config: dict[str, Any]
    size: int
    """Sum of the layer sizes (kernel and initrd layers), in bytes."""
    refs: list[str] = field(default_factory=list)
    """Every reference pointing at this manifest (usually just ``ref``)."""

    @property
    def name(self) -> str:
        return self.ref.rpartition(":")[0] if ":" in self.ref else self.ref

    @property
    def version(self) -> str:
        return self.ref.rpartition(":")[2] if ":" in self.ref else ""

    @property
    def layers(self) -> list[Descriptor]:
        """The manifest's layers (kernel first, then initrd layers, as the builder put them)."""
        layers = self.manifest.get("layers")
        return [Descriptor.from_json(d) for d in layers] if isinstance(layers, list) else []

    def boot_layers(self) -> tuple[Descriptor, list[Descriptor]]:
        """The kernel and the initrd layers; DamagedError if the manifest lacks them."""
        layers = self.layers
        if len(layers) < 2:
            raise DamagedError(f"image {self.ref} has no kernel and initrd layers in its "
                               f"manifest: remove it ('imagebuilder rm {self.ref}') and rebuild "
                               "or pull it")
        return layers[0], layers[1:]
