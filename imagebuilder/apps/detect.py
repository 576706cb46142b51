"""Which app shape ``[app] path`` names, and the :class:`~.shape.Shape` it becomes.

* an **executable jar** (``Main-Class``): ``java -jar /app/x.jar``; with ``[app] main``,
  ``java -cp /app/x.jar MAIN``;
* a **Spring Boot** jar (``BOOT-INF/classes``, ``BOOT-INF/lib``, ``Start-Class``): run exploded,
  as Spring recommends for production: ``-cp /app/BOOT-INF/classes:/app/BOOT-INF/lib/... MAIN``
  with the libraries in ``BOOT-INF/classpath.idx`` order (else by name);
* a **thin jar** whose manifest ``Class-Path`` names libraries beside it (followed through the
  libraries' own ``Class-Path``), each kept at its path relative to the jar;
* an **app directory**: a Quarkus fast-jar (``quarkus-run.jar``, ``lib/``, ``app/``,
  ``quarkus/``; also when given the directory holding ``quarkus-app/``), or a Gradle
  ``installDist`` / Maven assembly layout (``lib/*.jar``, and jars at the top) with ``[app] main``.

Third-party libraries (``BOOT-INF/lib``, ``lib/``, ``Class-Path`` jars) go into the libs layer
unless their name says ``-SNAPSHOT``; everything else is the app's own.
"""

from __future__ import annotations

import os
import posixpath
import urllib.parse
from pathlib import Path

from ..errors import UserError
from . import war
from .archive import Budget, Jar
from .shape import ClassSource, File, Shape, guest, is_snapshot, split_libs

NO_MAIN_CLASS = ("no Main-Class in META-INF/MANIFEST.MF: build it as an executable jar (jar "
                 "--main-class CLASS, or your build tool's manifest setting) or set [app] main")
BOOT_CLASSES = "BOOT-INF/classes/"
BOOT_LIB = "BOOT-INF/lib/"


def detect(path: Path, main: str | None, budget: Budget) -> Shape:
    """The shape of the app at ``path`` (a jar, a war or a directory); UserError if it is none."""
    if path.is_dir():
        return _directory(path, main, budget)
    if war.is_war(path):
        return war.detect(path, main, budget)
    with budget.open(str(path), path) as jar:
        manifest = jar.manifest()
        if "start-class" in manifest or any(n.startswith(BOOT_CLASSES) for n in jar.entries):
            return _spring_boot(path, jar, manifest, main)
        if main is None and not manifest.get("main-class"):
            raise UserError(f"{path}: {NO_MAIN_CLASS}")
        chosen = main or manifest["main-class"]
        own = [File(path.name, source=path)]
        libs, dirs = _class_path(path, path.parent, manifest, budget)
        # Classes in a directory are the app's own; jars are libraries.
        in_dirs = [f for f in libs if any(f.source and f.source.is_relative_to(d.resolve())
                                          for d in dirs)]
        snapshots, third = split_libs([f for f in libs if f not in in_dirs])
        snapshots = (*snapshots, *in_dirs)
        cp = [guest(path.name), *(guest(f.dest) for f in libs if f.dest.endswith(".jar"))]
        argv = ("-cp", ":".join(cp), chosen) if main else ("-jar", guest(path.name))
        sources = [ClassSource(str(path), jar=path), *_sources(path.parent, libs),
                   *(ClassSource(str(d), directory=d) for d in dirs)]
        return Shape("thin-jar" if libs else "jar", (*own, *snapshots), third, argv, chosen,
                     tuple(sources))


def _spring_boot(path: Path, jar: Jar, manifest: dict[str, str], main: str | None) -> Shape:
    chosen = main or manifest.get("start-class")
    if not chosen:
        raise UserError(f"{path}: a Spring Boot jar without Start-Class in its manifest: set "
                        "[app] main to the application class")
    own: list[File] = []
    libs: list[File] = []
    for name, info in sorted(jar.entries.items()):
        if info.is_dir():
            continue
        if name.startswith(("BOOT-INF/", "/")) and not _safe_name(name):
            raise UserError(f"{jar.where(name)}: an entry name that would leave the app's "
                            "directory (an absolute path, '..' or a NUL): rebuild the jar")
        if name.startswith(BOOT_CLASSES):
            own.append(File(name, data=jar.read(name)))
        elif name.startswith(BOOT_LIB) and name.endswith(".jar"):
            libs.append(File(name, data=jar.read(name)))
    order = _classpath_idx(jar)
    libs.sort(key=lambda f: (order.get(f.dest, len(order)), f.dest))
    snapshots, third = split_libs(libs)
    cp = [guest(BOOT_CLASSES.rstrip("/")), *(guest(f.dest) for f in libs)]
    sources = [ClassSource(f"{path}!/{BOOT_CLASSES}", jar=path, prefix=BOOT_CLASSES)]
    sources += [ClassSource(f"{path}!/{f.dest}", jar=f.data) for f in libs]
    return Shape("spring-boot", (*own, *snapshots), third, ("-cp", ":".join(cp), chosen),
                 chosen, tuple(sources))


def _safe_name(name: str) -> bool:
    """An entry name that stays below the directory it is extracted to."""
    parts = name.split("/")
    return not name.startswith("/") and ".." not in parts and "\0" not in name and "\\" not in name


def _classpath_idx(jar: Jar) -> dict[str, int]:
    """BOOT-INF/classpath.idx: the libraries in the order the build tool put them."""
    name = "BOOT-INF/classpath.idx"
    if name not in jar.entries:
        return {}
    order: dict[str, int] = {}
    for line in jar.text(name).splitlines():
        entry = line.strip().removeprefix("- ").strip().strip('"')
        if entry:
            order.setdefault(entry if "/" in entry else BOOT_LIB + entry, len(order))
    return order


def _class_path(jar_path: Path, root: Path, manifest: dict[str, str],
                budget: Budget) -> tuple[list[File], list[Path]]:
    """The jars a manifest's Class-Path names, recursively. The app jar's entries must be inside
    ``root`` and exist; a library's own entries that do not (Debian's jars name
    /usr/share/java/...) are left out, as the JVM skips what it cannot find. Also the
    directories named (their files are among the files)."""
    found: dict[str, File] = {}
    dirs: list[Path] = []
    todo = [(jar_path, manifest)]
    while todo:
        current, attrs = todo.pop()
        strict = current == jar_path
        for entry in attrs.get("class-path", "").split():
            try:
                rel = _inside(root, current.parent, entry, current)
            except UserError:
                if strict:
                    raise
                continue
            target = root / rel
            if rel in found or target == jar_path:
                continue
            if not target.exists():
                if strict:
                    raise UserError(f"{current}: Class-Path entry {entry} does not exist "
                                    f"({target}): put it beside the jar or remove it from the "
                                    "manifest")
                continue
            if target.is_dir():
                if target not in dirs:
                    dirs.append(target)
                for file in _walk(target, root):
                    found.setdefault(file.dest, file)
                continue
            found[rel] = File(rel, source=target)
            with budget.open(str(target), target) as lib:
                todo.append((target, lib.manifest()))
    return [found[k] for k in sorted(found)], dirs


def _inside(root: Path, base: Path, entry: str, where: Path) -> str:
    """A Class-Path entry as a path relative to ``root``; UserError if it leaves it."""
    url = urllib.parse.urlsplit(entry)
    if url.scheme or url.netloc or entry.startswith("/"):
        raise UserError(f"{where}: Class-Path entry {entry} is not a relative path: list "
                        "libraries beside the jar (lib/x.jar)")
    full = posixpath.normpath(posixpath.join(
        base.relative_to(root).as_posix(), urllib.parse.unquote(url.path)))
    if full == ".." or full.startswith("../") or full == ".":
        raise UserError(f"{where}: Class-Path entry {entry} escapes the app's directory "
                        f"{root}: keep libraries beside the jar (lib/x.jar)")
    return full


def _walk(top: Path, root: Path) -> list[File]:
    """Every regular file below ``top`` (symlinks must stay inside ``root``), sorted."""
    files: list[File] = []
    real_root = root.resolve()
    for dirpath, dirs, names in os.walk(top, followlinks=False):
        dirs.sort()
        for name in sorted(names) + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
            path = Path(dirpath, name)
            real = path.resolve()
            if not real.is_relative_to(real_root):
                raise UserError(f"{path}: a symbolic link out of the app's directory {root}: copy "
                                "the file into it instead")
            if real.is_file():
                files.append(File(path.relative_to(root).as_posix(), source=real))
    return files


def _sources(root: Path, files: list[File] | tuple[File, ...]) -> list[ClassSource]:
    """Class sources of the jars among ``files``."""
    return [ClassSource(str(root / f.dest), jar=f.source)
            for f in files if f.dest.endswith(".jar") and f.source is not None]


def _directory(path: Path, main: str | None, budget: Budget) -> Shape:
    if (path / "quarkus-app" / "quarkus-run.jar").is_file():
        path = path / "quarkus-app"
    files = _walk(path, path)
    if (path / "quarkus-run.jar").is_file():
        if main is not None:
            raise UserError(f"app.main: {path} is a Quarkus app, started by quarkus-run.jar: "
                            "remove [app] main")
        with budget.open(str(path / "quarkus-run.jar"), path / "quarkus-run.jar") as runner:
            chosen = runner.manifest().get("main-class")
        if not chosen:
            raise UserError(f"{path / 'quarkus-run.jar'}: {NO_MAIN_CLASS}")
        libs = [f for f in files if f.dest.startswith("lib/") and not is_snapshot(f.dest)]
        lib_dests = {f.dest for f in libs}
        own = [f for f in files if f.dest not in lib_dests]
        return Shape("quarkus", tuple(own), tuple(libs), ("-jar", guest("quarkus-run.jar")),
                     chosen, tuple(_sources(path, files)))
    jars = [f for f in files if f.dest.endswith(".jar") and f.dest.count("/") <= 1
            and (f.dest.count("/") == 0 or f.dest.startswith("lib/"))]
    if not jars:
        raise UserError(f"{path}: an app directory needs quarkus-run.jar or lib/*.jar (Gradle "
                        "installDist, Maven assembly): found neither")
    if main is None:
        raise UserError(f"{path}: an app directory of jars needs the class to run: set [app] main "
                        '= "com.example.Main"')
    entry = main.replace(".", "/") + ".class"
    holders = []
    for f in jars:
        assert f.source is not None
        with budget.open(str(f.source), f.source) as jar:
            if entry in jar.entries:
                holders.append(f)
    own_jar = holders[0] if holders else None
    jars.sort(key=lambda f: (f is not own_jar, f.dest))
    third = [f for f in jars if f is not own_jar and not is_snapshot(f.dest)]
    third_dests = {f.dest for f in third}
    own = [f for f in files if f.dest not in third_dests]
    argv = ("-cp", ":".join(guest(f.dest) for f in jars), main)
    return Shape("app-dir", tuple(own), tuple(third), argv, main, tuple(_sources(path, jars)))
