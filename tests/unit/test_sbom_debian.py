"""The image's Debian packages as the SBOM lists them (imagebuilder/sbom/debian.py), their
licenses from DEP-5 copyright files (sbom/dep5.py), and the one-pass .deb reading they rest on
(fetch/deb.py's look_up): on real trixie packages, and on packages built with dpkg-deb for what
the archive shows no example of on its own."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from imagebuilder.errors import FetchError
from imagebuilder.fetch.deb import look_up, read_member
from imagebuilder.fetch.lock import LockEntry
from imagebuilder.sbom import debian, dep5
from tests.unit.debs_fixture import LICENSE_PACKAGES, build_deb, real_debs

JRE_LICENSE = ("BSD-3-Clause AND GPL-2.0-only WITH Classpath-exception-2.0 AND LGPL-2.1-only "
               "AND MIT")
SMALL = ("busybox-static", "libc6", "zlib1g")
DEP5_HEADER = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"


def copyright_of(name: str) -> bytes:
    _, deb = real_debs(LICENSE_PACKAGES)[name]
    text = read_member(deb, f"usr/share/doc/{name}/copyright")
    assert text is not None, name
    return text


# --- licenses of real copyright files ---------------------------------------------------------


@pytest.mark.parametrize(("name", "expected"), [
    ("zlib1g", "Zlib"),
    ("openjdk-21-jre-headless", JRE_LICENSE),  # "GPL2 with Classpath exception"
    # DEP-5, but glibc also names licenses SPDX has no id for (BSD-3-clause-Berkeley, ...)
    ("libc6", None),
    # not DEP-5: "This package was debianized by ..."
    ("busybox-static", None),
])
def test_the_license_of_a_real_copyright_file(name: str, expected: str | None) -> None:
    assert dep5.license_of(copyright_of(name)) == expected


def test_libc6_is_dep5_but_names_a_license_spdx_has_no_id_for() -> None:
    text = copyright_of("libc6")
    assert text.startswith(b"Format: ") and b"License: BSD-3-clause-Berkeley" in text
    assert dep5.spdx_id("BSD-3-clause-Berkeley") is None
    assert dep5.spdx_id("LGPL-2.1+") == "LGPL-2.1-or-later"  # its main license does map


def test_busybox_copyright_is_not_machine_readable() -> None:
    text = copyright_of("busybox-static")
    assert not text.startswith(b"Format:") and b"GPL" in text


# --- the DEP-5 -> SPDX mapping ----------------------------------------------------------------


@pytest.mark.parametrize(("synopsis", "expected"), [
    ("GPL-2", ["GPL-2.0-only"]),
    ("GPL-2+", ["GPL-2.0-or-later"]),
    ("LGPL-2.1+", ["LGPL-2.1-or-later"]),
    ("LGPL-2", ["LGPL-2.0-only"]),
    ("AGPL-3+", ["AGPL-3.0-or-later"]),
    ("GFDL-NIV-1.3+", ["GFDL-1.3-no-invariants-or-later"]),
    ("BSD-3-clause", ["BSD-3-Clause"]),
    ("BSD-2-clause", ["BSD-2-Clause"]),
    ("Expat", ["MIT"]),
    ("Apache-2.0", ["Apache-2.0"]),
    ("Zlib", ["Zlib"]),
    ("zlib", ["Zlib"]),
    ("libpng", ["Libpng"]),
    ("CC0-1.0", ["CC0-1.0"]),
    ("Perl", ["(Artistic-1.0-Perl OR GPL-1.0-or-later)"]),
    ("GPL-2 with Classpath exception", ["GPL-2.0-only WITH Classpath-exception-2.0"]),
    ("GPL-2+ with AutoConf exception", ["GPL-2.0-or-later WITH Autoconf-exception-2.0"]),
    ("GPL-3+ with AutoConf exception", ["GPL-3.0-or-later WITH Autoconf-exception-3.0"]),
    ("Apache-2.0 with LLVM exception", ["Apache-2.0 WITH LLVM-exception"]),
    ("FTL and Expat", ["FTL", "MIT"]),
    ("MPL-1.1 or GPL-2+ or LGPL-2.1+",
     ["(MPL-1.1 OR GPL-2.0-or-later OR LGPL-2.1-or-later)"]),
    ("libpng OR Apache-2.0 OR BSD-3-clause", ["(Libpng OR Apache-2.0 OR BSD-3-Clause)"]),
    ("CDDL-1.1 or GPL-2 with classpath exception",
     ["(CDDL-1.1 OR GPL-2.0-only WITH Classpath-exception-2.0)"]),
    # DEP-5: the comma binds loosest
    ("GPL-2+ or Artistic-2.0, and BSD-3-clause",
     ["(GPL-2.0-or-later OR Artistic-2.0)", "BSD-3-Clause"]),
    ("MIT and Zlib or ISC", ["((MIT AND Zlib) OR ISC)"]),
    # no SPDX id: the whole synopsis is unknown
    ("public-domain", None),
    ("GPL", None),  # no version
    ("GPL-2+ with OpenSSL exception", None),
    ("BSD-3-clause or public-domain", None),
    ("Classpath-exception-2.0", None),  # an exception is not a license
    ("MIT xor Zlib", None),
    ("MIT or", None),
    ("", None),
])
def test_a_dep5_synopsis_as_spdx(synopsis: str, expected: list[str] | None) -> None:
    found = dep5.expression_terms(synopsis)
    assert found == expected
    if found:
        assert dep5.valid(" AND ".join(found))


def _dep5(*paragraphs: tuple[str, str | None]) -> bytes:
    text = DEP5_HEADER
    for files, name in paragraphs:
        text += f"Files: {files}\nCopyright: someone\n"
        text += f"License: {name}\n\n" if name else "\n"
    return text.encode()


@pytest.mark.parametrize(("text", "expected"), [
    (_dep5(("*", "Expat"), ("debian/*", "GPL-2+"), ("a/*", "Expat")), "GPL-2.0-or-later AND MIT"),
    (_dep5(("*", "Perl"), ("b/*", "MIT")), "(Artistic-1.0-Perl OR GPL-1.0-or-later) AND MIT"),
    (_dep5(("*", "MPL-1.1 or GPL-2+")), "MPL-1.1 OR GPL-2.0-or-later"),
    (_dep5(("*", "Expat"), ("c/*", "public-domain")), None),  # one name without an id
    (_dep5(("*", "Expat"), ("c/*", None)), None),  # a Files paragraph without a license
    (DEP5_HEADER.encode(), None),  # no Files paragraph
    (b"This package was debianized by someone.\nIt is GPL-2, see /usr/share/common-licenses",
     None),
    (b"\xff\xfe\x00garbage\x00", None),
    (b"", None),
])
def test_a_copyright_file_as_spdx(text: bytes, expected: str | None) -> None:
    assert dep5.license_of(text) == expected
    if expected:
        assert dep5.valid(expected)


def test_the_validator_refuses_what_is_not_spdx() -> None:
    assert dep5.valid(JRE_LICENSE)
    assert not dep5.valid("GPL-2.0-only WITH MIT")
    assert not dep5.valid("BSD-3-clause-Berkeley")
    assert not dep5.valid("MIT AND (Zlib")


# --- packages() -------------------------------------------------------------------------------


def _paths(debs: dict[str, tuple[LockEntry, Path]]) -> dict[str, Path]:
    return {entry.sha256: path for entry, path in debs.values()}


def test_packages_of_real_debs(tmp_path: Path) -> None:
    debs = real_debs(LICENSE_PACKAGES)
    entry = {name: debs[name][0] for name in SMALL}
    parts = {"natives": [entry["libc6"]], "jvm": [entry["zlib1g"], entry["libc6"]],
             "base": [entry["busybox-static"]]}
    paths = _paths(debs)
    found = debian.packages(parts, lambda e: paths[e.sha256], tmp_path)
    assert [p.name for p in found] == list(SMALL)  # once each, by name
    by_name = {p.name: p for p in found}
    for name, p in by_name.items():
        assert (p.version, p.sha256, p.architecture) == (
            entry[name].version, entry[name].sha256, "amd64")
    assert by_name["zlib1g"].version.startswith("1:")  # the epoch is kept
    assert (by_name["zlib1g"].source, by_name["zlib1g"].license) == ("zlib", "Zlib")
    assert (by_name["libc6"].source, by_name["libc6"].part) == ("glibc", "jvm")  # jvm first
    assert by_name["busybox-static"].part == "base"


def test_source_and_its_version_from_the_control(tmp_path: Path) -> None:
    """``Source: name (version)`` for a binNMU; the name alone when the version is the
    binary's; nothing when the source is named like the binary."""
    cases = {
        "binnmu": ("Source: srcpkg (1:2.0-3)\nVersion: 1:2.0-3+b1", ("srcpkg", "1:2.0-3")),
        "named": ("Source: other\nVersion: 4.1-1", ("other", "4.1-1")),
        "plain": ("Version: 0.9-2", ("plain", "0.9-2")),
    }
    built = {name: build_deb(tmp_path, f"Package: {name}\n{fields}\nArchitecture: all\n"
                             "Maintainer: t <t@example.org>\nDescription: test", {})
             for name, (fields, _) in cases.items()}
    paths = _paths(built)
    found = debian.packages({"packages": [e for e, _ in built.values()]},
                            lambda e: paths[e.sha256], None)
    assert {p.name: (p.source, p.source_version) for p in found} == {
        name: expected for name, (_, expected) in cases.items()}
    assert {p.architecture for p in found} == {"all"}


def _control(name: str, source: str) -> str:
    return (f"Package: {name}\nSource: {source}\nVersion: 1.0-1\nArchitecture: amd64\n"
            "Maintainer: t <t@example.org>\nDescription: test")


def test_a_doc_directory_linking_to_a_sibling_gets_its_license(tmp_path: Path) -> None:
    """Debian Policy 12.5: a package of the same source may link its doc directory to
    another's (the JDK's links to the JRE's); the link's package gets that one's license, a
    package of another source linking there gets none."""
    lib = build_deb(tmp_path, _control("libfoo1", "foo"),
                    {"usr/share/doc/libfoo1/copyright": _dep5(("*", "Expat"))})
    tools = build_deb(tmp_path, _control("foo-tools", "foo"),
                      {"usr/share/doc/foo-tools": "libfoo1", "usr/bin/foo": b"tool"})
    other = build_deb(tmp_path, _control("bar", "bar"), {"usr/share/doc/bar": "libfoo1"})
    paths = _paths({"a": lib, "b": tools, "c": other})
    found = debian.packages({"packages": [lib[0], tools[0], other[0]]},
                            lambda e: paths[e.sha256], tmp_path)
    assert {p.name: p.license for p in found} == {"libfoo1": "MIT", "foo-tools": "MIT",
                                                  "bar": None}


def test_a_warm_cache_opens_no_deb(tmp_path: Path) -> None:
    debs = real_debs(LICENSE_PACKAGES)
    parts = {"jvm": [debs["zlib1g"][0], debs["libc6"][0]]}
    paths = _paths(debs)
    opened: list[str] = []

    def deb_path(entry: LockEntry) -> Path:
        opened.append(entry.name)
        return paths[entry.sha256]
    cold = debian.packages(parts, deb_path, tmp_path)
    assert sorted(opened) == ["libc6", "zlib1g"]
    opened.clear()
    assert debian.packages(parts, deb_path, tmp_path) == cold
    assert opened == []
    # a damaged or older cache file is read again from its .deb, and rewritten
    cached = tmp_path / debian.CACHE_DIR / f"{debs['zlib1g'][0].sha256}.json"
    cached.write_text('{"format": 1, "name": "zlib1g"')
    older = tmp_path / debian.CACHE_DIR / f"{debs['libc6'][0].sha256}.json"
    older.write_text(json.dumps({**json.loads(older.read_text()), "format": 0,
                                 "license": "MIT"}))
    assert debian.packages(parts, deb_path, tmp_path) == cold
    assert sorted(opened) == ["libc6", "zlib1g"]
    assert json.loads(older.read_text())["format"] == debian.CACHE_FORMAT


# --- look_up ----------------------------------------------------------------------------------


def test_look_up_reads_no_data_when_md5sums_lists_no_such_file(tmp_path: Path) -> None:
    """The JDK's doc directory links to the JRE's: its md5sums lists no copyright file, so
    its 80 MB of data are not decompressed (here: damaged data, which reading would refuse)."""
    _, deb = build_deb(tmp_path, _control("foo-tools", "foo"),
                       {"usr/share/doc/foo-tools": "libfoo1", "usr/bin/foo": os.urandom(8192)})
    data = bytearray(deb.read_bytes())
    data[-4000:-3000] = bytes(1000)  # inside data.tar.xz, the last member
    deb.write_bytes(data)
    found = look_up(deb, "usr/share/doc/foo-tools/copyright")
    assert (found.data, found.control.startswith(b"Package: foo-tools\n")) == (None, True)
    with pytest.raises(FetchError, match="damaged package data"):
        look_up(deb, "usr/bin/foo")


@pytest.mark.parametrize("link", ["a", "z"])  # the link before its target in the tar, after
def test_look_up_follows_the_package_own_links(tmp_path: Path, link: str) -> None:
    _, deb = build_deb(tmp_path, _control("pkg", "pkg"), {
        f"usr/share/doc/{link}": "b", "usr/share/doc/b/copyright": b"the text\n",
        "usr/share/doc/c": "../../../elsewhere"})
    found = look_up(deb, f"usr/share/doc/{link}/copyright")
    assert (found.path, found.data) == ("usr/share/doc/b/copyright", b"the text\n")
    outside = look_up(deb, "usr/share/doc/c/copyright")
    assert (outside.path, outside.data) == ("elsewhere/copyright", None)
    assert read_member(deb, "usr/share/doc/nothing/copyright") is None
