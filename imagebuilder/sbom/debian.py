"""The Debian packages of an image, as the SBOM lists them: from the lock and the .debs themselves.

The lock pins each package of each image part by the SHA-256 of its ``.deb``; the ``.deb``'s
control file says its name, version (epoch included), architecture and source package, and its
``usr/share/doc/NAME/copyright`` its license, machine-readably when the file follows DEP-5
(:mod:`.dep5` turns that into an SPDX expression). Reading a ``.deb`` means decompressing its
data (seconds for a JDK or a kernel), so what one says is kept in the home's cache, in a small
JSON file named by its SHA-256: a warm build opens no ``.deb`` at all.

A package whose copyright file is a link into another package's doc directory (allowed by Debian
Policy 12.5 between binary packages of one source: the JDK's links to its JRE's) gets the license
of a package of the same source and source version in the image, if there is one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..fetch.deb import Lookup, look_up, parse_control
from ..fetch.lock import LockEntry
from ..fsutil import write_atomic
from . import dep5
from .model import DebPackage

#: The image parts, in the order a package listed in several is attributed to the first.
PARTS = ("kernel", "base", "firmware", "jvm", "natives", "packages", "tomcat")
#: The cache's subdirectory, and the version of what its files say (bump it when the license
#: mapping or the fields change: older files are then read again from their .deb).
CACHE_DIR = "sbom-debian"
CACHE_FORMAT = 1
#: .debs read at once, at most one per processor (decompression releases the GIL).
WORKERS = 4


@dataclass(frozen=True)
class _Said:
    """What one .deb says about itself (the cached part of a :class:`DebPackage`)."""

    name: str
    version: str
    architecture: str
    source: str
    source_version: str
    license: str | None
    #: Whether the package holds its own copyright file (else it links to a sibling's).
    copyright: bool


def packages(parts: Mapping[str, Sequence[LockEntry]], deb_path: Callable[[LockEntry], Path],
             cache_dir: Path | None = None) -> tuple[DebPackage, ...]:
    """Every package of every image part (``parts``: part -> its lock entries), once, sorted by
    name. ``deb_path`` gives the verified ``.deb`` of an entry; it is called only for packages
    ``cache_dir`` (the home's cache directory) has nothing on."""
    owner: dict[str, tuple[str, LockEntry]] = {}
    for part in sorted(parts, key=_part_order):
        for entry in parts[part]:
            owner.setdefault(entry.name, (part, entry))
    entries = [entry for _, entry in owner.values()]
    said = _read_all(entries, deb_path, None if cache_dir is None else cache_dir / CACHE_DIR)
    found = [DebPackage(name=s.name, version=s.version, architecture=s.architecture,
                        source=s.source, source_version=s.source_version, sha256=e.sha256,
                        license=s.license, part=owner[e.name][0])
             for e, s in zip(entries, said, strict=True)]
    return tuple(sorted(_siblings_licenses(found, said), key=lambda p: (p.name, p.version)))


def _part_order(part: str) -> tuple[int, str]:
    return (PARTS.index(part) if part in PARTS else len(PARTS), part)


def _siblings_licenses(found: list[DebPackage], said: Sequence[_Said]) -> list[DebPackage]:
    """``found`` with a package that has no copyright file of its own given the license of a
    package of the same source and source version that has one (the first by name)."""
    own: dict[tuple[str, str], str | None] = {}
    for package, s in sorted(zip(found, said, strict=True), key=lambda ps: ps[0].name):
        if s.copyright:
            own.setdefault((package.source, package.source_version), package.license)
    return [package if s.copyright else
            replace(package, license=own.get((package.source, package.source_version)))
            for package, s in zip(found, said, strict=True)]


def _read_all(entries: Sequence[LockEntry], deb_path: Callable[[LockEntry], Path],
              cache: Path | None) -> list[_Said]:
    """What each entry's .deb says: from the cache, else from the .deb (several at once)."""
    said: list[_Said | None] = [_cached(cache, e.sha256) for e in entries]
    missing = [i for i, s in enumerate(said) if s is None]
    if missing:
        # deb_path may download and verify: one at a time, here; the reading in threads
        debs = [deb_path(entries[i]) for i in missing]
        with ThreadPoolExecutor(min(WORKERS, len(debs), os.cpu_count() or 1)) as pool:
            lookups = list(pool.map(_copyright_lookup, debs))
        for i, lookup in zip(missing, lookups, strict=True):
            said[i] = read = _said(lookup)
            if cache is not None:
                _remember(cache, entries[i].sha256, read)
    return [s for s in said if s is not None]


def _copyright_lookup(deb: Path) -> Lookup:
    return look_up(deb, lambda fields: f"usr/share/doc/{fields.get('Package', '')}/copyright")


def _said(lookup: Lookup) -> _Said:
    fields = parse_control(lookup.control)
    name, version = fields.get("Package", ""), fields.get("Version", "")
    source, _, rest = fields.get("Source", name).partition(" ")
    source_version = rest.strip().strip("()") or version
    return _Said(name=name, version=version, architecture=fields.get("Architecture", ""),
                 source=source or name, source_version=source_version,
                 license=None if lookup.data is None else dep5.license_of(lookup.data),
                 copyright=lookup.data is not None)


def _cache_file(cache: Path, sha256: str) -> Path:
    return cache / f"{sha256}.json"


def _cached(cache: Path | None, sha256: str) -> _Said | None:
    """What the cache says of the .deb ``sha256``; None if nothing (or something unusable)."""
    if cache is None:
        return None
    try:
        raw = json.loads(_cache_file(cache, sha256).read_bytes())
        if raw.pop("format") != CACHE_FORMAT:
            return None
        said = _Said(**raw)
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    return said if _well_formed(said) else None


def _well_formed(said: _Said) -> bool:
    strings = (said.name, said.version, said.architecture, said.source, said.source_version)
    return (all(isinstance(s, str) and s for s in strings)
            and (said.license is None or isinstance(said.license, str))
            and isinstance(said.copyright, bool))


def _remember(cache: Path, sha256: str, said: _Said) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    data = json.dumps({"format": CACHE_FORMAT, **asdict(said)}, sort_keys=True)
    write_atomic(_cache_file(cache, sha256), data.encode(), mode=0o644)

