"""Environments and promotion: move a tag, never rebuild.

An image is built once; "promoting" it to an environment points the tag named after the
environment (``hello:prod`` locally, ``HOST/REPO:prod`` in a registry) at exactly its manifest
digest. No image blob moves: the registry already holds them (pushed once), so promotion is one
manifest PUT under a new tag.

The order of environments (imagebuilder.toml: the ``[env.*]`` tables, or ``[environments]
order``) is a gate: an image may enter an environment only once it has been in the one before,
unless forced. Every promotion is recorded (who, when, which digest, what the tag named before)
in a promotion history kept next to the image as an OCI artifact (tag ``_promotions``: an empty
config and one JSON layer, the whole list) in the local store and in the registry, so that a
rollback is the promotion of a previous digest, which the history names, and passes the gate
because that digest was in the previous environment before.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import socket
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import FetchError, NotFoundError, UserError
from ..store.layout import HISTORY_TAG, MANIFEST_MEDIA_TYPE, Descriptor, Store, canonical_json
from ..store.oci import sha256_digest
from .manifest import parse_artifact_layer
from .transfer import Client, RegistryError, RegistryRef, blob_body

PROMOTIONS_ARTIFACT_TYPE = "application/vnd.imagebuilder.promotions.v1"
PROMOTIONS_MEDIA_TYPE = "application/vnd.imagebuilder.promotions.v1+json"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
MAX_HISTORY_BYTES = 16 << 20


@dataclass(frozen=True)
class Promotion:
    """One entry of the promotion history."""

    environment: str
    digest: str
    previous: str | None
    ref: str
    by: str
    at: str
    registry: str | None = None
    amis: dict[str, str] | None = None
    """Region -> AMI id retagged by a promotion with ``--target aws``."""

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Promotion:
        return cls(environment=str(obj["environment"]), digest=str(obj["digest"]),
                   previous=obj.get("previous"), ref=str(obj.get("ref", "")),
                   by=str(obj.get("by", "")), at=str(obj.get("at", "")),
                   registry=obj.get("registry"), amis=obj.get("amis"))


@dataclass
class PromoteResult:
    ref: str
    environment: str
    digest: str
    previous: str | None
    local: bool
    registry: str | None
    history: int
    amis: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def environments_of(store: Store, name: str, digest: str,
                    order: Sequence[str] = ()) -> list[str]:
    """Environments whose local tag points at ``digest`` (in ``order``, then by name)."""
    envs = [env for env, d in store.tags(name).items() if d == digest]
    rank = {env: i for i, env in enumerate(order)}
    return sorted(envs, key=lambda e: (rank.get(e, len(rank)), e))


def history(store: Store, name: str) -> list[Promotion]:
    """The local promotion history of image ``name``, oldest first."""
    digest = store.history_manifest(name)
    if digest is None:
        return []
    manifest = json.loads(store.read_blob(digest))
    return _parse_history(store.read_blob(manifest["layers"][0]["digest"]))


def _parse_history(data: bytes) -> list[Promotion]:
    try:
        return [Promotion.from_json(r) for r in json.loads(data)["promotions"]]
    except (ValueError, KeyError, TypeError) as e:
        raise FetchError(f"the promotion history is malformed: {e}") from None


def _history_artifact(store: Store, records: list[Promotion]) -> tuple[bytes, list[Descriptor]]:
    """Store the history's blobs; the artifact manifest and the descriptors of its blobs."""
    body = canonical_json({"promotions": [asdict(r) for r in records]})
    layer = store.add_blob_bytes(body, PROMOTIONS_MEDIA_TYPE)
    config = store.add_blob_bytes(b"{}", EMPTY_MEDIA_TYPE)
    manifest = canonical_json({
        "schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE,
        "artifactType": PROMOTIONS_ARTIFACT_TYPE,
        "config": config.to_json(), "layers": [layer.to_json()],
    })
    return manifest, [config, layer]


def _who() -> str:
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


class _Remote:
    """The registry side of a promotion: manifest lookups and the history artifact."""

    def __init__(self, client: Client, target: RegistryRef) -> None:
        self.client, self.repo, self.target = client, target.repository, target

    def manifest(self, reference: str) -> tuple[bytes, str] | None:
        got = self.client.get_manifest(self.repo, reference)
        if got is None:
            return None
        return got[0], _digest(got[0])

    def tag(self, env: str) -> str | None:
        return self.client.manifest_digest(self.repo, env)

    def history(self) -> list[Promotion]:
        got = self.client.get_manifest(self.repo, HISTORY_TAG)
        if got is None:
            return []
        layer = parse_artifact_layer(got[0], f"{self.target.with_tag(HISTORY_TAG)}",
                                     PROMOTIONS_MEDIA_TYPE, MAX_HISTORY_BYTES)
        response = self.client.request(
            "GET", f"/v2/{self.repo}/blobs/{layer.digest}",
            scope=f"repository:{self.repo}:pull", ok=(200,), what="get the promotion history")
        with response:
            data = self.client.read_capped(response, layer.size, "the promotion history")
        if _digest(data) != layer.digest:
            raise RegistryError(f"the promotion history in {self.target} does not match its "
                                "digest")
        return _parse_history(data)

    def put_history(self, store: Store, manifest: bytes, blobs: list[Descriptor]) -> None:
        for desc in blobs:
            self.client.ensure_blob(self.repo, desc.digest, desc.size,
                                    blob_body(store.blob_path(desc.digest), desc, lambda n: None))
        self.client.put_manifest(self.repo, HISTORY_TAG, manifest, MANIFEST_MEDIA_TYPE)


_digest = sha256_digest


def promote(store: Store, ref: str, env: str, order: Sequence[str], *, force: bool = False,
            client: Client | None = None, target: RegistryRef | None = None,
            config_path: Path | None = None, who: str | None = None,
            now: dt.datetime | None = None,
            elsewhere: Callable[[str], dict[str, str]] | None = None) -> PromoteResult:
    """Point environment ``env``'s tag at image ``ref``: locally, and in ``target``'s
    repository when a registry is given. Refuses (UserError, nothing changed) an environment
    outside ``order``, an image not yet promoted to the environment before ``env`` (unless
    ``force``), and an image the registry does not hold. ``elsewhere(digest)``, called once
    the gate has passed and before any tag moves, promotes on another target (AWS: retags the
    AMIs, returning region -> AMI id, recorded in the history); if it fails nothing moves."""
    where = f" of {config_path}" if config_path else ""
    if env not in order:
        known = ", ".join(order) or "none defined"
        raise NotFoundError(f"environment '{env}' is not in the promotion order{where} "
                            f"({known}); add an [env.{env}] table")
    remote = _Remote(client, target) if client is not None and target is not None else None

    # Which image: a local reference, or (with a registry) a tag or digest there.
    data: bytes | None = None
    try:
        image = store.resolve(ref)
        digest, name, shown = image.digest, image.name, image.ref
        data = store.read_blob(digest)
    except NotFoundError:
        if remote is None:
            raise
        reference = ref.rpartition(":")[2] if not ref.startswith("sha256:") else ref
        got = remote.manifest(reference)
        if got is None:
            raise NotFoundError(f"no image '{ref}' in the local store nor in {target}") from None
        data, digest = got
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryError(f"{target} answered manifest {reference[:19]} with other bytes "
                                f"({digest[:19]}); nothing was promoted") from None
        name, shown = remote.repo.rsplit("/", 1)[-1], f"{remote.repo}@{digest[:19]}"
    local = store.has_blob(digest, len(data))

    records = remote.history() if remote else history(store, name)
    idx = list(order).index(env)
    if idx > 0 and not force:
        before = order[idx - 1]
        current_before = remote.tag(before) if remote else store.tags(name).get(before)
        if current_before != digest and not any(
                r.environment == before and r.digest == digest for r in records):
            raise UserError(
                f"{shown} ({digest[:19]}) has not been promoted to '{before}', which comes "
                f"before '{env}' in the promotion order{where} ({' -> '.join(order)}); "
                f"promote it to {before} first, or pass --force")

    if remote is not None and remote.client.manifest_digest(remote.repo, digest) is None:
        raise UserError(f"{remote.target} does not hold {shown} ({digest[:19]}); push it "
                        f"first: imagebuilder push {ref} {remote.target.host}/{remote.repo}")
    amis = elsewhere(digest) if elsewhere is not None else None
    previous: str | None
    if remote is not None:
        previous = remote.tag(env)
        if previous != digest:
            if _digest(data) != digest:  # exactly the manifest resolved (and gated), no other
                raise RegistryError(f"the manifest about to be promoted is not {digest[:19]}; "
                                    "nothing was promoted")
            remote.client.put_manifest(remote.repo, env, data, MANIFEST_MEDIA_TYPE)
        if local:
            store.set_env_tag(name, env, digest)
    else:
        previous = store.set_env_tag(name, env, digest)

    record = Promotion(
        environment=env, digest=digest, previous=previous, ref=shown, by=who or _who(),
        at=(now or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds"),
        registry=f"{target.host}/{target.repository}" if target else None, amis=amis)
    records.append(record)
    manifest, blobs = _history_artifact(store, records)
    if remote is not None:
        remote.put_history(store, manifest, blobs)
    store.put_history(name, manifest)
    return PromoteResult(ref=shown, environment=env, digest=digest, previous=previous,
                         local=local or remote is None,
                         registry=str(target.with_tag(env)) if target else None,
                         history=len(records), amis=amis)
