"""End to end: every build stores a CycloneDX and an SPDX SBOM with its image (issue 19).

For WireMock (a shaded jar nobody here wrote) and the shop as a Spring Boot jar (Debian's Jackson
jars nested, a -SNAPSHOT jar with no Maven coordinates): both documents pass their format's
strict validator, list every Debian package of the lock with its .deb's SHA-256 and purl and
every jar of the image's root with its SHA-256, and come out byte for byte the same from a second
home whose stage cache is empty (its .debs hard-linked from the first: the download cache is not
what is tested); and everything syft finds in the image's root (Debian 13, every Debian
package, program and jar) is listed in the stored CycloneDX SBOM with the same version
(:mod:`.syft_checks`, one syft run per image). The images are the ones test_apps.py builds, with
the same configs, so in one session the first builds here are cache hits; no boot.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packageurl import PackageURL
from spdx_tools.spdx.parser.json import json_parser
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from imagebuilder.fetch.lock import Lock
from support.java_apps import ShopBuild, have_tools, project

from . import syft_checks
from .conftest import Cli, image_root, wiremock_jar
from .syft_checks import DPKG, Findings, Listed, found

pytestmark = [pytest.mark.e2e, pytest.mark.network]

WIREMOCK_EXTRA = 'args = ["--port", "8080"]\nhealthcheck = "/__admin/mappings"\n'
#: Each image's app jars that syft finds, by image name.
APP_JARS = {"wiremock": ["/app/wiremock-standalone-3.13.2.jar"],
            "shop-boot": [f"/app/BOOT-INF/lib/{name}.jar" for name in (
                "greet-1.0-SNAPSHOT", "jackson-annotations", "jackson-core", "jackson-databind")]}


@dataclass
class Sboms:
    """One built image and its two stored SBOMs, as ``inspect --sbom`` printed them."""

    app: Path
    ref: str
    digest: str
    cyclonedx: bytes
    spdx: bytes
    build: dict[str, Any]


def _sbom(cli: Cli, ref: str, fmt: str) -> bytes:
    """``inspect REF --sbom FMT``'s stdout, as bytes."""
    out = subprocess.run(cli.argv(["inspect", ref, "--sbom", fmt]), env=cli.env(),
                         capture_output=True, check=True, timeout=120)
    return out.stdout


def _built(cli: Cli, app: Path) -> Sboms:
    out = cli.json("build", str(app))
    ref = out["ref"]
    return Sboms(app, ref, out["digest"], _sbom(cli, ref, "cyclonedx"), _sbom(cli, ref, "spdx"),
                 out)


@pytest.fixture(scope="module")
def wiremock(cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> Sboms:
    root = project(tmp_path_factory.mktemp("sbom") / "wiremock", "wiremock", str(wiremock_jar()),
                   WIREMOCK_EXTRA)
    return _built(cli, root)


@pytest.fixture(scope="module")
def spring(cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> Sboms:
    if not have_tools():
        pytest.skip("needs javac, jar and Debian's libjackson2-databind-java")
    shop = ShopBuild(tmp_path_factory.mktemp("shop"))
    root = project(tmp_path_factory.mktemp("sbom") / "spring", "shop-boot", "shop.jar")
    shop.spring_boot(root / "shop.jar")
    return _built(cli, root)


@pytest.fixture(scope="module", params=["wiremock", "spring"])
def built(request: pytest.FixtureRequest) -> Sboms:
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def root_of(cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The image's root: its initrd layers unpacked in order (once per image)."""
    roots: dict[str, Path] = {}

    def get(ref: str) -> Path:
        if ref not in roots:
            roots[ref] = image_root(cli, ref, tmp_path_factory.mktemp("root"))
        return roots[ref]
    yield get


@pytest.fixture(scope="module")
def scanned(cli: Cli, root_of: Any) -> Iterator[Any]:
    """syft's findings on an image's root and what its stored CycloneDX SBOM lists (one syft
    run per image)."""
    done: dict[str, tuple[Findings, Listed]] = {}

    def get(ref: str) -> tuple[Findings, Listed]:
        if ref not in done:
            done[ref] = syft_checks.scan(root_of(ref)), syft_checks.listed(cli, ref)
        return done[ref]
    yield get


def test_the_build_names_both_sboms(built: Sboms) -> None:
    assert set(built.build["sboms"]) == {"cyclonedx", "spdx"}
    for fmt, data in (("cyclonedx", built.cyclonedx), ("spdx", built.spdx)):
        assert built.build["sboms"][fmt]["digest"] == (
            "sha256:" + hashlib.sha256(data).hexdigest())


def test_both_validate_strictly(built: Sboms, tmp_path: Path) -> None:
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(built.cyclonedx.decode()) is None
    path = tmp_path / "sbom.spdx.json"
    path.write_bytes(built.spdx)
    assert validate_full_spdx_document(json_parser.parse_from_file(str(path)), "SPDX-2.3") == []


def test_every_debian_package_with_its_hash_and_purl(built: Sboms) -> None:
    lock = Lock.load(built.app / "imagebuilder.lock")
    assert lock is not None and lock.packages
    cdx = json.loads(built.cyclonedx)
    debs = {c["name"]: c for c in cdx["components"] if c.get("purl", "").startswith("pkg:deb/")}
    spdx = {p["name"]: p for p in json.loads(built.spdx)["packages"]}
    for entry in lock.packages:
        comp = debs[entry.name]
        assert comp["hashes"] == [{"alg": "SHA-256", "content": entry.sha256}]
        purl = PackageURL.from_string(comp["purl"])
        assert (purl.name, purl.version, purl.qualifiers["distro"]) == (
            entry.name, entry.version, "debian-13")
        assert spdx[entry.name]["checksums"] == [{"algorithm": "SHA256",
                                                  "checksumValue": entry.sha256}]
        assert comp["purl"] in [r["referenceLocator"] for r in spdx[entry.name]["externalRefs"]]
    assert len(debs) == len(lock.packages)


def test_every_jar_of_the_image_with_its_hashes(built: Sboms, root_of: Any) -> None:
    root = root_of(built.ref)
    on_disk = {"/" + p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
               for p in root.rglob("*.[jw]ar") if p.is_file() and not p.is_symlink()}
    assert on_disk, "the image holds no jar"
    cdx = json.loads(built.cyclonedx)
    listed = {next(p["value"] for p in c["properties"] if p["name"] == "imagebuilder:path"):
              {h["alg"]: h["content"] for h in c["hashes"]}
              for c in cdx["components"] if c["type"] == "library" and "hashes" in c
              and not c.get("purl", "").startswith("pkg:deb/")}
    for path, sha256 in on_disk.items():
        assert listed[path]["SHA-256"] == sha256, path
        assert len(listed[path]["SHA-1"]) == 40
    spdx_jars = {p["packageFileName"]: p for p in json.loads(built.spdx)["packages"]
                 if p.get("packageFileName", "").startswith("/")}
    assert set(spdx_jars) == set(listed)


def test_jars_carry_maven_purls_when_they_have_coordinates(wiremock: Sboms,
                                                           spring: Sboms) -> None:
    # WireMock's standalone jar holds no pom.properties of its own: by name, version and hash.
    [standalone] = [c for c in json.loads(wiremock.cyclonedx)["components"]
                    if c["name"] == "wiremock-standalone-3.13.2"]
    assert standalone["version"] == "3.13.2" and "purl" not in standalone
    spring_components = json.loads(spring.cyclonedx)["components"]
    purls = [c.get("purl", "") for c in spring_components]
    assert any(p.startswith("pkg:maven/com.fasterxml.jackson.core/jackson-databind@")
               for p in purls)
    greet = [c for c in spring_components if c["name"].startswith("greet")]
    assert greet and all("purl" not in c for c in greet)  # no coordinates: by name and hash


def test_byte_identical_from_an_empty_cache(cli: Cli, built: Sboms,
                                            tmp_path_factory: pytest.TempPathFactory) -> None:
    """A second home: no stage cache, the .debs hard-linked from the first home's downloads."""
    home = tmp_path_factory.mktemp("second-home")
    downloads = cli.home / "cache" / "archive"
    (home / "cache").mkdir()
    subprocess.run(["cp", "-al", str(downloads), str(home / "cache" / "archive")], check=True)
    second = _built(Cli(home), built.app)
    assert not any(s["cached"] for s in second.build["stages"])
    assert second.digest == built.digest
    assert second.cyclonedx == built.cyclonedx
    assert second.spdx == built.spdx


# -- what syft finds in the image, against the stored CycloneDX SBOM (.syft_checks) -----------

def test_syft_identifies_debian_13(built: Sboms, scanned: Any) -> None:
    findings, _ = scanned(built.ref)
    assert syft_checks.distro(findings) == ("debian", "13", "trixie")


def test_every_deb_syft_finds_is_listed_with_its_version(built: Sboms, scanned: Any) -> None:
    findings, ours = scanned(built.ref)
    assert found(findings, "deb", DPKG), "syft found no Debian package"
    assert syft_checks.unlisted_debs(findings, ours) == []
    assert syft_checks.unfound_debs(findings, ours) == []


def test_every_jar_syft_finds_is_listed_at_its_path_with_its_version(
        built: Sboms, scanned: Any) -> None:
    """The app's jars syft finds (WireMock's standalone jar, whose shaded classes carry no
    pom.properties; the Spring Boot app's BOOT-INF/lib jars) and the runtime's jrt-fs.jar."""
    findings, ours = scanned(built.ref)
    paths = {a["metadata"]["virtualPath"] for a in found(findings, "java-archive")}
    assert {"/opt/java/lib/jrt-fs.jar", *APP_JARS[built.ref.partition(":")[0]]} <= paths
    assert syft_checks.unlisted_jars(findings, ours) == []


def test_every_program_syft_recognises_is_of_a_listed_package(
        built: Sboms, scanned: Any) -> None:
    """Its binary classifiers' findings (busybox, openjdk) are upstream versions of packages
    of ours; the packages ELF notes name are the sources of packages of ours."""
    findings, ours = scanned(built.ref)
    assert {a["name"] for a in found(findings, "binary")} >= {"busybox", "openjdk"}
    assert syft_checks.foreign_binaries(findings, ours) == []
    assert syft_checks.foreign_notes(findings, ours) == []
