"""Signed statements about an image, as cosign writes them: DSSE envelopes at ``.att``.

A signature (:mod:`.cosign`) says "this key vouches for this manifest digest". An attestation
says more: "this key vouches for this statement about it", the statement being an in-toto
Statement whose subject is the image, here its SLSA provenance (:mod:`.provenance`) or its
CycloneDX SBOM. The statement travels inside a DSSE envelope (Dead Simple Signing Envelope,
https://github.com/secure-systems-lab/dsse): the payload, base64, with its type and the
signatures over the *pre-authentication encoding* of both (:func:`pae`), so that a signature
over one payload type can never be replayed as another.

cosign keeps the attestations of ``REPO@sha256:HEX`` in the manifest at tag ``sha256-HEX.att``
of the same repository: one layer per envelope, of media type
:data:`ENVELOPE_MEDIA_TYPE`, annotated with the statement's ``predicateType`` (how
``cosign verify-attestation --type`` picks them) and an empty signature annotation (the
signature is in the envelope). :func:`layer` makes one such layer; :func:`attestations` makes
the two of an image from what the build attached to it.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import NotFoundError, UserError
from ..keyfiles import PrivateKey, sign_bytes, verify_bytes
from ..registry.client import Client
from ..registry.refs import RegistryRef
from ..registry.transfer import blob_body
from ..store import attachments
from ..store.layout import MANIFEST_MEDIA_TYPE, Descriptor, Image, Store
from ..store.oci import canonical_json
from .cosign import CONFIG_MEDIA_TYPE, parse_sig_manifest, sig_manifest
from .provenance import ARTIFACT_TYPE as PROVENANCE_ARTIFACT_TYPE
from .provenance import PREDICATE_TYPE as PROVENANCE_TYPE
from .provenance import PREDICATE_TYPE_V02 as PROVENANCE_TYPE_V02
from .provenance import STATEMENT_TYPE, subject, v02
from .signatures import remote_digest

PAYLOAD_TYPE = "application/vnd.in-toto+json"
ENVELOPE_MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json"
CYCLONEDX_TYPE = "https://cyclonedx.org/bom"
CYCLONEDX_ARTIFACT_TYPE = "application/vnd.cyclonedx+json"
#: The artifact type of an attestation attached to its image in the store (and pushed as a
#: referrer): a DSSE envelope, annotated like its layer in the ``.att`` manifest.
ATTESTATION_ARTIFACT_TYPE = ENVELOPE_MEDIA_TYPE
#: The annotation ``cosign verify-attestation --type`` matches, and cosign's signature
#: annotation (empty on an attestation layer: the signature is in the envelope).
PREDICATE_ANNOTATION = "predicateType"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
#: What people call each statement.
_NAMES = {PROVENANCE_TYPE: "SLSA v1 provenance", PROVENANCE_TYPE_V02: "SLSA v0.2 provenance",
          CYCLONEDX_TYPE: "CycloneDX SBOM"}
#: An envelope larger than this is refused unread (an SBOM of thousands of components is a
#: few MiB).
MAX_ENVELOPE_BYTES = 64 << 20

#: Signs bytes with the private key: the raw signature (ECDSA P-256: DER).
Signer = Callable[[bytes], bytes]
#: Checks a signature over bytes with one public key.
Verifier = Callable[[bytes, bytes], bool]


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: ``DSSEv1 LEN(type) type LEN(body) body`` (lengths
    in decimal ASCII, one space between each): what is signed."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def envelope(payload: bytes, sign: Signer, payload_type: str = PAYLOAD_TYPE) -> bytes:
    """``payload`` in a DSSE envelope signed by ``sign`` (as cosign writes it: no key id)."""
    signature = sign(pae(payload_type, payload))
    return canonical_json({
        "payloadType": payload_type,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [{"keyid": "", "sig": base64.b64encode(signature).decode()}],
    })


@dataclass(frozen=True)
class Opened:
    """A verified envelope: its payload type and payload."""

    payload_type: str
    payload: bytes


def open_envelope(data: bytes, verify: Verifier, what: str) -> Opened:
    """The payload of envelope ``data`` if one of its signatures verifies with ``verify``;
    UserError naming ``what`` if the envelope is malformed or no signature verifies."""
    if len(data) > MAX_ENVELOPE_BYTES:
        raise UserError(f"{what}: the DSSE envelope is over {MAX_ENVELOPE_BYTES >> 20} MiB")
    try:
        obj = json.loads(data)
        payload_type = obj["payloadType"]
        payload = base64.b64decode(obj["payload"], validate=True)
        signatures = [base64.b64decode(s["sig"], validate=True) for s in obj["signatures"]]
        if not isinstance(payload_type, str):
            raise TypeError("payloadType")
    except (ValueError, KeyError, TypeError, binascii.Error) as e:
        raise UserError(f"{what}: not a DSSE envelope ({type(e).__name__}: {e})") from None
    signed = pae(payload_type, payload)
    if not any(verify(signed, sig) for sig in signatures):
        raise UserError(f"{what}: no signature of the DSSE envelope verifies with the key")
    return Opened(payload_type, payload)


def sbom_statement(name: str, digest: str, sbom: bytes) -> bytes:
    """The in-toto statement saying image ``name`` (manifest ``digest``) has CycloneDX SBOM
    ``sbom``: the SBOM is the predicate (anything but a CycloneDX JSON document: UserError)."""
    try:
        predicate = json.loads(sbom)
    except ValueError:
        predicate = None
    if not (isinstance(predicate, dict) and predicate.get("bomFormat") == "CycloneDX"):
        raise UserError(f"the CycloneDX SBOM stored with {name} ({digest[:19]}) is not a "
                        "CycloneDX JSON document: refused to attest it; build the image again")
    return canonical_json({
        "_type": STATEMENT_TYPE,
        "subject": subject(name, digest),
        "predicateType": CYCLONEDX_TYPE,
        "predicate": predicate,
    })


def predicate_type(statement: bytes) -> str:
    """The ``predicateType`` of an in-toto statement."""
    value: Any = json.loads(statement).get("predicateType")
    if not isinstance(value, str):
        raise UserError("the in-toto statement names no predicateType")
    return value


@dataclass(frozen=True)
class Layer:
    """One layer of an ``.att`` manifest: a signed envelope and its annotations."""

    data: bytes
    annotations: dict[str, str]

    @property
    def predicate_type(self) -> str:
        return self.annotations[PREDICATE_ANNOTATION]


def layer(statement: bytes, sign: Signer) -> Layer:
    """``statement`` signed into an ``.att`` layer, annotated as cosign annotates it."""
    return Layer(envelope(statement, sign), {PREDICATE_ANNOTATION: predicate_type(statement),
                                             SIGNATURE_ANNOTATION: ""})


# --- the attestations of an image: the store, then the registry ------------------------------


@dataclass(frozen=True)
class AttestResult:
    """What ``sign`` attested: the predicate types signed now, those the key had signed
    already, and the statements the image lacks (an image built before provenance and SBOMs:
    rebuild it)."""

    added: tuple[str, ...]
    present: tuple[str, ...]
    missing: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"added": list(self.added), "present": list(self.present),
                "missing": list(self.missing)}

    def describe(self) -> str:
        """One line for people: what is attested now, and what could not be."""
        def names(types: tuple[str, ...]) -> str:
            named = [_NAMES.get(t, t) for t in types]
            return " and ".join([", ".join(named[:-1]), named[-1]] if len(named) > 1 else named)
        said = [f"attested its {names(self.added)}" if self.added else "",
                f"its {names(self.present)} already attested by this key" if self.present else "",
                (f"no {names(self.missing)} stored with it to attest (built before imagebuilder "
                 "made them, or only in the registry: build or pull it)") if self.missing else ""]
        return "; ".join(s for s in said if s)


def statements(store: Store, image: Image) -> dict[str, bytes | None]:
    """The in-toto statements about ``image`` that its build attached, by predicate type
    (None where the image has none): its provenance and its CycloneDX SBOM's statement.
    UserError if it has several of one (a pull keeps what a registry lists): none is chosen."""
    def attached(artifact_type: str) -> bytes | None:
        found = attachments.the_one(store, image.digest, artifact_type, image.ref)
        return attachments.payload(store, found) if found else None
    sbom = attached(CYCLONEDX_ARTIFACT_TYPE)
    slsa = attached(PROVENANCE_ARTIFACT_TYPE)
    if slsa is not None:
        slsa = checked(slsa, image, "provenance")
    if sbom is not None:
        sbom = checked(sbom_statement(image.ref, image.digest, sbom), image, "CycloneDX SBOM")
    try:
        older = None if slsa is None else v02(slsa)
    except (KeyError, TypeError, AttributeError):
        raise _refused(image, "provenance", "not a SLSA provenance v1 predicate") from None
    return {PROVENANCE_TYPE: slsa, PROVENANCE_TYPE_V02: older, CYCLONEDX_TYPE: sbom}


def checked(statement: bytes, image: Image, what: str) -> bytes:
    """``statement`` if it is an in-toto statement about ``image``: what is stored with an
    image may have come with a pull, and ``sign`` vouches for what it signs."""
    try:
        doc = json.loads(statement)
        digests = [s["digest"]["sha256"] for s in doc["subject"]]
        kind = doc["predicateType"]
    except (ValueError, KeyError, TypeError):
        raise _refused(image, what, "not an in-toto statement") from None
    if doc.get("_type") != STATEMENT_TYPE or not isinstance(kind, str):
        raise _refused(image, what, "not an in-toto statement v1")
    if image.digest.removeprefix("sha256:") not in digests:
        raise _refused(image, what, "about another image")
    return statement


def _refused(image: Image, what: str, why: str) -> UserError:
    return UserError(f"the {what} stored with {image.ref} ({image.digest[:19]}) is {why}: "
                     "refused to attest it; build the image again")


def local_layers(store: Store, digest: str) -> list[tuple[Descriptor, Layer]]:
    """The attestations attached to manifest ``digest``: (attachment, its envelope layer)."""
    out = []
    for desc in attachments.referrers(store, digest, ATTESTATION_ARTIFACT_TYPE):
        annotations = dict(desc.annotations or {})
        if PREDICATE_ANNOTATION in annotations:
            out.append((desc, Layer(attachments.payload(store, desc), annotations)))
    return out


def attested_by(layers: list[Layer], statement: bytes, verify: Verifier) -> bool:
    """Whether one of ``layers`` is an envelope that ``verify`` accepts whose signed payload
    is ``statement``: the same bytes, or an in-toto statement of the same predicateType about
    the same digests (what the layer's annotations say is unsigned and counts for nothing)."""
    for found in layers:
        try:
            opened = open_envelope(found.data, verify, "an attestation")
        except UserError:
            continue
        if opened.payload_type == PAYLOAD_TYPE and _same(opened.payload, statement):
            return True
    return False


def _same(signed: bytes, statement: bytes) -> bool:
    """Whether the statement ``signed`` says what ``statement`` says: the same bytes, or the
    same predicateType about the same subject digests."""
    return signed == statement or (_about(statement) or ()) == _about(signed)


def _about(statement: bytes) -> tuple[Any, list[str]] | None:
    """An in-toto statement's predicateType and subject digests (sorted), or None."""
    try:
        doc = json.loads(statement)
        return doc["predicateType"], sorted(canonical_json(s["digest"]).decode()
                                            for s in doc["subject"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def attest_local(store: Store, ref: str, key: PrivateKey) -> AttestResult:
    """Sign the statements the build attached to image ``ref`` (its provenance, its CycloneDX
    SBOM) with ``key`` into DSSE envelopes, kept as attachments of the image beside its
    signatures (``push`` writes them to its ``.att`` manifest); a statement ``key`` already
    signed (:func:`attested_by`) is not attested twice."""
    image = store.resolve(ref)
    existing = [found for _, found in local_layers(store, image.digest)]
    public = key.public()
    added, present, missing = [], [], []
    for predicate, statement in statements(store, image).items():
        if statement is None:
            missing.append(predicate)
        elif attested_by(existing, statement, lambda d, s: verify_bytes(public, d, s)):
            present.append(predicate)
        else:
            made = layer(statement, lambda data: sign_bytes(key, data))
            attachments.attach(store, image.digest, ATTESTATION_ARTIFACT_TYPE, made.data,
                               ENVELOPE_MEDIA_TYPE, made.annotations, keep=True)
            added.append(predicate)
    return AttestResult(tuple(added), tuple(present), tuple(missing))


def attestation_tag(digest: str) -> str:
    """The tag of the ``.att`` manifest of image ``digest``: ``sha256-<hex>.att``."""
    return digest.replace(":", "-", 1) + ".att"


def _send(store: Store, client: Client, repo: str, desc: Descriptor) -> None:
    client.ensure_blob(repo, desc.digest, desc.size,
                       blob_body(store.blob_path(desc.digest), desc, lambda n: None))


def push_attestations(store: Store, digest: str, target: RegistryRef, client: Client) -> int:
    """Add the store's attestations of image ``digest`` to its ``.att`` manifest in
    ``target``'s repository, as cosign keeps them (after a push; layers already there, by
    cosign or an earlier push, are kept); how many were new there."""
    repo = target.repository
    local = [Descriptor(ENVELOPE_MEDIA_TYPE, *_blob(store, desc), found.annotations)
             for desc, found in local_layers(store, digest)]
    got = client.get_manifest(repo, attestation_tag(digest))
    existing = ([] if got is None else
                parse_sig_manifest(got[0], f"{target.host}/{repo}:{attestation_tag(digest)}"))
    have = {d.digest for d in existing}
    new = [d for d in local if d.digest not in have]
    if not new:
        return 0
    for desc in new:
        _send(store, client, repo, desc)
    config, manifest = sig_manifest([*existing, *new])
    _send(store, client, repo, store.add_blob_bytes(config, CONFIG_MEDIA_TYPE))
    client.put_manifest(repo, attestation_tag(digest), manifest, MANIFEST_MEDIA_TYPE)
    return len(new)


def attest(store: Store, ref: str, key: PrivateKey, client: Client | None = None,
           target: RegistryRef | None = None, digest: str | None = None) -> AttestResult:
    """What ``sign`` calls: :func:`attest_local` for an image of the store; for one of a
    registry (``client``, ``target``), the same on the store's image of that digest (a built
    or pulled image keeps its statements there), then written to the registry's ``.att``
    manifest. ``digest`` is the manifest the signature was made for (``sign`` resolves a tag
    once: a tag moved meanwhile must not get the attestations); a registry image the store
    lacks has no statements here: none is attested."""
    if client is None or target is None:
        return attest_local(store, ref, key)
    digest = digest or remote_digest(client, target)
    try:
        store.resolve(digest)
    except NotFoundError:
        return AttestResult((), (), (PROVENANCE_TYPE, PROVENANCE_TYPE_V02, CYCLONEDX_TYPE))
    result = attest_local(store, digest, key)
    push_attestations(store, digest, target, client)
    return result


def _blob(store: Store, desc: Descriptor) -> tuple[str, int]:
    """(digest, size) of the envelope blob of attestation ``desc``."""
    layer_desc = attachments.all_blobs(store, desc)[1]
    return layer_desc.digest, layer_desc.size


__all__ = ["ATTESTATION_ARTIFACT_TYPE", "CYCLONEDX_ARTIFACT_TYPE", "CYCLONEDX_TYPE",
           "ENVELOPE_MEDIA_TYPE", "PAYLOAD_TYPE", "PROVENANCE_TYPE", "AttestResult", "Layer",
           "Opened", "Signer", "Verifier", "attest", "attest_local", "attestation_tag",
           "attested_by", "envelope", "layer", "local_layers", "open_envelope", "pae",
           "predicate_type", "push_attestations", "sbom_statement", "statements"]
