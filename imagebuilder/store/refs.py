"""How a reference names an image of the store: the one place that decides what ``hello``,
``hello:1.0.0``, ``hello:prod`` or ``sha256:3f6a147b0561`` means.

A reference is, in this order: a digest or a unique digest prefix of at least
:data:`imagebuilder.store.oci.MIN_DIGEST_PREFIX` hex digits; an image version (``NAME:VERSION``); an
environment tag (``NAME:ENV``, the image promoted there); or a bare ``NAME`` with one version
only. Versions sort naturally (1.9 < 1.10), so an error can name the newest.
"""

from __future__ import annotations

import re

from ..errors import NotFoundError, UserError
from .oci import MIN_DIGEST_PREFIX


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Natural order: 1.9 < 1.10, digits compare as numbers."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part)
        for part in re.findall(r"\d+|\D+", version)
    )


def _not_found(ref: str) -> NotFoundError:
    return NotFoundError(f"no image '{ref}' in the store; list images with 'imagebuilder images'")


def pick(ref: str, by_digest: dict[str, list[str]], env_tags: dict[str, str]
         ) -> tuple[str, str, list[str]]:
    """``(reference to show, manifest digest, every version naming it)`` of the image ``ref``
    names, given the versions by manifest digest and the environment tags (ref -> digest)."""
    if ref.startswith("sha256:"):
        prefix = ref.lower()
        if not re.fullmatch(r"sha256:[0-9a-f]+", prefix):
            raise UserError(f"'{ref}' is not a sha256 digest")
        if len(prefix) - 7 < MIN_DIGEST_PREFIX:
            raise UserError(f"digest prefix '{ref}' is too short: give at least "
                            f"{MIN_DIGEST_PREFIX} hex digits")
        matches = sorted(d for d in by_digest if d.startswith(prefix))
        if not matches:
            raise _not_found(ref)
        if len(matches) > 1:
            raise NotFoundError(f"'{ref}' matches several images ({', '.join(matches)}); "
                                "give more digits of the digest")
        refs = by_digest[matches[0]]
        return (refs[0] if refs else matches[0]), matches[0], refs

    ref_to_digest = {r: d for d, refs in by_digest.items() for r in refs}
    if ref in ref_to_digest:
        digest = ref_to_digest[ref]
        return ref, digest, by_digest[digest]
    if ref in env_tags:  # an environment tag: hello:prod
        refs = by_digest.get(env_tags[ref], [])
        return (refs[0] if refs else ref), env_tags[ref], refs
    if ":" not in ref:
        candidates = sorted((r for r in ref_to_digest if r.rpartition(":")[0] == ref),
                            key=lambda r: version_key(r.rpartition(":")[2]))
        if len(candidates) == 1:
            digest = ref_to_digest[candidates[0]]
            return candidates[0], digest, by_digest[digest]
        if candidates:
            versions = ", ".join(r.rpartition(":")[2] for r in candidates)
            raise NotFoundError(f"image '{ref}' has several versions ({versions}); "
                                f"name one, e.g. '{candidates[-1]}'")
    raise _not_found(ref)
