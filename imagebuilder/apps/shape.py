"""What an app shape is: the files an app puts in the guest, how it starts, where its classes are.

Java apps ship in several shapes (an executable jar, a Spring Boot jar, a thin jar with its
libraries beside it, an app directory, a war). Each detector in :mod:`.detect` turns one into a
:class:`Shape`, the one thing the rest of the build reads:

* ``app``: the app's own files (its classes, its jar, its ``-SNAPSHOT`` libraries, its config),
  which change with every version and go into the ``app`` layer;
* ``libs``: third-party libraries, which change rarely and go into the ``libs`` layer, so a new
  app version rebuilds, stores and pushes only its own classes;
* ``argv``: what follows ``java`` and the JVM flags in the guest (``-jar /app/x.jar`` or
  ``-cp CLASSPATH MAIN``);
* ``classpath``: every place the app's class loader reads classes from (jars on disk, nested
  jars, a prefix inside a jar, directories), for module detection and for the checks that the
  main class exists and that no class is newer than the JVM;
* ``warnings``: what detection left out and why (one line each; the build prints them).

Guest paths in ``File.dest`` are relative to ``/app``, the app's working directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..fsutil import Identity, open_source, source_identity
from ..hashing import core as hashing

GUEST_DIR = "/app"
#: The deepest an app's directory tree may go (real apps stay under 30 levels).
MAX_DEPTH = 256


def guest(dest: str) -> str:
    """The absolute guest path of an app file."""
    return f"{GUEST_DIR}/{dest}"


def is_snapshot(name: str) -> bool:
    """A ``-SNAPSHOT`` library changes with the app, so it goes into the app layer."""
    return "-SNAPSHOT" in name.rpartition("/")[2]


@dataclass(frozen=True)
class File:
    """One file of the app in the guest: ``dest`` below /app, contents from a host file or
    bytes (an entry taken out of a jar)."""

    dest: str
    source: Path | None = None
    data: bytes | None = None
    identity: Identity | None = field(default=None, compare=False)

    def __post_init__(self) -> None:  # the file read now is the one the layer takes later
        if self.source is not None and self.identity is None:
            real, identity = source_identity(self.source)
            object.__setattr__(self, "source", real)
            object.__setattr__(self, "identity", identity)

    def contents(self) -> bytes:
        """The file's bytes: ``data``, or the very file detection recorded (:func:`open_source`)."""
        if self.data is not None:
            return self.data
        assert self.source is not None and self.identity is not None
        with os.fdopen(open_source(self.source, self.identity, guest(self.dest)), "rb") as f:
            data = f.read(self.identity[2] + 1)
        if len(data) != self.identity[2]:
            raise UserError(f"{self.source} (for {guest(self.dest)}) changed while the image was "
                            "built (another size): leave the app's files alone during a build")
        return data

    def digest(self, algo: str = "xxh3") -> str:
        """The hex digest (``xxh3`` or ``sha256``) of the file's bytes, or of the very host file
        detection recorded."""
        if self.data is not None:
            return (hashing.sha256_bytes if algo == "sha256" else hashing.xxh3_bytes)(self.data)
        assert self.source is not None and self.identity is not None
        fd = open_source(self.source, self.identity, guest(self.dest))
        try:
            return hashing.digest_fd(fd, (algo,)).hexdigests[algo]
        finally:
            os.close(fd)


@dataclass(frozen=True)
class ClassSource:
    """Where a class loader finds classes: a jar (a host file, or the bytes of a nested jar),
    optionally below ``prefix`` inside it (``BOOT-INF/classes/``), or a host directory."""

    label: str
    jar: Path | bytes | None = None
    prefix: str = ""
    directory: Path | None = None


@dataclass(frozen=True)
class Shape:
    """A detected app: see the module docstring."""

    kind: str
    app: tuple[File, ...]
    libs: tuple[File, ...]
    argv: tuple[str, ...]
    main: str
    classpath: tuple[ClassSource, ...]
    warnings: tuple[str, ...] = ()

    def key(self, files: tuple[File, ...]) -> list[tuple[str, str]]:
        """A content key of ``files`` (guest path, digest), for a layer's cache key."""
        return [(f.dest, f.digest()) for f in sorted(files, key=lambda f: f.dest)]


def split_libs(files: list[File]) -> tuple[tuple[File, ...], tuple[File, ...]]:
    """Library files split into (own: ``-SNAPSHOT``, third-party)."""
    own = tuple(f for f in files if is_snapshot(f.dest))
    return own, tuple(f for f in files if not is_snapshot(f.dest))


def app_files(top: Path, root: Path) -> list[File]:
    """Every regular file below ``top`` (a directory inside the app's directory ``root``),
    sorted, each at its path relative to ``root``; UserError for a symbolic link whose real path
    is outside ``root``, a tree deeper than :data:`MAX_DEPTH` or one that cannot be read."""
    files: list[File] = []
    real_root = root.resolve()
    todo = [(top, 0)]
    while todo:
        folder, depth = todo.pop()
        if depth > MAX_DEPTH:
            raise UserError(f"{top}: directories nested more than {MAX_DEPTH} levels deep: not "
                            "an app's directory; name the app's jar or a shallower directory")
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
            subdirs = []
            for entry in entries:
                path = Path(entry.path)
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append(path)
                    continue
                real = path.resolve() if entry.is_symlink() else path
                if entry.is_symlink() and not real.is_relative_to(real_root):
                    raise UserError(f"{path}: a symbolic link out of the app's directory {root}: "
                                    "copy the file into it instead")
                if real.is_file():  # a link to a directory inside the app is not followed
                    files.append(File(path.relative_to(root).as_posix(), source=real))
        except (OSError, RuntimeError) as exc:  # RuntimeError: a loop of symbolic links
            why = getattr(exc, "strerror", None) or str(exc)
            raise UserError(f"{folder}: cannot read it ({why}): fix it or leave it out of the "
                            "app's directory") from None
        todo += [(d, depth + 1) for d in reversed(subdirs)]
    return sorted(files, key=lambda f: f.dest)
