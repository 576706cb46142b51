"""The lock file: the exact packages a build resolved to.

Resolving package names against a moving archive gives different answers on different days. The
lock records, for one suite and one set of root packages, every package's version, pool path,
size and SHA-256, so that a rebuild installs exactly the same bytes and, with a warm cache, needs
no network at all. It is TOML, written by hand in a fixed order so that it diffs cleanly and the
same resolution always gives the same file.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..fsutil import write_atomic

LOCK_VERSION = 1
HEADER = (
    "# imagebuilder lock file: the exact Debian packages this image is built from.\n"
    "# Generated; do not edit. Delete it to re-resolve against the archive.\n"
)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class LockEntry:
    """One pinned package: where it lives in the pool and what its bytes must hash to."""

    name: str
    version: str
    filename: str
    sha256: str
    size: int


@dataclass
class Lock:
    """A resolution of ``roots`` (purpose -> root package names) in ``suite``."""

    suite: str
    roots: dict[str, list[str]]
    packages: list[LockEntry] = field(default_factory=list)
    #: purpose -> the names of every package resolved for it (roots and followed dependencies).
    sets: dict[str, list[str]] = field(default_factory=dict)
    #: The signed index the resolution last read: (SHA-256 of the suite's InRelease as
    #: downloaded, its Date field); None in a lock written before imagebuilder recorded it.
    archive: tuple[str, str] | None = None

    @classmethod
    def load(cls, path: Path) -> Lock | None:
        """The lock at ``path``, or None if there is none; ConfigError if it is malformed."""
        try:
            text = path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            return None
        except UnicodeDecodeError:
            raise _malformed(path, "it is not UTF-8 text") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise _malformed(path, f"invalid TOML ({exc})") from None
        except RecursionError:
            raise _malformed(path, "invalid TOML (nested too deeply)") from None
        return _from_toml(path, data)

    def write(self, path: Path) -> None:
        """Write the lock to ``path`` atomically (:func:`imagebuilder.fsutil.write_atomic`)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, self.dumps().encode("utf-8"), mode=0o644)

    def dumps(self) -> str:
        """The lock as deterministic TOML text."""
        lines = [HEADER, f"version = {LOCK_VERSION}", f"suite = {_str(self.suite)}"]
        if self.archive is not None:
            lines += ["", "[archive]", f"inrelease_sha256 = {_str(self.archive[0])}",
                      f"date = {_str(self.archive[1])}"]
        lines += ["", "[roots]"]
        for purpose in sorted(self.roots):
            names = ", ".join(_str(name) for name in self.roots[purpose])
            lines.append(f"{_key(purpose)} = [{names}]")
        if self.sets:
            lines += ["", "[sets]"]
            for purpose in sorted(self.sets):
                names = ", ".join(_str(name) for name in sorted(self.sets[purpose]))
                lines.append(f"{_key(purpose)} = [{names}]")
        for entry in sorted(self.packages, key=lambda e: e.name):
            lines += [
                "",
                "[[package]]",
                f"name = {_str(entry.name)}",
                f"version = {_str(entry.version)}",
                f"filename = {_str(entry.filename)}",
                f"sha256 = {_str(entry.sha256)}",
                f"size = {entry.size}",
            ]
        return "\n".join(lines) + "\n"

    def matches(self, suite: str, roots: dict[str, list[str]], *, derived: tuple[str, ...] = ()
                ) -> bool:
        """True if this lock resolved the same root packages in the same suite, not counting
        the ``derived`` purposes (resolved later in the build, from what it found)."""
        mine = {purpose: names for purpose, names in self.roots.items() if purpose not in derived}
        return self.suite == suite and _normal_roots(mine) == _normal_roots(roots)


def _normal_roots(roots: dict[str, list[str]]) -> dict[str, list[str]]:
    return {purpose: sorted(set(names)) for purpose, names in roots.items() if names}


def _malformed(path: Path, what: str) -> ConfigError:
    return ConfigError(f"lock file {path} is malformed: {what}; delete it to re-resolve")


def _from_toml(path: Path, data: dict[str, Any]) -> Lock:
    unknown = set(data) - {"version", "suite", "archive", "roots", "sets", "package"}
    if unknown:
        raise _malformed(path, f"unknown key(s) {', '.join(sorted(unknown))}")
    if data.get("version", LOCK_VERSION) != LOCK_VERSION:
        raise _malformed(path, f"unsupported version {data['version']!r} (expected 1)")
    suite = data.get("suite")
    if not isinstance(suite, str) or not suite:
        raise _malformed(path, "'suite' must be a non-empty string")
    roots = _roots_from_toml(path, data.get("roots", {}))
    tables = data.get("package", [])
    if not isinstance(tables, list):
        raise _malformed(path, "'package' must be an array of tables ([[package]])")
    packages = [_entry_from_toml(path, i, table) for i, table in enumerate(tables, 1)]
    names = [p.name for p in packages]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise _malformed(path, f"package(s) listed twice: {', '.join(duplicates)}")
    sets = _roots_from_toml(path, data.get("sets", {}), "sets")
    missing = sorted({n for names in sets.values() for n in names} - set(names))
    if missing:
        listed = ", ".join(missing)
        raise _malformed(path, f"sets name packages with no [[package]] entry: {listed}")
    return Lock(suite=suite, roots=roots, packages=packages, sets=sets,
                archive=_archive_from_toml(path, data.get("archive")))


def _archive_from_toml(path: Path, table: Any) -> tuple[str, str] | None:
    if table is None:
        return None
    if (not isinstance(table, dict) or set(table) != {"inrelease_sha256", "date"}
            or not isinstance(table["inrelease_sha256"], str)
            or not _SHA256.fullmatch(table["inrelease_sha256"])
            or not isinstance(table["date"], str) or "\n" in table["date"]
            or len(table["date"]) > 64):
        raise _malformed(path, "[archive] must hold inrelease_sha256 (64 lower-case hex "
                               "digits) and date (the InRelease's Date) only")
    return table["inrelease_sha256"], table["date"]


def _roots_from_toml(path: Path, roots: Any, key: str = "roots") -> dict[str, list[str]]:
    if not isinstance(roots, dict):
        raise _malformed(path, f"'{key}' must be a table of purpose = [package names]")
    for purpose, names in roots.items():
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise _malformed(path, f"{key}.{purpose} must be a list of package names")
    return {purpose: list(names) for purpose, names in roots.items()}


def _entry_from_toml(path: Path, index: int, table: Any) -> LockEntry:
    where = f"[[package]] #{index}"
    if not isinstance(table, dict):
        raise _malformed(path, f"{where} is not a table")
    fields = {"name": str, "version": str, "filename": str, "sha256": str, "size": int}
    missing = [key for key in fields if key not in table]
    if missing:
        raise _malformed(path, f"{where} lacks {', '.join(missing)}")
    unknown = set(table) - set(fields)
    if unknown:
        raise _malformed(path, f"{where} has unknown key(s) {', '.join(sorted(unknown))}")
    for key, kind in fields.items():
        value = table[key]
        if not isinstance(value, kind) or isinstance(value, bool) or value in ("", None):
            raise _malformed(path, f"{where}: '{key}' must be a {kind.__name__}")
    if not _SHA256.fullmatch(table["sha256"]):
        raise _malformed(path, f"{where}: sha256 must be 64 lower-case hex digits")
    if table["size"] < 0:
        raise _malformed(path, f"{where}: size must not be negative")
    if table["filename"].startswith("/") or ".." in table["filename"].split("/"):
        raise _malformed(path, f"{where}: filename must be a pool path inside the archive")
    return LockEntry(**table)


def _str(value: str) -> str:
    """``value`` as a TOML basic string."""
    out = []
    for char in value:
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _str(key)
