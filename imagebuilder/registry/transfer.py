"""OCI distribution client: push images from the local store to a registry and pull them back.

Registries (ECR, GHCR, Harbor, Artifactory, Docker Hub, distribution) are the artifact
repositories teams already run, so an image travels between machines as what it already is in
the store: an OCI manifest, its config and its layers. This module speaks the distribution API
(distribution-spec, ``/v2/``) through :mod:`imagebuilder.registry.client`:

- push HEADs every blob first and uploads only what the registry lacks (an app-only change
  uploads the app layer and the config), by a cross-repository mount when the registry already
  holds the blob in another repository we pushed to, else monolithically (one streamed PUT) or,
  above ``chunk_size``, in chunks (PATCH with Content-Range). The manifest goes last, so a tag
  never names a manifest whose blobs are missing, however a push is interrupted; a rerun sends
  only what is still missing. A tag that already names another manifest is not moved without
  ``force``.
- pull takes every blob from the client as a verified stream (hashed as it is read, cut off at
  its size) and has the store write it into a scratch directory of its own; only once every blob
  verified does the store move the blobs and the manifest in, so it is left as it was if anything
  fails. Memory stays flat whatever the layer size. A stream that breaks is fetched again.
- what push sends is read from the store's blob and hashed as it goes (:class:`SentDigest`), so
  a blob damaged in the local store is never uploaded.
- the image's attachments (SBOMs, signatures: :mod:`imagebuilder.registry.referrers`) go after
  its manifest on push, and come with it on pull, checked before the image is stored.
- what a registry sends is checked in shape before it is used
  (:mod:`imagebuilder.registry.manifest`): a malformed manifest or config, or one with no layers,
  is one line and nothing is stored.

References live in :mod:`imagebuilder.registry.refs`, credentials in
:mod:`imagebuilder.registry.creds`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import NotFoundError, UserError
from ..fsutil import write_atomic
from ..hashing.core import MultiHasher
from ..store import blobs
from ..store.layout import MANIFEST_MEDIA_TYPE, Descriptor, Image, Store, split_ref
from ..store.oci import oci_digest
from . import client as regclient
from . import referrers
from .client import DEFAULT_CHUNK_SIZE, RETRIES, WORKERS, Client, RegistryAuthError, RegistryError
from .creds import credentials_for, docker_config_path
from .manifest import parse_config, parse_manifest
from .refs import RegistryRef, is_loopback
from .streams import CHUNK, StreamBroken

__all__ = [
    "DEFAULT_CHUNK_SIZE", "BlobLocations", "Client", "RegistryAuthError", "RegistryError",
    "RegistryRef", "TransferResult", "credentials_for", "docker_config_path", "is_loopback",
    "pull", "push",
]


# --- where blobs were pushed: sources for cross-repository mounts ---------------------------


class BlobLocations:
    """A small JSON map host -> digest -> repositories we pushed the blob to."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._data: dict[str, dict[str, list[str]]] = {}
        if path is not None:
            try:
                data = json.loads(path.read_text())
                if isinstance(data, dict):
                    self._data = data
            except (OSError, ValueError):
                pass

    def source(self, host: str, digest: str, repo: str) -> str | None:
        repos = self._data.get(host, {}).get(digest, [])
        return next((r for r in repos if r != repo), None)

    def add(self, host: str, digest: str, repo: str) -> None:
        repos = self._data.setdefault(host, {}).setdefault(digest, [])
        if repo not in repos:
            repos.append(repo)
            del repos[:-4]

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # a hint for mounts, read back leniently: no fsync
        write_atomic(self.path, json.dumps(self._data, sort_keys=True).encode(), sync=False)


# --- push and pull -------------------------------------------------------------------------


@dataclass
class TransferResult:
    """What a push or pull moved."""

    ref: str
    target: str
    digest: str
    bytes_sent: int = 0
    bytes_received: int = 0
    blobs_sent: list[str] = field(default_factory=list)
    blobs_mounted: list[str] = field(default_factory=list)
    blobs_skipped: list[str] = field(default_factory=list)
    blobs_received: list[str] = field(default_factory=list)
    attachments: list[str] = field(default_factory=list)
    """Digests of the attachments (SBOMs, signatures) pushed or pulled with the image."""
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "ref": self.ref, "target": self.target, "digest": self.digest,
            "bytes_sent": self.bytes_sent, "bytes_received": self.bytes_received,
            "blobs_sent": len(self.blobs_sent), "blobs_mounted": len(self.blobs_mounted),
            "blobs_skipped": len(self.blobs_skipped),
            "blobs_received": len(self.blobs_received), "attachments": len(self.attachments),
            "seconds": round(self.seconds, 3),
        }


Progress = Callable[[int, int], Callable[[int], None]]
"""progress(total_bytes) -> update(n): how push and pull report bytes moved."""


def _no_progress(total: int, count: int) -> Callable[[int], None]:
    return lambda n: None


def push(store: Store, image: Image, target: RegistryRef, client: Client, *,
         force: bool = False, chunk_size: int = DEFAULT_CHUNK_SIZE,
         locations: BlobLocations | None = None, progress: Progress = _no_progress,
         ) -> TransferResult:
    """Push ``image`` to ``target`` (its tag defaults to the image's version)."""
    started = time.monotonic()
    if target.digest:
        raise UserError(f"push to a tag, not a digest: '{target}'")
    target = target if target.tag else target.with_tag(image.version)
    repo, tag = target.repository, target.reference
    manifest = store.read_blob(image.digest)
    current = client.manifest_digest(repo, tag)
    if current is not None and current != image.digest and not force:
        raise UserError(f"{target} already names another image ({current[:19]}); pass "
                        "--force to move the tag")
    result = TransferResult(image.ref, str(target), image.digest)
    descs = [*image.layers, Descriptor.from_json(image.manifest["config"])]
    for desc in descs:
        if not store.has_blob(desc.digest, desc.size):
            raise UserError(f"blob {desc.digest[:19]} of {image.ref} is missing from the "
                            "local store; rebuild the image")
    missing = [d for d in _unique(descs) if not client.head_blob(repo, d.digest)]
    result.blobs_skipped = [d.digest for d in _unique(descs) if d not in missing]
    update = progress(sum(d.size for d in missing), len(missing))
    sent = [0]
    lock = threading.Lock()

    def count(n: int) -> None:
        with lock:
            sent[0] += n
        update(n)

    def one(desc: Descriptor) -> str:
        source = locations.source(client.host, desc.digest, repo) if locations else None
        url = client.mount_blob(repo, desc.digest, source) if source else None
        if source and url is None:
            return "mounted"
        for attempt in range(RETRIES + 1):
            if url is None:
                url = client.start_upload(repo)
            before = sent[0]
            try:
                client.upload(repo, url, desc.digest, desc.size,
                              blob_body(store.blob_path(desc.digest), desc, count), chunk_size)
                return "sent"
            except RegistryError:
                count(before - sent[0])  # do not count what the failed attempt sent
                if attempt == RETRIES:
                    raise
                time.sleep(regclient.RETRY_BASE_DELAY * 2 ** attempt)
                url = None
        raise AssertionError("unreachable")

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        outcomes = list(pool.map(one, missing))
    for desc, outcome in zip(missing, outcomes, strict=True):
        (result.blobs_mounted if outcome == "mounted" else result.blobs_sent).append(desc.digest)
    result.bytes_sent = sent[0]
    client.put_manifest(repo, tag, manifest, MANIFEST_MEDIA_TYPE)
    result.attachments = referrers.push(store, image.digest, client, repo)
    if locations is not None:
        for desc in descs:
            locations.add(client.host, desc.digest, repo)
        locations.save()
    result.seconds = time.monotonic() - started
    return result


def pull(store: Store, source: RegistryRef, client: Client, *, force: bool = False,
         local_ref: str | None = None, progress: Progress = _no_progress) -> TransferResult:
    """Pull ``source`` into the store under ``local_ref`` (default: the image's own name and
    version from its config). The manifest and then the config are checked in shape before a
    layer is fetched; nothing enters the store unless every blob verified."""
    started = time.monotonic()
    if local_ref is not None:
        split_ref(local_ref)
    repo = source.repository
    got = client.get_manifest(repo, source.reference)
    if got is None:
        raise NotFoundError(f"{source} not found in the registry")
    data, media_type = got
    if media_type != MANIFEST_MEDIA_TYPE:
        raise UserError(f"{source} is not an imagebuilder image ({media_type or 'no media type'}"
                        "); pull it with skopeo instead")
    manifest = parse_manifest(data, str(source))
    digest = regclient.sha256_of(data)
    descs = _unique(manifest.descriptors)
    missing = [d for d in descs if not store.has_intact_blob(d.digest, d.size)]
    result = TransferResult("", str(source), digest,
                            blobs_skipped=[d.digest for d in descs if d not in missing])
    update = progress(sum(d.size for d in missing), len(missing))
    received = [0]
    lock = threading.Lock()

    def count(n: int) -> None:
        with lock:
            received[0] += n
        update(n)

    def fetch(desc: Descriptor) -> Path:
        return _fetch(client, repo, desc, store, staging, count)

    with store.staging() as staging:
        staged: dict[str, Path] = {}
        if manifest.config in missing:
            staged[manifest.config.digest] = fetch(manifest.config)
        config_path = staged.get(manifest.config.digest) or store.blob_path(
            manifest.config.digest)
        config = parse_config(config_path.read_bytes(), str(source))
        if local_ref is None:
            name = config.get("name") or repo.rsplit("/", 1)[-1]
            version = config.get("version") or source.tag or digest[7:19]
            local_ref = f"{name}:{version}"
            split_ref(local_ref)
        layers = [d for d in missing if d.digest not in staged]
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            staged.update(zip((d.digest for d in layers), pool.map(fetch, layers), strict=True))
        found = referrers.fetch(client, repo, digest)  # all checked before anything is stored
        store.put_manifest(local_ref, data, staged=staged, force=force)
    result.attachments = [d.digest for d in referrers.keep(store, digest, found,
                                                           f"{client.host}/{repo}")]
    result.ref = local_ref
    result.blobs_received = list(staged)
    result.bytes_received = received[0]
    result.seconds = time.monotonic() - started
    return result


def _unique(descs: list[Descriptor]) -> list[Descriptor]:
    seen: dict[str, Descriptor] = {}
    for d in descs:
        seen.setdefault(d.digest, d)
    return list(seen.values())


def _fetch(client: Client, repo: str, desc: Descriptor, store: Store, staging: Path,
           progress: Callable[[int], None]) -> Path:
    """Blob ``desc`` written by the store into ``staging`` from the client's verified stream
    (IntegrityError if it does not verify); a stream that breaks is fetched again."""
    last: StreamBroken | None = None
    for attempt in range(RETRIES + 1):
        if attempt:
            time.sleep(regclient.RETRY_BASE_DELAY * 2 ** (attempt - 1))
        stream = client.blob_stream(repo, desc.digest, desc.size, progress)
        try:
            with stream:
                return store.receive_blob(staging, desc.digest, desc.size, stream)
        except StreamBroken as e:
            progress(-stream.received)
            last = e
    assert last is not None
    raise last


def blob_body(path: Path, desc: Descriptor,
               progress: Callable[[int], None]) -> Callable[[int, int], FileBody]:
    """What :meth:`Client.upload` sends of the local blob: its ranges, hashed as they go."""
    check = SentDigest(path, desc)
    return lambda offset, length: FileBody(path, offset, length, progress, check)


class SentDigest:
    """The SHA-256 of a blob as its bytes are sent, in order, whatever the chunking; a range
    sent again (after an auth challenge) is not hashed twice. Once the last byte has gone,
    DamagedError unless it is the blob's digest: a damaged local blob is never pushed."""

    def __init__(self, path: Path, desc: Descriptor) -> None:
        self.path, self.digest, self.size = path, desc.digest, desc.size
        self.hasher = MultiHasher(("sha256",))

    def add(self, offset: int, data: bytes) -> None:
        if offset == self.hasher.size:
            self.hasher.update(data)
        if self.hasher.size == self.size:
            actual = self.hasher.hexdigests()["sha256"]
            if oci_digest(actual) != self.digest:
                raise blobs.mismatch(self.path, self.digest, actual)


class FileBody:
    """A request body streaming ``length`` bytes of a file from ``offset`` in 1 MiB reads;
    ``len()`` gives requests the Content-Length. What it sends goes through ``check``."""

    def __init__(self, path: Path, offset: int, length: int,
                 progress: Callable[[int], None], check: SentDigest) -> None:
        self.path, self.offset, self.length, self.progress = path, offset, length, progress
        self.check = check

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[bytes]:
        try:
            f = open(self.path, "rb")  # noqa: SIM115
        except FileNotFoundError:
            raise blobs.missing(self.path, self.check.digest) from None
        with f:
            f.seek(self.offset)
            left, pos = self.length, self.offset
            while left:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    raise blobs.mismatch(self.path, self.check.digest, "(shorter than recorded)")
                self.check.add(pos, chunk)  # raises before the last chunk leaves if damaged
                left -= len(chunk)
                pos += len(chunk)
                self.progress(len(chunk))
                yield chunk
