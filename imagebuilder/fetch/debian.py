"""A verified view of one suite of a Debian archive.

The kernel and the userland of every image come from the Debian archive, so this is where trust
enters the build. The chain is apt's: ``InRelease`` must carry a good signature from a key in the
Debian archive keyring (checked with ``gpgv``, and only the text gpgv verified is parsed); it
lists the SHA-256 of each ``Packages`` index; each index lists the SHA-256 of each ``.deb``. Every
download is checked against the link above it before anything uses it.

``Archive`` answers "what is in the suite" (``packages``), "what must I install to get these"
(``resolve``) and "give me the verified bytes" (``fetch``). ``fetch_locked`` serves a build from
a lock file: with a warm cache it touches no network at all. The archive's text itself (Release
and Packages files, version order) is read by :mod:`imagebuilder.fetch.debindex`.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import tempfile
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING

from .. import proc, progress
from ..errors import FetchError, HostError, IntegrityError, NotFoundError
from ..fsutil import write_atomic
from . import http
from .debindex import Package, parse_packages, parse_release, providers_map
from .lock import LockEntry

if TYPE_CHECKING:  # imported by new_session: a warm build needs no session
    import requests

DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
USER_AGENT = "imagebuilder/0.1 (+python-requests)"


class SuiteNotFoundError(NotFoundError, FetchError):
    """The mirror has no such suite: usually a typo in ``[system] suite`` or a wrong mirror."""


class Archive:
    """One suite of a Debian mirror, verified against ``keyring``, cached under ``cache_dir``."""

    def __init__(
        self,
        mirror: str,
        suite: str,
        cache_dir: Path,
        *,
        keyring: Path = DEBIAN_KEYRING,
        arch: str = "amd64",
        components: tuple[str, ...] = ("main",),
        session: requests.Session | None = None,
    ) -> None:
        self.mirror = mirror.rstrip("/")
        self.suite = suite
        self.cache_dir = Path(cache_dir)
        self.keyring = Path(keyring)
        self.arch = arch
        self.components = tuple(components)
        self.session = session if session is not None else new_session()
        self._release: dict[str, tuple[str, int]] | None = None
        self._by_hash = False
        self._packages: dict[str, Package] | None = None
        self._providers: dict[str, list[str]] = {}
        #: The SHA-256 of InRelease as downloaded and its Date, once read (for provenance).
        self.inrelease: tuple[str, str] | None = None
        self._inrelease_sha256 = ""

    # -- the signed Release ---------------------------------------------------------------------

    def release(self) -> dict[str, tuple[str, int]]:
        """SHA-256 section of the verified InRelease: index path -> (sha256, size)."""
        if self._release is None:
            text = self._verified_inrelease()
            fields, self._release = parse_release(text)
            self.inrelease = (self._inrelease_sha256, fields.get("date", ""))
            self._check_release_fields(fields)
            self._by_hash = fields.get("acquire-by-hash", "").lower() == "yes"
        return self._release

    def _verified_inrelease(self) -> str:
        url = f"{self.mirror}/dists/{self.suite}/InRelease"
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.cache_dir, prefix=".inrelease-") as tmp:
            path = Path(tmp) / "InRelease"
            try:
                http.download(self.session, url, path, desc=f"{self.suite} InRelease")
            except http.NotOnMirrorError:
                raise SuiteNotFoundError(
                    f"suite '{self.suite}' not found on the mirror {self.mirror} "
                    f"(no {url}); check [system] suite or the mirror"
                ) from None
            text = self._gpgv(path)
            self._inrelease_sha256 = _sha256_file(path)
            return text

    def _gpgv(self, path: Path) -> str:
        """The text of the clear-signed ``path`` that gpgv verified against the keyring."""
        gpgv = proc.require("gpgv", "gpgv")
        if not self.keyring.is_file():
            raise HostError(
                f"keyring {self.keyring} not found: install it with "
                "'apt-get install debian-archive-keyring' or name another keyring"
            )
        result = proc.run(
            [gpgv, "--status-fd", "2", "--keyring", str(self.keyring), "--output", "-", str(path)],
            check=False,
        )
        status = result.stderr.decode(errors="replace")
        if not _good_signature(status):
            detail = " | ".join(
                line for line in status.splitlines() if not line.startswith("[GNUPG:]")
            )[-400:]
            raise IntegrityError(
                f"InRelease of {self.suite} from {self.mirror} has a bad signature "
                f"(checked with {self.keyring}); nothing from it was used: {detail}"
            )
        return result.stdout.decode("utf-8", errors="replace")

    def _check_release_fields(self, fields: dict[str, str]) -> None:
        names = {fields.get("suite"), fields.get("codename")}
        if self.suite not in names:
            raise IntegrityError(
                f"InRelease from {self.mirror}/dists/{self.suite} describes suite "
                f"'{fields.get('suite')}' (codename '{fields.get('codename')}'), "
                f"not '{self.suite}'; refusing it"
            )
        valid_until = fields.get("valid-until")
        if valid_until and _parse_date(valid_until) < datetime.now(UTC):
            raise IntegrityError(
                f"InRelease of {self.suite} from {self.mirror} expired on {valid_until}; "
                "the mirror is out of date: use another with --mirror"
            )

    # -- the Packages indices -------------------------------------------------------------------

    def packages(self) -> dict[str, Package]:
        """Every package of the suite's components for ``arch``, by name (newest version)."""
        if self._packages is None:
            packages: dict[str, Package] = {}
            for component in self.components:
                parse_packages(self._index(component), packages)
            self._packages = packages
            self._providers = providers_map(packages.values())
        return self._packages

    def providers(self, virtual: str) -> list[str]:
        """Names of the packages that provide ``virtual``, sorted."""
        self.packages()
        return list(self._providers.get(virtual, []))

    def _index(self, component: str) -> bytes:
        """The uncompressed, verified Packages index of ``component``."""
        release = self.release()
        base = f"{component}/binary-{self.arch}/Packages"
        plain = release.get(base)
        if plain is not None:
            cached = _read_verified(self._index_path(plain[0]), plain[0])
            if cached is not None:
                return cached
        for suffix, decompress in ((".xz", lzma.decompress), (".gz", gzip.decompress)):
            if base + suffix in release:
                sha256, size = release[base + suffix]
                packed = self._download_index(base + suffix, sha256, size)
                data = self._unpack(packed, decompress, plain)
                return data
        if plain is not None:
            return self._download_index(base, *plain).read_bytes()
        raise FetchError(
            f"suite '{self.suite}' on {self.mirror} has no index for {component}/binary-"
            f"{self.arch}; check the component and architecture"
        )

    def _unpack(
        self, packed: Path, decompress: Callable[[bytes], bytes], plain: tuple[str, int] | None
    ) -> bytes:
        """Decompress a downloaded index; keep the plain text in the cache when it verifies."""
        try:
            data = decompress(packed.read_bytes())
        except (lzma.LZMAError, OSError, EOFError) as exc:
            packed.unlink(missing_ok=True)
            raise IntegrityError(f"Packages index {packed} does not decompress: {exc}") from None
        if plain is not None:
            actual = hashlib.sha256(data).hexdigest()
            if actual != plain[0]:
                packed.unlink(missing_ok=True)
                raise IntegrityError(
                    f"uncompressed Packages index of {self.suite} has sha256 {actual}, "
                    f"expected {plain[0]}; it was discarded"
                )
            _store(self._index_path(plain[0]), data)
            packed.unlink(missing_ok=True)
        return data

    def _index_path(self, sha256: str) -> Path:
        return self.cache_dir / "indices" / sha256

    def _download_index(self, rel: str, sha256: str, size: int) -> Path:
        dest = self._index_path(sha256)
        if _read_verified(dest, sha256) is not None:
            return dest
        url = f"{self.mirror}/dists/{self.suite}/{rel}"
        desc = f"{self.suite} {rel}"
        if self._by_hash:
            directory = rel.rsplit("/", 1)[0]
            by_hash = f"{self.mirror}/dists/{self.suite}/{directory}/by-hash/SHA256/{sha256}"
            try:
                return http.download(
                    self.session, by_hash, dest, sha256=sha256, size=size, desc=desc
                )
            except http.NotOnMirrorError:
                pass  # a mirror that does not keep by-hash files: use the plain name
        return http.download(self.session, url, dest, sha256=sha256, size=size, desc=desc)

    # -- dependency resolution ------------------------------------------------------------------

    def resolve(
        self, roots: list[str], *, follow: Callable[[Package], bool] = lambda p: True
    ) -> list[Package]:
        """``roots`` plus, recursively, their (Pre-)Depends that satisfy ``follow``; by name."""
        self.packages()
        chosen: dict[str, Package] = {}
        provided: dict[str, Package] = {}
        queue: deque[Package] = deque()

        def take(pkg: Package) -> None:
            chosen[pkg.name] = pkg
            for virtual in pkg.provides:
                provided.setdefault(virtual, pkg)
            queue.append(pkg)

        for name in roots:
            pkg = self._pick((name,), chosen, provided)
            if pkg is None:
                raise NotFoundError(
                    f"package '{name}' not found in Debian {self.suite} "
                    f"({', '.join(self.components)}, {self.arch})"
                )
            if pkg.name not in chosen:
                take(pkg)
        while queue:
            parent = queue.popleft()
            for group in parent.depends:
                dep = self._pick(group, chosen, provided)
                if dep is None:
                    progress.current().warn(
                        f"{parent.name}: no package satisfies '{' | '.join(group)}'")
                elif dep.name not in chosen and follow(dep):
                    take(dep)
        return sorted(chosen.values(), key=lambda p: p.name)

    def _pick(
        self, group: tuple[str, ...], chosen: dict[str, Package], provided: dict[str, Package]
    ) -> Package | None:
        """The package that satisfies one alternative group, preferring what is already in."""
        for name in group:
            if name in chosen:
                return chosen[name]
            if name in provided:
                return provided[name]
        packages = self._packages or {}
        for name in group:
            if name in packages:
                return packages[name]
            providers = self._providers.get(name)
            if providers:
                return packages[providers[0]]
        return None

    # -- the packages themselves ----------------------------------------------------------------

    def fetch(self, pkg: Package) -> Path:
        """The verified ``.deb`` of ``pkg`` in the cache, downloaded if it is not there yet."""
        return _fetch_deb(
            self.cache_dir,
            self.mirror,
            pkg.filename,
            pkg.sha256,
            pkg.size,
            self.session,
            pkg.name,
        )


def fetch_locked(
    cache_dir: Path,
    mirror: str | Callable[[], str],
    entry: LockEntry,
    session: requests.Session | None = None,
) -> Path:
    """The verified ``.deb`` a lock entry pins; no network when the cache already has it."""
    return _fetch_deb(
        Path(cache_dir),
        mirror,
        entry.filename,
        entry.sha256,
        entry.size,
        session,
        entry.name,
    )


def deb_path(cache_dir: Path, sha256: str) -> Path:
    """Where the cache keeps the ``.deb`` whose SHA-256 is ``sha256``."""
    return Path(cache_dir) / "debs" / f"{sha256}.deb"


def new_session() -> requests.Session:
    """A requests session identifying imagebuilder to the mirror."""
    import requests

    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    return session


def _fetch_deb(
    cache_dir: Path,
    mirror: str | Callable[[], str],
    filename: str,
    sha256: str,
    size: int,
    session: requests.Session | None,
    name: str,
) -> Path:
    dest = deb_path(cache_dir, sha256)
    if dest.is_file():
        if _sha256_file(dest) == sha256:
            return dest
        progress.current().warn(f"cached {dest} is damaged; fetching it again")
        dest.unlink()
    if filename.startswith("/") or ".." in filename.split("/"):
        raise IntegrityError(f"refusing pool path outside the archive for {name}: {filename}")
    base = (mirror() if callable(mirror) else mirror).rstrip("/")
    return http.download(
        session if session is not None else new_session(),
        f"{base}/{filename}",
        dest,
        sha256=sha256,
        size=size,
        desc=name,
    )


# -- small helpers ------------------------------------------------------------------------------


def _good_signature(status: str) -> bool:
    """apt's rule: at least one valid signature and no bad one (unknown keys are ignored)."""
    keywords = {
        line.split()[1]
        for line in status.splitlines()
        if line.startswith("[GNUPG:] ") and len(line.split()) > 1
    }
    return "VALIDSIG" in keywords and "GOODSIG" in keywords and "BADSIG" not in keywords


def _parse_date(text: str) -> datetime:
    try:
        parsed = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return datetime.max.replace(tzinfo=UTC)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def _store(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data, mode=0o644)


def _read_verified(path: Path, sha256: str) -> bytes | None:
    """The bytes of ``path`` if it exists and hashes to ``sha256`` (else it is removed)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if hashlib.sha256(data).hexdigest() == sha256:
        return data
    path.unlink(missing_ok=True)
    return None
