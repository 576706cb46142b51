"""Which app shape ``[app] path`` names, and the :class:`~.shape.Shape` it becomes.

* an **executable jar** (``Main-Class``): ``java -jar /app/x.jar``; with ``[app] main``,
  ``java -cp /app/x.jar MAIN``;
* a **Spring Boot** jar (``BOOT-INF/classes``, ``BOOT-INF/lib``, ``Start-Class``): run exploded,
  as Spring recommends for production: ``-cp /app/BOOT-INF/classes:/app/BOOT-INF/lib/... MAIN``
  with the libraries in ``BOOT-INF/classpath.idx`` order (else by name);
* a **thin jar** whose manifest ``Class-Path`` names libraries beside it (followed through the
  libraries' own ``Class-Path``), each kept at its path relative to the jar: resolved as the
  JVM resolves them, and taken only from inside the jar's directory (:mod:`.thin`; what is left
  out is a warning of the shape);
* an **app directory**: a Quarkus fast-jar (``quarkus-run.jar``, ``lib/``, ``app/``,
  ``quarkus/``; also when given the directory holding ``quarkus-app/``), or a Gradle
  ``installDist`` / Maven assembly layout (``lib/*.jar``, and jars at the top) with ``[app] main``.

Third-party libraries (``BOOT-INF/lib``, ``lib/``, ``Class-Path`` jars) go into the libs layer
unless their name says ``-SNAPSHOT``; everything else is the app's own.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from . import thin, war
from .archive import Budget, Jar
from .shape import ClassSource, File, Shape, app_files, guest, is_snapshot, split_libs

NO_MAIN_CLASS = ("no Main-Class in META-INF/MANIFEST.MF: build it as an executable jar (jar "
                 "--main-class CLASS, or your build tool's manifest setting) or set [app] main")
BOOT_CLASSES = "BOOT-INF/classes/"
BOOT_LIB = "BOOT-INF/lib/"


def detect(path: Path, main: str | None, budget: Budget, *,
           config_dir: Path | None = None) -> Shape:
    """The shape of the app at ``path`` (a jar, a war or a directory); UserError if it is none.
    ``config_dir`` is where imagebuilder.toml is (None for a bare jar): an app directory must
    be inside it; a single jar or war may be anywhere."""
    if path.is_dir():
        if config_dir is not None and not path.resolve().is_relative_to(config_dir.resolve()):
            raise UserError(f"app.path: {path} is an app directory outside {config_dir}, where "
                            "imagebuilder.toml is: only a single jar or war may be outside it; "
                            "move the directory into it")
        return _directory(path, main, budget)
    if war.is_war(path):
        return war.detect(path, main, budget)
    with budget.open(str(path), path) as jar:
        manifest = jar.manifest()
        if "start-class" in manifest or any(n.startswith(BOOT_CLASSES) for n in jar.entries):
            return _spring_boot(path, jar, manifest, main)
        if main is None and not manifest.get("main-class"):
            raise UserError(f"{path}: {NO_MAIN_CLASS}")
        return _thin(path, main or manifest["main-class"], main is not None, budget, config_dir)


def _thin(path: Path, chosen: str, explicit: bool, budget: Budget,
          config_dir: Path | None) -> Shape:
    """An executable jar, with the libraries its Class-Path names (:mod:`.thin`)."""
    found = thin.follow(path, budget, config_dir)
    jar_dests = {f.dest for f in found.jars}
    # Classes in a directory are the app's own; jars are libraries.
    in_dirs = [f for f in found.dir_files if f.dest not in jar_dests and f.dest != path.name]
    snapshots, third = split_libs(found.jars)
    cp = [guest(path.name), *(guest(f.dest) for f in found.jars)]
    argv = ("-cp", ":".join(cp), chosen) if explicit else ("-jar", guest(path.name))
    sources = [ClassSource(str(path), jar=path),
               *(ClassSource(str(path.parent / f.dest), jar=f.source) for f in found.jars),
               *(ClassSource(str(d), directory=d) for d in found.dirs)]
    kind = "thin-jar" if found.jars or found.dirs else "jar"
    return Shape(kind, (File(path.name, source=path), *snapshots, *in_dirs), third, argv,
                 chosen, tuple(sources), tuple(found.warnings))


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
    _check_file_or_directory(jar, [*own, *libs])
    order = _classpath_idx(jar)
    libs.sort(key=lambda f: (order.get(f.dest, len(order)), f.dest))
    snapshots, third = split_libs(libs)
    cp = [guest(BOOT_CLASSES.rstrip("/")), *(guest(f.dest) for f in libs)]
    sources = [ClassSource(f"{path}!/{BOOT_CLASSES}", jar=path, prefix=BOOT_CLASSES)]
    sources += [ClassSource(f"{path}!/{f.dest}", jar=f.data) for f in libs]
    return Shape("spring-boot", (*own, *snapshots), third, ("-cp", ":".join(cp), chosen),
                 chosen, tuple(sources))


def _check_file_or_directory(jar: Jar, files: list[File]) -> None:
    """UserError if a name is a file and also a directory of another file (zip entries can
    be both; the image cannot)."""
    names = {f.dest for f in files}
    for f in files:
        parent = f.dest.rpartition("/")[0]
        while parent:
            if parent in names:
                raise UserError(f"{jar.where(parent)} is a file, and a directory of "
                                f"{f.dest} too: the image cannot hold both; rebuild the jar")
            parent = parent.rpartition("/")[0]


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


def _sources(root: Path, files: list[File] | tuple[File, ...]) -> list[ClassSource]:
    """Class sources of the jars among ``files``."""
    return [ClassSource(str(root / f.dest), jar=f.source)
            for f in files if f.dest.endswith(".jar") and f.source is not None]


def _directory(path: Path, main: str | None, budget: Budget) -> Shape:
    if (path / "quarkus-app" / "quarkus-run.jar").is_file():
        if not (path / "quarkus-app").resolve().is_relative_to(path.resolve()):
            raise UserError(f"{path / 'quarkus-app'}: a symbolic link out of the app's directory "
                            f"{path}: name the Quarkus app's own directory in app.path instead")
        path = path / "quarkus-app"
    files = app_files(path, path)
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
        found = thin.follow(path / "quarkus-run.jar", budget, root=path)
        return Shape("quarkus", tuple(own), tuple(libs), ("-jar", guest("quarkus-run.jar")),
                     chosen, tuple(_sources(path, files)), tuple(found.warnings))
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
    more, warnings = _class_paths(path, jars, budget)
    return Shape("app-dir", tuple(own), tuple(third), argv, main,
                 (*_sources(path, jars), *more), warnings)


def _class_paths(root: Path, jars: list[File], budget: Budget
                 ) -> tuple[list[ClassSource], tuple[str, ...]]:
    """What the Class-Path of the jars on an app directory's ``-cp`` adds (the app's files are
    in the image already; the classes of those the JVM loads must be scanned too), and the
    warnings about what it names outside the app."""
    seen = {guest(f.dest) for f in jars}
    sources: list[ClassSource] = []
    warnings: list[str] = []
    for f in jars:
        found = thin.follow(root / f.dest, budget, root=root, app=False, seen=seen)
        sources += [ClassSource(str(root / j.dest), jar=j.source) for j in found.jars]
        sources += [ClassSource(str(d), directory=d) for d in found.dirs]
        warnings += found.warnings
    return sources, tuple(warnings)
