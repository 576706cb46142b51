"""Who built an image, from what: an in-toto Statement with a SLSA provenance v1 predicate.

An image's digest says *what* it is; its provenance says *how it came to be*, in the form the
field reads (https://slsa.dev/provenance/v1, wrapped in an in-toto Statement v1): the subject
is the image (its name and manifest digest); the build definition names what the user gave
(the config file, the lock file and every file of the app, each by SHA-256) and what the build
chose for itself (the Debian suite and, when this build read it, the signed archive index it
resolved against); the resolved dependencies are every Debian package the image is made of,
by purl and the .deb's SHA-256 from the lock; the run details name imagebuilder and its
version.

The statement is made at build time, once the image manifest exists, and kept in the store as
an attachment of the image (:data:`ARTIFACT_TYPE`), so it travels with ``push`` and ``pull``;
``sign`` turns it into a signed DSSE attestation (:mod:`.dsse`). It is deterministic: the same
inputs give the same bytes (the one time in it is ``SOURCE_DATE_EPOCH``; no invocation id,
which would be random, and no finishing time).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packageurl import PackageURL

from .. import __version__
from ..apps.shape import File, guest
from ..config.parse import Config
from ..fetch.lock import LockEntry
from ..fsutil import source_date_epoch
from ..hashing import core as hashing
from ..store.attachments import attach
from ..store.layout import Descriptor, Store
from ..store.oci import canonical_json

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
PREDICATE_TYPE_V02 = "https://slsa.dev/provenance/v0.2"
#: What our build is: the meaning of the parameters below. A URI of ours (the ``.invalid``
#: top-level domain, RFC 2606: it names, it resolves nowhere, as no page describes it yet).
BUILD_TYPE = "https://imagebuilder.invalid/buildtypes/image/v1"
BUILDER_ID = "https://imagebuilder.invalid/builder"
#: The artifact type of the statement attached to its image, and its media type.
ARTIFACT_TYPE = MEDIA_TYPE = "application/vnd.in-toto+json"


@dataclass(frozen=True)
class ArchiveSnapshot:
    """The signed index a build resolved its packages against: the SHA-256 of the suite's
    ``InRelease`` as downloaded and its ``Date`` field. A build served from its lock file
    reads no index: the lock records the one its resolution read (none in an older lock)."""

    sha256: str
    date: str

    @classmethod
    def of(cls, found: tuple[str, str] | None) -> ArchiveSnapshot | None:
        """From (SHA-256, Date), as the build's resolution gives it (None: no index read)."""
        return None if found is None else cls(*found)


def resource(name: str, sha256: str) -> dict[str, Any]:
    """An in-toto ResourceDescriptor naming a file by its SHA-256."""
    return {"name": name, "digest": {"sha256": sha256}}


def file_sha256(path: Path) -> str:
    return hashing.sha256_file(path)


def deb_uri(entry: LockEntry) -> str:
    """``pkg:deb/debian/NAME@VERSION?arch=ARCH``: a pinned package as a purl (the
    architecture is the pool file's, ``NAME_VERSION_ARCH.deb``)."""
    arch = entry.filename.rpartition("_")[2].removesuffix(".deb")
    return PackageURL(type="deb", namespace="debian", name=entry.name, version=entry.version,
                      qualifiers={"arch": arch}).to_string()


def _timestamp(epoch: int) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class BuildFacts:
    """Everything a statement says, gathered: see :func:`facts`."""

    name: str
    digest: str
    config: dict[str, Any] | None
    lock: dict[str, Any] | None
    app: tuple[dict[str, Any], ...]
    suite: str
    archive: ArchiveSnapshot | None
    packages: tuple[LockEntry, ...]
    epoch: int


def facts(cfg: Config, app_files: Iterable[File], digest: str,
          packages: Iterable[LockEntry], archive: ArchiveSnapshot | None = None,
          epoch: int | None = None) -> BuildFacts:
    """What the statement of image ``digest`` built from ``cfg`` says: the config (none for a
    build without one) and lock files as they are now, the app's files (``shape.app`` and
    ``shape.libs``, named by their path below /app), the packages the build used, the archive
    index it read if any, and ``SOURCE_DATE_EPOCH`` unless ``epoch`` is given."""
    config = (resource(cfg.path.name, file_sha256(cfg.path))
              if cfg.path is not None else None)
    lock = (resource(cfg.lock_path.name, file_sha256(cfg.lock_path))
            if cfg.lock_path.is_file() else None)
    app = tuple(resource(guest(f.dest), f.digest("sha256"))
                for f in sorted(app_files, key=lambda f: f.dest))
    return BuildFacts(
        name=f"{cfg.image.name}:{cfg.image.version}", digest=digest, config=config, lock=lock,
        app=app, suite=cfg.system.suite, archive=archive,
        packages=tuple(sorted(set(packages), key=lambda e: (e.name, e.version))),
        epoch=source_date_epoch() if epoch is None else epoch)


def subject(name: str, digest: str) -> list[dict[str, Any]]:
    """The in-toto subject of image ``name`` with manifest ``digest`` (``sha256:...``)."""
    return [resource(name, digest.removeprefix("sha256:"))]


def predicate(build: BuildFacts) -> dict[str, Any]:
    """The SLSA provenance v1 predicate of ``build``."""
    external: dict[str, Any] = {"app": list(build.app)}
    if build.config is not None:
        external["config"] = build.config
    if build.lock is not None:
        external["lock"] = build.lock
    internal: dict[str, Any] = {"suite": build.suite}
    if build.archive is not None:
        internal["archive"] = {"inRelease": {"sha256": build.archive.sha256},
                               "date": build.archive.date}
    return {
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": external,
            "internalParameters": internal,
            "resolvedDependencies": [{"uri": deb_uri(e), "digest": {"sha256": e.sha256}}
                                     for e in build.packages],
        },
        "runDetails": {
            "builder": {"id": BUILDER_ID, "version": {"imagebuilder": __version__}},
            "metadata": {"startedOn": _timestamp(build.epoch)},
        },
    }


def statement(build: BuildFacts) -> bytes:
    """The in-toto Statement v1 of ``build``, as canonical JSON."""
    return canonical_json({
        "_type": STATEMENT_TYPE,
        "subject": subject(build.name, build.digest),
        "predicateType": PREDICATE_TYPE,
        "predicate": predicate(build),
    })


def v02(statement_v1: bytes) -> bytes:
    """The same provenance as a SLSA v0.2 predicate (https://slsa.dev/provenance/v0.2), which
    is what ``cosign verify-attestation --type slsaprovenance`` asks for (cosign's name for v1
    is ``slsaprovenance1``): made from the v1 statement, so both say the same."""
    doc = json.loads(statement_v1)
    build = doc["predicate"]["buildDefinition"]
    external = build["externalParameters"]
    files = [external[k] for k in ("config", "lock") if k in external] + external["app"]
    invocation: dict[str, Any] = {"parameters": external,
                                  "environment": build["internalParameters"]}
    if "config" in external:
        invocation["configSource"] = {"uri": external["config"]["name"],
                                      "digest": external["config"]["digest"],
                                      "entryPoint": "imagebuilder build"}
    return canonical_json({
        "_type": STATEMENT_TYPE,
        "subject": doc["subject"],
        "predicateType": PREDICATE_TYPE_V02,
        "predicate": {
            "builder": {"id": doc["predicate"]["runDetails"]["builder"]["id"]},
            "buildType": build["buildType"],
            "invocation": invocation,
            "metadata": {
                "buildStartedOn": doc["predicate"]["runDetails"]["metadata"]["startedOn"],
                "completeness": {"parameters": True, "environment": False,
                                 "materials": True},
                "reproducible": True},
            "materials": [*build["resolvedDependencies"],
                          *({"uri": f["name"], "digest": f["digest"]} for f in files)],
        },
    })


def record(store: Store, build: BuildFacts) -> Descriptor:
    """Make the statement of ``build`` and attach it to its image in ``store``."""
    return attach(store, build.digest, ARTIFACT_TYPE, statement(build), MEDIA_TYPE)
