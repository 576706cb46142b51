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

What each jar contributes is kept in a :data:`Memo` keyed by the jar's content (its xxh3 over
the whole file, from :mod:`imagebuilder.hashing.core`): a jar seen before, byte for byte, costs one
hash and no inflating. A jar that changed in any byte is walked whole again, but pays only for
what changed: each entry's raw bytes are fingerprinted (:meth:`~.archive.Jar.fingerprint`: its
compressed bytes, local header, name, method, CRC-32 and sizes; a thirtieth of inflating), and
an entry whose fingerprint the memo holds was inflated and checked against its CRC-32 before,
byte for byte, so it is not inflated again. A new or changed entry is inflated, checked and (a
class) parsed, so a corrupt entry behind an intact central directory is still refused however
warm the memo is: its compressed bytes are not those that were checked.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .. import fsutil
from ..errors import UserError
from ..fsutil import write_atomic
from ..hashing import core as hashing
from . import javaclass
from .archive import MAX_ENTRY_BYTES, Budget, Jar
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
#: The most class entries the memo's jars keep (the jars used longest ago go first).
MEMO_MAX = 400_000
#: The most class entries the jars the last scan did not use keep (older versions of a changed
#: jar: one of them seen again costs its entries' fingerprints, not their inflating).
MEMO_OLD = 10_000
#: The most entry fingerprints the memo keeps (the ones used longest ago go first).
MEMO_MAX_ENTRIES = 400_000
#: The largest memo read: :data:`MEMO_MAX` records of long names fit many times over.
MEMO_MAX_BYTES = 256 << 20


@dataclass
class Memo:
    """What the scan has read before, by content only.

    ``jars``: for each jar (or a prefix inside it) by its content key (``xxh3:prefix``, the
    digest of the whole file or of a nested jar's bytes), the files the scan needs from it:
    [name, class digest] for its class files (name as in the jar, before multi-release mapping)
    and [name, ""] for its ``META-INF/services`` files. A jar is recorded only once every entry
    of it has inflated and matched its CRC-32; a jar not recorded is read whole.

    ``classes``: what each class file contributes, by the xxh3 of its bytes:
    "major<TAB>packages<TAB>methods<TAB>names", each list space-separated, methods as
    owner.name; "!reason" for bytes that are not a class file (an error only if the JVM would
    load them). A changed jar is read whole, but only its changed classes are parsed again.

    ``entries``: the entries of jars inflated whole and found sound, by their raw fingerprint
    (:meth:`~.archive.Jar.fingerprint`): the class digest of an entry read as a class, else "".
    An entry of a changed jar found here is not inflated again.
    """

    jars: dict[str, list[list[str]]] = field(default_factory=dict)
    classes: dict[str, str] = field(default_factory=dict)
    entries: dict[str, str] = field(default_factory=dict)
    #: The keys of ``jars`` this process's scans used (not saved).
    used: set[str] = field(default_factory=set, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.jars) + len(self.classes) + len(self.entries)


#: A record: (name in the source, where for messages, record or "" for a services file).
_Record = tuple[str, str, str]


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


def _wanted(rel: str) -> bool:
    """Whether the scan may need this file of a source (a class or a services file, possibly
    below META-INF/versions/N/)."""
    versioned = _VERSIONED.match(rel)
    rel = versioned[2] if versioned else rel
    return rel.startswith(SERVICES) or (
        rel.endswith(".class") and not rel.startswith("META-INF/")
        and rel.rpartition("/")[2] != "module-info.class")


def _records(source: ClassSource, budget: Budget, memo: Memo) -> list[_Record]:
    """The records of every file of ``source`` the scan may need: from the memo if the jar's
    content is known, else read (a jar whole, every entry checked) and remembered."""
    if source.directory is not None:
        return list(_directory_records(source.directory))
    assert source.jar is not None
    digest = (hashing.xxh3_bytes(source.jar) if isinstance(source.jar, bytes)
              else hashing.xxh3_file(source.jar))
    key = f"{digest}:{source.prefix}"
    known = memo.jars.pop(key, None)
    if not isinstance(known, list) or any(d and d not in memo.classes for _, d in known):
        known = _read_jar(source, budget, memo)
    memo.jars[key] = known  # last used, last out
    memo.used.add(key)
    return [(rel, f"{source.label}!/{rel}", memo.classes[d] if d else "") for rel, d in known]


def _directory_records(top: Path) -> Iterator[_Record]:
    for dirpath, dirs, names in os.walk(top):
        dirs.sort()
        for name in sorted(names):
            path = Path(dirpath, name)
            rel = path.relative_to(top).as_posix()
            if not _wanted(rel):
                continue
            if path.stat().st_size > MAX_ENTRY_BYTES:
                raise UserError(f"{path}: more than {MAX_ENTRY_BYTES >> 20} MiB: not a class file")
            yield rel, str(path), "" if _is_services(rel) else _record(path.read_bytes())


def _read_jar(source: ClassSource, budget: Budget, memo: Memo) -> list[list[str]]:
    """Every entry of a jar found sound (inflated and checked, unless ``memo.entries`` knows its
    raw bytes); the classes below its prefix recorded in ``memo.classes`` (parsed only if their
    bytes are new); its entry in ``memo.jars``."""
    assert source.jar is not None
    found: list[list[str]] = []
    with budget.open(source.label, source.jar) as jar:
        for name, info in jar.entries.items():
            if info.is_dir():
                continue
            rel = name[len(source.prefix):]
            wanted = name.startswith(source.prefix) and _wanted(rel)
            is_class = wanted and not _is_services(rel)
            digest = _verified(jar, name, memo, is_class)
            if wanted:
                found.append([rel, digest])
    return found


def _verified(jar: Jar, name: str, memo: Memo, is_class: bool) -> str:
    """Entry ``name`` found sound: its class digest (``is_class``, its record in
    ``memo.classes``) or "". Inflated and checked unless ``memo.entries`` holds its raw
    fingerprint (with its class digest and record, when a class is wanted)."""
    fingerprint = jar.fingerprint(name)
    known = memo.entries.pop(fingerprint, None) if fingerprint else None
    if known is not None and (not is_class or known in memo.classes):
        memo.entries[fingerprint] = known  # last used, last out
        jar.checked.add(name)
        return known if is_class else ""
    digest = ""
    if not is_class:
        jar.check(name)
    else:
        data = jar.read(name)
        digest = hashing.xxh3_bytes(data)
        if digest not in memo.classes:
            memo.classes[digest] = _record(data)
    if fingerprint:
        memo.entries[fingerprint] = digest
    return digest if is_class else ""


def _is_services(rel: str) -> bool:
    versioned = _VERSIONED.match(rel)
    return (versioned[2] if versioned else rel).startswith(SERVICES)


def _record(data: bytes) -> str:
    """A class file's memo record (see :data:`Memo`)."""
    try:
        refs = javaclass.parse(data)
    except javaclass.ClassFormatError as exc:
        return f"!{exc}"
    packages = sorted({c.rpartition("/")[0] for c in refs.classes if _is_jdk(c)})
    methods = sorted({f"{o}.{n}" for o, n in refs.methods if _is_jdk(o) and " " not in n})
    names = sorted({s for s in refs.strings if _DOTTED_JDK_CLASS.match(s)})
    return "\t".join([str(refs.major), " ".join(packages), " ".join(methods), " ".join(names)])


def load_memo(path: Path) -> Memo:
    """The memo at ``path``; empty if there is none, it is unreadable, larger than
    :data:`MEMO_MAX_BYTES` or of an older form. Anything there but a regular file (a link, to
    /dev/zero say, a FIFO) is neither followed, waited on nor read: it is removed, so the next
    :func:`save_memo` puts a memo in its place."""
    try:
        fd = fsutil.open_regular(path)
    except fsutil.NotRegularError:
        with contextlib.suppress(OSError):
            path.unlink()
        return Memo()
    except OSError:
        return Memo()
    try:
        with os.fdopen(fd, "rb") as f:
            raw = f.read(MEMO_MAX_BYTES + 1)
        data = json.loads(raw) if len(raw) <= MEMO_MAX_BYTES else None
    except (OSError, ValueError):
        return Memo()
    if not (isinstance(data, dict) and isinstance(data.get("jars"), dict)
            and isinstance(data.get("classes"), dict)):
        return Memo()
    entries = data.get("entries")
    return Memo({k: v for k, v in data["jars"].items() if _pairs(v)},
                {k: v for k, v in data["classes"].items() if isinstance(v, str)},
                {k: v for k, v in entries.items() if isinstance(v, str)}
                if isinstance(entries, dict) else {})


def _pairs(value: object) -> bool:
    """Whether ``value`` is a jar's entry of the memo: a list of [name, digest]."""
    return isinstance(value, list) and all(
        isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) and isinstance(e[1], str)
        for e in value)


def save_memo(path: Path, memo: Memo) -> None:
    """Replace the memo at ``path`` (temporary name, fsync, rename), keeping the jars used last
    (:data:`MEMO_MAX`; :data:`MEMO_OLD` of those no scan of this process used), the entry
    fingerprints used last (:data:`MEMO_MAX_ENTRIES`) and the class records they name."""
    old = sum(len(v) for k, v in memo.jars.items() if k not in memo.used)
    for key in [k for k in memo.jars if k not in memo.used]:
        if old <= MEMO_OLD:
            break
        old -= len(memo.jars.pop(key))
    total = sum(len(v) for v in memo.jars.values())
    for key in list(memo.jars):
        if total <= MEMO_MAX:
            break
        total -= len(memo.jars.pop(key))
    for key in list(memo.entries)[:max(0, len(memo.entries) - MEMO_MAX_ENTRIES)]:
        del memo.entries[key]
    named = {d for files in memo.jars.values() for _, d in files} | set(memo.entries.values())
    data = {"jars": memo.jars, "classes": {d: r for d, r in memo.classes.items() if d in named},
            "entries": memo.entries}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(data, separators=(",", ":")).encode())


def scan(shape: Shape, version: int, budget: Budget, app: Path, memo: Memo | None = None
         ) -> Usage:
    """Read every class of ``shape`` for a JVM of release ``version``; UserError if the app
    cannot run there. ``memo`` (see :data:`Memo`) is read and extended."""
    memo = Memo() if memo is None else memo
    packages: set[str] = set()
    methods: set[str] = set()
    names: set[str] = set()
    services: set[str] = set()
    defined: set[str] = set()
    newest: tuple[int, str] = (0, "")
    for source in shape.classpath:
        for rel, where, record in _records(source, budget, memo):
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
            if record.startswith("!"):
                raise UserError(f"{where}: not a valid class file ({record[1:]}): rebuild the "
                                "jar")
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
