"""Artifacts attached to an image of the store: its SBOMs, signatures and attestations.

OCI 1.1 lets an artifact say which image it is about: an artifact manifest (image-spec
manifest.md) with an ``artifactType``, the empty config (``application/vnd.oci.empty.v1+json``,
the two bytes ``{}``), its payload as the one layer, and a ``subject``, the descriptor of the
image manifest. A registry lists an image's artifacts as its referrers (distribution-spec 1.1),
so the SBOMs and signatures of an image travel with it (:mod:`imagebuilder.registry.referrers`).

In the store each attachment is an unnamed entry of index.json (as oras keeps referrers in an OCI
layout, so ``oras discover --oci-layout`` finds them), marked by
:data:`~imagebuilder.store.oci.SUBJECT_ANNOTATION` with its subject's digest and carrying its
``artifactType``. ``images`` does not list them (:func:`imagebuilder.store.index.is_tag`);
``gc`` keeps their blobs while their subject is kept and removes them with it, ``rm`` of the
image removes them, ``check`` verifies them like any entry. Attachment manifests are canonical
JSON with no timestamp of their own, so the same payload gives the same digest.

An image has at most one SBOM of each format and one provenance statement
(:data:`SINGLE_VALUED`); a build replaces its earlier ones. A pull keeps what the registry lists,
and anyone who can push to a repository can add referrers, so an image may come to hold several
of one such type: :func:`the_one` then refuses to choose between them (their index entries say
where each came from, :data:`ORIGIN_ANNOTATION`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ..errors import DamagedError, IntegrityError, NotFoundError, UserError
from ..sbom.formats import CYCLONEDX, SPDX
from . import index
from .layout import Store
from .oci import (
    DIGEST_RE,
    MANIFEST_MEDIA_TYPE,
    SUBJECT_ANNOTATION,
    Descriptor,
    canonical_json,
    sha256_digest,
)

EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"
EMPTY_DESCRIPTOR = Descriptor(EMPTY_MEDIA_TYPE, sha256_digest(EMPTY_JSON), len(EMPTY_JSON))
"""The config of an artifact manifest that has none (image-spec manifest.md)."""
MAX_PAYLOAD_BYTES = 64 << 20
"""An SBOM of a large app is a few MiB; a signature or attestation a few KiB."""
SINGLE_VALUED = {CYCLONEDX.media_type: "CycloneDX SBOM", SPDX.media_type: "SPDX SBOM",
                 "application/vnd.in-toto+json": "provenance statement"}
"""The artifact types an image has one of (by what people call them): never chosen among."""
ORIGIN_ANNOTATION = "io.imagebuilder.pulled-from"
"""On the index entry of a pulled attachment: the repository it was pulled from."""


def attach(store: Store, subject_digest: str, artifact_type: str, payload: bytes,
           media_type: str, annotations: dict[str, str] | None = None, *,
           keep: bool = False) -> Descriptor:
    """Attach ``payload`` (of ``media_type``) to the manifest ``subject_digest`` of the store as
    an artifact of ``artifact_type``; its descriptor. The same bytes give the same attachment
    (never twice); without ``keep`` it replaces the subject's other attachments of that type
    (an SBOM is replaced, signatures are kept several)."""
    _check_type(artifact_type, "artifact type")
    _check_type(media_type, "media type")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise UserError(f"an attachment of {len(payload)} bytes is larger than the "
                        f"{MAX_PAYLOAD_BYTES} bytes allowed")
    done: list[Descriptor] = []

    def change(entries: list[index.Entry]) -> list[index.Entry]:
        subject = _subject(store, entries, subject_digest)
        store.add_blob_bytes(EMPTY_JSON, EMPTY_MEDIA_TYPE)
        layer = store.add_blob_bytes(payload, media_type)
        data = artifact_manifest(subject, artifact_type, layer, annotations)
        desc = store.add_blob_bytes(data, MANIFEST_MEDIA_TYPE)
        done.append(_referrer(desc.digest, len(data), json.loads(data)))
        return _with(entries, subject_digest, desc.digest, len(data), artifact_type, keep)

    store.edit_index(change)
    return done[0]


def artifact_manifest(subject: Descriptor, artifact_type: str, layer: Descriptor,
                      annotations: dict[str, str] | None = None) -> bytes:
    """The OCI 1.1 artifact manifest (canonical JSON) of the payload ``layer`` about the
    manifest ``subject``: the same inputs give the same bytes, in the store and in a registry."""
    manifest: dict[str, Any] = {
        "schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE,
        "artifactType": artifact_type, "config": EMPTY_DESCRIPTOR.to_json(),
        "layers": [layer.to_json()], "subject": subject.to_json(),
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    return canonical_json(manifest)


def put_manifest(store: Store, subject_digest: str, data: bytes, blobs: dict[str, bytes], *,
                 keep: bool = True, origin: str | None = None) -> Descriptor:
    """Store the artifact manifest ``data`` as it is (a pulled attachment keeps its digest) as
    an attachment of ``subject_digest``, with the ``blobs`` (digest -> bytes) it names that the
    store lacks, noting ``origin`` (the repository it was pulled from) on its index entry;
    IntegrityError if it is not an artifact about that subject or a blob is not what its
    descriptor says."""
    manifest = parse(data)
    subject = manifest.get("subject") or {}
    if subject.get("digest") != subject_digest:
        raise IntegrityError(f"artifact {sha256_digest(data)[:19]} is about "
                             f"{str(subject.get('digest'))[:19]}, not {subject_digest[:19]}; "
                             "refused")
    parts = [Descriptor.from_json(d) for d in [manifest["config"], *manifest["layers"]]]
    artifact_type = _artifact_type(manifest) or ""  # _parse refused a manifest with none
    done: list[Descriptor] = []

    def change(entries: list[index.Entry]) -> list[index.Entry]:
        _subject(store, entries, subject_digest)
        for part in parts:
            _add_part(store, part, blobs)
        desc = store.add_blob_bytes(data, MANIFEST_MEDIA_TYPE)
        done.append(_referrer(desc.digest, len(data), manifest))
        return _with(entries, subject_digest, desc.digest, len(data), artifact_type, keep,
                     origin)

    store.edit_index(change)
    return done[0]


def the_one(store: Store, subject_digest: str, artifact_type: str, ref: str) -> Descriptor | None:
    """The attachment of ``artifact_type`` (one of :data:`SINGLE_VALUED`) of image ``ref``
    (manifest ``subject_digest``), or None; UserError if it has several: which one is the
    image's is not for us to guess (a registry can list a forged one beside the build's)."""
    found = referrers(store, subject_digest, artifact_type)
    if len(found) <= 1:
        return found[0] if found else None
    raise UserError(f"{ref} ({subject_digest[:19]}) has {several(store, subject_digest, found)}"
                    ", not one: refused to choose; build the image again, or remove it "
                    f"(imagebuilder rm {ref}) and pull it from a registry that lists one")


def origins(store: Store, subject_digest: str) -> dict[str, str | None]:
    """attachment digest -> the repository it was pulled from (None: made here), for the
    attachments of manifest ``subject_digest``."""
    return {str(e["digest"]): (e.get("annotations") or {}).get(ORIGIN_ANNOTATION)
            for e in store.entries() if index.subject_of(e) == subject_digest}


def several(store: Store, subject_digest: str, found: list[Descriptor]) -> str:
    """``found`` (attachments of one type of ``subject_digest``) for people: how many, what, and
    where each came from."""
    came = origins(store, subject_digest)
    what = SINGLE_VALUED.get(found[0].artifact_type or "", found[0].artifact_type or "")
    where = [f"{d.digest[:19]} " + (f"pulled from {came[d.digest]}"
                                    if came.get(d.digest) else "made here")
             for d in found]
    return f"{len(found)} {what}s attached ({', '.join(where)})"


def referrers(store: Store, subject_digest: str,
              artifact_type: str | None = None) -> list[Descriptor]:
    """The attachments of manifest ``subject_digest`` (of ``artifact_type`` if given), as an OCI
    referrers index lists them (artifactType and the manifest's annotations), sorted by type
    then digest; each manifest is read and verified."""
    out = []
    for entry in store.entries():
        if index.subject_of(entry) != subject_digest:
            continue
        digest = str(entry["digest"])
        data = store.read_blob(digest)
        desc = _referrer(digest, len(data), parse(data, DamagedError))
        if artifact_type is None or desc.artifact_type == artifact_type:
            out.append(desc)
    return sorted(out, key=lambda d: (d.artifact_type or "", d.digest))


def manifest(store: Store, descriptor: Descriptor) -> dict[str, Any]:
    """The artifact manifest ``descriptor`` names, read from the store and verified."""
    return parse(store.read_blob(descriptor.digest), DamagedError)


def payload(store: Store, descriptor: Descriptor) -> bytes:
    """The payload (the one layer) of the attachment ``descriptor``, verified."""
    layers = manifest(store, descriptor)["layers"]
    if len(layers) != 1:
        raise UserError(f"attachment {descriptor.digest[:19]} has {len(layers)} layers, not one "
                        "payload")
    layer = Descriptor.from_json(layers[0])
    data = store.read_blob(layer.digest)
    if len(data) != layer.size:
        raise DamagedError(f"the payload of attachment {descriptor.digest[:19]} has "
                           f"{len(data)} bytes where its manifest says {layer.size}")
    return data


def all_blobs(store: Store, descriptor: Descriptor) -> list[Descriptor]:
    """The config and layers of the attachment ``descriptor`` (what a push uploads first)."""
    found = manifest(store, descriptor)
    return [Descriptor.from_json(d) for d in [found["config"], *found["layers"]]]


# --- helpers -------------------------------------------------------------------------------


def _check_type(value: str, what: str) -> None:
    """A media type (RFC 6838: type/subtype), as OCI descriptors carry it."""
    kind, sep, sub = value.partition("/")
    if not (sep and kind and sub and value.isascii() and value.isprintable()
            and " " not in value and len(value) <= 255):
        raise UserError(f"{value[:80]!r} is not a valid {what} (type/subtype, e.g. "
                        "application/spdx+json)")


def _subject(store: Store, entries: list[index.Entry], digest: str) -> Descriptor:
    """The descriptor of manifest ``digest``, which an entry of the store must name."""
    if not DIGEST_RE.fullmatch(digest) or digest not in {m["digest"] for m in entries}:
        raise NotFoundError(f"no image {digest[:19]} in the store to attach an artifact to; "
                            "list images with 'imagebuilder images'")
    data = store.read_blob(digest)
    found = json.loads(data)
    media_type = found.get("mediaType") if isinstance(found, dict) else None
    return Descriptor(str(media_type or MANIFEST_MEDIA_TYPE), digest, len(data))


def _with(entries: list[index.Entry], subject: str, digest: str, size: int, artifact_type: str,
          keep: bool, origin: str | None = None) -> list[index.Entry]:
    """``entries`` with the attachment ``digest``, once (noting ``origin``): without ``keep``,
    in place of the subject's other attachments of ``artifact_type``."""
    def replaced(m: index.Entry) -> bool:
        return m["digest"] == digest or (
            not keep and index.subject_of(m) == subject
            and m.get("artifactType") == artifact_type)

    marks = {SUBJECT_ANNOTATION: subject, **({ORIGIN_ANNOTATION: origin} if origin else {})}
    entry = Descriptor(MANIFEST_MEDIA_TYPE, digest, size, marks, artifact_type).to_json()
    return [*(m for m in entries if not replaced(m)), entry]


def _add_part(store: Store, part: Descriptor, blobs: dict[str, bytes]) -> None:
    """Blob ``part`` into the store from ``blobs`` unless it is there intact."""
    data = blobs.get(part.digest)
    if data is None:
        if not store.has_intact_blob(part.digest, part.size):
            raise IntegrityError(f"blob {part.digest[:19]} of an attachment was not received")
        return
    if sha256_digest(data) != part.digest or len(data) != part.size:
        raise IntegrityError(f"blob {part.digest[:19]} of an attachment does not match its "
                             "descriptor; refused")
    store.add_blob_bytes(data, part.media_type)


def parse(data: bytes, error: Callable[[str], Exception] = IntegrityError) -> dict[str, Any]:
    """The artifact manifest ``data``, checked in shape (a config, a subject and layers, each a
    sha256 descriptor of at most :data:`MAX_PAYLOAD_BYTES`; string annotations; an artifact
    type); ``error`` if it is not one."""
    digest = sha256_digest(data)[:19]
    try:
        found = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise error(f"artifact manifest {digest} is not JSON") from None
    if not isinstance(found, dict) or found.get("mediaType", MANIFEST_MEDIA_TYPE) \
            != MANIFEST_MEDIA_TYPE or found.get("schemaVersion") != 2:
        raise error(f"artifact manifest {digest} is not an OCI image manifest")
    layers = found.get("layers")
    descriptors = [found.get("config"), found.get("subject"),
                   *(layers if isinstance(layers, list) and layers else [None])]
    if not all(isinstance(d, dict) and isinstance(d.get("digest"), str)
               and DIGEST_RE.fullmatch(d["digest"]) and isinstance(d.get("size"), int)
               and not isinstance(d.get("size"), bool) and 0 <= d["size"] <= MAX_PAYLOAD_BYTES
               and isinstance(d.get("mediaType"), str) for d in descriptors):
        raise error(f"artifact manifest {digest} has no layer, or a config, subject or layer "
                    f"that is not a sha256 descriptor of at most {MAX_PAYLOAD_BYTES} bytes")
    annotations = found.get("annotations")
    if annotations is not None and not (isinstance(annotations, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items())):
        raise error(f"artifact manifest {digest} has annotations that are not strings")
    if _artifact_type(found) is None:
        raise error(f"artifact manifest {digest} has no artifact type")
    return found


def _artifact_type(found: dict[str, Any]) -> str | None:
    """The manifest's artifactType, else its config's media type (distribution-spec 1.1)."""
    kind = found.get("artifactType")
    if kind is None and isinstance(found.get("config"), dict):
        kind = found["config"].get("mediaType")
        kind = None if kind == EMPTY_MEDIA_TYPE else kind
    return kind if isinstance(kind, str) and kind else None


def _referrer(digest: str, size: int, found: dict[str, Any]) -> Descriptor:
    annotations = found.get("annotations")
    return Descriptor(MANIFEST_MEDIA_TYPE, digest, size,
                      dict(annotations) if annotations else None, _artifact_type(found))
