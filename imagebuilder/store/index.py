"""index.json: the names of the store, and what each entry is.

An OCI image layout names its manifests in ``index.json``, one entry (a descriptor) each, the name
in the ``org.opencontainers.image.ref.name`` annotation. imagebuilder's index holds three kinds of
entries: an image version (``hello:1.0.0``); an environment tag (``hello:prod``, moved by
``promote``, marked by :data:`~imagebuilder.store.oci.ENV_ANNOTATION`); the promotion history of
an image name (``hello:_promotions``, marked by
:data:`~imagebuilder.store.oci.HISTORY_ANNOTATION`); an attachment (an SBOM, a signature: an OCI
artifact about an image, unnamed, marked by :data:`~imagebuilder.store.oci.SUBJECT_ANNOTATION`,
see :mod:`imagebuilder.store.attachments`). Tags are not versions, so ``images`` does not
list them, while skopeo still reads them (``skopeo inspect oci:STORE:hello:prod``).

This module reads and checks the file (a damaged one is one line naming it), encodes it (entries
sorted, canonical JSON: the same names give the same bytes) and answers questions about the
entries; :class:`imagebuilder.store.layout.Store` holds the lock and commits the bytes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .. import fsutil
from ..errors import ImageBuilderError, UserError
from .oci import (
    ENV_ANNOTATION,
    HISTORY_ANNOTATION,
    INDEX_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    REF_NAME_ANNOTATION,
    SUBJECT_ANNOTATION,
    Descriptor,
    canonical_json,
    index_entry_problem,
)

Entry = dict[str, Any]
"""One descriptor of index.json's ``manifests``, as JSON."""


def read(path: Path) -> list[Entry]:
    """The entries of the index at ``path`` (none if it does not exist); ImageBuilderError
    naming the file if it is not a file, not JSON or not an OCI image index."""
    try:
        with os.fdopen(fsutil.open_regular(path), "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return []
    except fsutil.NotRegularError as e:
        raise ImageBuilderError(f"{path} is {e.kind}, not a file; restore it") from None
    try:
        index = json.loads(raw)
    except ValueError as e:
        raise ImageBuilderError(f"{path} is corrupt ({e}); restore it") from None
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list):
        raise ImageBuilderError(f"{path} is not an OCI image index; restore it")
    for m in manifests:
        problem = index_entry_problem(m)
        if problem is not None:
            raise ImageBuilderError(f"{path} is not a valid OCI image index ({problem}); "
                                    "restore it or fix that entry")
    return manifests


def encode(entries: list[Entry]) -> bytes:
    """index.json's bytes for ``entries``: sorted by name, then digest; canonical JSON."""
    entries = sorted(entries, key=lambda m: (entry_ref(m) or "", m["digest"]))
    return canonical_json(
        {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": entries})


def entry_ref(entry: Entry) -> str | None:
    """The name of ``entry`` (its ref.name annotation), if it has one."""
    ref = (entry.get("annotations") or {}).get(REF_NAME_ANNOTATION)
    return ref if isinstance(ref, str) else None


def is_env_tag(entry: Entry) -> bool:
    return ENV_ANNOTATION in (entry.get("annotations") or {})


def is_tag(entry: Entry) -> bool:
    """An environment tag, a promotion history or an attachment, not an image version."""
    annotations = entry.get("annotations") or {}
    return (ENV_ANNOTATION in annotations or HISTORY_ANNOTATION in annotations
            or SUBJECT_ANNOTATION in annotations)


def subject_of(entry: Entry) -> str | None:
    """The manifest an attachment entry is about (None: ``entry`` is no attachment)."""
    subject = (entry.get("annotations") or {}).get(SUBJECT_ANNOTATION)
    return subject if isinstance(subject, str) else None


def without_orphans(entries: list[Entry]) -> list[Entry]:
    """``entries`` but the attachments whose subject no other entry names (nor, in turn, the
    attachments of those)."""
    while True:
        named = {m["digest"] for m in entries}
        kept = [m for m in entries if subject_of(m) is None or subject_of(m) in named]
        if len(kept) == len(entries):
            return kept
        entries = kept


def without(entries: list[Entry], ref: str) -> list[Entry]:
    """``entries`` but those named ``ref``."""
    return [m for m in entries if entry_ref(m) != ref]


def named(ref: str, digest: str, size: int, annotations: dict[str, str] | None = None) -> Entry:
    """A new entry naming manifest ``digest`` ``ref``."""
    return Descriptor(MANIFEST_MEDIA_TYPE, digest, size,
                      {REF_NAME_ANNOTATION: ref, **(annotations or {})}).to_json()


def refs_by_digest(entries: list[Entry]) -> dict[str, list[str]]:
    """Manifest digest -> the image versions naming it, sorted (tags left out)."""
    out: dict[str, list[str]] = {}
    for m in entries:
        if is_tag(m):
            continue
        name = entry_ref(m)
        out.setdefault(m["digest"], [])
        if name:
            out[m["digest"]].append(name)
    for refs in out.values():
        refs.sort()
    return out


def env_tags(entries: list[Entry]) -> dict[str, str]:
    """Environment tag ref (``hello:prod``) -> manifest digest."""
    return {str(entry_ref(m)): str(m["digest"]) for m in entries if is_env_tag(m)}


def tags_of(entries: list[Entry], name: str) -> dict[str, str]:
    """Environment tags of image ``name``: environment -> manifest digest."""
    out = {}
    for m in entries:
        env = (m.get("annotations") or {}).get(ENV_ANNOTATION)
        if env and entry_ref(m) == f"{name}:{env}":
            out[env] = m["digest"]
    return out


def retag(entries: list[Entry], name: str, env: str, digest: str, size: int
          ) -> tuple[list[Entry], str | None]:
    """``entries`` with ``name:env`` pointing at manifest ``digest`` (of ``size`` bytes), and
    the digest it pointed at before; UserError if ``name:env`` is an image version."""
    ref = f"{name}:{env}"
    previous = None
    for m in entries:
        if entry_ref(m) != ref:
            continue
        if not is_env_tag(m):
            raise UserError(
                f"'{ref}' is an image version in the local store, so it cannot also be "
                f"the tag of environment '{env}'; rename the environment or the version"
            )
        previous = m["digest"]
    return [*without(entries, ref), named(ref, digest, size, {ENV_ANNOTATION: env})], previous


def after_remove(entries: list[Entry], ref: str, shown: str, digest: str) -> list[Entry]:
    """``entries`` once ``ref`` (the image ``shown``, manifest ``digest``) is removed: a digest
    removes every entry of that manifest, a name its version entry; environment tags left
    pointing at a manifest no version names go too (the promotion history stays)."""
    by_digest = ref.startswith("sha256:")
    remaining = [m for m in entries
                 if not (m["digest"] == digest if by_digest
                         else entry_ref(m) == shown and not is_tag(m))]
    versions = {m["digest"] for m in remaining if not is_tag(m)}
    return without_orphans([m for m in remaining if not (
        is_env_tag(m) and m["digest"] == digest and digest not in versions)])
