"""The JDK modules an app needs, from what its classes use: no JVM, no jdeps.

Each ``jmod`` of the fetched JDK is a zip after a 4-byte ``JM`` header; its ``classes/`` entries
say which packages (and classes) the module holds. :func:`read_jmods` turns them into a
:class:`JdkIndex`, cached per JDK by the build. :func:`needed` maps a scan's
:class:`~.scan.Usage` through it:

* every referenced package of a JDK module;
* the module of every service type the app provides (``META-INF/services/java.sql.Driver``);
* modules only reflection or run-time lookups reveal: a JDK class named in a string literal
  (``Class.forName("javax.naming.InitialContext")``, for the modules in :data:`BY_NAME`),
  ``Charset.forName`` (``jdk.charsets``), locale-sensitive formatting (``jdk.localedata``), zip
  file systems (``jdk.zipfs``), and the elliptic-curve TLS provider (``jdk.crypto.ec``, always);
* ``[jvm] modules``, and every module for ``[jvm] runtime = "full"``.

jlink adds the modules these require. :func:`missing_packages` lists the packages of modules left
out, which the init uses to say which module an app that dies of a missing JDK class lacks.
"""

from __future__ import annotations

import difflib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, HostError
from .scan import Usage

#: Always linked when present: TLS to most servers needs the EC provider, found by no scan.
ALWAYS = ("java.base", "jdk.crypto.ec")
#: Modules added when a string literal names one of their classes (reflection, JNDI): small ones
#: only, since big ones (java.desktop) are named in deny-lists of libraries that never load them.
BY_NAME = ("java.naming", "java.sql", "java.management", "java.logging", "java.xml",
           "java.scripting", "jdk.unsupported", "jdk.management", "java.net.http",
           "java.security.jgss", "java.instrument", "java.sql.rowset")
#: JDK calls that load other modules' code at run time.
BY_CALL: dict[tuple[str, str], str] = {
    ("java/nio/charset/Charset", "forName"): "jdk.charsets",
    ("java/nio/charset/Charset", "availableCharsets"): "jdk.charsets",
    ("java/nio/charset/Charset", "isSupported"): "jdk.charsets",
    ("java/nio/file/FileSystems", "newFileSystem"): "jdk.zipfs",
    ("java/nio/file/FileSystems", "getFileSystem"): "jdk.zipfs",
    ("java/util/Locale", "forLanguageTag"): "jdk.localedata",
    ("java/util/Locale", "<init>"): "jdk.localedata",
    ("java/util/Locale", "of"): "jdk.localedata",
}
#: Packages whose use means locale data is read (formatting dates, numbers, messages).
BY_PACKAGE = {"java/text": "jdk.localedata", "java/time/format": "jdk.localedata"}


@dataclass(frozen=True)
class JdkIndex:
    """Which module holds each JDK package, and the classes of the :data:`BY_NAME` modules."""

    packages: dict[str, str]
    classes: dict[str, str]
    modules: tuple[str, ...]

    def to_json(self) -> str:
        return json.dumps({"packages": self.packages, "classes": self.classes,
                           "modules": list(self.modules)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> JdkIndex:
        data = json.loads(text)
        return cls(data["packages"], data["classes"], tuple(data["modules"]))


def read_jmods(jmods: Path) -> JdkIndex:
    """The index of the jmods in ``jmods`` (a JDK's ``jmods/`` directory)."""
    packages: dict[str, str] = {}
    classes: dict[str, str] = {}
    modules = []
    for jmod in sorted(jmods.glob("*.jmod")):
        module = jmod.name.removesuffix(".jmod")
        modules.append(module)
        try:
            with zipfile.ZipFile(jmod) as zf:  # zipfile skips the JM header before the zip
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise HostError(f"{jmod}: cannot read the jmod: {exc}") from None
        for name in names:
            if not name.startswith("classes/") or not name.endswith(".class"):
                continue
            cls = name[len("classes/"):-len(".class")]
            if "/" not in cls:
                continue  # module-info
            packages.setdefault(cls.rpartition("/")[0], module)
            if module in BY_NAME and "$" not in cls:
                classes[cls] = module
    if "java.base" not in modules:
        raise HostError(f"{jmods}: no java.base.jmod: the fetched JDK has no jmods")
    return JdkIndex(packages, classes, tuple(modules))


def needed(usage: Usage, index: JdkIndex, extra: tuple[str, ...] = (),
           full: bool = False) -> list[str]:
    """The modules to link for ``usage``, plus ``extra`` ([jvm] modules), sorted."""
    check_names(extra, index)
    if full:
        return sorted(index.modules)
    found = {m for m in ALWAYS if m in index.modules} | set(extra)
    for package in usage.packages:
        module = index.packages.get(package)
        if module:
            found.add(module)
        if package in BY_PACKAGE:
            found.add(BY_PACKAGE[package])
    for service in usage.services:
        module = index.packages.get(service.replace(".", "/").rpartition("/")[0])
        if module:
            found.add(module)
    for name in usage.names:
        module = index.classes.get(name.replace(".", "/"))
        if module:
            found.add(module)
    for call in usage.methods:
        if call in BY_CALL:
            found.add(BY_CALL[call])
    return sorted(m for m in found if m in index.modules)


def check_names(modules: tuple[str, ...], index: JdkIndex) -> None:
    """ConfigError for a [jvm] modules entry that is no module of this JDK."""
    for i, module in enumerate(modules):
        if module not in index.modules:
            close = difflib.get_close_matches(module, index.modules, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"jvm.modules[{i}]: {module} is not a module of this JDK{hint}")


def missing_packages(index: JdkIndex, linked: set[str]) -> str:
    """``package module`` lines (dotted packages) for every module not linked, sorted: what the
    init reads to name the module an app dies without."""
    lines = sorted(f"{p.replace('/', '.')} {m}" for p, m in index.packages.items()
                   if m not in linked)
    return "".join(line + "\n" for line in lines)
