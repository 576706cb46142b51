"""A thin jar's libraries: what its ``Class-Path`` names, taken only from the app's directory.

In the guest the jar is ``/app/x.jar`` and the app's directory (the jar's directory on this
machine) is ``/app``. Each jar's ``Class-Path`` is resolved as the JVM resolves it there
(:mod:`.classpath`), in the JVM's order (a jar, then what its own Class-Path names, depth
first), each jar once. What resolves inside ``/app`` is taken from the same place below the
app's directory here, if its real path (symbolic links followed) stays inside that directory.
Everything else is left out with a warning that says why and how to include it: an entry that
does not exist (the JVM skips it too), one outside ``/app`` (Debian's jars name
``/usr/share/java/...``: the image has it only if a package of ``[app] packages`` ships it;
nothing outside the app's directory is ever taken from this machine), one that leads out
through a symbolic link, one the JVM ignores or cannot read. Only the app jar's own manifest
can fail the build: the JVM could not start it either.

The jars on an app directory's ``-cp`` (and Quarkus' ``quarkus-run.jar``) are followed the same
way, with the app directory as the root: their files are in the image already, but what their
Class-Path reaches is on the class path (its classes are scanned) and what it names outside the
app is a warning.
"""

from __future__ import annotations

import posixpath
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from . import classpath
from .archive import Budget
from .shape import GUEST_DIR, File, app_files

MANIFEST = "META-INF/MANIFEST.MF"


@dataclass
class ClassPath:
    """What a thin jar's Class-Path takes: its jars in the JVM's order, its directories of
    classes (with their files), and the warnings about what it left out."""

    jars: list[File] = field(default_factory=list)
    dirs: list[Path] = field(default_factory=list)
    dir_files: list[File] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Named:
    """A Class-Path entry waiting to be opened: its normalised guest path, whether it is a
    directory, the jar naming it and its token there (for messages), and its URL's path (what
    its own entries resolve against)."""

    guest: str
    directory: bool
    by: Path
    token: str
    url_path: str


def follow(jar: Path, budget: Budget, config_dir: Path | None = None, *,
           root: Path | None = None, guest_dir: str = GUEST_DIR, app: bool = True,
           seen: set[str] | None = None) -> ClassPath:
    """Follow the Class-Path of the jar ``jar`` in the app's directory ``root`` (by default the
    jar's directory; ``guest_dir`` in the guest). ``app``: the JVM starts from this jar, so a
    Class-Path it cannot read fails the build (else it is a warning). ``seen``: the guest paths
    already on the class path (extended). Directories of classes are taken only inside
    ``config_dir`` (where imagebuilder.toml is), when there is one: an app outside it may only be
    a single file."""
    root = jar.parent if root is None else root
    result = ClassPath()
    at = f"{guest_dir}/{jar.relative_to(root).as_posix()}"
    seen = set() if seen is None else seen
    seen.add(at)
    # The JVM's URL of the jar: its path percent-encoded (sun.net.www.ParseUtil.encodePath).
    url_path = urllib.parse.quote(at, safe="/!$&'()*+,;=:@-._~")
    todo = _named(jar, url_path, budget, result, app=app) or []
    while todo:
        item = todo.pop(0)
        if item.guest in seen:
            continue
        seen.add(item.guest)
        where = f"{item.by}: Class-Path entry {item.token}"
        inside = _below(guest_dir, item.guest)
        if inside is None:
            result.warnings.append(_outside(where, item.guest, root, guest_dir))
            continue
        host = root / inside if inside else root
        try:
            real = host.resolve()
        except (OSError, RuntimeError) as exc:
            result.warnings.append(f"{where} ({host}) cannot be resolved ({exc}): left out")
            continue
        if not real.is_relative_to(root.resolve()):
            result.warnings.append(
                f"{where} ({host}) leads out of the app's directory {root} through a symbolic "
                f"link (to {real}): left out; copy it into {root} instead")
            continue
        if item.directory:
            _directory(where, host, real, root, config_dir, result)
            continue
        why = _not_a_jar(real)
        if why:
            result.warnings.append(f"{where} ({host}) {why}: left out, as the JVM skips it")
            continue
        named = _named(real, item.url_path, budget, result, label=str(host))
        if named is not None:
            result.jars.append(File(inside, source=real))
            todo[:0] = named
    return result


def _named(jar: Path, at: str, budget: Budget, result: ClassPath, *, app: bool = False,
           label: str | None = None) -> list[_Named] | None:
    """The Class-Path entries of the jar whose URL's path is ``at`` (those the JVM would open);
    None if the JVM drops the jar itself (a warning says so; for the app jar, UserError)."""
    label = label or str(jar)
    with budget.open(label, jar) as opened:
        data = opened.read(MANIFEST) if MANIFEST in opened.entries else b""
    try:
        value = classpath.class_path(data)
    except classpath.ManifestError as exc:
        _dropped(label, f"its manifest is unreadable to the JVM ({exc})", result, app)
        return None
    entries = [classpath.resolve(at, token) for token in classpath.split(value or "")]
    fatal = [e for e in entries if e.fatal]
    if fatal:
        _dropped(label, f"its Class-Path entry {fatal[0].token} is not a URL the JVM accepts "
                 f"({fatal[0].fatal})", result, app)
        return None
    named = []
    for entry in entries:
        if entry.path is None:
            result.warnings.append(f"{label}: Class-Path entry {entry.token} is {entry.ignored}:"
                                   " left out")
            continue
        named.append(_Named(classpath.normalised(entry.path), entry.directory, Path(label),
                            entry.token, entry.url_path))
    return named


def _dropped(label: str, why: str, result: ClassPath, app: bool) -> None:
    if app:
        raise UserError(f"{label}: {why}, so the JVM cannot load it: fix the jar's manifest")
    result.warnings.append(f"{label}: {why}, so the JVM drops it and what it names from the "
                           "class path: left out")


def _below(top: str, path: str) -> str | None:
    """A guest path relative to ``top`` ("" for ``top`` itself); None if it is outside."""
    if path == top:
        return ""
    if path.startswith(top + "/"):
        return posixpath.normpath(path[len(top) + 1:])
    return None


def _outside(where: str, at: str, root: Path, guest_dir: str) -> str:
    how = f"copy it into {root} and name it relative to the jar"
    if at.startswith("/usr/"):
        how += (", or install the Debian package that ships it with [app] packages (the "
                "image resolves the same path)")
    return (f"{where} is {at} in the image, outside the app's directory {guest_dir}: left out "
            f"(nothing outside {root} is taken from this machine); to include it, {how}")


def _not_a_jar(real: Path) -> str | None:
    """Why the JVM would not open ``real`` as a jar, or None."""
    if not real.exists():
        return "does not exist"
    if real.is_dir():
        return "is a directory named without a trailing /, which the JVM opens as a jar"
    if not real.is_file():
        return "is not a regular file"
    return None


def _directory(where: str, host: Path, real: Path, root: Path, config_dir: Path | None,
               result: ClassPath) -> None:
    if not real.is_dir():
        result.warnings.append(f"{where} ({host}) is not a directory: left out, as the JVM "
                               "finds no classes there")
        return
    if config_dir is not None and not real.is_relative_to(config_dir.resolve()):
        result.warnings.append(
            f"{where} ({host}) is a directory outside {config_dir}, where imagebuilder.toml is: "
            "left out (an app outside it may only be a single file); move the app into it")
        return
    if host not in result.dirs:
        result.dirs.append(host)
        result.dir_files += app_files(host, root)
