"""The native libraries of a headless JVM, and the Debian packages that provide what they need.

jlink copies a module's native libraries from its jmod. For ``java.desktop`` those include the
X11 ones Debian's ``openjdk-N-jre-headless`` leaves out (``libawt_xawt.so``, ``libjawt.so``,
``libsplashscreen.so``: they ship in ``openjdk-N-jre``): the runtime drops every native the
fetched headless JDK does not have, and is headless like that package. The natives that stay need
libraries beyond glibc, libstdc++ and zlib (``libfreetype.so.6``, ``liblcms2.so.2``,
``libjpeg.so.62``...), and ``libfontmanager.so`` dlopens ``libfontconfig.so.1``.

Which package provides a library is found the way ``dpkg-shlibdeps`` put it there: among the
Depends and Recommends of the JDK's own packages, confirmed by the candidate package's file list
(its ``.deb``, verified like every package) — never guessed, never asked of the user.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from ..errors import UserError
from ..fetch import sysroot
from . import elf

#: libfontmanager.so loads fontconfig with dlopen, so no DT_NEEDED names it.
FONTCONFIG_SONAME = "libfontconfig.so.1"
#: Fontconfig's configuration and one default font family; [app] packages adds more.
FONT_PACKAGES = ("fontconfig-config", "fonts-dejavu-core")
#: What the image takes from the font packages.
FONT_DIRS = ("etc/fonts", "usr/share/fonts", "usr/share/fontconfig")
DESKTOP = "java.desktop"


def jmod_natives(jmod: Path) -> list[str]:
    """The native libraries (paths under ``lib/``) a jmod carries.

    A jmod is a 4-byte header followed by a zip archive, which :mod:`zipfile` reads as is.
    """
    try:
        with zipfile.ZipFile(jmod) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise UserError(f"{jmod}: not a readable jmod ({exc})") from None
    return sorted(n.removeprefix("lib/") for n in names
                  if n.startswith("lib/") and n.endswith(".so"))


def headless_natives(home: Path) -> set[str]:
    """The natives (paths under ``lib/``) of the fetched headless JDK."""
    lib = home / "lib"
    return {str(p.relative_to(lib)) for p in lib.rglob("*.so")}


def non_headless(runtime: Path, home: Path) -> list[Path]:
    """The natives of a linked ``runtime`` that Debian's headless JDK at ``home`` leaves out."""
    keep = headless_natives(home)
    lib = runtime / "lib"
    return sorted(p for p in lib.rglob("*.so") if str(p.relative_to(lib)) not in keep)


def dlopened(modules: Iterable[str], *, fonts: bool) -> list[str]:
    """The libraries the natives of ``modules`` load with dlopen that the image must hold."""
    return [FONTCONFIG_SONAME] if fonts and DESKTOP in set(modules) else []


def missing_sonames(root: Path, home: Path, modules: Iterable[str], *, fonts: bool) -> list[str]:
    """The libraries the headless natives of ``modules`` need that the jvm packages lack.

    ``root`` is the unpacked jvm packages, ``home`` the JDK in it. With ``fonts`` and
    ``java.desktop``, fontconfig is needed too.
    """
    modules = set(modules)
    headless = headless_natives(home)
    jdk_names = {Path(n).name for n in headless}
    needed: set[str] = set()
    for module in sorted(modules):
        jmod = home / "jmods" / f"{module}.jmod"
        if not jmod.exists():
            continue
        for native in jmod_natives(jmod):
            if native in headless:
                needed.update(elf.dynamic_needed(home / "lib" / native))
    needed.update(dlopened(modules, fonts=fonts))
    return sorted(n for n in needed if n not in jdk_names and sysroot.find(root, n) is None)


def library_files(paths: Iterable[str]) -> set[str]:
    """The library file names among a package's ``paths`` (those in the library directories)."""
    out = set()
    for path in paths:
        parent, _, name = path.rpartition("/")
        if parent in sysroot.LIB_DIRS and ".so" in name:
            out.add(name)
    return out


def _stem(soname: str) -> str:
    """``libfreetype.so.6`` -> ``libfreetype``; ``libpng16.so.16`` -> ``libpng``."""
    return re.sub(r"[0-9._-]+$", "", soname.partition(".so")[0]).lower()


def rank(candidates: Sequence[str], soname: str) -> list[str]:
    """``candidates`` with the likeliest providers of ``soname`` first (Debian names a library
    package after its soname: libfreetype.so.6 is in libfreetype6); order otherwise kept."""
    stem = _stem(soname)
    return sorted(candidates, key=lambda name: (not name.startswith(stem), name != stem))


def choose_providers(missing: Iterable[str], candidates: Sequence[str],
                     files_of: Callable[[str], Iterable[str]]) -> dict[str, str]:
    """soname -> the first candidate package whose files hold it; unfound sonames are absent.

    ``files_of`` gives a package's paths (fetching it if need be); each is asked at most once.
    """
    listed: dict[str, set[str]] = {}
    chosen: dict[str, str] = {}
    for soname in sorted(missing):
        for name in rank(candidates, soname):
            if name not in listed:
                listed[name] = library_files(files_of(name))
            if soname in listed[name]:
                chosen[soname] = name
                break
    return chosen


def policy_name(soname: str) -> str:
    """The package name Debian policy (8.1) gives the library ``soname``: libfoo.so.6 ->
    libfoo6, liblcms2.so.2 -> liblcms2-2. Only a hint for error messages."""
    base, _, version = soname.partition(".so")
    version = version.lstrip(".")
    if not version:
        return base.lower()
    sep = "-" if base[-1:].isdigit() else ""
    return f"{base}{sep}{version}".lower()
