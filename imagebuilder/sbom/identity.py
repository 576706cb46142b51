"""What each component of an image's SBOM is called, the same in CycloneDX and SPDX.

Both writers name a component the same way, so a consumer can match the two documents of one
image entry by entry:

* a Debian package by its purl, ``pkg:deb/debian/NAME@VERSION?arch=ARCH&distro=debian-13``, with
  ``upstream=SRC`` when the source package has another name, or ``upstream=SRC@SRCVERSION`` when
  its version differs too (a binNMU): the qualifier syft and trivy write for Debian packages;
* a jar by ``pkg:maven/GROUP/ARTIFACT@VERSION`` when its pom.properties say so, else by its path
  in the image and its SHA-256 alone: a jar with no coordinates is still listed;
* the image by ``pkg:oci/NAME@sha256:HEX?tag=VERSION`` (its manifest digest, purl's OCI type).

A Debian package brought in by two parts (libc6 by the jvm and by the app's packages) is one
component, with both parts.

A jar's reference (CycloneDX's bom-ref; SPDX ids hash it) is its purl, ``purl#PATH`` when two
jars share a purl (``purl#PATH#SHA256`` when they share the path too: two copies of one name in
a zip), and an artifact shaded into it is ``JARREF|PURL``. A purl never holds a raw
``#`` or ``|`` (packageurl percent-encodes them) and the path is percent-encoded here, so a
crafted entry name cannot make two references equal; :func:`jars` still checks that every
reference is unique and raises rather than letting a writer invent a random one.
"""

from __future__ import annotations

import re
import urllib.parse
import uuid
from collections import Counter
from dataclasses import dataclass
from posixpath import basename

from license_expression import ExpressionError, get_spdx_licensing
from packageurl import PackageURL

from .. import __version__
from .model import DebPackage, Inventory, Jar

#: Debian's release numbers, for purl's ``distro`` qualifier (``debian-13``) as syft writes it
#: from the image's /etc/os-release. A suite not listed here is named by its codename.
RELEASES = {"buster": "10", "bullseye": "11", "bookworm": "12", "trixie": "13", "forky": "14"}
#: Derives each document's serial number (CycloneDX) from the image digest: a fixed UUID of ours.
SERIAL_NAMESPACE = uuid.UUID("5f0e4b36-8f8a-4e0b-9a51-7a3c2d1e9b60")
#: The JDK package's name prefix: that package and the jlink runtime are the Java platform.
JDK_PREFIX = "openjdk-"
#: What the jlink runtime is called in both documents.
RUNTIME_NAME = "jlink-runtime"

LICENSING = get_spdx_licensing()


@dataclass(frozen=True)
class Deb:
    """A Debian package of the image, merged over the parts that brought it in."""

    package: DebPackage
    parts: tuple[str, ...]
    purl: str

    @property
    def kind(self) -> str:
        """What the package is, in CycloneDX's words (SPDX's purposes map from them)."""
        name, part = self.package.name, self.package.part
        if name.startswith(JDK_PREFIX):
            return "platform"  # a runtime that executes bytecode, CycloneDX 1.6 says
        if part == "firmware" or "firmware" in self.parts:
            return "firmware"
        if name.startswith("linux-image-"):
            return "operating-system"
        if name.startswith("lib"):
            return "library"  # Debian policy names shared-library packages lib*
        return "application"


@dataclass(frozen=True)
class JarEntry:
    """A jar of the app, with the identifier both documents give it."""

    jar: Jar
    purl: str | None
    ref: str

    @property
    def name(self) -> str:
        return self.jar.artifact or basename(self.jar.path.rpartition("!/")[2]).removesuffix(".jar")


def distro(suite: str) -> str:
    return f"debian-{RELEASES.get(suite, suite)}"


def deb_purl(pkg: DebPackage, suite: str) -> str:
    qualifiers = {"arch": pkg.architecture, "distro": distro(suite)}
    if pkg.source_version != pkg.version:
        qualifiers["upstream"] = f"{pkg.source}@{pkg.source_version}"
    elif pkg.source != pkg.name:
        qualifiers["upstream"] = pkg.source
    return PackageURL(type="deb", namespace="debian", name=pkg.name, version=pkg.version,
                      qualifiers=qualifiers).to_string()


def jar_purl(jar: Jar) -> str | None:
    if not (jar.group and jar.artifact and jar.version):
        return None
    return maven_purl(jar.group, jar.artifact, jar.version)


def maven_purl(group: str, artifact: str, version: str) -> str:
    return PackageURL(type="maven", namespace=group, name=artifact, version=version).to_string()


def embedded(entry: JarEntry) -> list[tuple[str, str, str, str]]:
    """The artifacts shaded into a jar, sorted, each (group, artifact, version, bom-ref): its
    purl below the jar's reference, unique in the document as the jar's is."""
    return [(g, a, v, f"{entry.ref}|{maven_purl(g, a, v)}")
            for g, a, v in sorted(set(entry.jar.embedded))]


def image_purl(inv: Inventory) -> str:
    return PackageURL(type="oci", name=inv.name.lower(), version=inv.digest,
                      qualifiers={"tag": inv.version}).to_string()


def debs(inv: Inventory) -> list[Deb]:
    """The image's Debian packages, one per name and architecture, sorted by name."""
    merged: dict[tuple[str, str], list[DebPackage]] = {}
    for pkg in inv.packages:
        merged.setdefault((pkg.name, pkg.architecture), []).append(pkg)
    out = []
    for key in sorted(merged):
        same = sorted(merged[key], key=lambda p: p.part)
        out.append(Deb(same[0], tuple(sorted({p.part for p in same})),
                       deb_purl(same[0], inv.suite)))
    return out


def jars(inv: Inventory) -> list[JarEntry]:
    """The app's jars sorted by path, each with a reference unique in the document: its purl,
    or when two jars share one (the same library at two paths), its purl and path; a jar with
    no coordinates by its SHA-256, or its path when two such jars have the same bytes; then
    by its SHA-256 too when two share the path (see the module docstring)."""
    ordered = sorted(inv.jars, key=lambda j: (j.path, j.sha256))
    purls = [jar_purl(j) for j in ordered]
    firsts = [p or f"jar:sha256:{j.sha256}" for j, p in zip(ordered, purls, strict=True)]
    seen = Counter(firsts)
    refs = [r if seen[r] == 1 else f"{r}#{_escaped(j.path)}"
            for j, r in zip(ordered, firsts, strict=True)]
    again = Counter(refs)  # two copies of one nested name in a zip: one path, other bytes
    entries = [JarEntry(j, p, r if again[r] == 1 else f"{r}#{j.sha256}")
               for j, p, r in zip(ordered, purls, refs, strict=True)]
    _check_unique(entries)
    return entries


def _check_unique(entries: list[JarEntry]) -> None:
    """ValueError if two of the jars, or of what is shaded into them, share a reference."""
    counts = Counter(r for e in entries for r in (e.ref, *(s[3] for s in embedded(e))))
    clashes = sorted(r for r, n in counts.items() if n > 1)
    if clashes:
        raise ValueError(f"two components would share the reference {clashes[0]!r}")


def _escaped(path: str) -> str:
    """``path`` with everything but letters, digits and ``/._-!~`` percent-encoded."""
    return urllib.parse.quote(path, safe="/._-!~")


def count(inv: Inventory) -> int:
    """How many components the documents list: the Debian packages, the runtime, the jars and
    what is shaded into them, and the app."""
    shaded = sum(len(set(j.embedded)) for j in inv.jars)
    return len(debs(inv)) + (1 if inv.runtime else 0) + len(inv.jars) + shaded + 1


def tool(inv: Inventory) -> tuple[str, str]:
    """The builder's name and version ("imagebuilder", "0.1.0")."""
    name, _, version = inv.tool.partition(" ")
    return (name, version) if name and version else ("imagebuilder", __version__)


def digest_hex(inv: Inventory) -> str:
    algorithm, _, hexdigest = inv.digest.partition(":")
    if algorithm != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hexdigest):
        raise ValueError(f"not an image digest: {inv.digest!r}")
    return hexdigest


def serial(inv: Inventory) -> uuid.UUID:
    """The document's serial number: a name-based UUID of the image digest, so a rebuild of the
    same image gives the same document."""
    return uuid.uuid5(SERIAL_NAMESPACE, inv.digest)


def spdx_expression(text: str) -> str | None:
    """``text`` as a valid SPDX license expression (ids only, no LicenseRef), or None."""
    try:
        parsed = LICENSING.parse(text, validate=True, strict=True)
    except (ExpressionError, IndexError, AttributeError, RecursionError):
        return None  # the parser's other errors on malformed text ("()", "MIT AND")
    if parsed is None or LICENSING.unknown_license_keys(parsed):
        return None
    return str(parsed)


def jar_expression(licenses: tuple[str, ...]) -> str | None:
    """One SPDX expression for a jar's licenses, or None when one of them has no SPDX id. A pom
    listing several licenses offers a choice ("the user can select any of those licenses", the
    POM reference says): they are joined with OR."""
    exprs = [spdx_expression(text) for text in sorted(set(licenses))]
    if not exprs or None in exprs:
        return None
    if len(exprs) == 1:
        return exprs[0]
    return " OR ".join(f"({e})" if " " in str(e) else str(e) for e in exprs)
