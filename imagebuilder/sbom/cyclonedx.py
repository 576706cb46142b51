"""An image's SBOM as CycloneDX 1.6 JSON, written with cyclonedx-python-lib.

The document describes the image as ``metadata.component`` of type ``operating-system``: CycloneDX
1.6 defines that type as "a software operating system without regard to deployment model (i.e.
installed on physical hardware, virtual machine, image, etc)", which is what a bootable image of a
kernel, a userland and an app is. ``container`` is for OS-level virtualization (an image shares
no kernel) and ``application`` is the app inside it, listed as a component of its own.

Components: one per Debian package (its purl, the .deb's SHA-256, its license, the source package
and the image parts as properties), the jlink runtime nested in its JDK package's component with
its modules as properties, one per jar (Maven purl when known, SHA-1 and SHA-256, licenses), and
the app. Dependencies: the image on its packages and the app, the app on the runtime and its
jars. The serial number and the timestamp come from the image digest and SOURCE_DATE_EPOCH, and
the JSON is written with sorted keys, so the same inventory always gives the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime

from cyclonedx.model import HashAlgorithm, HashType, Property
from cyclonedx.model.bom import Bom, BomMetaData
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.contact import OrganizationalEntity
from cyclonedx.model.license import DisjunctiveLicense, License, LicenseExpression
from cyclonedx.model.tool import ToolRepository
from cyclonedx.output.json import JsonV1Dot6
from packageurl import PackageURL

from . import formats, identity
from .identity import Deb, JarEntry
from .model import Inventory, Runtime

MEDIA_TYPE = formats.CYCLONEDX.media_type
#: Our properties' names, in a namespace of our own as CycloneDX asks of custom properties.
PREFIX = "imagebuilder:"


def document(inv: Inventory) -> bytes:
    """The CycloneDX 1.6 JSON document of ``inv``: the same bytes for the same inventory."""
    text = JsonV1Dot6(_bom(inv)).output_as_string()
    return json.dumps(json.loads(text), sort_keys=True, indent=2,
                      ensure_ascii=False).encode() + b"\n"


def _bom(inv: Inventory) -> Bom:
    image = _image(inv)
    debs = {d.package.name: d for d in identity.debs(inv)}
    runtime = _runtime(inv.runtime, debs) if inv.runtime else None
    packages = {name: _deb(d, runtime if _holds(d, inv.runtime) else None)
                for name, d in debs.items()}
    jars = [_jar(j) for j in identity.jars(inv)]
    app = Component(type=ComponentType.APPLICATION, name=inv.app or inv.name,
                    version=inv.version, bom_ref=f"app:{inv.app or inv.name}",
                    properties=[Property(name=f"{PREFIX}image", value=f"{inv.name}:{inv.version}")])
    loose = [runtime] if runtime and not any(_holds(d, inv.runtime) for d in debs.values()) else []
    bom = Bom(serial_number=identity.serial(inv), metadata=BomMetaData(
        timestamp=datetime.fromtimestamp(inv.created, UTC), component=image,
        tools=ToolRepository(components=[_tool(inv)])),
        components=[*packages.values(), *loose, app, *jars])
    bom.register_dependency(image, [*packages.values(), *loose, app])
    bom.register_dependency(app, [*([runtime] if runtime else []), *jars])
    return bom


def _image(inv: Inventory) -> Component:
    return Component(
        type=ComponentType.OPERATING_SYSTEM, name=inv.name, version=inv.version,
        bom_ref=identity.image_purl(inv), purl=PackageURL.from_string(identity.image_purl(inv)),
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=identity.digest_hex(inv))],
        properties=[Property(name=f"{PREFIX}digest", value=inv.digest),
                    Property(name=f"{PREFIX}suite", value=inv.suite)],
        description="a machine image: kernel, userland, Java runtime and app")


def _tool(inv: Inventory) -> Component:
    name, version = identity.tool(inv)
    return Component(type=ComponentType.APPLICATION, name=name, version=version,
                     bom_ref=f"tool:{name}@{version}")


def _holds(deb: Deb, runtime: Runtime | None) -> bool:
    return runtime is not None and deb.package.name == runtime.jdk_package


def _deb(deb: Deb, runtime: Component | None) -> Component:
    pkg = deb.package
    props = [Property(name=f"{PREFIX}debian:source", value=pkg.source),
             Property(name=f"{PREFIX}debian:source-version", value=pkg.source_version),
             *(Property(name=f"{PREFIX}part", value=part) for part in deb.parts)]
    return Component(
        type=ComponentType(deb.kind), name=pkg.name, version=pkg.version, bom_ref=deb.purl,
        purl=PackageURL.from_string(deb.purl), supplier=OrganizationalEntity(name="Debian"),
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=pkg.sha256)],
        licenses=_licenses([pkg.license] if pkg.license else []), properties=props,
        components=[runtime] if runtime else None)


def _runtime(runtime: Runtime, debs: dict[str, Deb]) -> Component:
    parent = debs.get(runtime.jdk_package)
    ref = f"{parent.purl if parent else runtime.jdk_package}#{identity.RUNTIME_NAME}"
    return Component(
        type=ComponentType.PLATFORM, name=identity.RUNTIME_NAME, version=runtime.jdk_version,
        bom_ref=ref, description=f"the Java runtime jlink linked from {runtime.jdk_package}",
        properties=[Property(name=f"{PREFIX}jlink:module", value=m)
                    for m in sorted(runtime.modules)])


def _jar(entry: JarEntry) -> Component:
    jar = entry.jar
    return Component(
        type=ComponentType.LIBRARY, name=entry.name, group=jar.group, version=jar.version,
        bom_ref=entry.ref, purl=PackageURL.from_string(entry.purl) if entry.purl else None,
        hashes=[HashType(alg=HashAlgorithm.SHA_1, content=jar.sha1),
                HashType(alg=HashAlgorithm.SHA_256, content=jar.sha256)],
        licenses=_jar_licenses(jar.licenses),
        properties=[Property(name=f"{PREFIX}path", value=jar.path)],
        components=[_shaded(g, a, v, ref) for g, a, v, ref in identity.embedded(entry)] or None)


def _shaded(group: str, artifact: str, version: str, ref: str) -> Component:
    """An artifact whose classes a shaded jar carries (its own pom.properties inside it)."""
    return Component(type=ComponentType.LIBRARY, name=artifact, group=group, version=version,
                     bom_ref=ref,
                     purl=PackageURL.from_string(identity.maven_purl(group, artifact, version)))


def _licenses(expressions: Iterable[str]) -> list[License]:
    out: list[License] = []
    for text in expressions:
        expr = identity.spdx_expression(text)
        if expr is not None:
            out.append(LicenseExpression(expr))
    return out


def _jar_licenses(licenses: tuple[str, ...]) -> list[License]:
    """One SPDX expression when every license has an id; else each license by id or name (a
    CycloneDX licence list is either one expression or licenses, never both)."""
    expr = identity.jar_expression(licenses)
    if expr is not None:
        return [LicenseExpression(expr)]
    out: list[License] = []
    for text in sorted(set(licenses)):
        spdx = identity.spdx_expression(text)
        out.append(DisjunctiveLicense(id=spdx) if spdx and " " not in spdx
                   else DisjunctiveLicense(name=text))
    return out
