"""The text of a Debian archive: Release and Packages files, and dpkg's order of versions.

Pure functions over bytes already verified by :mod:`imagebuilder.fetch.debian` (which holds the
chain of trust and the network): ``parse_release`` reads the fields and the SHA256 section of a
Release file, ``parse_packages`` the stanzas of a Packages index into :class:`Package` records
(names only in dependencies: versions, architecture qualifiers and build profiles dropped), and
``compare_versions`` orders two versions as dpkg does, so the newest of a name wins.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache, lru_cache

from .lock import LockEntry


@dataclass(frozen=True, slots=True)
class Package:
    """One binary package of the index, with what is needed to fetch and resolve it."""

    name: str
    version: str
    arch: str
    filename: str  # pool path relative to the mirror
    sha256: str
    size: int
    depends: tuple[tuple[str, ...], ...]  # Pre-Depends + Depends; inner tuple = alternatives
    provides: tuple[str, ...]
    #: Recommends: where trixie's JRE names the libraries only some of its natives need.
    recommends: tuple[tuple[str, ...], ...] = ()

    def lock_entry(self) -> LockEntry:
        """This package pinned for a lock file."""
        return LockEntry(self.name, self.version, self.filename, self.sha256, self.size)


# -- parsing ------------------------------------------------------------------------------------


def parse_release(text: str) -> tuple[dict[str, str], dict[str, tuple[str, int]]]:
    """Fields (lower-cased names) and the SHA256 section (path -> (sha256, size)) of a Release."""
    fields: dict[str, str] = {}
    files: dict[str, tuple[str, int]] = {}
    section = ""
    for line in text.splitlines():
        if line[:1] in (" ", "\t"):
            words = line.split()
            if section == "sha256" and len(words) == 3 and words[1].isdigit():
                files[words[2]] = (words[0].lower(), int(words[1]))
            continue
        name, sep, value = line.partition(":")
        if sep:
            section = name.strip().lower()
            fields[section] = value.strip()
    return fields, files


_FIELD = re.compile(
    rb"^(Package|Version|Architecture|Filename|Size|SHA256|Depends|Pre-Depends|Provides|Recommends):"
    rb"[ \t]*(.*)$",
    re.MULTILINE,
)
# versions, arch qualifiers/restrictions, build profiles and blanks: what is left is names
_DROP = re.compile(rb"\([^)]*\)|:[A-Za-z0-9_-]+|\[[^]]*\]|<[^>]*>|\s+")


def parse_packages(data: bytes, into: dict[str, Package]) -> dict[str, Package]:
    """Add the stanzas of a Packages index to ``into`` (keeping the newest of a name)."""
    for stanza in data.split(b"\n\n"):
        fields = dict(_FIELD.findall(stanza))
        name = fields.get(b"Package")
        filename = fields.get(b"Filename")
        if not name or not filename:
            continue
        pkg = Package(
            name=name.strip().decode(),
            version=fields.get(b"Version", b"").strip().decode(),
            arch=fields.get(b"Architecture", b"").strip().decode(),
            filename=filename.strip().decode(),
            sha256=fields.get(b"SHA256", b"").strip().decode(),
            size=int(fields.get(b"Size", b"0").strip() or 0),
            depends=_depends(fields.get(b"Pre-Depends", b""))
            + _depends(fields.get(b"Depends", b"")),
            provides=_provides(fields.get(b"Provides", b"")),
            recommends=_depends(fields.get(b"Recommends", b"")),
        )
        old = into.get(pkg.name)
        if old is None or compare_versions(pkg.version, old.version) > 0:
            into[pkg.name] = pkg
    return into


def providers_map(packages: Iterable[Package]) -> dict[str, list[str]]:
    """Virtual package name -> names of the packages providing it, sorted."""
    providers: dict[str, list[str]] = {}
    for pkg in packages:
        for virtual in pkg.provides:
            providers.setdefault(virtual, []).append(pkg.name)
    return {virtual: sorted(names) for virtual, names in providers.items()}


@lru_cache(maxsize=65536)
def _depends(field: bytes) -> tuple[tuple[str, ...], ...]:
    """``a (>= 1), b:any | c [amd64]`` -> (("a",), ("b", "c")): names only, in order."""
    if not field:
        return ()
    groups = _DROP.sub(b"", field).decode().split(",")
    return tuple(map(_alternatives, filter(None, groups)))


@cache
def _alternatives(group: str) -> tuple[str, ...]:
    return tuple(group.split("|"))


@lru_cache(maxsize=65536)
def _provides(field: bytes) -> tuple[str, ...]:
    return tuple(name for group in _depends(field) for name in group)


# -- Debian version ordering (dpkg's algorithm) -------------------------------------------------


def compare_versions(a: str, b: str) -> int:
    """Negative, zero or positive as Debian version ``a`` is older, equal or newer than ``b``."""
    epoch_a, upstream_a, revision_a = _split_version(a)
    epoch_b, upstream_b, revision_b = _split_version(b)
    if epoch_a != epoch_b:
        return epoch_a - epoch_b
    return _compare_part(upstream_a, upstream_b) or _compare_part(revision_a, revision_b)


def _split_version(version: str) -> tuple[int, str, str]:
    epoch, colon, rest = version.partition(":")
    if not colon:
        epoch, rest = "0", version
    upstream, dash, revision = rest.rpartition("-")
    if not dash:
        upstream, revision = rest, ""
    return int(epoch) if epoch.isdigit() else 0, upstream, revision


def _order(char: str) -> int:
    if char.isalpha():
        return ord(char)
    if char == "~":
        return -1
    return ord(char) + 256


def _compare_part(a: str, b: str) -> int:
    i = j = 0
    while i < len(a) or j < len(b):
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ca = _order(a[i]) if i < len(a) and not a[i].isdigit() else 0
            cb = _order(b[j]) if j < len(b) and not b[j].isdigit() else 0
            if ca != cb:
                return ca - cb
            i, j = i + 1, j + 1
        start_i, start_j = i, j
        while i < len(a) and a[i].isdigit():
            i += 1
        while j < len(b) and b[j].isdigit():
            j += 1
        na, nb = int(a[start_i:i] or 0), int(b[start_j:j] or 0)
        if na != nb:
            return na - nb
    return 0
