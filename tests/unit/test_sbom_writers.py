"""The SBOM writers (imagebuilder/sbom/cyclonedx.py, spdx.py): an inventory like a real image's
(epoch versions, binaries whose source package has another name or version, packages with no
license, a jar with no Maven coordinates, a shaded jar, the same jar at two paths) written as
CycloneDX 1.6 and SPDX 2.3, each checked by its format's own validator, byte for byte stable."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packageurl import PackageURL
from spdx_tools.spdx.parser.json import json_parser
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document
from spdx_tools.spdx.writer.json.json_writer import write_document_to_stream

from imagebuilder.build import sboms
from imagebuilder.cli import main
from imagebuilder.layers.cpio import Tree, write_layer
from imagebuilder.sbom import cyclonedx, formats, identity, spdx
from imagebuilder.sbom.model import DebPackage, Inventory, Jar, Runtime
from imagebuilder.store import attachments
from imagebuilder.store.cache import Cache
from imagebuilder.store.home import Home
from imagebuilder.store.layout import INITRD_LAYER_MEDIA_TYPE, KERNEL_MEDIA_TYPE, Store
from imagebuilder.store.oci import sha256_digest

JDK = "openjdk-21-jdk-headless"


def _h(text: str, n: int = 64) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def _deb(name: str, version: str, source: str, source_version: str, license: str | None,
         part: str, arch: str = "amd64") -> DebPackage:
    return DebPackage(name, version, arch, source, source_version, _h(name + version), license,
                      part)


def _jar(path: str, coords: tuple[str, str, str] | None = None,
         licenses: tuple[str, ...] = (), content: str | None = None,
         embedded: tuple[tuple[str, str, str], ...] = ()) -> Jar:
    group, artifact, version = coords or (None, None, None)
    data = content or path
    return Jar(path, hashlib.sha1(data.encode()).hexdigest(), _h(data), group, artifact, version,
               licenses, embedded)


SHADED = (("org.eclipse.jetty", "jetty-server", "11.0.24"),
          ("com.fasterxml.jackson.core", "jackson-core", "2.17.2"))


PACKAGES = (
    _deb("linux-image-6.12.43+deb13-amd64", "6.12.43-1", "linux-signed-amd64", "6.12.43+1",
         "GPL-2.0-only", "kernel"),
    _deb("busybox-static", "1:1.37.0-6", "busybox", "1:1.37.0-6", None, "base"),
    _deb("firmware-misc-nonfree", "20250410-2", "firmware-nonfree", "20250410-2", None,
         "firmware", arch="all"),
    _deb(JDK, "21.0.8+9-1", "openjdk-21", "21.0.8+9-1",
         "GPL-2.0-only WITH Classpath-exception-2.0", "jvm"),
    _deb("libc6", "2.41-12", "glibc", "2.41-12", "LGPL-2.1-or-later AND GPL-2.0-or-later", "jvm"),
    _deb("libc6", "2.41-12", "glibc", "2.41-12", "LGPL-2.1-or-later AND GPL-2.0-or-later",
         "packages"),
    _deb("libstdc++6", "14.2.0-19", "gcc-14", "14.2.0-19", None, "jvm"),
    _deb("zlib1g", "1:1.3.dfsg+really1.3.1-1+b1", "zlib", "1:1.3.dfsg+really1.3.1-1", "Zlib",
         "jvm"),
    _deb("fonts-dejavu-core", "2.37-8", "fonts-dejavu", "2.37-8", "Bitstream-Vera", "packages",
         arch="all"),
)
JARS = (
    # A shaded jar: its own coordinates, the classes of many others inside.
    _jar("/app/wiremock-standalone-3.9.1.jar",
         ("org.wiremock", "wiremock-standalone", "3.9.1"), ("Apache-2.0",), embedded=SHADED),
    _jar("/app/app.jar!/BOOT-INF/lib/jackson-databind-2.17.0.jar",
         ("com.fasterxml.jackson.core", "jackson-databind", "2.17.0"),
         ("The Apache Software License, Version 2.0",), content="jackson"),
    _jar("/app/lib/jackson-databind-2.17.0.jar",
         ("com.fasterxml.jackson.core", "jackson-databind", "2.17.0"),
         ("The Apache Software License, Version 2.0",), content="jackson"),
    _jar("/app/app.jar!/BOOT-INF/lib/logback-classic-1.5.6.jar",
         ("ch.qos.logback", "logback-classic", "1.5.6"), ("EPL-1.0", "LGPL-2.1-only")),
    _jar("/app/app.jar!/BOOT-INF/lib/internal-tools.jar"),
)


def _inventory(**changes: Any) -> Inventory:
    inv = Inventory(
        name="wiremock", version="3.9.1", digest="sha256:" + _h("manifest"), created=1700000000,
        suite="trixie", packages=PACKAGES, jars=JARS,
        runtime=Runtime(JDK, "21.0.8+9-1", ("java.xml", "java.base", "java.logging")),
        app="wiremock-standalone-3.9.1.jar", tool="imagebuilder 0.1.0")
    return dataclasses.replace(inv, **changes)


def _cdx(inv: Inventory | None = None) -> dict[str, Any]:
    return json.loads(cyclonedx.document(inv or _inventory()))


def _spdx(inv: Inventory | None = None) -> dict[str, Any]:
    return json.loads(spdx.document(inv or _inventory()))


def _cdx_errors(text: str) -> object:
    return JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)


def _spdx_errors(data: bytes, tmp_path: Path) -> list[Any]:
    path = tmp_path / "sbom.spdx.json"
    path.write_bytes(data)
    return validate_full_spdx_document(json_parser.parse_from_file(str(path)), "SPDX-2.3")


def _all_components(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for c in doc["components"]:
        out += [c, *c.get("components", [])]
    return out


# --- both formats validate, byte for byte stable ---------------------------------------------

def test_cyclonedx_validates_strictly() -> None:
    assert _cdx_errors(cyclonedx.document(_inventory()).decode()) is None


def test_spdx_validates_fully(tmp_path: Path) -> None:
    assert _spdx_errors(spdx.document(_inventory()), tmp_path) == []


def test_an_empty_image_validates_too(tmp_path: Path) -> None:
    inv = _inventory(packages=(), jars=(), runtime=None, app="")
    assert _cdx_errors(cyclonedx.document(inv).decode()) is None
    assert _spdx_errors(spdx.document(inv), tmp_path) == []


@pytest.mark.parametrize("writer", [cyclonedx, spdx])
def test_same_inventory_same_bytes_whatever_the_order(writer: Any) -> None:
    shuffled = _inventory(packages=tuple(reversed(PACKAGES)), jars=tuple(reversed(JARS)))
    assert writer.document(_inventory()) == writer.document(_inventory())
    assert writer.document(_inventory()) == writer.document(shuffled)


def test_serial_namespace_and_time_come_from_the_image() -> None:
    other = _inventory(digest="sha256:" + _h("another manifest"))
    cdx, cdx2 = _cdx(), _cdx(other)
    assert cdx["serialNumber"].startswith("urn:uuid:")
    assert cdx["serialNumber"] != cdx2["serialNumber"]
    assert cdx["metadata"]["timestamp"] == "2023-11-14T22:13:20+00:00"
    doc = _spdx()
    assert doc["documentNamespace"] == (
        f"https://imagebuilder.invalid/spdx/wiremock-3.9.1-{_h('manifest')}")
    assert doc["creationInfo"] == {"created": "2023-11-14T22:13:20Z",
                                   "creators": ["Tool: imagebuilder-0.1.0"]}


def test_a_bad_digest_is_refused() -> None:
    with pytest.raises(ValueError, match="not an image digest"):
        cyclonedx.document(_inventory(digest="sha256:xyz"))


# --- the validators would catch a broken document --------------------------------------------

def test_the_cyclonedx_validator_catches_a_broken_document() -> None:
    doc = _cdx()
    broken = copy.deepcopy(doc)
    broken["components"][0]["hashes"][0]["content"] = "not hex"
    assert _cdx_errors(json.dumps(broken)) is not None
    unknown = copy.deepcopy(doc)
    unknown["components"][0]["flavour"] = "strawberry"
    assert _cdx_errors(json.dumps(unknown)) is not None


def test_the_spdx_validator_catches_a_broken_document(tmp_path: Path) -> None:
    doc = _spdx()
    doc["relationships"].append({"spdxElementId": doc["packages"][0]["SPDXID"],
                                 "relationshipType": "CONTAINS",
                                 "relatedSpdxElement": "SPDXRef-nowhere"})
    assert _spdx_errors(json.dumps(doc).encode(), tmp_path) != []
    doc = _spdx()
    doc["packages"][2]["licenseDeclared"] = "GPL-2 with whatever"
    assert _spdx_errors(json.dumps(doc).encode(), tmp_path) != []


def test_spdx_refuses_to_write_an_invalid_inventory() -> None:
    bad = dataclasses.replace(PACKAGES[1], sha256="not a digest")
    with pytest.raises(ValueError):
        spdx.document(_inventory(packages=(bad,)))


# --- Debian packages -------------------------------------------------------------------------

def test_every_debian_package_once_with_purl_hash_and_license() -> None:
    comps = {c["name"]: c for c in _all_components(_cdx())}
    for pkg in PACKAGES:
        comp = comps[pkg.name]
        assert comp["version"] == pkg.version
        assert comp["hashes"] == [{"alg": "SHA-256", "content": pkg.sha256}]
        assert PackageURL.from_string(comp["purl"]).version == pkg.version
    libc = comps["libc6"]
    assert [p["value"] for p in libc["properties"] if p["name"] == "imagebuilder:part"] == [
        "jvm", "packages"]
    assert libc["licenses"] == [{"expression": "LGPL-2.1-or-later AND GPL-2.0-or-later"}]
    assert "licenses" not in comps["busybox-static"]
    assert comps[JDK]["type"] == "platform"
    assert comps["libc6"]["type"] == "library"
    assert comps["firmware-misc-nonfree"]["type"] == "firmware"
    packages = {p["name"]: p for p in _spdx()["packages"]}
    assert len([p for p in _spdx()["packages"] if p["name"] == "libc6"]) == 1
    assert packages["busybox-static"]["licenseDeclared"] == "NOASSERTION"
    assert packages[JDK]["licenseDeclared"] == "GPL-2.0-only WITH Classpath-exception-2.0"
    assert packages["busybox-static"]["packageFileName"] == "busybox-static_1.37.0-6_amd64.deb"
    assert packages["libc6"]["supplier"] == "Organization: Debian"


@pytest.mark.parametrize(("pkg", "purl"), [
    (PACKAGES[1], "pkg:deb/debian/busybox-static@1:1.37.0-6?arch=amd64&distro=debian-13"
                  "&upstream=busybox"),
    (PACKAGES[7], "pkg:deb/debian/zlib1g@1:1.3.dfsg%2Breally1.3.1-1%2Bb1?arch=amd64"
                  "&distro=debian-13&upstream=zlib%401:1.3.dfsg%2Breally1.3.1-1"),
    (_deb("fonts-dejavu-core", "2.37-8", "fonts-dejavu-core", "2.37-8", None, "packages",
          arch="all"), "pkg:deb/debian/fonts-dejavu-core@2.37-8?arch=all&distro=debian-13"),
])
def test_deb_purls(pkg: DebPackage, purl: str) -> None:
    assert identity.deb_purl(pkg, "trixie") == purl
    parsed = PackageURL.from_string(purl)
    assert (parsed.name, parsed.version) == (pkg.name, pkg.version)


def test_the_distro_qualifier_follows_the_suite() -> None:
    assert "distro=debian-12" in identity.deb_purl(PACKAGES[4], "bookworm")
    assert "distro=debian-sid" in identity.deb_purl(PACKAGES[4], "sid")


# --- the runtime, the jars, the app ----------------------------------------------------------

def test_the_runtime_is_a_component_of_its_jdk_package() -> None:
    jdk = next(c for c in _cdx()["components"] if c["name"] == JDK)
    [runtime] = jdk["components"]
    assert runtime["name"] == "jlink-runtime" and runtime["type"] == "platform"
    assert [p["value"] for p in runtime["properties"]] == ["java.base", "java.logging",
                                                           "java.xml"]
    doc = _spdx()
    ids = {p["name"]: p["SPDXID"] for p in doc["packages"]}
    assert {"spdxElementId": ids[JDK], "relationshipType": "CONTAINS",
            "relatedSpdxElement": ids["jlink-runtime"]} in doc["relationships"]


def test_every_jar_with_its_hashes_and_purl_when_known() -> None:
    jars = [c for c in _cdx()["components"] if c["type"] == "library"
            and any(p["name"] == "imagebuilder:path" for p in c.get("properties", []))]
    assert sorted(next(p["value"] for p in c["properties"]) for c in jars) == sorted(
        j.path for j in JARS)
    for comp in jars:
        assert [h["alg"] for h in comp["hashes"]] == ["SHA-1", "SHA-256"]
    by_name = {c["name"]: c for c in jars}
    assert "purl" not in by_name["internal-tools"]
    assert by_name["wiremock-standalone"]["purl"] == (
        "pkg:maven/org.wiremock/wiremock-standalone@3.9.1")
    assert by_name["logback-classic"]["licenses"] == [{"expression": "EPL-1.0 OR LGPL-2.1-only"}]
    assert by_name["jackson-databind"]["licenses"] == [
        {"license": {"name": "The Apache Software License, Version 2.0"}}]
    refs = [c["bom-ref"] for c in _all_components(_cdx())]
    assert len(refs) == len(set(refs))
    packages = [p for p in _spdx()["packages"] if p.get("packageFileName", "").startswith("/")]
    assert len(packages) == len(JARS)
    for pkg in packages:
        assert [c["algorithm"] for c in pkg["checksums"]] == ["SHA1", "SHA256"]


def test_a_shaded_jar_lists_what_it_carries() -> None:
    cdx = _cdx()
    jar = next(c for c in cdx["components"] if c["name"] == "wiremock-standalone")
    assert sorted(c["purl"] for c in jar["components"]) == [
        "pkg:maven/com.fasterxml.jackson.core/jackson-core@2.17.2",
        "pkg:maven/org.eclipse.jetty/jetty-server@11.0.24"]
    doc = _spdx()
    ids = {p["name"]: p["SPDXID"] for p in doc["packages"]}
    for artifact in ("jetty-server", "jackson-core"):
        assert {"spdxElementId": ids["wiremock-standalone"], "relationshipType": "CONTAINS",
                "relatedSpdxElement": ids[artifact]} in doc["relationships"]


def test_dependencies_image_on_packages_and_app_app_on_runtime_and_jars() -> None:
    doc = _cdx()
    deps = {d["ref"]: d.get("dependsOn", []) for d in doc["dependencies"]}
    image = doc["metadata"]["component"]
    assert image["type"] == "operating-system"
    assert image["hashes"] == [{"alg": "SHA-256", "content": _h("manifest")}]
    app = next(c for c in doc["components"] if c["type"] == "application"
               and c["bom-ref"].startswith("app:"))
    packages = {c["bom-ref"] for c in doc["components"] if c["bom-ref"].startswith("pkg:deb/")}
    assert set(deps[image["bom-ref"]]) == packages | {app["bom-ref"]}
    assert len(deps[app["bom-ref"]]) == len(JARS) + 1
    rels = {(r["spdxElementId"], r["relationshipType"], r["relatedSpdxElement"])
            for r in _spdx()["relationships"]}
    kinds = [kind for _a, kind, _b in rels]
    assert kinds.count("DESCRIBES") == 1
    assert kinds.count("DEPENDS_ON") == len(JARS) + 1
    # libc6 once, the app, the runtime, the shaded artifacts
    assert kinds.count("CONTAINS") == len(PACKAGES) - 1 + 1 + 1 + len(SHADED)


# --- inspect --sbom --------------------------------------------------------------------------

@pytest.fixture
def stored_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Store, str]:
    """A store at IMAGEBUILDER_HOME holding one image, wiremock:3.9.1, with no SBOM yet."""
    monkeypatch.setenv("IMAGEBUILDER_HOME", str(tmp_path / "home"))
    store = Home().store
    kernel = store.add_blob_bytes(b"kernel", KERNEL_MEDIA_TYPE)
    layer = store.add_blob_bytes(b"layer", INITRD_LAYER_MEDIA_TYPE)
    return store, store.put_image("wiremock:3.9.1", {"cmdline": "console=ttyS0"}, [kernel, layer])


@pytest.mark.parametrize("fmt", [formats.CYCLONEDX, formats.SPDX])
def test_inspect_prints_the_stored_sbom_byte_for_byte(
        fmt: formats.Format, stored_image: tuple[Store, str],
        capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    store, digest = stored_image
    writer = cyclonedx if fmt is formats.CYCLONEDX else spdx
    payload = writer.document(_inventory(digest=digest))
    attachments.attach(store, digest, fmt.media_type, payload, fmt.media_type)
    other = formats.SPDX if fmt is formats.CYCLONEDX else formats.CYCLONEDX
    attachments.attach(store, digest, other.media_type, b'{"other": true}', other.media_type)
    capsysbinary.readouterr()
    assert main(["inspect", "wiremock:3.9.1", "--sbom", fmt.key]) == 0
    out = capsysbinary.readouterr()
    assert (out.out, out.err) == (payload, b"")


def test_inspect_of_an_image_without_sbom_says_to_rebuild(
        stored_image: tuple[Store, str], capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["inspect", "wiremock:3.9.1", "--sbom", "spdx"]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == ("ERROR: wiremock:3.9.1 has no SPDX SBOM: it was built (or pushed) before "
                       "imagebuilder made SBOMs; build it again to make them\n")


# --- what the build does with them (imagebuilder/build/sboms.py) -----------------------------

def test_the_build_attaches_both_documents_once(stored_image: tuple[Store, str]) -> None:
    store, digest = stored_image
    inv = _inventory(digest=digest)
    first = sboms.attach(store, inv)
    assert sboms.attach(store, inv) == first  # a rebuild of the same image: the same two
    for stored, writer in zip(first, (cyclonedx, spdx), strict=True):
        [found] = attachments.referrers(store, digest, stored.format.media_type)
        assert found.digest == stored.attachment
        assert found.annotations == {"org.opencontainers.image.created": "2023-11-14T22:13:20Z",
                                     sboms.INVENTORY: sboms.inventory_key(inv),
                                     sboms.COMPONENTS: "17"}
        data = attachments.payload(store, found)
        assert data == writer.document(inv)
        assert stored.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert sboms.attached(store, inv) == first  # found again, nothing written
    assert sboms.attached(store, _inventory(digest=digest, version="9.9.9")) is None
    cdx = json.loads(cyclonedx.document(inv))
    assert len(_all_components(cdx)) == 17
    assert sboms.summary(first, 0.04) == "sbom: CycloneDX and SPDX, 17 components, in 0.04 s"


def test_a_pulled_sbom_is_never_taken_for_the_builds_own(stored_image: tuple[Store, str]
                                                         ) -> None:
    """A registry can hand over a document that claims the inventory a rebuild would make (its
    key is computable): the rebuild writes its own instead of trusting it."""
    store, digest = stored_image
    inv = _inventory(digest=digest)
    ours = sboms.attach(store, inv)
    forged = []
    for stored in ours:
        [found] = attachments.referrers(store, digest, stored.format.media_type)
        manifest = json.loads(store.read_blob(found.digest))
        manifest["layers"][0]["annotations"] = {"forged": "yes"}
        data = json.dumps(manifest).encode()
        blob = store.read_blob(manifest["layers"][0]["digest"])
        forged.append(attachments.put_manifest(
            store, digest, data, {manifest["layers"][0]["digest"]: blob,
                                  attachments.EMPTY_DESCRIPTOR.digest: attachments.EMPTY_JSON},
            keep=False, origin="registry.example/app"))
    for stored in ours:  # only the pulled ones are left, with the right inventory key
        [found] = attachments.referrers(store, digest, stored.format.media_type)
        assert found.annotations and found.annotations[sboms.INVENTORY] == sboms.inventory_key(inv)
        assert found.digest in {f.digest for f in forged}
    assert sboms.attached(store, inv) is None


def test_the_jars_of_a_package_layer_are_read_from_it_once(tmp_path: Path) -> None:
    jar = tmp_path / "jrt-fs.jar"
    with zipfile.ZipFile(jar, "w") as zf:
        zf.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\r\n\r\n")
    tree = Tree()
    tree.add_file("opt/java/lib/jrt-fs.jar", source=jar, mode=0o644)
    tree.add_file("opt/java/lib/modules", data=b"not a jar", mode=0o644)
    layer = tmp_path / "jvm.cpio.zst"
    write_layer(tree, layer, mtime=0)
    cache, runs = Cache(tmp_path / "cache"), []

    def stage(name: str, inputs: dict[str, Any], produce: Callable[[Path], None]) -> Path:
        runs.append(name)
        return cache.get_or_make(Cache.stage_key(name, 1, inputs), produce)[0]
    (tmp_path / "scratch").mkdir()
    for _ in range(2):
        [found] = sboms.layer_jars(stage, layer, tmp_path / "scratch", tmp_path / "cache")
        assert found.path == "/opt/java/lib/jrt-fs.jar"
        assert found.sha256 == hashlib.sha256(jar.read_bytes()).hexdigest()
    assert runs == ["sbom-layer-jars"] * 2
    assert len(list((tmp_path / "scratch").iterdir())) == 1  # unpacked on the miss only


# --- references: unique and reproducible whatever the jars are called (review finding F5) ----

def _crafted_jars() -> tuple[Jar, ...]:
    """Jars with one purl: the second at a path that spells the first's reference followed by
    the reference of an artifact shaded into the first, the last a second copy of the first's
    name in its zip (other bytes, the same path)."""
    return (_jar("/app/app.jar!/lib/x.jar", ("g0", "x", "1"), embedded=(("g", "a", "1.jar"),)),
            _jar("/app/app.jar!/lib/x.jar", ("g0", "x", "1"), content="a second copy"),
            _jar("/app/app.jar!/lib/x.jar|pkg:maven/g/a@1.jar", ("g0", "x", "1")),
            _jar("/app/app.jar!/lib/x.jar#y", ("g0", "x", "1")))


def test_a_crafted_jar_name_cannot_make_two_references_equal(tmp_path: Path) -> None:
    inv = _inventory(jars=_crafted_jars())
    first = cyclonedx.document(inv)
    assert cyclonedx.document(inv) == first and b"BomRef." not in first
    refs = [c["bom-ref"] for c in _all_components(json.loads(first))]
    assert len(refs) == len(set(refs)) and _cdx_errors(first.decode()) is None
    assert "pkg:maven/g0/x@1#/app/app.jar!/lib/x.jar%7Cpkg%3Amaven/g/a%401.jar" in refs
    assert _spdx_errors(spdx.document(inv), tmp_path) == []


def test_two_jars_that_would_share_a_reference_are_refused() -> None:
    same = _jar("/app/lib/x.jar", ("g", "x", "1"))
    with pytest.raises(ValueError,
                       match="share the reference 'pkg:maven/g/x@1#/app/lib/x.jar#[0-9a-f]{64}'"):
        identity.jars(_inventory(jars=(same, same)))


def test_spdx_ids_carry_the_whole_hash_of_the_reference() -> None:
    """48 bits of a hash are a birthday search away from two equal ids (2^24 crafted jars)."""
    ids = [p["SPDXID"] for p in _spdx(_inventory(jars=_crafted_jars()))["packages"]]
    assert len(ids) == len(set(ids)) and all(re.search(r"-[0-9a-f]{64}$", i) for i in ids)


@pytest.mark.parametrize("license_text", ["()", "( )", "MIT OR ()", "MIT AND"])
def test_a_license_the_parser_chokes_on_is_no_assertion(license_text: str) -> None:
    """The license parser raises IndexError or AttributeError on such text (not only
    ExpressionError); one jar saying so stopped every build of its app (review D, F12)."""
    from imagebuilder.sbom import dep5, identity
    assert identity.spdx_expression(license_text) is None
    assert not dep5.valid(license_text)
    jar = Jar("/app/lib/lic.jar", _h("s1")[:40], _h("s2"), licenses=(license_text,))
    inv = _inventory(jars=(jar,))
    for writer in (cyclonedx, spdx):
        assert writer.document(inv) == writer.document(inv)


# --- what the build's sbom stage leaves out to stay fast, and that its bytes are the same -------
# The SPDX document is not validated by spdx-tools at build time (the tests above validate every
# form of it), and the formats' libraries are imported in a thread while the disk is hashed.

REPO = Path(__file__).resolve().parents[2]
VALIDATOR = "spdx_tools.spdx.validation.document_validator"


def _spdx_tools_writer(inv: Inventory) -> bytes:
    """The document as spdx-tools' own JSON writer writes it (validating first), in our form."""
    out = io.StringIO()
    write_document_to_stream(spdx.spdx_document(inv), out, validate=True)
    return json.dumps(json.loads(out.getvalue()), sort_keys=True, indent=2,
                      ensure_ascii=False).encode() + b"\n"


@pytest.mark.parametrize("inv", [_inventory(), _inventory(packages=(), jars=(), runtime=None)],
                         ids=["full", "empty"])
def test_spdx_bytes_are_those_of_spdx_tools_writer_validated_or_not(inv: Inventory) -> None:
    expected = _spdx_tools_writer(inv)
    assert spdx.document(inv) == expected
    assert spdx.document(inv, validate=False) == expected


def test_the_build_attaches_the_same_bytes_without_importing_spdx_validation(
        tmp_path: Path) -> None:
    """In a process of its own (imports are per process): preload imports both writers in its
    thread; attach then writes both documents, byte for byte what the validating writers give,
    and never imports spdx-tools' validator."""
    store = Store(tmp_path / "store")
    kernel = store.add_blob_bytes(b"kernel", KERNEL_MEDIA_TYPE)
    inv = _inventory(digest=store.put_image("wiremock:3.9.1", {"cmdline": "ttyS0"}, [kernel]))
    (tmp_path / "inventory.json").write_text(inv.to_json())
    script = textwrap.dedent(f"""
        import sys, threading
        from pathlib import Path
        from imagebuilder.build import sboms
        from imagebuilder.sbom.model import Inventory
        from imagebuilder.store.layout import Store
        inv = Inventory.from_json(Path({str(tmp_path / "inventory.json")!r}).read_text())
        assert "imagebuilder.sbom.spdx" not in sys.modules
        sboms.preload()
        next(t for t in threading.enumerate() if t.name == "sbom-preload").join()
        assert "imagebuilder.sbom.spdx" in sys.modules
        assert "imagebuilder.sbom.cyclonedx" in sys.modules
        stored = sboms.attach(Store({str(tmp_path / "store")!r}), inv)
        print(" ".join(s.digest for s in stored))
        print({VALIDATOR!r} in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    digests, validator = out.stdout.split("\n")[:2]
    assert digests.split() == [sha256_digest(cyclonedx.document(inv)),
                               sha256_digest(spdx.document(inv))]
    assert validator == "False"
