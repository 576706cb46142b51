"""An image's attachments (SBOMs, signatures) in a registry: the OCI 1.1 referrers.

An attachment is an artifact manifest whose ``subject`` is the image manifest
(:mod:`imagebuilder.store.attachments`). A registry that implements distribution-spec 1.1 lists
them at ``GET /v2/NAME/referrers/DIGEST`` (an OCI image index of their descriptors), and says by
the ``OCI-Subject`` header of a manifest PUT that it took note of the subject. A registry without
the API (Debian's docker-registry 2.8, most registries before 2023) gets the referrers tag
schema instead: the client keeps that index itself at the tag ``sha256-<hex>`` of the subject,
reading it, adding or replacing its own descriptors and putting it back, never dropping those of
other tools (cosign's, oras's).

:func:`push` sends each attachment after its image (its blobs, then its manifest, by digest);
:func:`fetch` lists and downloads them for a pull, before the image enters the store, and
:func:`keep` stores them once it has. What the registry says is hostile input: every index,
manifest and blob is capped in size and checked against its digest. The image verifies by its own
digest, so what is wrong with its referrers never costs the image: a referrer that is about
another image, missing, malformed, oversize or does not verify is skipped with one warning naming
it and why, and the others are taken; a list that is not an index or is over
:data:`MAX_REFERRERS` gives none of them (a warning), and the image is pulled.

An image has one SBOM of each format and one provenance
(:data:`~imagebuilder.store.attachments.SINGLE_VALUED`), but anyone who can push to the repository
can list more. :func:`keep` stores every one listed and warns when the image then holds several of
one such type: ``inspect --sbom`` and ``sign`` refuse to choose among them (fail closed). Dropping
them all instead would hide the forgery and the genuine document alike, and dropping all but one
would be choosing; kept, each is named with where it came from.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import progress
from ..errors import FetchError, IntegrityError
from ..store import attachments
from ..store.layout import MANIFEST_MEDIA_TYPE, Descriptor, Store
from ..store.oci import DIGEST_RE, INDEX_MEDIA_TYPE, canonical_json, sha256_digest
from .client import Body, Client, data_body
from .manifest import MAX_MANIFEST_BYTES, MalformedError, load_object
from .streams import RegistryError

MAX_REFERRERS = 128
"""An image has a handful (two SBOMs, a few signatures and attestations)."""
MAX_TOTAL_BYTES = 256 << 20
"""What a pull takes of attachments at most, all blobs together."""
MAX_PAGES = 16
"""Pages of a paginated referrers answer (``Link: <...>; rel="next"``) followed at most."""
_NO_API = (400, 404, 405, 406)
"""What a registry without the referrers API answers its URL (the spec says 404)."""


def tag_of(subject: str) -> str:
    """The referrers tag schema's tag of manifest ``subject``: ``sha256-<hex>``."""
    return subject.replace(":", "-", 1)


@dataclass
class Found:
    """An attachment fetched from a registry: its manifest's bytes and the blobs it names."""

    digest: str
    data: bytes
    blobs: dict[str, bytes] = field(default_factory=dict)


# --- push -----------------------------------------------------------------------------------


def _stored(store: Store, digest: str) -> Callable[[int, int], Body]:
    """A stored blob as an upload body, read (and verified) only if it must be sent."""
    return lambda offset, length: data_body(store.read_blob(digest), offset, length)


def push(store: Store, subject: str, client: Client, repo: str) -> list[str]:
    """Push the attachments of manifest ``subject`` (already in ``repo``) with their blobs; their
    digests. The referrers tag is kept too unless the registry answered each manifest PUT with
    ``OCI-Subject`` (it has the referrers API and indexed them itself)."""
    descs = attachments.referrers(store, subject)
    processed = True
    for desc in descs:
        for part in attachments.all_blobs(store, desc):
            client.ensure_blob(repo, part.digest, part.size, _stored(store, part.digest))
        processed &= _put_manifest(client, repo, store.read_blob(desc.digest), subject)
    if descs and not processed:  # distribution-spec 1.1: no OCI-Subject, keep the tag schema
        _update_tag_index(client, repo, subject, descs)
    return [d.digest for d in descs]


def push_referrer(client: Client, repo: str, subject: Descriptor, artifact_type: str,
                  payload: bytes, media_type: str, annotations: dict[str, str]) -> str | None:
    """Attach ``payload`` to the manifest ``subject`` of ``repo`` as a referrer, if the registry
    has the referrers API (a registry without it gets nothing: the caller keeps its own tag);
    the artifact manifest's digest, or None."""
    if _api_page(client, f"/v2/{repo}/referrers/{subject.digest}", repo) is None:
        return None
    layer = Descriptor(media_type, sha256_digest(payload), len(payload))
    for blob in (attachments.EMPTY_JSON, payload):
        client.ensure_blob_bytes(repo, blob)
    data = attachments.artifact_manifest(subject, artifact_type, layer, annotations)
    _put_manifest(client, repo, data, subject.digest)
    return sha256_digest(data)


def _put_manifest(client: Client, repo: str, data: bytes, subject: str) -> bool:
    """PUT the artifact manifest ``data`` by its digest; whether the registry answered
    ``OCI-Subject: subject`` (it indexed the referrer itself)."""
    digest = sha256_digest(data)
    response = client.request(
        "PUT", f"/v2/{repo}/manifests/{digest}", scope=f"repository:{repo}:pull,push",
        ok=(200, 201), what=f"store attachment {digest[:19]} in {repo}",
        headers={"Content-Type": MANIFEST_MEDIA_TYPE}, body=lambda: data)
    response.close()
    return response.headers.get("OCI-Subject") == subject


def _update_tag_index(client: Client, repo: str, subject: str, descs: list[Descriptor]) -> None:
    """Add ``descs`` to the index at the subject's referrers tag (replacing descriptors of the
    same digest, keeping every other), and put it back if it changed."""
    tag = tag_of(subject)
    got = client.get_manifest(repo, tag)
    index: dict[str, Any] = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": []}
    if got is not None:
        index = load_object(got[0], f"{repo}:{tag}")
        if index.get("mediaType") != INDEX_MEDIA_TYPE or not isinstance(
                index.get("manifests"), list):
            raise RegistryError(f"{client.host}/{repo}:{tag} is not an OCI referrers index "
                                "(the tag schema's); it was left as it is and the attachments "
                                "are listed nowhere: remove that tag and push again")
    before = index["manifests"]
    ours = {d.digest for d in descs}
    index["manifests"] = [*(m for m in before
                            if not (isinstance(m, dict) and m.get("digest") in ours)),
                          *(d.to_json() for d in descs)]
    if got is None or canonical_json(before) != canonical_json(index["manifests"]):
        client.put_manifest(repo, tag, canonical_json(index), INDEX_MEDIA_TYPE)


# --- pull -----------------------------------------------------------------------------------


def fetch(client: Client, repo: str, subject: str) -> list[Found]:
    """The attachments of manifest ``subject`` in ``repo`` (through the referrers API, else the
    tag schema), every manifest and blob downloaded and checked; nothing is stored. A referrer
    that fails a check is skipped with a warning; a list that does, all of them."""
    where = f"{client.host}/{repo}@{subject[:19]}"
    try:
        listed = _listed(client, repo, subject)
    except FetchError as e:
        progress.current().warn(f"{e}; no attachment of {where} was taken")
        return []
    if len(listed) > MAX_REFERRERS:
        progress.current().warn(f"{where} lists more than {MAX_REFERRERS} referrers, over the "
                                "limit; no attachment of it was taken")
        return []
    found: list[Found] = []
    budget = [MAX_TOTAL_BYTES]
    for desc in listed:
        if desc.media_type != MANIFEST_MEDIA_TYPE or desc.digest in {f.digest for f in found}:
            continue
        try:
            found.append(_fetch_one(client, repo, subject, desc, budget))
        except FetchError as e:
            progress.current().warn(f"{e}; attachment {desc.digest[:19]} was not taken")
    return found


def keep(store: Store, subject: str, found: list[Found], origin: str = "") -> list[Descriptor]:
    """Store the ``found`` attachments of ``subject`` (now in the store), noting ``origin``
    (where they were pulled from); a warning for each single-valued type the image now has
    several of."""
    kept = [attachments.put_manifest(store, subject, f.data, f.blobs, keep=True,
                                     origin=origin or None) for f in found]
    for kind in sorted({d.artifact_type or "" for d in kept} & set(attachments.SINGLE_VALUED)):
        now = attachments.referrers(store, subject, kind)
        if len(now) > 1:
            progress.current().warn(
                f"{subject[:19]} now has {attachments.several(store, subject, now)}: "
                "'inspect --sbom' and 'sign' refuse to choose one; a registry should list one")
    return kept


def _listed(client: Client, repo: str, subject: str) -> list[Descriptor]:
    """The referrers of ``subject`` the API lists, else the tag schema's index."""
    listed = _api_list(client, repo, subject)
    if listed is None:
        got = client.get_manifest(repo, tag_of(subject))
        listed = [] if got is None else _entries(got[0], f"{client.host}/{repo}:{tag_of(subject)}")
    return listed


def _api_list(client: Client, repo: str, subject: str) -> list[Descriptor] | None:
    """The referrers the API lists (following pagination), or None without the API."""
    url: str | None = f"/v2/{repo}/referrers/{subject}"
    out: list[Descriptor] = []
    for number in range(MAX_PAGES):
        if url is None:
            return out
        page = _api_page(client, url, repo)
        if page is None and number == 0:
            return None
        if page is None:
            raise RegistryError(f"registry {client.host} lists the referrers in {repo} on "
                                "pages and answered no next page")
        data, url = page
        out += _entries(data, f"the referrers of {client.host}/{repo}@{subject[:19]}")
        if len(out) > MAX_REFERRERS:
            return out
    return out


def _api_page(client: Client, url: str, repo: str) -> tuple[bytes, str | None] | None:
    """One page of a referrers answer and the URL of the next, or None: no referrers API."""
    response = client.request("GET", url, scope=f"repository:{repo}:pull", ok=(200, *_NO_API),
                              what=f"list the referrers in {repo}",
                              headers={"Accept": INDEX_MEDIA_TYPE})
    with response:
        if response.status_code != 200:
            return None
        data = client.read_capped(response, MAX_MANIFEST_BYTES, f"the referrers in {repo}")
        next_url = response.links.get("next", {}).get("url")
    if next_url:
        next_url = urllib.parse.urljoin(response.url or client.base + url, next_url)
    return data, next_url


def _entries(data: bytes, where: str) -> list[Descriptor]:
    """The descriptors of the referrers index ``data`` from ``where``, checked in shape (an
    entry that is no descriptor is skipped with a warning)."""
    index = load_object(data, where)
    manifests = index.get("manifests")
    if index.get("mediaType", INDEX_MEDIA_TYPE) != INDEX_MEDIA_TYPE or not isinstance(
            manifests, list):
        raise MalformedError(f"{where} is not an OCI image index of referrers")
    out = []
    for entry in manifests[:MAX_REFERRERS + 1]:
        if not (isinstance(entry, dict) and isinstance(entry.get("digest"), str)
                and DIGEST_RE.fullmatch(entry["digest"]) and isinstance(entry.get("size"), int)
                and not isinstance(entry["size"], bool)
                and 0 <= entry["size"] <= MAX_MANIFEST_BYTES
                and isinstance(entry.get("mediaType"), str)):
            progress.current().warn(f"{where} lists a referrer that is not a sha256 descriptor "
                                    f"of at most {MAX_MANIFEST_BYTES} bytes: {str(entry)[:120]}; "
                                    "it was not taken")
            continue
        out.append(Descriptor(entry["mediaType"], entry["digest"], entry["size"]))
    return out


def _fetch_one(client: Client, repo: str, subject: str, desc: Descriptor,
               budget: list[int]) -> Found:
    """Referrer ``desc``: its manifest (about ``subject``, else refused) and its blobs."""
    where = f"attachment {desc.digest[:19]} in {client.host}/{repo}"
    got = client.get_manifest(repo, desc.digest)  # checked against the digest by the client
    if got is None:
        raise RegistryError(f"{where} is listed as a referrer of {subject[:19]} but is not "
                            "there")
    found = Found(desc.digest, got[0])
    try:
        manifest = attachments.parse(found.data)
    except IntegrityError as e:
        raise MalformedError(f"{where}: {e}") from None
    about = manifest["subject"]["digest"]
    if about != subject:
        raise IntegrityError(f"{where} is about {about[:19]}, not the image pulled "
                             f"({subject[:19]})")
    parts = [manifest["config"], *manifest["layers"]]
    size = sum(part["size"] for part in parts)
    if size > budget[0]:
        raise RegistryError(f"{where} would take the attachments of {subject[:19]} over "
                            f"{MAX_TOTAL_BYTES} bytes in all")
    budget[0] -= size  # spent even if a blob then fails: skipped referrers cost bytes too
    for part in parts:
        with client.blob_stream(repo, part["digest"], part["size"], lambda n: None) as stream:
            found.blobs[part["digest"]] = b"".join(stream)  # verified and cut off at size
    return found

