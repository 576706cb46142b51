"""An image's SBOM as SPDX 2.3 JSON, written with spdx-tools.

The document DESCRIBES one package, the image (its manifest's SHA-256 as checksum, purl
``pkg:oci/NAME@sha256:HEX``), which CONTAINS every Debian package and the app; the app DEPENDS_ON
its jars and the jlink runtime, which the JDK package CONTAINS. Packages carry their purl as an
external reference, their checksums (a .deb's SHA-256, a jar's SHA-1 and SHA-256), the license the
package declares (an SPDX expression, else NOASSERTION; nothing is concluded), Debian as the
supplier of Debian's packages and NOASSERTION for the rest. Nothing is downloaded from a place we
can name for good (a mirror is the host's choice), so every download location is NOASSERTION.

The document namespace must be a unique URI and need not resolve: we derive it from the image
digest under ``imagebuilder.invalid``, a name RFC 6761 reserves so that it never resolves and
nobody can ever own it: the URI cannot point anyone at a server we do not run.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime

from spdx_tools.spdx.document_utils import create_document_without_duplicates
from spdx_tools.spdx.jsonschema.document_converter import DocumentConverter
from spdx_tools.spdx.model import (
    Actor,
    ActorType,
    Checksum,
    ChecksumAlgorithm,
    CreationInfo,
    Document,
    ExternalPackageRef,
    ExternalPackageRefCategory,
    Package,
    PackagePurpose,
    Relationship,
    RelationshipType,
    SpdxNoAssertion,
)

from . import formats, identity
from .identity import Deb, JarEntry
from .model import Inventory, Runtime

MEDIA_TYPE = formats.SPDX.media_type
NAMESPACE_BASE = "https://imagebuilder.invalid/spdx/"
DOCUMENT_ID = "SPDXRef-DOCUMENT"
#: CycloneDX's component types (:attr:`identity.Deb.kind`) as SPDX 2.3's package purposes.
PURPOSES = {"application": PackagePurpose.APPLICATION, "library": PackagePurpose.LIBRARY,
            "platform": PackagePurpose.FRAMEWORK, "firmware": PackagePurpose.FIRMWARE,
            "operating-system": PackagePurpose.OPERATING_SYSTEM}


def document(inv: Inventory, *, validate: bool = True) -> bytes:
    """The SPDX 2.3 JSON document of ``inv``: the same bytes for the same inventory, written as
    spdx-tools' JSON writer writes (duplicates dropped, its converter). With ``validate``,
    spdx-tools validates it fully first (ValueError if it is not valid): the build does not (a
    tenth of a second, imports included, of every build; the tests validate every form of the
    document the writer makes, and the e2e tests the documents of real builds)."""
    doc = spdx_document(inv)
    if validate:
        from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document
        if errors := validate_full_spdx_document(doc):
            raise ValueError(f"Document is not valid. The following errors were detected: "
                             f"{errors}")
    text = json.dumps(DocumentConverter().convert(create_document_without_duplicates(doc)),
                      indent=4)
    return json.dumps(json.loads(text), sort_keys=True, indent=2,
                      ensure_ascii=False).encode() + b"\n"


def namespace(inv: Inventory) -> str:
    return f"{NAMESPACE_BASE}{inv.name}-{inv.version}-{identity.digest_hex(inv)}"


def spdx_document(inv: Inventory) -> Document:
    """The document as spdx-tools' model (what :func:`document` writes)."""
    name, version = identity.tool(inv)
    info = CreationInfo(
        spdx_version="SPDX-2.3", spdx_id=DOCUMENT_ID, name=f"{inv.name}-{inv.version}",
        document_namespace=namespace(inv),
        creators=[Actor(ActorType.TOOL, f"{name}-{version}")],
        created=datetime.fromtimestamp(inv.created, UTC).replace(tzinfo=None))
    image, app = _image(inv), _app(inv)
    debs = identity.debs(inv)
    packages = [image, app, *(_deb(d) for d in debs)]
    relationships = [_rel(DOCUMENT_ID, RelationshipType.DESCRIBES, image.spdx_id),
                     _rel(image.spdx_id, RelationshipType.CONTAINS, app.spdx_id),
                     *(_rel(image.spdx_id, RelationshipType.CONTAINS, p.spdx_id)
                       for p in packages[2:])]
    if inv.runtime:
        runtime = _runtime(inv.runtime)
        packages.append(runtime)
        relationships.append(_rel(app.spdx_id, RelationshipType.DEPENDS_ON, runtime.spdx_id))
        parent = next((_deb_id(d) for d in debs if d.package.name == inv.runtime.jdk_package),
                      image.spdx_id)
        relationships.append(_rel(parent, RelationshipType.CONTAINS, runtime.spdx_id))
    for entry in identity.jars(inv):
        jar = _jar(entry)
        packages.append(jar)
        relationships.append(_rel(app.spdx_id, RelationshipType.DEPENDS_ON, jar.spdx_id))
        for group, artifact, version, ref in identity.embedded(entry):
            shaded = _shaded(group, artifact, version, ref, entry.jar.path)
            packages.append(shaded)
            relationships.append(_rel(jar.spdx_id, RelationshipType.CONTAINS, shaded.spdx_id))
    return Document(info, packages=packages, relationships=relationships)


def _rel(a: str, kind: RelationshipType, b: str) -> Relationship:
    return Relationship(a, kind, b)


def _spdx_id(kind: str, name: str, unique: str) -> str:
    """An SPDX id (letters, digits, '.', '-') readable by its name and unique by a hash of
    ``unique``: two names that clean to the same text ("a+b", "a.b") still differ."""
    clean = re.sub(r"[^A-Za-z0-9.-]+", "-", name).strip("-")
    return f"SPDXRef-{kind}-{clean}-{hashlib.sha256(unique.encode()).hexdigest()}"


def _purl_ref(purl: str) -> ExternalPackageRef:
    return ExternalPackageRef(ExternalPackageRefCategory.PACKAGE_MANAGER, "purl", purl)


def _declared(expression: str | None) -> object:
    expr = identity.spdx_expression(expression) if expression else None
    return identity.LICENSING.parse(expr) if expr else SpdxNoAssertion()


def _image(inv: Inventory) -> Package:
    purl = identity.image_purl(inv)
    return Package(
        _spdx_id("image", inv.name, inv.digest), inv.name, SpdxNoAssertion(), version=inv.version,
        supplier=SpdxNoAssertion(), files_analyzed=False,
        checksums=[Checksum(ChecksumAlgorithm.SHA256, identity.digest_hex(inv))],
        license_concluded=SpdxNoAssertion(), license_declared=SpdxNoAssertion(),
        copyright_text=SpdxNoAssertion(), external_references=[_purl_ref(purl)],
        primary_package_purpose=PackagePurpose.OPERATING_SYSTEM,
        summary="a machine image: kernel, userland, Java runtime and app",
        comment=f"image {inv.name}:{inv.version} {inv.digest}, Debian {inv.suite}",
        built_date=datetime.fromtimestamp(inv.created, UTC).replace(tzinfo=None))


def _app(inv: Inventory) -> Package:
    name = inv.app or inv.name
    return Package(
        _spdx_id("app", name, f"app:{name}"), name, SpdxNoAssertion(), version=inv.version,
        supplier=SpdxNoAssertion(), files_analyzed=False, license_concluded=SpdxNoAssertion(),
        license_declared=SpdxNoAssertion(), copyright_text=SpdxNoAssertion(),
        primary_package_purpose=PackagePurpose.APPLICATION)


def _deb_id(deb: Deb) -> str:
    return _spdx_id("deb", deb.package.name, deb.purl)


def _deb(deb: Deb) -> Package:
    pkg = deb.package
    return Package(
        _deb_id(deb), pkg.name, SpdxNoAssertion(), version=pkg.version,
        file_name=f"{pkg.name}_{pkg.version.partition(':')[2] or pkg.version}_"
                  f"{pkg.architecture}.deb",
        supplier=Actor(ActorType.ORGANIZATION, "Debian"), files_analyzed=False,
        checksums=[Checksum(ChecksumAlgorithm.SHA256, pkg.sha256)],
        source_info=f"built from the Debian source package {pkg.source} {pkg.source_version}",
        license_concluded=SpdxNoAssertion(), license_declared=_declared(pkg.license),
        copyright_text=SpdxNoAssertion(), external_references=[_purl_ref(deb.purl)],
        primary_package_purpose=PURPOSES[deb.kind],
        comment=f"image parts: {', '.join(deb.parts)}")


def _runtime(runtime: Runtime) -> Package:
    return Package(
        _spdx_id("runtime", identity.RUNTIME_NAME, runtime.jdk_package),
        identity.RUNTIME_NAME, SpdxNoAssertion(), version=runtime.jdk_version,
        supplier=SpdxNoAssertion(), files_analyzed=False, license_concluded=SpdxNoAssertion(),
        license_declared=SpdxNoAssertion(), copyright_text=SpdxNoAssertion(),
        primary_package_purpose=PackagePurpose.FRAMEWORK,
        description=f"the Java runtime jlink linked from {runtime.jdk_package}",
        comment=f"modules: {' '.join(sorted(runtime.modules))}")


def _jar(entry: JarEntry) -> Package:
    jar = entry.jar
    named = [text for text in jar.licenses if identity.spdx_expression(text) is None]
    return Package(
        _spdx_id("jar", entry.name, entry.ref), entry.name, SpdxNoAssertion(),
        version=jar.version, file_name=jar.path, supplier=SpdxNoAssertion(),
        files_analyzed=False,
        checksums=[Checksum(ChecksumAlgorithm.SHA1, jar.sha1),
                   Checksum(ChecksumAlgorithm.SHA256, jar.sha256)],
        license_concluded=SpdxNoAssertion(),
        license_declared=_declared(identity.jar_expression(jar.licenses)),
        license_comment=(f"declared by the jar: {'; '.join(sorted(set(jar.licenses)))}"
                         if named else None),
        copyright_text=SpdxNoAssertion(),
        external_references=[_purl_ref(entry.purl)] if entry.purl else [],
        primary_package_purpose=PackagePurpose.LIBRARY)


def _shaded(group: str, artifact: str, version: str, ref: str, path: str) -> Package:
    """An artifact whose classes a shaded jar carries (its own pom.properties inside it)."""
    return Package(
        _spdx_id("shaded", artifact, ref), artifact, SpdxNoAssertion(), version=version,
        supplier=SpdxNoAssertion(), files_analyzed=False, license_concluded=SpdxNoAssertion(),
        license_declared=SpdxNoAssertion(), copyright_text=SpdxNoAssertion(),
        external_references=[_purl_ref(identity.maven_purl(group, artifact, version))],
        primary_package_purpose=PackagePurpose.LIBRARY,
        comment=f"shaded into {path}")
