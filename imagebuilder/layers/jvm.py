"""The jvm layer: a jlink runtime with only the modules the app needs, and its libraries.

The fetched JDK (not the host's) links the runtime with jlink, run through the sysroot's loader,
from the modules :mod:`imagebuilder.apps.modules` found in the app's classes. The runtime is
headless like Debian's ``openjdk-N-jre-headless`` (see :mod:`imagebuilder.layers.natives`), gets a
class-data-sharing archive (CDS), which roughly halves JVM start-up under emulation, and the
shared libraries its ELF files need (glibc, libstdc++, zlib, and for java.desktop freetype,
lcms2, libjpeg...), found by walking DT_NEEDED through the Debian packages fetched for it, and
the C.UTF-8 locale the guest's ``LANG`` names. With java.desktop, fontconfig's configuration and
fonts come along too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import HostError, UserError
from ..fetch import sysroot
from ..fsutil import write_atomic
from . import elf, elfstrip, natives
from .base import add_records
from .cpio import Tree

JAVA_HOME = "opt/java"
LIB_DIR = "usr/lib/x86_64-linux-gnu"
#: The locale the init's ``LANG=C.UTF-8`` names (from libc-bin): the JVM reads the environment,
#: its arguments and file names in the locale's charset, ASCII when the locale is missing.
LOCALE_DIR = "usr/lib/locale/C.utf8"
#: Always linked when the JDK has them: java.base, and the elliptic-curve crypto provider that
#: TLS to most servers needs (a service no class names). The app's classes add the rest.
BASE_MODULES = ("java.base", "jdk.crypto.ec")
#: The heap may grow to this share of the guest's memory: the JVM has the VM to itself.
MAX_RAM_PERCENTAGE = 75
#: [jvm] args that size the heap themselves, so the default is left out.
_HEAP_FLAGS = ("-Xmx", "-XX:MaxHeapSize=", "-XX:MaxRAMPercentage=", "-XX:MaxRAM=",
               "-XX:MaxRAMFraction=")


class MissingLibraryError(UserError):
    """A library the runtime needs is in none of the fetched packages."""

    def __init__(self, soname: str, needer: str, package: str | None = None) -> None:
        self.soname, self.needer = soname, needer
        which = f"{package} (the Debian package that provides it)" if package else (
            "the Debian package that provides it")
        super().__init__(f"{soname}, needed by {needer}, is in no fetched package: add {which} "
                         "to [app] packages")


def heap_flags(args: Sequence[str]) -> list[str]:
    """The default heap size flag, unless the user's JVM ``args`` size the heap."""
    if any(arg.startswith(_HEAP_FLAGS) for arg in args):
        return []
    return [f"-XX:MaxRAMPercentage={MAX_RAM_PERCENTAGE}"]


def jdk_home(root: Path, version: int) -> Path:
    """The JDK directory inside an unpacked sysroot."""
    home = root / f"usr/lib/jvm/java-{version}-openjdk-amd64"
    if not (home / "bin/jlink").exists():
        raise HostError(f"no JDK {version} with jlink found in {root} "
                        f"(openjdk-{version}-jdk-headless)")
    return home


def _jdk_lib_path(home: Path) -> list[Path]:
    return [home / "lib", home / "lib/server"]


def link_runtime(root: Path, home: Path, modules: list[str], dest: Path, mtime: int) -> None:
    """jlink ``modules`` into ``dest``, headless, and dump a CDS archive for them."""
    available = {p.name.removesuffix(".jmod") for p in (home / "jmods").glob("*.jmod")}
    wanted = sorted({m for m in (*BASE_MODULES, *modules) if m in available})
    options = ["--add-options=-Djava.awt.headless=true"] if natives.DESKTOP in wanted else []
    sysroot.run_in(root, home / "bin/jlink", [
        "--module-path", str(home / "jmods"), "--add-modules", ",".join(wanted), *options,
        # Debian's --strip-debug runs objcopy; its native libraries are already stripped.
        "--strip-java-debug-attributes", "--no-man-pages", "--no-header-files",
        "--output", str(dest),
    ], lib_path=_jdk_lib_path(home))
    strip_runtime(dest, home)
    # CDS validates the runtime's modules file by size and mtime: give every file the layer's
    # fixed mtime first so the archive matches what the guest unpacks.
    _set_mtimes(dest, mtime)
    sysroot.run_in(root, dest / "bin/java", ["-Xshare:dump", "-XX:-UsePerfData", "-version"],
                   lib_path=[dest / "lib", dest / "lib/server"])
    _set_mtimes(dest, mtime)


def strip_runtime(runtime: Path, home: Path) -> list[Path]:
    """Remove what a server image never loads: the natives Debian's headless JDK leaves out
    (X11, splash screen, JAWT), separate debug info (``*.debuginfo``, which JDK 25's jmods
    carry) and the full symbol tables of the libraries (libjvm.so's is 4.6 MB; the dynamic
    symbols stay). Returns the files removed."""
    dropped = natives.non_headless(runtime, home)
    dropped += sorted(p for p in runtime.rglob("*.debuginfo") if p.is_file())
    for path in dropped:
        path.unlink()
    for lib in sorted(runtime.rglob("*.so")):
        _drop_symbol_table(lib)
    return dropped


def _drop_symbol_table(path: Path) -> None:
    """Debian's libjvm.so keeps its full symbol table (see elfstrip): dropped, in place."""
    if path.is_symlink() or not path.is_file():
        return
    smaller = elfstrip.drop_symtab(path.read_bytes())
    if smaller is None:
        return
    # the runtime is scratch of this build, packed into a layer later: no fsync
    write_atomic(path, smaller, sync=False, mode=path.stat().st_mode & 0o7777)


def _set_mtimes(top: Path, mtime: int) -> None:
    for dirpath, _dirs, files in os.walk(top):
        for name in files:
            os.utime(os.path.join(dirpath, name), (mtime, mtime), follow_symlinks=False)


def library_closure(roots: Sequence[Path], runtime: Path, loads: Sequence[str] = ()
                    ) -> dict[str, Path]:
    """soname -> library file for every library the runtime's ELF files need, recursively,
    looked up in the package trees ``roots`` in order (the first holds the loader). ``loads``
    are libraries the runtime opens with dlopen, which no DT_NEEDED names."""
    provided = {p.name for p in runtime.rglob("*.so*")}
    todo = [p for p in runtime.rglob("*") if p.is_file() and not p.is_symlink() and elf.is_elf(p)]
    found: dict[str, Path] = {}
    missing: dict[str, str] = {}
    pending: list[tuple[str, list[str]]] = [("the runtime (dlopen)", list(loads))]
    while todo or pending:
        if pending:
            needer, names = pending.pop()
        else:
            path = todo.pop()
            needer, names = _shown(path, runtime, roots), elf.dynamic_needed(path)
        for name in names:
            if name in found or name in provided:
                continue
            lib = _find(roots, name)
            if lib is None:
                missing.setdefault(name, needer)
                continue
            found[name] = lib
            if elf.is_elf(lib):
                todo.append(lib.resolve())
    loader = sysroot.find(roots[0], sysroot.LOADER)
    if loader is None:
        raise HostError(f"no {sysroot.LOADER} in the fetched libc6")
    found[sysroot.LOADER] = loader
    if missing:
        name, needer = sorted(missing.items())[0]
        raise MissingLibraryError(name, needer)
    return found


def _find(roots: Sequence[Path], soname: str) -> Path | None:
    return next((lib for root in roots if (lib := sysroot.find(root, soname)) is not None), None)


def _shown(path: Path, runtime: Path, roots: Sequence[Path]) -> str:
    """How an error names the file that needs a library."""
    for top in (runtime, *roots):
        if path.is_relative_to(top):
            return str(path.relative_to(top))
    return path.name


def build_tree(roots: Sequence[Path], runtime: Path, shared: Sequence[Path] = (),
               loads: Sequence[str] = (), records: Mapping[str, bytes] | None = None) -> Tree:
    """The jvm layer: the runtime under /opt/java, its libraries (``loads`` by dlopen) under
    /usr/lib, the C.UTF-8 locale, the font configuration and fonts the package trees ``roots``
    hold, and ``records``, the dpkg status stanzas of the packages all that comes from (by path:
    :mod:`imagebuilder.sbom.dpkg`). Libraries found only in the ``shared`` trees (the packages
    layer's) are left to that layer."""
    tree = Tree()
    add_records(tree, records or {})
    tree.add_tree(runtime, JAVA_HOME)
    if not (roots[0] / LOCALE_DIR / "LC_CTYPE").is_file():
        raise HostError(f"no {LOCALE_DIR} in the fetched libc-bin")
    tree.add_tree(roots[0] / LOCALE_DIR, LOCALE_DIR)
    for soname, lib in sorted(library_closure([*roots, *shared], runtime, loads).items()):
        if any(lib.is_relative_to(top) for top in roots):
            tree.add_file(f"{LIB_DIR}/{soname}", source=lib.resolve(), mode=0o755)
    tree.add_symlink(f"usr/lib64/{sysroot.LOADER}", f"../lib/x86_64-linux-gnu/{sysroot.LOADER}")
    for root in roots[1:]:
        for top in natives.FONT_DIRS:
            if (root / top).is_dir():
                tree.add_tree(root / top, top)
    return tree
