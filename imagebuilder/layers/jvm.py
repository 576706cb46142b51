"""The jvm layer: a jlink runtime with only the modules the app needs, and its libraries.

The fetched JDK (not the host's) finds the modules with jdeps and links the runtime with jlink,
both run through the sysroot's loader. The runtime gets a class-data-sharing archive (CDS),
which roughly halves JVM start-up under emulation, and the shared libraries its ELF files need
(glibc, libstdc++, zlib...), found by walking DT_NEEDED from the Debian packages fetched with it.
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import elf, sysroot
from ..errors import HostError, UserError
from .cpio import Tree

JAVA_HOME = "opt/java"
LIB_DIR = "usr/lib/x86_64-linux-gnu"
#: Always linked when the JDK has them: java.base, and the elliptic-curve crypto provider that
#: TLS to most servers needs (a service jdeps cannot see). jdeps adds what the classes use.
BASE_MODULES = ("java.base", "jdk.crypto.ec")


def jdk_home(root: Path, version: int) -> Path:
    """The JDK directory inside an unpacked sysroot."""
    home = root / f"usr/lib/jvm/java-{version}-openjdk-amd64"
    if not (home / "bin/jlink").exists():
        raise HostError(f"no JDK {version} with jlink found in {root} "
                        f"(openjdk-{version}-jdk-headless)")
    return home


def _jdk_lib_path(home: Path) -> list[Path]:
    return [home / "lib", home / "lib/server"]


def jdeps_modules(root: Path, home: Path, jar: Path, version: int) -> list[str]:
    """The JDK modules the jar's classes use, as jdeps reports them."""
    out = sysroot.run_in(root, home / "bin/jdeps", [
        "--print-module-deps", "--ignore-missing-deps", "--multi-release", str(version), str(jar),
    ], lib_path=_jdk_lib_path(home))
    modules = [m.strip() for m in out.strip().split(",") if m.strip()]
    if not modules:
        raise UserError(f"{jar}: jdeps found no Java modules in it: is it a jar of classes?")
    return modules


def link_runtime(root: Path, home: Path, modules: list[str], dest: Path, mtime: int) -> None:
    """jlink ``modules`` into ``dest`` and dump a CDS archive for them."""
    available = {p.name.removesuffix(".jmod") for p in (home / "jmods").glob("*.jmod")}
    wanted = sorted({m for m in (*BASE_MODULES, *modules) if m in available})
    sysroot.run_in(root, home / "bin/jlink", [
        "--module-path", str(home / "jmods"), "--add-modules", ",".join(wanted),
        # Debian's --strip-debug runs objcopy; its native libraries are already stripped.
        "--strip-java-debug-attributes", "--no-man-pages", "--no-header-files",
        "--output", str(dest),
    ], lib_path=_jdk_lib_path(home))
    # CDS validates the runtime's modules file by size and mtime: give every file the layer's
    # fixed mtime first so the archive matches what the guest unpacks.
    _set_mtimes(dest, mtime)
    sysroot.run_in(root, dest / "bin/java", ["-Xshare:dump", "-XX:-UsePerfData", "-version"],
                   lib_path=[dest / "lib", dest / "lib/server"])
    _set_mtimes(dest, mtime)


def _set_mtimes(top: Path, mtime: int) -> None:
    for dirpath, _dirs, files in os.walk(top):
        for name in files:
            os.utime(os.path.join(dirpath, name), (mtime, mtime), follow_symlinks=False)


def library_closure(root: Path, runtime: Path) -> dict[str, Path]:
    """soname -> file in ``root`` for every library the runtime's ELF files need, recursively."""
    provided = {p.name for p in runtime.rglob("*.so*")}
    todo = [p for p in runtime.rglob("*") if p.is_file() and not p.is_symlink() and elf.is_elf(p)]
    found: dict[str, Path] = {}
    missing: dict[str, str] = {}
    while todo:
        path = todo.pop()
        for name in elf.dynamic_needed(path):
            if name in found or name in provided:
                continue
            lib = sysroot.find(root, name)
            if lib is None:
                missing.setdefault(name, str(path.relative_to(root) if path.is_relative_to(root)
                                             else path.name))
                continue
            found[name] = lib
            todo.append(lib.resolve())
    loader = sysroot.find(root, sysroot.LOADER)
    if loader is None:
        raise HostError(f"no {sysroot.LOADER} in the fetched libc6")
    found[sysroot.LOADER] = loader
    if missing:
        name, needer = sorted(missing.items())[0]
        raise UserError(f"{name}, needed by {needer}, is in no fetched package: add the Debian "
                        "package that provides it to [app] packages")
    return found


def build_tree(root: Path, runtime: Path) -> Tree:
    """The jvm layer: the runtime under /opt/java and its libraries under /usr/lib."""
    tree = Tree()
    tree.add_tree(runtime, JAVA_HOME)
    for soname, lib in sorted(library_closure(root, runtime).items()):
        tree.add_file(f"{LIB_DIR}/{soname}", source=lib.resolve(), mode=0o755)
    tree.add_symlink(f"usr/lib64/{sysroot.LOADER}", f"../lib/x86_64-linux-gnu/{sysroot.LOADER}")
    return tree
