"""A sysroot: Debian packages unpacked into a scratch directory, and programs run from it.

The JDK that builds the jvm layer (jdeps, jlink, the CDS dump) comes from the target suite, not
from the host, so a trixie JDK can need a newer glibc than the host has. Running its binaries
through the sysroot's own dynamic loader with the sysroot's libraries makes the build independent
of the host's libc and Java: ``ld-linux-x86-64.so.2 --library-path ... bin/jlink``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from ..errors import HostError
from ..proc import run
from .deb import extract_deb

LIB_DIRS = ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu", "usr/lib64", "lib64")
LOADER = "ld-linux-x86-64.so.2"


def unpack(debs: Iterable[Path], root: Path) -> Path:
    """Extract ``debs`` into ``root`` and make absolute symlinks point inside it."""
    root.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        extract_deb(deb, root)
    relativize_symlinks(root)
    return root


def relativize_symlinks(root: Path) -> None:
    """Rewrite absolute symlinks (``/etc/java-21-openjdk/...``) relative to ``root``."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                continue
            target = os.readlink(path)
            if target.startswith("/"):
                inside = os.path.join(root, target.lstrip("/"))
                os.unlink(path)
                os.symlink(os.path.relpath(inside, dirpath), path)


def find(root: Path, relative: str) -> Path | None:
    """``relative`` looked up in the library directories of ``root`` (merged /usr or not)."""
    for lib_dir in LIB_DIRS:
        candidate = root / lib_dir / relative
        if candidate.exists():
            return candidate
    return None


def exec_argv(root: Path, program: Path, args: Sequence[str], lib_path: Sequence[Path] = ()
              ) -> list[str]:
    """The argv that runs ``program`` with the sysroot's loader and libraries."""
    loader = find(root, LOADER)
    if loader is None:
        raise HostError(f"no {LOADER} in {root}: is libc6 among the fetched packages?")
    dirs = [str(p) for p in lib_path] + [str(root / d) for d in LIB_DIRS if (root / d).is_dir()]
    return [str(loader), "--library-path", ":".join(dirs), str(program), *args]


def run_in(root: Path, program: Path, args: Sequence[str], *, lib_path: Sequence[Path] = (),
           env: Mapping[str, str] | None = None, cwd: str | None = None) -> str:
    """Run a sysroot program; return its stdout. Failures raise HostError with stderr."""
    result = run(exec_argv(root, program, args, lib_path), env=env, cwd=cwd)
    return result.stdout.decode(errors="replace")
