"""cosign's signature format, so that cosign and imagebuilder accept each other's signatures.

A cosign signature of an image is a *simple-signing payload*, the JSON document
``{"critical":{"identity":{"docker-reference":REPO},"image":{"docker-manifest-digest":DIGEST},
"type":"cosign container image signature"},"optional":null}`` (Go's compact encoding, keys in
this order), signed with ECDSA P-256/SHA-256; the base64 of the DER signature travels as the
annotation ``dev.cosignproject.cosign/signature`` of the layer holding the payload. A registry
keeps an image's signatures as the layers of one manifest at the tag ``sha256-<hex>.sig``
(:func:`signature_tag`), a new signature appended as a layer.

What the signature binds is the manifest digest inside the payload: a signature is for an image
only if it verifies with a trusted key *and* its payload names that image's digest
(:func:`check`). The identity (the repository) is informative, as in ``cosign verify``.

Everything read back (a ``.sig`` manifest, a payload, an annotation) may have been written by
anyone who can push to the registry: it is bounded and checked in shape before it is used, and
each way it can be wrong is one line (:class:`SignatureError`).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import UserError
from ..keyfiles import PrivateKey, PublicKey, sign_bytes, signer_of
from ..store.oci import DIGEST_RE, MANIFEST_MEDIA_TYPE, Descriptor, canonical_json, sha256_digest

SIMPLESIGNING_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIGNATURE_ARTIFACT_TYPE = "application/vnd.dev.cosign.artifact.sig.v1+json"
"""The artifactType cosign gives a signature kept as an OCI 1.1 referrer."""
PAYLOAD_TYPE = "cosign container image signature"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
MAX_SIGNATURES = 256
"""Layers of a ``.sig`` manifest read at most (each is one signature)."""
MAX_PAYLOAD_BYTES = 64 << 10
MAX_SIGNATURE_CHARS = 1024
_ZERO_TIME = "0001-01-01T00:00:00Z"  # what go-containerregistry writes for "no time"


class SignatureError(UserError):
    """An image's signatures do not show what was asked: none, by other keys, for another
    image, tampered with, or unreadable. Exit code 2."""


@dataclass(frozen=True)
class Signature:
    """One signature as stored: the payload bytes and the base64 signature annotation.
    ``damage`` says why it could not even be read (a blob that does not match its digest)."""

    payload: bytes
    signature: str
    damage: str | None = None

    def layer(self) -> Descriptor:
        """The layer descriptor that carries it in a ``.sig`` manifest."""
        return Descriptor(SIMPLESIGNING_MEDIA_TYPE, sha256_digest(self.payload),
                          len(self.payload), {SIGNATURE_ANNOTATION: self.signature})


def signature_tag(digest: str) -> str:
    """The tag of the ``.sig`` manifest of the image ``digest``: ``sha256-<hex>.sig``."""
    return digest.replace(":", "-", 1) + ".sig"


def payload(reference: str, digest: str) -> bytes:
    """The simple-signing payload of image ``digest`` in repository ``reference``, byte for
    byte as cosign writes it."""
    doc = {"critical": {"identity": {"docker-reference": reference},
                        "image": {"docker-manifest-digest": digest},
                        "type": PAYLOAD_TYPE},
           "optional": None}
    return json.dumps(doc, separators=(",", ":")).encode()


def sign(key: PrivateKey, reference: str, digest: str) -> Signature:
    """A new signature of image ``digest`` (in ``reference``) by ``key``."""
    data = payload(reference, digest)
    return Signature(data, base64.b64encode(sign_bytes(key, data)).decode())


def claimed_digest(data: bytes) -> str | None:
    """The manifest digest a simple-signing payload names, or None if ``data`` is not one."""
    try:
        doc = json.loads(data)
        critical = doc["critical"]
        digest = critical["image"]["docker-manifest-digest"]
        kind = critical["type"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None
    if kind != PAYLOAD_TYPE or not isinstance(digest, str) or not DIGEST_RE.fullmatch(digest):
        return None
    return digest


def _raw(signature: Signature) -> bytes | None:
    if len(signature.signature) > MAX_SIGNATURE_CHARS:
        return None
    try:
        return base64.b64decode(signature.signature, validate=True)
    except (binascii.Error, ValueError):
        return None


# --- deciding -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verification:
    """What the signatures of one image show for a set of trusted keys: who signed it
    (``signers``, empty if nobody trusted did) and, if nobody did, why (``problem``)."""

    image: str
    digest: str
    signers: tuple[PublicKey, ...]
    signatures: int
    problem: str | None

    def __bool__(self) -> bool:
        return self.problem is None

    def require(self) -> Verification:
        """This verification, or a SignatureError line naming the image and what is wrong."""
        if self.problem is not None:
            raise SignatureError(f"image {self.image} ({self.digest[:19]}): {self.problem}")
        return self

    def to_json(self) -> dict[str, Any]:
        return {"ref": self.image, "digest": self.digest, "verified": self.problem is None,
                "signers": [k.to_json() for k in self.signers], "signatures": self.signatures,
                **({"problem": self.problem} if self.problem else {})}


def _keys_shown(keys: Sequence[PublicKey]) -> str:
    return (f"key {keys[0].path}" if len(keys) == 1
            else "any of the keys " + ", ".join(k.path for k in keys))


def check(image: str, digest: str, signatures: Sequence[Signature],
          keys: Sequence[PublicKey]) -> Verification:
    """Which of ``keys`` signed image ``digest`` among ``signatures``; when none did, the
    most telling reason (a signature by a trusted key for another image, a payload that is
    not cosign's, damage, other keys), worded for the user."""
    signers: dict[str, PublicKey] = {}
    elsewhere: list[str] = []
    foreign = damaged = unknown = 0
    for sig in signatures:
        raw = _raw(sig)
        signer = None if sig.damage or raw is None else signer_of(keys, sig.payload, raw)
        if sig.damage or raw is None:
            damaged += 1
        elif signer is None:
            unknown += 1
        elif (claimed := claimed_digest(sig.payload)) is None:
            foreign += 1
        elif claimed != digest:
            elsewhere.append(claimed)
        else:
            signers.setdefault(signer.fingerprint, signer)
    problem = None
    if not signers:
        problem = _problem(len(signatures), keys, elsewhere, foreign, damaged, unknown,
                           [s.damage for s in signatures if s.damage])
    return Verification(image, digest, tuple(signers.values()), len(signatures), problem)


def _problem(count: int, keys: Sequence[PublicKey], elsewhere: list[str], foreign: int,
             damaged: int, unknown: int, damage: list[str | None]) -> str:
    by = _keys_shown(keys)
    if count == 0:
        return "it has no signatures; sign it with 'imagebuilder sign REF --key KEY'"
    if elsewhere:
        return (f"the signature by {by} is for another image ({elsewhere[0][:19]}), not this "
                "one: refused")
    if foreign:
        return (f"the payload signed by {by} is not a cosign signature payload for an image: "
                "refused")
    if damaged and not unknown:
        why = damage[0] if damage and damage[0] else "a signature annotation that is not base64"
        return f"its signature is damaged or tampered with ({why})"
    return (f"none of its {count} signature{'s' * (count != 1)} verifies with {by} (signed with "
            "another key, or the payload or signature was changed since)")


# --- the .sig manifest ----------------------------------------------------------------------


def sig_manifest(layers: Sequence[Descriptor]) -> tuple[bytes, bytes]:
    """(config, manifest) of a ``.sig`` manifest holding ``layers``, in cosign's shape: an OCI
    manifest whose config lists the payloads as the layers' diff ids."""
    config = canonical_json({
        "architecture": "", "config": {}, "created": _ZERO_TIME,
        "history": [{"created": _ZERO_TIME} for _ in layers], "os": "",
        "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
    })
    manifest = canonical_json({
        "schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": sha256_digest(config),
                   "size": len(config)},
        "layers": [layer.to_json() for layer in layers],
    })
    return config, manifest


def parse_sig_manifest(data: bytes, where: str) -> list[Descriptor]:
    """The signature layers of the ``.sig`` manifest ``data`` (from ``where``), checked in
    shape; layers of other media types are kept for :func:`sig_manifest` but are not
    signatures. A SignatureError line if it is not a signature manifest at all."""
    bad = f"{where} is not a cosign signature manifest"
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise SignatureError(f"{bad} (not JSON)") from None
    layers = doc.get("layers") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or doc.get("schemaVersion") != 2 or doc.get("mediaType", (
            MANIFEST_MEDIA_TYPE)) not in (MANIFEST_MEDIA_TYPE, DOCKER_MANIFEST_MEDIA_TYPE):
        raise SignatureError(f"{bad} (not an image manifest of schema version 2)")
    if not isinstance(layers, list) or len(layers) > MAX_SIGNATURES:
        raise SignatureError(f"{bad} (no list of at most {MAX_SIGNATURES} layers)")
    return [_layer(layer, f"{bad} (layer {i}") for i, layer in enumerate(layers)]


def _layer(obj: Any, bad: str) -> Descriptor:
    if not isinstance(obj, dict):
        raise SignatureError(f"{bad} is not an object)")
    media_type, digest, size = obj.get("mediaType"), obj.get("digest"), obj.get("size")
    annotations = obj.get("annotations") or {}
    if not isinstance(media_type, str) or not isinstance(digest, str) \
            or not DIGEST_RE.fullmatch(digest):
        raise SignatureError(f"{bad} has no media type or sha256 digest)")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0 or (
            media_type == SIMPLESIGNING_MEDIA_TYPE and size > MAX_PAYLOAD_BYTES):
        raise SignatureError(f"{bad} has a size that is not 0 to {MAX_PAYLOAD_BYTES} bytes)")
    if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()):
        raise SignatureError(f"{bad} has annotations that are not strings)")
    return Descriptor(media_type, digest, size, dict(annotations) or None)


def signature_of(layer: Descriptor) -> str | None:
    """The signature annotation of a signature layer, None if ``layer`` is not one."""
    if layer.media_type != SIMPLESIGNING_MEDIA_TYPE:
        return None
    return (layer.annotations or {}).get(SIGNATURE_ANNOTATION, "")
