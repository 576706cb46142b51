"""Which Debian packages an image is made of, pinned by the lock file.

Each part of the image (kernel, base, jvm, the app's extra packages) has root packages and a rule
for which of their dependencies to follow: a kernel needs none of its package's tools (kmod,
initramfs-tools), the JVM needs its shared libraries but not the desktop, smart-card or NSS
libraries its package also depends on. The result is written to ``imagebuilder.lock`` beside the
config; while the lock matches the config, a build reads it and needs no archive index at all,
and with the .debs in the cache, no network.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..apps import war
from ..config.parse import Config
from ..errors import FetchError
from ..fetch.deb import list_deb
from ..fetch.debian import Archive, Package, fetch_locked
from ..fetch.http import NotOnMirrorError
from ..fetch.lock import Lock, LockEntry
from ..fetch.sources import mirror_from_apt
from ..layers import natives
from ..layers.hardware import Selection

if TYPE_CHECKING:  # fetch.debian.new_session imports it when a fetch needs a session
    import requests

#: Shared libraries the JVM's ELF files need (DT_NEEDED closure of a jlink runtime).
JVM_LIBRARIES = ("libc6", "libgcc-s1", "libstdc++6", "zlib1g")
#: Holds the C.UTF-8 locale (``usr/lib/locale/C.utf8``): without it the JVM decodes the
#: environment, arguments and file names as ASCII, whatever ``LANG`` says.
LOCALE_PACKAGE = "libc-bin"
BASE_PACKAGES = ("busybox-static",)
#: Parts the build resolves once it knows the linked modules (not from the config): the
#: libraries and fonts of the JVM's natives. The lock pins them like the rest.
NATIVES = "natives"
DERIVED = (NATIVES,)
#: The archive component that holds Debian's firmware packages (since bookworm).
FIRMWARE_COMPONENT = "non-free-firmware"


def jdk_package(version: int) -> str:
    return f"openjdk-{version}-jdk-headless"


def roots(cfg: Config, drivers: Selection) -> dict[str, list[str]]:
    """The root packages of each part of the image."""
    parts = {
        "kernel": [drivers.kernel.package],
        "base": list(BASE_PACKAGES),
        "jvm": [jdk_package(cfg.jvm.version), *JVM_LIBRARIES, LOCALE_PACKAGE],
    }
    if cfg.app.packages:
        parts["packages"] = sorted(cfg.app.packages)
    if drivers.firmware_packages:
        parts["firmware"] = list(drivers.firmware_packages)
    if war.is_war(cfg.app.path):
        parts["tomcat"] = list(war.PACKAGES)
    return parts


def _follow(part: str) -> Callable[[Package], bool]:
    if part == "kernel":
        return lambda p: p.name.startswith("linux-image-")
    if part in ("base", "firmware"):
        return lambda p: False
    if part == "tomcat":
        # Its Java libraries (the Eclipse compiler Jasper compiles JSPs with), not a JRE.
        return lambda p: p.name.startswith("lib") and p.name.endswith("-java")
    if part == "jvm":
        return lambda p: (p.name.startswith("openjdk-") or p.name in JVM_LIBRARIES
                          or p.name == LOCALE_PACKAGE)
    if part == NATIVES:
        # Shared libraries and fonts; not debconf and the tools a library package may pull in.
        return lambda p: (p.name.startswith(("lib", "fonts-"))
                          or p.name in natives.FONT_PACKAGES)
    # The app's packages come with their whole run-time closure.
    return lambda p: True


@dataclass
class Resolution:
    """The pinned packages of each part, and where to fetch them from."""

    parts: dict[str, list[LockEntry]]
    mirror: Callable[[], str]
    cache_dir: Path
    session: requests.Session | None = None
    from_lock: bool = True
    lock_path: Path | None = None
    suite: str = ""
    roots: dict[str, list[str]] = field(default_factory=dict)
    #: The index the lock says it was resolved against (see :meth:`snapshot`).
    locked_snapshot: tuple[str, str] | None = None
    _archive: Archive | None = None

    def debs(self, part: str) -> list[Path]:
        """The verified .deb files of ``part`` (downloaded only if the cache lacks them)."""
        entries = self.parts.get(part, [])
        if not entries:
            return []
        # The mirror is a callable: a cached .deb needs none, so the apt configuration is read
        # only when something must really be downloaded.
        paths = []
        for entry in entries:
            try:
                paths.append(fetch_locked(self.cache_dir, self.mirror, entry, self.session))
            except NotOnMirrorError:
                if not self.from_lock:
                    raise
                raise FetchError(
                    f"{entry.name} {entry.version}, pinned by {self.lock_path}, is no longer on "
                    "the mirror (the suite was updated): delete the lock file to resolve the "
                    "current packages, or pass --mirror for an archive that keeps old versions"
                ) from None
        return paths

    def key(self, part: str) -> list[str]:
        """The part's identity for cache keys: its packages' SHA-256s."""
        return sorted(e.sha256 for e in self.parts.get(part, []))

    def snapshot(self) -> tuple[str, str] | None:
        """(SHA-256, Date) of the suite's InRelease this resolution read, else the one its lock
        records (None for a lock from before imagebuilder recorded it)."""
        read = None if self._archive is None else self._archive.inrelease
        return read or self.locked_snapshot

    def archive(self) -> Archive:
        """The suite's index, read (and verified) on first use only."""
        if self._archive is None:
            self._archive = Archive(self.mirror(), self.suite, self.cache_dir,
                                    session=self.session)
        return self._archive

    def _files(self, part: str) -> Callable[[str], list[str]]:
        by_name = {e.name: e for e in self.parts.get(part, [])}
        return lambda name: list_deb(fetch_locked(self.cache_dir, self.mirror, by_name[name],
                                                  self.session))

    def providers(self, missing: Iterable[str], owners: str) -> dict[str, str]:
        """soname -> the package providing it: first among the packages the lock already pins
        for the natives (no archive index needed), then among the Depends and Recommends of the
        packages of ``owners``, as dpkg-shlibdeps would have listed it there."""
        missing = sorted(missing)
        pinned = [e.name for e in self.parts.get(NATIVES, [])]
        chosen = natives.choose_providers(missing, pinned, self._files(NATIVES))
        rest = [m for m in missing if m not in chosen]
        if rest:
            archive = self.archive()
            index = archive.packages()
            candidates: dict[str, None] = {}
            for entry in self.parts.get(owners, []):
                pkg = index.get(entry.name)
                for group in (pkg.depends + pkg.recommends) if pkg else ():
                    for name in group:
                        for real in [name] if name in index else archive.providers(name):
                            candidates.setdefault(real, None)
            chosen.update(natives.choose_providers(
                rest, list(candidates), lambda name: list_deb(archive.fetch(index[name]))))
        return chosen

    def suggest(self, soname: str) -> str | None:
        """A package of the suite whose files hold ``soname`` (by Debian's naming policy), for
        an error message; None if none is found."""
        index = self.archive().packages()
        base = natives.policy_name(soname)
        for name in (base, f"{base}t64"):
            if name in index and soname in natives.library_files(
                    list_deb(self.archive().fetch(index[name]))):
                return name
        return None

    def set_part(self, part: str, roots: list[str]) -> None:
        """Pin the derived ``part`` for ``roots``: from the lock if it resolved the same roots,
        else from the archive (with their library closure), and record it in the lock."""
        roots = sorted(set(roots))
        if self.roots.get(part, []) == roots and (part in self.parts or not roots):
            return
        if roots:
            resolved = self.archive().resolve(roots, follow=_follow(part))
            self.parts[part] = [p.lock_entry() for p in resolved]
            self.roots[part] = roots
        else:
            self.parts.pop(part, None)
            self.roots.pop(part, None)
        if self.lock_path is not None:
            _lock(self.suite, self.roots, self.parts, self.snapshot()).write(self.lock_path)


def resolve(cfg: Config, drivers: Selection, cache_dir: Path, *, mirror: str | None = None,
            update: bool = False) -> Resolution:
    """The packages of the image, from the lock file if it matches, else from the archive.

    Firmware packages come from the archive's non-free-firmware component, whose index is
    verified against the same signed Release as main's.
    """
    wanted = roots(cfg, drivers)
    chosen_mirror: list[str] = []

    def get_mirror() -> str:
        if not chosen_mirror:
            chosen_mirror.append(mirror or cfg.system.mirror or mirror_from_apt())
        return chosen_mirror[0]

    lock = None if update else Lock.load(cfg.lock_path)
    if (lock is not None and lock.matches(cfg.system.suite, wanted, derived=DERIVED)
            and lock.sets):
        by_name = {e.name: e for e in lock.packages}
        parts = {part: [by_name[n] for n in names] for part, names in lock.sets.items()}
        return Resolution(parts, get_mirror, cache_dir, lock_path=cfg.lock_path,
                          suite=cfg.system.suite, roots=dict(lock.roots),
                          locked_snapshot=lock.archive)
    components = ("main", FIRMWARE_COMPONENT) if "firmware" in wanted else ("main",)
    archive = Archive(get_mirror(), cfg.system.suite, cache_dir, components=components)
    parts = {part: [p.lock_entry() for p in archive.resolve(names, follow=_follow(part))]
             for part, names in wanted.items()}
    _lock(cfg.system.suite, wanted, parts, archive.inrelease).write(cfg.lock_path)
    return Resolution(parts, get_mirror, cache_dir, archive.session, from_lock=False,
                      lock_path=cfg.lock_path, suite=cfg.system.suite, roots=dict(wanted),
                      _archive=archive)


def _lock(suite: str, roots: dict[str, list[str]], parts: dict[str, list[LockEntry]],
          archive: tuple[str, str] | None) -> Lock:
    everything = {e.name: e for entries in parts.values() for e in entries}
    return Lock(
        suite=suite, roots=roots, archive=archive,
        packages=sorted(everything.values(), key=lambda e: e.name),
        sets={part: [e.name for e in entries] for part, entries in parts.items()},
    )
