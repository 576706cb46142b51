"""What the index reaches: the blobs ``rm`` and ``gc`` must keep.

A blob may be deleted only when no entry of index.json reaches it: through a manifest's config
and layers, or an index's nested manifests. What a manifest reaches is known only if the
manifest itself can be read, so every manifest on the way is read (never through a link) and
checked against its digest; one that is missing, not a regular file, damaged or not JSON is
reported, and the caller then deletes nothing: what it uses is unknown.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import fsutil
from .index import Entry, entry_ref
from .oci import DIGEST_RE, sha256_digest


def _digests(descriptors: list[Any]) -> list[str]:
    return [d["digest"] for d in descriptors
            if isinstance(d, dict) and isinstance(d.get("digest"), str)]


def reachable(blob_path: Callable[[str], Path], entries: list[Entry]
              ) -> tuple[set[str], list[str]]:
    """The digests ``entries`` reach (manifests, configs, layers, nested indexes), and a
    line for each manifest or index among them that is missing, not a regular file, does
    not match its digest or is not JSON: what it reaches is then unknown."""
    keep: set[str] = set()
    damaged: list[str] = []
    todo = [(str(m["digest"]), entry_ref(m) or "an index entry") for m in entries]
    while todo:
        digest, ref = todo.pop()
        if digest in keep:
            continue
        keep.add(digest)
        manifest, problem = manifest_or_problem(blob_path, digest)
        if manifest is None:
            damaged.append(f"manifest {digest[:19]} of {ref} {problem}")
            continue
        layers, nested = manifest.get("layers"), manifest.get("manifests")
        keep.update(_digests([manifest.get("config")]))
        keep.update(_digests(layers if isinstance(layers, list) else []))
        todo += [(d, ref) for d in _digests(nested if isinstance(nested, list) else [])]
    return keep, damaged


def manifest_or_problem(blob_path: Callable[[str], Path], digest: str
                        ) -> tuple[dict[str, Any] | None, str]:
    """The manifest (or index) blob ``digest`` as JSON, or None and what is wrong with it."""
    if not DIGEST_RE.fullmatch(digest):
        return None, "is not named by a sha256 digest"
    try:
        fd = fsutil.open_regular(blob_path(digest))
    except FileNotFoundError:
        return None, "is missing"
    except fsutil.NotRegularError as e:
        return None, f"is {e.kind}, not a file"
    with os.fdopen(fd, "rb") as f:
        data = f.read()
    if sha256_digest(data) != digest:
        return None, "does not match its digest"
    try:
        manifest = json.loads(data)
    except ValueError:
        return None, "is not JSON"
    if not isinstance(manifest, dict):
        return None, "is not a JSON object"
    return manifest, ""
