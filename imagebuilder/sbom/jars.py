"""The Java side of an image's SBOM: every jar in it, and the jlink runtime.

:func:`jars` lists every Java archive the app puts in the image (``/app``): the app's own jar
or war, a thin jar's ``Class-Path`` libraries, an app directory's jars, a Spring Boot jar's
``BOOT-INF/lib`` (run exploded: they are files ``/app/BOOT-INF/lib/x.jar`` in the image, the fat
jar itself is not there), and, recursively, the archives nested in those (a war's
``WEB-INF/lib/x.jar`` is ``/app/webapps/ROOT.war!/WEB-INF/lib/x.jar``). That is every jar the
app's class loaders read, and every one a scanner reading the image finds (it opens any
``*.jar``/``*.war``... whether on the class path or not); a war's libraries, which the class
scan read already, are taken from the shape.
:func:`jars_in_tree` does the same for the jars of Debian packages that go into the image
(Tomcat's, ``/usr/share/java``, the runtime's ``lib/jrt-fs.jar``).

Nothing a scanner would find is left out silently: an archive nested deeper than
:data:`MAX_NESTING` levels (real ones nest two or three) and more than :data:`MAX_LISTED`
archives and embedded artifacts for one list (a few kilobytes of tiny nested jars can declare
millions) are refused, one line naming the jar, before the records use much memory or time.

A zip may hold one name twice. The JDK reads the first (``apps.archive.Jar.entries``), a scanner
may read every copy (syft reads the last). Of a duplicated ``pom.properties``, the first copy
takes part in choosing the jar's own coordinates and every other copy is listed as an artifact
embedded in the jar: the jar keeps the coordinates Java and Maven tools see, and a consumer of
the SBOM still sees each version a scanner of the image reports (a jar claiming log4j-core
2.17.1 and 2.14.1 lists both). Each copy of a duplicated nested archive with other bytes is
listed, at the same path (its hashes tell them apart).

Each is listed with the SHA-1 and SHA-256 of its bytes and what it says about itself
(:mod:`.maven`: coordinates, shaded artifacts, licenses); when it has no Maven coordinates, the
version in its file name, else its manifest's, is its version, as scanners read it
(:data:`.maven.MANIFEST_VERSIONS`). An archive that is not a readable zip, or whose files about
itself are too large or broken, is still listed, by path and hashes.

What an archive says is cached by its SHA-256 (one small JSON file each, in ``cache``), nested
archives included: a rebuild hashes each jar and reads nothing else from it. The key is the
SHA-256 (not the cheaper xxh3 of the class scan's memo) because the cached record puts digests
into the SBOM: a crafted collision of a non-cryptographic hash would carry another jar's record.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..apps.archive import Budget, parse_manifest
from ..apps.archive import Jar as Archive
from ..apps.shape import File, Shape, guest
from ..errors import HostError, UserError
from ..fetch.lock import LockEntry
from ..fsutil import open_regular, open_source, write_atomic
from . import maven
from .model import DebPackage, Jar, Runtime

#: What scanners open as Java archives (syft's java-archive cataloger globs).
ARCHIVES = (".jar", ".war", ".ear", ".jpi", ".hpi", ".nar", ".kar", ".par", ".sar", ".lpkg")
#: How deep archives in archives are read (a war's jar is 1; a jar in that jar 2...); an archive
#: deeper than this is refused.
MAX_NESTING = 16
#: The most nested archives and embedded artifacts (pom.properties sets) one list may hold.
MAX_LISTED = 20_000
MANIFEST = "META-INF/MANIFEST.MF"
MAX_MANIFEST = 1 << 20
#: The folder of the per-archive records in the home's cache directory (``cache`` below).
CACHE_DIR = "sbom-jars"
#: The form of the cached records; a record of another form is read again.
CACHE_FORM = 3
MAX_CACHE_FILE = 16 << 20
_CHUNK = 1 << 20


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVES)


def jars(shape: Shape, budget: Budget, cache: Path | None = None) -> tuple[Jar, ...]:
    """Every Java archive ``shape`` puts in the image, and those nested in them, by path.
    ``cache``: a directory for the per-archive records (see the module docstring)."""
    # A war's libraries, read by the scan already (a reused archive is labelled as it was).
    known = {s.label: s.jar for s in shape.classpath if isinstance(s.jar, bytes)}
    context = _Context(budget, cache, known)
    found: list[Jar] = []
    for f in (*shape.app, *shape.libs):
        if is_archive(f.dest):
            found += _file(guest(f.dest), f, context)
    return tuple(sorted(found, key=lambda j: j.path))


def jars_in_tree(root: Path, prefix: str, budget: Budget | None = None,
                 cache: Path | None = None) -> tuple[Jar, ...]:
    """Every Java archive below ``root`` (an unpacked package tree, or a folder of it), at its
    path below ``prefix`` in the image (``root/x/y.jar`` is ``PREFIX/x/y.jar``), by path.
    Symbolic links are not followed: Debian's ``/usr/share/java/x.jar -> x-1.2.jar`` is the
    file it points to, listed once, under its own name."""
    own = budget is None
    budget = Budget() if budget is None else budget
    context = _Context(budget, cache)
    found: list[Jar] = []
    try:
        for dirpath, dirs, names in os.walk(root):
            dirs.sort()
            for name in sorted(names):
                path = Path(dirpath, name)
                if is_archive(name) and not path.is_symlink() and path.is_file():
                    at = f"{prefix.rstrip('/')}/{path.relative_to(root).as_posix()}"
                    found += _file(at, path, context)
    finally:
        if own:
            budget.close()
    return tuple(sorted(found, key=lambda j: j.path))


def runtime(jdk: LockEntry | DebPackage, version: int, modules: list[str]) -> Runtime:
    """The jlink runtime of Java ``version`` linked from the JDK package ``jdk`` with
    ``modules``. ValueError if ``jdk`` is not that release's JDK (a caller's mistake)."""
    if not jdk.name.startswith(f"openjdk-{version}-"):
        raise ValueError(f"{jdk.name} is not the package of JDK {version}")
    return Runtime(jdk.name, jdk.version, tuple(sorted(set(modules))))


# -- one archive ------------------------------------------------------------------------------

@dataclass
class _Context:
    """What reading archives for one list shares: the budget, the cache folder, the nested
    archives read before, by label (a war's ``WEB-INF/lib`` jars, which the scan read), and how
    many nested archives and embedded artifacts the list holds so far."""

    budget: Budget
    cache: Path | None
    known: dict[str, bytes] = field(default_factory=dict)
    listed: int = 0

    def add(self, n: int, where: str) -> None:
        """Count ``n`` more records found in ``where``; UserError beyond :data:`MAX_LISTED`."""
        self.listed += n
        if self.listed > MAX_LISTED:
            raise UserError(f"{where}: more than {MAX_LISTED} nested archives and embedded "
                            "artifacts: refusing a likely zip bomb (remove the jar or rebuild "
                            "it flatter)")


def _file(at: str, source: File | Path, context: _Context) -> list[Jar]:
    """The archive at ``at`` in the image (a file of the app, or of a package tree) and those
    nested in it."""
    if isinstance(source, File) and source.data is not None:
        return _described(at, source.data, context)
    path = source.source if isinstance(source, File) else source
    assert path is not None
    return _described(at, path, context, source if isinstance(source, File) else None)


def _digest(source: Path | bytes, name: str, file: File | None) -> str:
    """The ``name`` (sha1, sha256) digest of an archive's bytes: ``source`` itself, or the file
    ``source`` (through ``file``'s identity for an app's file)."""
    if isinstance(source, bytes):
        return hashlib.new(name, source).hexdigest()
    if file is not None:
        assert file.identity is not None
        fd = open_source(source, file.identity, guest(file.dest))
    else:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    digest = hashlib.new(name)
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _described(at: str, source: Path | bytes, context: _Context,
               file: File | None = None) -> list[Jar]:
    """The records of the archive ``source`` at ``at``: from the cache by its SHA-256 (its
    SHA-1 too, so a cached archive is hashed once), else read and cached."""
    sha256 = _digest(source, "sha256", file)
    cache = context.cache
    cached = _load(cache, sha256) if cache is not None else None
    if cached is not None:
        context.add(sum(1 + len(r.embedded) for r in cached) - 1, at)
    else:
        digests = (_digest(source, "sha1", file), sha256)
        opener = functools.partial(_open, at, source, context.budget, file)
        cached = _read(at, opener, digests, context, 0)
        if cache is not None:
            _save(cache, sha256, cached)
    return [_moved(at, r) for r in cached]


def _moved(at: str, record: Jar) -> Jar:
    """A record (path relative to its archive: "" for itself, "!/WEB-INF/lib/x.jar" for a
    nested one) at ``at``."""
    return dataclasses.replace(record, path=at + record.path)


def _open(at: str, source: Path | bytes, budget: Budget, file: File | None) -> Archive:
    """An app's jar opened through the budget, which keeps those the scan opened; a package's
    opened to be closed after it is read (a tree holds hundreds)."""
    if isinstance(source, bytes) or file is not None:
        return budget.open(at, source)
    return Archive(at, source, budget)


def _read(at: str, opener: Callable[[], Archive], digests: tuple[str, str],
          context: _Context, depth: int) -> list[Jar]:
    """The archive's own record and its nested archives' (paths relative to it, see
    :func:`_moved`)."""
    if depth > MAX_NESTING:
        raise UserError(f"{at}: archives nested more than {MAX_NESTING} deep: refusing to "
                        "leave the deeper ones out of the SBOM (rebuild the jar flatter)")
    name = at.rpartition("/")[2]
    try:
        archive = opener()
    except UserError:  # not a zip, or one broken as a whole: listed by name and hashes
        return [Jar("", *digests)]
    with archive:
        own = _about(name, archive, digests, context)
        return [own, *_nested(archive, context, depth)]


def _about(name: str, archive: Archive, digests: tuple[str, str], context: _Context) -> Jar:
    """What the archive named ``name`` says about itself (see :mod:`.maven`)."""
    firsts, others = _sets(archive, context)
    raw = _small(archive, MANIFEST, MAX_MANIFEST)
    manifest = parse_manifest(raw.decode("utf-8", "replace")) if raw else {}
    stated = maven.file_version(name) or next(
        (v for key in maven.MANIFEST_VERSIONS if (v := maven.manifest_version(manifest.get(key)))),
        None)
    own = maven.choose(name, firsts, stated)
    licenses: tuple[str, ...] = ()
    if own is not None:
        licenses = maven.pom_licenses(_small(archive, own.pom, maven.MAX_POM) or b"")
    licenses = licenses or maven.bundle_licenses(manifest.get("bundle-license"))
    embedded = tuple(sorted({(c.group, c.artifact, c.version)
                             for c in (*firsts, *others) if c != own}))
    if own is not None:
        return Jar("", *digests, own.group, own.artifact, own.version, licenses, embedded)
    return Jar("", *digests, None, None, stated, licenses, embedded)


def _sets(archive: Archive, context: _Context) -> tuple[list[maven.Coordinates],
                                                       list[maven.Coordinates]]:
    """The archive's pom.properties sets: those the JDK reads (the first of each name) and those
    of the later copies of a duplicated name (see the module docstring)."""
    entries = maven.properties_entries(list(archive.entries))
    copies = [info for entry in entries for info in archive.duplicates.get(entry, ())]
    context.add(len(entries) + len(copies), archive.label)
    firsts = [maven.parse_properties(e, _small(archive, e, maven.MAX_PROPERTIES) or b"")
              for e in entries]
    others = [maven.parse_properties(i.filename, _copy(archive, i)) for i in copies]
    return [c for c in firsts if c is not None], [c for c in others if c is not None]


def _copy(archive: Archive, info: zipfile.ZipInfo) -> bytes:
    """The bytes of a duplicated entry's later copy, as :func:`_small` reads the first."""
    if info.is_dir() or info.file_size > maven.MAX_PROPERTIES:
        return b""
    try:
        return archive.read_duplicate(info)
    except UserError:
        return b""


def _small(archive: Archive, entry: str, cap: int) -> bytes | None:
    """The bytes of ``entry`` if it is there, declares at most ``cap`` bytes and inflates
    soundly; else None."""
    info = archive.entries.get(entry)
    if info is None or info.is_dir() or info.file_size > cap:
        return None
    try:
        return archive.read(entry)
    except UserError:
        return None


def _nested(archive: Archive, context: _Context, depth: int) -> list[Jar]:
    """The records of the archives nested in ``archive``: every copy of a duplicated name whose
    bytes differ from the copies before it, each at the entry's path."""
    found: list[Jar] = []
    for entry, info in sorted(archive.entries.items()):
        if info.is_dir() or not is_archive(entry):
            continue
        where = archive.where(entry)
        seen: set[str] = set()
        for copy in (info, *archive.duplicates.get(entry, ())):
            context.add(1, where)
            data = _entry(archive, copy, context)
            if data is None:  # a broken or oversized entry: nothing to list
                continue
            digests = (_digest(data, "sha1", None), _digest(data, "sha256", None))
            if digests[1] in seen:
                continue
            seen.add(digests[1])
            opener = functools.partial(context.budget.open, where, data)
            for record in _read(where, opener, digests, context, depth + 1):
                found.append(_moved(f"!/{entry}", record))
    return found


def _entry(archive: Archive, info: zipfile.ZipInfo, context: _Context) -> bytes | None:
    """The bytes of the nested archive ``info`` (the first of its name, or a later copy), or
    None if it cannot be read within the caps."""
    try:
        if archive.entries[info.filename] is info:
            return context.known.get(archive.where(info.filename)) or archive.read(info.filename)
        return None if info.is_dir() else archive.read_duplicate(info)
    except UserError:
        return None


# -- the cache --------------------------------------------------------------------------------

def _load(cache: Path, sha256: str) -> list[Jar] | None:
    """The cached records of the archive with ``sha256``; None if there are none or they are
    unreadable or of another form (anything but a regular file is not read)."""
    try:
        fd = open_regular(cache / f"{sha256}.json")
    except (OSError, UserError):
        return None
    try:
        with os.fdopen(fd, "rb") as f:
            raw = json.loads(f.read(MAX_CACHE_FILE + 1))
        if raw["form"] != CACHE_FORM or raw["jars"][0]["sha256"] != sha256:
            return None
        return [Jar(**{**j, "licenses": tuple(j["licenses"]),
                       "embedded": tuple(tuple(e) for e in j["embedded"])}) for j in raw["jars"]]
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def _save(cache: Path, sha256: str, records: list[Jar]) -> None:
    """Cache ``records``; a cache that cannot be written is skipped (the next build reads the
    archive again)."""
    data = {"form": CACHE_FORM, "jars": [
        {"path": r.path, "sha1": r.sha1, "sha256": r.sha256, "group": r.group,
         "artifact": r.artifact, "version": r.version, "licenses": list(r.licenses),
         "embedded": [list(e) for e in r.embedded]} for r in records]}
    with contextlib.suppress(OSError, HostError):
        cache.mkdir(parents=True, exist_ok=True)
        write_atomic(cache / f"{sha256}.json", json.dumps(data, sort_keys=True).encode(),
                     sync=False)
