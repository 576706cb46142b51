"""The inventory of an image: what the build knows about every Debian package and jar in it.

The build fills an :class:`Inventory` from what it already read (the lock, the fetched .debs, the
app's jars, the linked modules); :mod:`.cyclonedx` and :mod:`.spdx` write it out. The per-layer
parts are cached by the stage cache as JSON (:meth:`Inventory.to_json`), so an app-only rebuild
reads the Debian part back instead of opening every .deb again.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class DebPackage:
    """One Debian binary package whose files (or a runtime derived from them) are in the image."""

    name: str
    #: The full version, epoch included ("1:2.3-4").
    version: str
    architecture: str
    #: The source package and its version (the binary's own when the control names none).
    source: str
    source_version: str
    #: SHA-256 of the .deb, as pinned in the lock.
    sha256: str
    #: An SPDX license expression read from the package's DEP-5 copyright file, or None
    #: (NOASSERTION) when it has no machine-readable license or one SPDX has no id for.
    license: str | None
    #: The image part that brought it in: kernel, base, firmware, jvm, natives, packages, tomcat.
    part: str


@dataclass(frozen=True)
class Jar:
    """One jar the app's class loaders read (its own, nested, Class-Path, app-directory or war
    library jars)."""

    #: Where it is in the image: "/app/lib/x.jar", or for a nested jar
    #: "/app/app.jar!/BOOT-INF/lib/y.jar".
    path: str
    sha1: str
    sha256: str
    #: Maven coordinates from META-INF/maven/**/pom.properties (the jar's own set: see
    #: sbom/maven.py); without them, version may still be the manifest's (no purl then).
    group: str | None = None
    artifact: str | None = None
    version: str | None = None
    #: SPDX license ids or names from the embedded pom or the manifest (Bundle-License).
    licenses: tuple[str, ...] = ()
    #: (group, artifact, version) of each artifact shaded into the jar: its other
    #: pom.properties sets (scanners report them as packages of their own).
    embedded: tuple[tuple[str, str, str], ...] = ()


@dataclass(frozen=True)
class Runtime:
    """The jlink runtime: a component of the JDK package it was linked from."""

    jdk_package: str
    jdk_version: str
    modules: tuple[str, ...]


@dataclass(frozen=True)
class Inventory:
    """Everything an SBOM of one image says."""

    name: str
    version: str
    #: The image manifest's digest ("sha256:<hex>"): the SBOM's serial number and namespace
    #: derive from it.
    digest: str
    #: SOURCE_DATE_EPOCH of the build (seconds): the SBOM's timestamp.
    created: int
    suite: str
    packages: tuple[DebPackage, ...] = ()
    jars: tuple[Jar, ...] = ()
    runtime: Runtime | None = None
    #: The app's own jar or directory name, as the image config's app.jar.
    app: str = ""
    #: The builder's name and version ("imagebuilder 0.1.0").
    tool: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Inventory:
        raw = json.loads(text)
        return cls(**{**raw,
                      "packages": tuple(DebPackage(**p) for p in raw["packages"]),
                      "jars": tuple(Jar(**{**j, "licenses": tuple(j["licenses"]),
                                           "embedded": tuple(tuple(e) for e in j["embedded"])})
                                    for j in raw["jars"]),
                      "runtime": (Runtime(**{**raw["runtime"],
                                             "modules": tuple(raw["runtime"]["modules"])})
                                  if raw["runtime"] else None)})
