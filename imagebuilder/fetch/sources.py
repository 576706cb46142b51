"""Find the Debian archive mirror the host already uses.

imagebuilder never hard-codes a mirror: by default it takes the one the host's apt is configured
with, so a build works wherever apt works (behind a proxy mirror, on an air-gapped network with a
local mirror, ...). This module reads both apt formats, deb822 ``*.sources`` files and one-line
``sources.list`` entries, and picks the first entry that points at the main Debian archive.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import UserError

NO_MIRROR = (
    "no Debian mirror found in the apt configuration (/etc/apt/sources.list*); "
    "pass --mirror URL or set [system] mirror"
)


def mirror_from_apt(root: Path = Path("/")) -> str:
    """The base URL of the main Debian archive from the apt configuration under ``root``."""
    for uri, suites in _entries(root / "etc/apt"):
        if _is_main_archive(uri, suites):
            return uri.rstrip("/")
    raise UserError(NO_MIRROR)


def _entries(apt_dir: Path) -> Iterator[tuple[str, list[str]]]:
    """(URI, suites) of every enabled binary ``deb`` source, in the order apt reads them."""
    yield from _one_line_file(apt_dir / "sources.list")
    parts = apt_dir / "sources.list.d"
    files = sorted(parts.iterdir()) if parts.is_dir() else []
    for path in files:
        if path.suffix == ".list":
            yield from _one_line_file(path)
        elif path.suffix == ".sources":
            yield from _deb822_file(path)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return ""


def _one_line_file(path: Path) -> Iterator[tuple[str, list[str]]]:
    for line in _read(path).splitlines():
        entry = parse_one_line(line)
        if entry is not None:
            yield entry


def parse_one_line(line: str) -> tuple[str, list[str]] | None:
    """(URI, [suite]) of a one-line ``deb [options] URI suite [components]`` entry, else None."""
    line = line.split("#", 1)[0].strip()
    if not line.startswith("deb ") and not line.startswith("deb\t"):
        return None
    rest = line[3:].strip()
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            return None
        rest = rest[end + 1 :]
    words = rest.split()
    if len(words) < 2:
        return None
    return words[0], [words[1]]


def _deb822_file(path: Path) -> Iterator[tuple[str, list[str]]]:
    for stanza in parse_deb822(_read(path)):
        if stanza.get("enabled", "yes").strip().lower() in ("no", "false", "0"):
            continue
        if "deb" not in stanza.get("types", "").split():
            continue
        suites = stanza.get("suites", "").split()
        for uri in stanza.get("uris", "").split():
            yield uri, suites


def parse_deb822(text: str) -> list[dict[str, str]]:
    """Stanzas of a deb822 text as dicts with lower-cased field names; comments dropped."""
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = ""
    for raw in text.splitlines():
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if current:
                stanzas.append(current)
            current, key = {}, ""
        elif raw[0] in " \t":
            if key:
                current[key] += "\n" + raw.strip()
        elif ":" in raw:
            name, value = raw.split(":", 1)
            key = name.strip().lower()
            current[key] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


def _is_main_archive(uri: str, suites: list[str]) -> bool:
    """True for an http(s) URI of the main archive (not the security archive)."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    if parts.path.rstrip("/").endswith("debian-security"):
        return False
    usable = [s for s in suites if not s.endswith("-security") and not s.endswith("/updates")]
    return bool(usable)
