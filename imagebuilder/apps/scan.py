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

What each class contributes is kept in a :data:`Memo` keyed by the CRC-32 and size the zip's
central directory gives for its bytes, so a rebuild inflates and parses only the classes that
changed (a fat jar of 10,000 classes with one new class: one class read).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .. import javaclass
from ..errors import UserError
from ..fsutil import fsync_dir
from .archive import MAX_ENTRY_BYTES, Budget
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
#: A memo holding more class records than this starts afresh.
MEMO_MAX = 400_000

#: What one class file contributes, by the CRC-32 and size of its bytes (from the zip's central
#: directory): "major<TAB>packages<TAB>methods<TAB>names", each list space-separated, methods as
#: owner.name. A rebuild after a small change reads and parses only the classes whose bytes
#: changed; the rest come from here. (Strings, not lists: a memo of 10,000 classes loads in
#: a few milliseconds.)
Memo = dict[str, str]


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


def _entries(source: ClassSource, budget: Budget) -> Iterator[
        tuple[str, str, Callable[[], bytes], str | None]]:
    """(name relative to the source, where for messages, reader, memo key) of each file."""
    if source.directory is not None:
        top = source.directory
        for dirpath, dirs, names in os.walk(top):
            dirs.sort()
            for name in sorted(names):
                path = Path(dirpath, name)
                rel = path.relative_to(top).as_posix()
                if (rel.endswith(".class") or rel.startswith(SERVICES)) \
                        and path.stat().st_size > MAX_ENTRY_BYTES:
                    raise UserError(f"{path}: more than {MAX_ENTRY_BYTES >> 20} MiB: not a class "
                                    "file")
                yield rel, str(path), path.read_bytes, None
        return
    assert source.jar is not None
    with budget.open(source.label, source.jar) as jar:
        for name, info in jar.entries.items():
            if info.is_dir() or not name.startswith(source.prefix):
                continue
            rel = name[len(source.prefix):]
            if rel.endswith(".class") or rel.startswith(SERVICES):
                yield (rel, f"{source.label}!/{rel}", lambda n=name: jar.read(n),  # type: ignore[misc]
                       f"{info.CRC:08x}-{info.file_size}")


def _record(data: bytes, where: str) -> str:
    """A class file's memo record (see :data:`Memo`)."""
    try:
        refs = javaclass.parse(data)
    except javaclass.ClassFormatError as exc:
        raise UserError(f"{where}: not a valid class file ({exc}): rebuild the jar") from None
    packages = sorted({c.rpartition("/")[0] for c in refs.classes if _is_jdk(c)})
    methods = sorted({f"{o}.{n}" for o, n in refs.methods if _is_jdk(o) and " " not in n})
    names = sorted({s for s in refs.strings if _DOTTED_JDK_CLASS.match(s)})
    return "\t".join([str(refs.major), " ".join(packages), " ".join(methods), " ".join(names)])


def load_memo(path: Path) -> Memo:
    """The memo at ``path``; empty if there is none or it is unreadable."""
    try:
        memo = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) and len(memo) <= MEMO_MAX else {}


def save_memo(path: Path, memo: Memo) -> None:
    """Replace the memo at ``path`` (temporary name, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".scan-memo-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(memo, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def scan(shape: Shape, version: int, budget: Budget, app: Path, memo: Memo | None = None
         ) -> Usage:
    """Read every class of ``shape`` for a JVM of release ``version``; UserError if the app
    cannot run there. ``memo`` (see :data:`Memo`) is read and extended."""
    memo = {} if memo is None else memo
    packages: set[str] = set()
    methods: set[str] = set()
    names: set[str] = set()
    services: set[str] = set()
    defined: set[str] = set()
    newest: tuple[int, str] = (0, "")
    for source in shape.classpath:
        for rel, where, read, key in _entries(source, budget):
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
            record = memo.get(key) if key else None
            if record is None:
                record = _record(read(), where)
                if key:
                    memo[key] = record
            defined.add(rel[:-len(".class")])
            major, used, calls, named = record.split("\t")
            if int(major) > newest[0]:
                newest = (int(major), where)
            packages.update(used.split())
            methods.update(calls.split())
            names.update(named.split())
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
    pairs = sorted((m.rpartition(".")[0], m.rpartition(".")[2]) for m in methods)
    return Usage(tuple(sorted(packages)), tuple(pairs), tuple(sorted(names)),
                 tuple(sorted(services)), len(defined))


def _choose(release: int, version: int) -> str:
    fits = [v for v in SUPPORTED if v >= release]
    if fits:
        return f"set [jvm] version = {fits[0]}"
    return (f"no supported JVM ({', '.join(map(str, SUPPORTED))}) runs it: compile it with "
            f"--release {version}")
