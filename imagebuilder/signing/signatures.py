"""Where an image's signatures live, and signing and verifying there.

An image of the local store keeps each signature as an attachment
(:mod:`imagebuilder.store.attachments`, artifact type cosign's
:data:`~.cosign.SIGNATURE_ARTIFACT_TYPE`): the simple-signing payload as its layer, the signature
as its annotation ``dev.cosignproject.cosign/signature``. ``push`` takes them along to the
registry's ``sha256-<hex>.sig`` manifest (:func:`push_signatures`) and ``pull`` brings those back
(:func:`pull_signatures`). An image in a registry is signed in place: its signatures are the
layers of that manifest, as cosign keeps them, a new one appended (:func:`sign_remote`).

:func:`verified` is the one question the rest of imagebuilder asks (``verify``, and the
environments that admit only signed images): did one of these keys sign exactly this manifest
digest?
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import progress
from ..errors import DamagedError, IntegrityError, NotFoundError, UserError
from ..keyfiles import PrivateKey, PublicKey
from ..registry import referrers
from ..registry.client import Client
from ..registry.refs import RegistryRef
from ..store import attachments
from ..store.layout import MANIFEST_MEDIA_TYPE, Descriptor, Store
from ..store.oci import sha256_digest
from . import cosign
from .cosign import (
    SIGNATURE_ANNOTATION,
    SIGNATURE_ARTIFACT_TYPE,
    SIMPLESIGNING_MEDIA_TYPE,
    Signature,
    SignatureError,
    Verification,
    check,
    parse_sig_manifest,
    signature_of,
    signature_tag,
)

__all__ = ["SignResult", "Verification", "is_registry_ref", "local_signatures",
           "pull_signatures", "push_signatures", "remote_signatures", "sign_local",
           "sign_remote", "verified"]


@dataclass(frozen=True)
class SignResult:
    """What ``sign`` did: the image, the key, where the signature went, whether it is new
    (a signature by the same key for the same digest is not made twice)."""

    ref: str
    digest: str
    key: PublicKey
    location: str
    added: bool
    signatures: int

    def to_json(self) -> dict[str, Any]:
        return {"ref": self.ref, "digest": self.digest, **self.key.to_json(),
                "location": self.location, "added": self.added, "signatures": self.signatures}


def is_registry_ref(ref: str) -> bool:
    """Whether ``ref`` names an image in a registry (``HOST/REPO...``: a host has a dot, a port
    or is ``localhost``) rather than one of the local store."""
    host, sep, _ = ref.partition("/")
    return bool(sep) and ("." in host or ":" in host or host == "localhost")


# --- the local store ------------------------------------------------------------------------


def local_signatures(store: Store, digest: str) -> list[Signature]:
    """The signatures attached to manifest ``digest`` in ``store``; one whose payload blob no
    longer matches its digest comes back with its ``damage`` said."""
    try:
        found = attachments.referrers(store, digest, SIGNATURE_ARTIFACT_TYPE)
    except DamagedError as e:
        raise SignatureError(f"the signatures of {digest[:19]} in the store are damaged or "
                             f"tampered with: {str(e).split(': ')[0]}") from None
    out = []
    for desc in found:
        annotation = (desc.annotations or {}).get(SIGNATURE_ANNOTATION, "")
        try:
            out.append(Signature(attachments.payload(store, desc), annotation))
        except (DamagedError, UserError):
            out.append(Signature(b"", annotation, f"the payload of signature {desc.digest[:19]}"
                                                  " no longer matches its digest"))
    return out


def sign_local(store: Store, ref: str, key: PrivateKey) -> SignResult:
    """Sign the image ``ref`` of the store with ``key`` (unless that key already did)."""
    image = store.resolve(ref)
    existing = local_signatures(store, image.digest)
    done = bool(check(image.ref, image.digest, existing, [key.public()]))
    if not done:
        sig = cosign.sign(key, image.name, image.digest)
        attachments.attach(store, image.digest, SIGNATURE_ARTIFACT_TYPE, sig.payload,
                           SIMPLESIGNING_MEDIA_TYPE, {SIGNATURE_ANNOTATION: sig.signature},
                           keep=True)
    return SignResult(image.ref, image.digest, key.public(), "the local store", not done,
                      len(existing) + (not done))


# --- a registry -----------------------------------------------------------------------------


def remote_digest(client: Client, target: RegistryRef) -> str:
    """The manifest digest ``target`` names (its digest, or what its tag names now)."""
    return _remote_manifest(client, target).digest


def _remote_manifest(client: Client, target: RegistryRef) -> Descriptor:
    if target.tag is None and target.digest is None:
        raise UserError(f"'{target}' names no tag or digest: add :TAG or @sha256:...")
    got = client.get_manifest(target.repository, target.reference)
    if got is None:
        raise NotFoundError(f"{target} not found in the registry")
    return Descriptor(got[1], sha256_digest(got[0]), len(got[0]))


def _sig_layers(client: Client, repo: str, digest: str) -> list[Descriptor]:
    got = client.get_manifest(repo, signature_tag(digest))
    if got is None:
        return []
    return parse_sig_manifest(got[0], f"{client.host}/{repo}:{signature_tag(digest)}")


def _read_small_blob(client: Client, repo: str, layer: Descriptor) -> bytes:
    with client.blob_stream(repo, layer.digest, layer.size, lambda n: None) as stream:
        return b"".join(stream)


def remote_signatures(client: Client, repo: str, digest: str) -> list[Signature]:
    """The signatures in ``repo``'s ``.sig`` manifest of image ``digest``."""
    out = []
    for layer in _sig_layers(client, repo, digest):
        annotation = signature_of(layer)
        if annotation is None:
            continue
        try:
            out.append(Signature(_read_small_blob(client, repo, layer), annotation))
        except (IntegrityError, NotFoundError):
            out.append(Signature(b"", annotation, f"payload blob {layer.digest[:19]} is missing "
                                                  "or does not match its digest"))
    return out


def _append(client: Client, repo: str, digest: str, existing: list[Descriptor],
            new: Sequence[Signature]) -> int:
    """Add the signatures ``new`` that are not there yet to the ``.sig`` manifest of image
    ``digest`` (whose layers are ``existing``): payloads, config, then the manifest."""
    added = [s for s in new if not _holds(existing, s)]
    if not added:
        return 0
    for sig in added:
        client.ensure_blob_bytes(repo, sig.payload)
    # read again just before the PUT, so that what other signers appended meanwhile is kept
    fresh = _sig_layers(client, repo, digest)
    layers = [*fresh, *(s.layer() for s in added if not _holds(fresh, s))]
    config, manifest = cosign.sig_manifest(layers)
    client.ensure_blob_bytes(repo, config)
    client.put_manifest(repo, signature_tag(digest), manifest, MANIFEST_MEDIA_TYPE)
    return len(added)


SIGN_TRIES = 5
"""How many times ``sign`` appends its signature again when a concurrent signer's PUT of the
same ``.sig`` tag replaced it."""


def _holds(layers: list[Descriptor], sig: Signature) -> bool:
    return (sha256_digest(sig.payload), sig.signature) in {(d.digest, signature_of(d))
                                                           for d in layers}


def _append_kept(client: Client, target: RegistryRef, digest: str, existing: list[Descriptor],
                 sig: Signature) -> None:
    """Append ``sig`` to the ``.sig`` manifest, then read it back. A registry has no
    compare-and-swap: two signers who read the tag before either PUT each write their own list,
    and the last PUT wins (cosign has the same race). So a signature missing from what the tag
    names afterwards is appended again, a few times; then one line says it was lost."""
    repo = target.repository
    for _ in range(SIGN_TRIES):
        _append(client, repo, digest, existing, [sig])
        existing = _sig_layers(client, repo, digest)
        if _holds(existing, sig):
            return
    raise SignatureError(f"the signature of {target} ({digest[:19]}) was replaced {SIGN_TRIES} "
                         f"times in {target.host}/{repo}:{signature_tag(digest)} by other "
                         "signers writing it at the same time; sign again once they are done")


def sign_remote(client: Client, target: RegistryRef, key: PrivateKey) -> SignResult:
    """Sign the image ``target`` names in its registry with ``key``, appending to its
    ``.sig`` manifest as cosign does, and as a referrer where the registry has the referrers
    API (unless that key already signed it)."""
    subject = _remote_manifest(client, target)
    digest, repo = subject.digest, target.repository
    existing = _sig_layers(client, repo, digest)
    sigs = remote_signatures(client, repo, digest)
    done = bool(check(str(target), digest, sigs, [key.public()]))
    if not done:
        sig = cosign.sign(key, f"{target.host}/{repo}", digest)
        _append_kept(client, target, digest, existing, sig)
        referrers.push_referrer(client, repo, subject, SIGNATURE_ARTIFACT_TYPE, sig.payload,
                                SIMPLESIGNING_MEDIA_TYPE, {SIGNATURE_ANNOTATION: sig.signature})
        # once more after the referrer's requests: a signer who read the tag before our PUT
        # has had that long to write its list over ours
        _append_kept(client, target, digest, _sig_layers(client, repo, digest), sig)
    location = f"{target.host}/{repo}:{signature_tag(digest)}"
    return SignResult(str(target), digest, key.public(), location, not done,
                      len(sigs) + (not done))


def push_signatures(store: Store, digest: str, target: RegistryRef, client: Client) -> int:
    """Add the store's signatures of image ``digest`` to its ``.sig`` manifest in
    ``target``'s repository (after a push); how many were new there."""
    local = [s for s in local_signatures(store, digest) if s.damage is None]
    if not local:
        return 0
    existing = _sig_layers(client, target.repository, digest)
    return _append(client, target.repository, digest, existing, local)


def pull_signatures(store: Store, digest: str, source: RegistryRef, client: Client) -> int:
    """Keep the signatures of the registry's ``.sig`` manifest of image ``digest`` (after a
    pull) as attachments in the store, unchecked (verifying needs a key: ``verify``); how many.
    A ``.sig`` manifest that is not one is a warning: the pulled image stays, unsigned."""
    try:
        found = [s for s in remote_signatures(client, source.repository, digest)
                 if s.damage is None]
    except SignatureError as e:  # the image itself verified: keep it, say why it is unsigned
        progress.current().warn(f"{e}; its signatures were not taken")
        return 0
    for sig in found:
        attachments.attach(store, digest, SIGNATURE_ARTIFACT_TYPE, sig.payload,
                           SIMPLESIGNING_MEDIA_TYPE, {SIGNATURE_ANNOTATION: sig.signature},
                           keep=True)
    return len(found)


# --- the question -----------------------------------------------------------------------------


def verified(source: Store | Client, ref: str | RegistryRef,
             keys: Sequence[PublicKey]) -> Verification:
    """Whether one of ``keys`` signed exactly the manifest ``ref`` names: in the store
    (``source`` a Store, ``ref`` NAME:VERSION, NAME:ENV or a digest) or in a registry
    (``source`` that registry's Client, ``ref`` HOST/REPO:TAG or @DIGEST). True-ish when one
    did; otherwise its ``problem`` says why and :meth:`~.cosign.Verification.require` raises."""
    if isinstance(source, Store):
        image = source.resolve(str(ref))
        shown, digest, repo = image.ref, image.digest, ""
    else:
        target = ref if isinstance(ref, RegistryRef) else RegistryRef.parse(ref)
        shown, digest, repo = str(target), remote_digest(source, target), target.repository
    try:
        found = (local_signatures(source, digest) if isinstance(source, Store)
                 else remote_signatures(source, repo, digest))
    except SignatureError as e:  # unreadable as a whole: a Verification saying so
        return Verification(shown, digest, (), 0, str(e))
    return check(shown, digest, found, keys)
