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
  main class exists and that no class is newer than the JVM.

Guest paths in ``File.dest`` are relative to ``/app``, the app's working directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import hashing

GUEST_DIR = "/app"


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

    def digest(self) -> str:
        if self.data is not None:
            return hashing.xxh3_bytes(self.data)
        assert self.source is not None
        return hashing.xxh3_file(self.source)


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

    def key(self, files: tuple[File, ...]) -> list[tuple[str, str]]:
        """A content key of ``files`` (guest path, digest), for a layer's cache key."""
        return [(f.dest, f.digest()) for f in sorted(files, key=lambda f: f.dest)]


def split_libs(files: list[File]) -> tuple[tuple[File, ...], tuple[File, ...]]:
    """Library files split into (own: ``-SNAPSHOT``, third-party)."""
    own = tuple(f for f in files if is_snapshot(f.dest))
    return own, tuple(f for f in files if not is_snapshot(f.dest))
