"""The SBOM formats an image carries, by the name the command line uses for them.

Kept apart from the writers so that reading a stored SBOM (``inspect --sbom``) does not import
the formats' libraries.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Format:
    #: The name on the command line and in ``build --json``.
    key: str
    #: Its name for people.
    title: str
    #: The attachment's artifactType and its payload's media type (the format's registered
    #: media type, which is also what ``oras discover`` and cosign show).
    media_type: str


CYCLONEDX = Format("cyclonedx", "CycloneDX", "application/vnd.cyclonedx+json")
SPDX = Format("spdx", "SPDX", "application/spdx+json")
FORMATS = {f.key: f for f in (CYCLONEDX, SPDX)}
