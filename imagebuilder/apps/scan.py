"""Every class an app can load, read once: what it takes from the JDK, and whether it can run.

Walks each :class:`~.shape.ClassSource` of a shape (jars, nested jars, a prefix in a jar,
directories), reading multi-release entries (``META-INF/versions/N/``) for the JVM's release and
skipping those for newer ones, as the JVM does. ``module-info.class`` is skipped: the app runs on
the class path, where the JVM ignores it, so one compiled by a newer JDK breaks nothing.

The result (:class:`Usage`) holds only what points into the JDK: the packages referenced, the JDK
methods called, string literals that look like JDK class names, the service types of
``META-INF/services``. It is small, sorted and so a stable cache key. The checks a JVM would only
fail at boot are made here: no classes at all, a main class that is not there, classes compiled
for a newer Java than ``[jvm] version``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .. import javaclass
from ..errors import UserError
from .archive import Budget, Jar
from .shape import ClassSource, Shape

#: Top-level packages of every JDK module (java.base ... jdk.*), in internal form.
JDK_PREFIXES = ("java/", "javax/", "jdk/", "sun/", "com/sun/", "org/w3c/", "org/xml/",
                "org/ietf/", "org/jcp/", "netscape/")
_DOTTED_JDK_CLASS = re.compile(
    r"^(?:java|javax|jdk|sun|com\.sun|org\.w3c|org\.xml|org\.ietf)\.[A-Za-z0-9_$.]+$")
_VERSIONED = re.compile(r"^META-INF/versions/(\d+)/(.+)$")
SERVICES = "META-INF/services/"
#: Java releases the [jvm] version key accepts (kept equal to config.JVM_VERSIONS).
SUPPORTED = (17, 21, 25)


@dataclass(frozen=True)
class Usage:
    """What an app's classes take from the JDK; all sorted."""

    packages: tuple[str, ...]
    methods: tuple[tuple[str, str], ...]
    names: tuple[str, ...]
    services: tuple[str, ...]
    classes: int

    def key(self) -> dict[str, object]:
        return {"packages": list(self.packages), "methods": [list(m) for m in self.methods],
                "names": list(self.names), "services": list(self.services)}


def _is_jdk(name: str) -> bool:
    return name.startswith(JDK_PREFIXES)


def _entries(source: ClassSource, budget: Budget) -> Iterator[tuple[str, str,
                                                                   Callable[[], bytes]]]:
    """(name relative to the source, where for messages, reader) of each file in a source."""
    if source.directory is not None:
        top = source.directory
        for dirpath, dirs, names in os.walk(top):
            dirs.sort()
            for name in sorted(names):
                path = Path(dirpath, name)
                rel = path.relative_to(top).as_posix()
                yield rel, str(path), path.read_bytes
        return
    assert source.jar is not None
    with Jar(source.label, source.jar, budget) as jar:
        for name, info in jar.entries.items():
            if info.is_dir() or not name.startswith(source.prefix):
                continue
            rel = name[len(source.prefix):]
            if rel.endswith(".class") or rel.startswith(SERVICES):
                yield rel, f"{source.label}!/{rel}", lambda n=name: jar.read(n)  # type: ignore[misc]


def scan(shape: Shape, version: int, budget: Budget, app: Path) -> Usage:
    """Read every class of ``shape`` for a JVM of release ``version``; UserError if the app
    cannot run there."""
    packages: set[str] = set()
    methods: set[tuple[str, str]] = set()
    names: set[str] = set()
    services: set[str] = set()
    defined: set[str] = set()
    newest: tuple[int, str] = (0, "")
    for source in shape.classpath:
        for rel, where, read in _entries(source, budget):
            versioned = _VERSIONED.match(rel)
            if versioned:
                if int(versioned[1]) > version:
                    continue
                rel = versioned[2]
            if rel.startswith(SERVICES):
                service = rel[len(SERVICES):]
                if service and "/" not in service:
                    services.add(service)
                continue
            if rel.rpartition("/")[2] == "module-info.class" or rel.startswith("META-INF/"):
                continue
            try:
                refs = javaclass.parse(read())
            except javaclass.ClassFormatError as exc:
                raise UserError(f"{where}: not a valid class file ({exc}): rebuild the "
                                "jar") from None
            defined.add(rel[:-len(".class")])
            newest = max(newest, (refs.major, where))
            packages.update(c.rpartition("/")[0] for c in refs.classes if _is_jdk(c))
            methods.update(m for m in refs.methods if _is_jdk(m[0]))
            names.update(s for s in refs.strings if _DOTTED_JDK_CLASS.match(s))
    if not defined:
        raise UserError(f"{app}: no class files in it: app.path must name a Java app (a jar of "
                        "classes, a Spring Boot jar, an app directory)")
    if shape.main.replace(".", "/") not in defined:
        raise UserError(f"{app}: main class {shape.main} is not in the app's class path: check "
                        "[app] main or the manifest's Main-Class/Start-Class")
    release = javaclass.release_of(newest[0])
    if release > version:
        raise UserError(f"{newest[1]} is compiled for Java {release} (class file version "
                        f"{newest[0]}), newer than [jvm] version = {version}: "
                        + _choose(release, version))
    return Usage(tuple(sorted(packages)), tuple(sorted(methods)), tuple(sorted(names)),
                 tuple(sorted(services)), len(defined))


def _choose(release: int, version: int) -> str:
    fits = [v for v in SUPPORTED if v >= release]
    if fits:
        return f"set [jvm] version = {fits[0]}"
    return (f"no supported JVM ({', '.join(map(str, SUPPORTED))}) runs it: compile it with "
            f"--release {version}")
