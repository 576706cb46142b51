"""A throwaway signed Debian archive served over HTTP on loopback, for the fetch tests.

The archive is real in every way that matters to the fetcher: ``.deb`` files built with
``dpkg-deb``, a ``Packages`` index (plain and xz), and a ``Release`` clear-signed into
``InRelease`` by a freshly generated GPG key exported to a keyring file ``gpgv`` reads. The server
has hooks to misbehave: serve other bytes for a path, answer 503 the first N times, cut a body
off half-way, ignore Range requests. It records every request so tests can assert on them.

Test modules import the fixtures from here: ``from archive_fixture import ...``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from imagebuilder.fetch import http

SUITE = "testsuite"
CODENAME = "fakecodename"


# -- GPG ----------------------------------------------------------------------------------------


@dataclass
class GpgKey:
    """A signing key in its own GPG home, and a keyring file with its public half."""

    homedir: Path
    keyring: Path

    def gpg(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [
                "gpg",
                "--batch",
                "--homedir",
                str(self.homedir),
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
                *args,
            ],
            check=True,
            capture_output=True,
        )

    def clearsign(self, source: Path, dest: Path) -> None:
        dest.unlink(missing_ok=True)
        self.gpg("--digest-algo", "SHA256", "--clearsign", "--output", str(dest), str(source))

    def close(self) -> None:
        subprocess.run(
            ["gpgconf", "--homedir", str(self.homedir), "--kill", "gpg-agent"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(self.homedir, ignore_errors=True)


def make_gpg_key(workdir: Path, uid: str = "Test Archive <t@example.invalid>") -> GpgKey:
    """Generate an ed25519 signing key under ``workdir`` and export its keyring."""
    if shutil.which("gpg") is None:
        pytest.skip("gpg is not installed (apt-get install gnupg)")
    # Not below workdir: gpg-agent's socket lives in the home, and a socket's path is limited to
    # 107 bytes, which pytest-xdist's deeper temporary directories pass.
    workdir.mkdir(parents=True, exist_ok=True)
    homedir = Path(tempfile.mkdtemp(prefix="gpg-"))
    key = GpgKey(homedir, workdir / "keyring.gpg")
    key.gpg("--quick-gen-key", uid, "ed25519", "sign", "never")
    key.keyring.write_bytes(key.gpg("--export").stdout)
    return key


# -- .deb files ---------------------------------------------------------------------------------


@dataclass
class DebSpec:
    """What to put in a test package."""

    name: str
    version: str = "1.0"
    arch: str = "amd64"
    depends: str = ""
    pre_depends: str = ""
    provides: str = ""
    recommends: str = ""
    files: dict[str, bytes] = field(default_factory=dict)  # path -> content
    modes: dict[str, int] = field(default_factory=dict)  # path -> mode
    symlinks: dict[str, str] = field(default_factory=dict)  # path -> target
    hardlinks: dict[str, str] = field(default_factory=dict)  # path -> existing file path
    compression: str = "xz"


def build_deb(workdir: Path, spec: DebSpec) -> Path:
    """Build ``spec`` with dpkg-deb; return the .deb path."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed")
    tree = workdir / f"tree-{spec.name}-{spec.version}"
    (tree / "DEBIAN").mkdir(parents=True)
    control = [
        f"Package: {spec.name}",
        f"Version: {spec.version}",
        f"Architecture: {spec.arch}",
        "Maintainer: Test <t@example.invalid>",
    ]
    for key, value in (
        ("Pre-Depends", spec.pre_depends),
        ("Depends", spec.depends),
        ("Provides", spec.provides),
        ("Recommends", spec.recommends),
    ):
        if value:
            control.append(f"{key}: {value}")
    control.append(f"Description: test package {spec.name}\n a package for the fetch tests")
    (tree / "DEBIAN/control").write_text("\n".join(control) + "\n")
    for rel, content in spec.files.items():
        path = tree / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(spec.modes.get(rel, 0o644))
    for rel, target in spec.symlinks.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, tree / rel)
    for rel, existing in spec.hardlinks.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        os.link(tree / existing, tree / rel)
    upstream = spec.version.split(":", 1)[-1]  # like the pool, file names carry no epoch
    out = workdir / f"{spec.name}_{upstream}_{spec.arch}.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", f"-Z{spec.compression}", "--build", str(tree), str(out)],
        check=True,
        capture_output=True,
    )
    return out


def ar_archive(members: list[tuple[str, bytes]]) -> bytes:
    """An ``ar`` archive (the .deb container) of ``members``, for hand-made bad packages."""
    out = io.BytesIO()
    out.write(b"!<arch>\n")
    for name, data in members:
        header = (f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}").encode() + b"`\n"
        out.write(header + data + (b"\n" if len(data) % 2 else b""))
    return out.getvalue()


def tar_bytes(entries: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> bytes:
    """An uncompressed tar of ``entries`` (regular members take their bytes from ``data``)."""
    data = data or {}
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info in entries:
            body = data.get(info.name)
            if body is not None:
                info.size = len(body)
            tar.addfile(info, io.BytesIO(body) if body is not None else None)
    return out.getvalue()


def handmade_deb(
    path: Path, entries: list[tarfile.TarInfo], data: dict[str, bytes] | None = None
) -> Path:
    """A .deb whose data.tar.xz holds exactly ``entries`` (dpkg-deb would refuse some)."""
    control = tar_bytes([tarfile.TarInfo("./control")], {"./control": b"Package: x\n"})
    path.write_bytes(
        ar_archive(
            [
                ("debian-binary", b"2.0\n"),
                ("control.tar.gz", gzip.compress(control)),
                ("data.tar.xz", lzma.compress(tar_bytes(entries, data))),
            ]
        )
    )
    return path


# -- the archive tree ---------------------------------------------------------------------------


def default_specs() -> list[DebSpec]:
    """The test archive: a small dependency graph with alternatives, virtuals and an old copy."""
    return [
        DebSpec(
            "hello",
            "2.10-1",
            pre_depends="base-lib",
            depends="libgreet (>= 1.0) | libnope, libnope2 | mail-agent, docs-pkg, "
            "python3:any (>= 3.11)",
            files={
                "usr/bin/hello": b"#!/bin/sh\necho hello\n",
                "etc/hello.conf": b"greeting\n",
                "usr/share/doc/hello/README": b"read me\n",
            },
            modes={"usr/bin/hello": 0o755, "etc/hello.conf": 0o600},
            symlinks={"usr/bin/hi": "/usr/bin/hello", "usr/bin/hey": "hello"},
            hardlinks={"usr/bin/hello-again": "usr/bin/hello"},
        ),
        DebSpec("libgreet", "1.0-1", files={"usr/lib/libgreet.so.1": b"old"}),
        DebSpec(
            "libgreet",
            "1:0.9-1",
            depends="base-lib",
            files={"usr/lib/libgreet.so.1": b"\x7fELF new"},
            compression="zstd",
        ),
        DebSpec("base-lib", "3.0", arch="all", files={"usr/lib/base": b"base"}),
        DebSpec("tiny-mta", "0.1", provides="mail-agent (= 0.1)", files={"usr/sbin/mta": b"m"}),
        DebSpec("other-mta", "0.2", provides="mail-agent", files={"usr/sbin/other": b"o"}),
        DebSpec(
            "docs-pkg",
            "1",
            arch="all",
            depends="docs-extra",
            files={"usr/share/doc/docs-pkg/x": b"doc"},
        ),
        DebSpec("docs-extra", "1", arch="all", files={"usr/share/doc/docs-extra/y": b"more"}),
        DebSpec("python3", "3.13.5-1", files={"usr/bin/python3": b"py"}),
    ]


@dataclass
class ArchiveTree:
    """A built archive: ``root`` is what the server serves (``dists/``, ``pool/``)."""

    root: Path
    key: GpgKey
    debs: dict[tuple[str, str], Path]  # (name, version) -> path under root
    suite: str = SUITE

    def rel(self, name: str, version: str) -> str:
        return self.debs[(name, version)].relative_to(self.root).as_posix()

    def sha256(self, name: str, version: str) -> str:
        return hashlib.sha256(self.debs[(name, version)].read_bytes()).hexdigest()

    @property
    def dists(self) -> Path:
        return self.root / "dists" / self.suite


def build_archive(
    workdir: Path,
    key: GpgKey,
    specs: list[DebSpec] | None = None,
    compressions: tuple[str, ...] = ("xz",),
    release_fields: tuple[str, ...] = (),
    by_hash: bool = False,
) -> ArchiveTree:
    """Build debs, Packages (plain and compressed), Release and InRelease under ``workdir``."""
    root = workdir / "archive"
    build = workdir / "build"
    build.mkdir(parents=True)
    debs: dict[tuple[str, str], Path] = {}
    stanzas = []
    for spec in specs if specs is not None else default_specs():
        built = build_deb(build, spec)
        pool = root / "pool/main" / spec.name[0] / spec.name
        pool.mkdir(parents=True, exist_ok=True)
        deb = Path(shutil.move(built, pool / built.name))
        debs[(spec.name, spec.version)] = deb
        stanzas.append(_stanza(spec, deb.relative_to(root).as_posix(), deb.read_bytes()))
    tree = ArchiveTree(root, key, debs)
    write_indices(tree, "\n".join(stanzas).encode(), compressions, release_fields, by_hash)
    return tree


def _stanza(spec: DebSpec, filename: str, data: bytes) -> str:
    lines = [
        f"Package: {spec.name}",
        f"Version: {spec.version}",
        "Installed-Size: 1",
        "Maintainer: Test <t@example.invalid>",
        f"Architecture: {spec.arch}",
    ]
    if spec.provides:
        lines.append(f"Provides: {spec.provides}")
    if spec.pre_depends:
        lines.append(f"Pre-Depends: {spec.pre_depends}")
    if spec.depends:
        lines.append(f"Depends: {spec.depends}")
    if spec.recommends:
        lines.append(f"Recommends: {spec.recommends}")
    lines += [
        f"Description: test package {spec.name}",
        " Depends: not-a-field (continuation lines must not be parsed as fields)",
        f"Filename: {filename}",
        f"Size: {len(data)}",
        f"MD5sum: {hashlib.md5(data).hexdigest()}",
        f"SHA256: {hashlib.sha256(data).hexdigest()}",
    ]
    return "\n".join(lines) + "\n"


def write_indices(
    tree: ArchiveTree,
    packages: bytes,
    compressions: tuple[str, ...] = ("xz",),
    release_fields: tuple[str, ...] = (),
    by_hash: bool = False,
) -> None:
    """Write the Packages indices, Release and the signed InRelease of the tree's suite.

    ``release_fields`` are extra ``Name: value`` lines for the Release; ``by_hash`` also stores
    each index under ``by-hash/SHA256/<digest>`` and announces it with ``Acquire-By-Hash``.
    """
    binary = tree.dists / "main/binary-amd64"
    binary.mkdir(parents=True, exist_ok=True)
    (binary / "Packages").write_bytes(packages)
    compress: dict[str, Callable[[bytes], bytes]] = {"xz": lzma.compress, "gz": gzip.compress}
    for suffix in compressions:
        (binary / f"Packages.{suffix}").write_bytes(compress[suffix](packages))
    entries = []
    names = ["Packages", *(f"Packages.{suffix}" for suffix in compressions)]
    for rel in (f"main/binary-amd64/{name}" for name in names):
        data = (tree.dists / rel).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        entries.append(f" {digest} {len(data):>8} {rel}")
        if by_hash:
            (binary / "by-hash/SHA256").mkdir(parents=True, exist_ok=True)
            (binary / "by-hash/SHA256" / digest).write_bytes(data)
    release = (
        "\n".join(
            [
                "Origin: Test",
                "Label: Test",
                f"Suite: {tree.suite}",
                f"Codename: {CODENAME}",
                "Date: Sat, 01 Nov 2025 00:00:00 UTC",
                "Architectures: amd64",
                "Components: main",
                "Description: a test archive",
                *release_fields,
                *(["Acquire-By-Hash: yes"] if by_hash else []),
                "SHA256:",
                *entries,
            ]
        )
        + "\n"
    )
    (tree.dists / "Release").write_text(release)
    tree.key.clearsign(tree.dists / "Release", tree.dists / "InRelease")


# -- the server ---------------------------------------------------------------------------------


@dataclass
class Request:
    path: str
    headers: dict[str, str]


class ArchiveServer:
    """Serve ``root`` over HTTP/1.1 on 127.0.0.1, with hooks to misbehave."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.overrides: dict[str, bytes] = {}  # URL path -> body served instead of the file
        self.fail_first: dict[str, int] = {}  # URL path -> answer 503 this many more times
        self.drop_after: dict[str, int] = {}  # URL path -> next time, cut the body after N bytes
        self.ignore_range = False  # answer 200 with the whole body even to a Range request
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> ArchiveServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def requested(self, suffix: str) -> list[Request]:
        """Requests whose path ends with ``suffix``."""
        return [r for r in self.requests if r.path.endswith(suffix)]

    def body(self, path: str) -> bytes | None:
        if path in self.overrides:
            return self.overrides[path]
        file = (self.root / path.lstrip("/")).resolve()
        if not file.is_relative_to(self.root.resolve()) or not file.is_file():
            return None
        return file.read_bytes()

    def take(self, table: dict[str, int], path: str) -> int | None:
        """Consume one use of a hook for ``path``."""
        with self._lock:
            if path not in table:
                return None
            value = table[path]
            if table is self.fail_first:
                if value <= 0:
                    return None
                table[path] = value - 1
            else:
                del table[path]
            return value


def _handler(server: ArchiveServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            server.requests.append(Request(path, dict(self.headers)))
            if server.take(server.fail_first, path) is not None:
                self._reply(503, b"busy")
                return
            body = server.body(path)
            if body is None:
                self._reply(404, b"not found")
                return
            start = _range_start(self.headers.get("Range"))
            if start is None or server.ignore_range:
                status, start = 200, 0
            elif start >= len(body):
                self._reply(416, b"")
                return
            else:
                status = 206
            self.send_response(status)
            self.send_header("Content-Length", str(len(body) - start))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.end_headers()
            cut = server.take(server.drop_after, path)
            if cut is None:
                self.wfile.write(body[start:])
                return
            self.wfile.write(body[start : start + cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

        def _reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def _range_start(header: str | None) -> int | None:
    if not header or not header.startswith("bytes=") or not header.endswith("-"):
        return None
    number = header[len("bytes=") : -1]
    return int(number) if number.isdigit() else None


# -- pytest fixtures (import them into a test module to use them) -------------------------------


@pytest.fixture(scope="session")
def gpg_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GpgKey]:
    key = make_gpg_key(tmp_path_factory.mktemp("gpg"))
    yield key
    key.close()


@pytest.fixture(scope="session")
def archive_tree(tmp_path_factory: pytest.TempPathFactory, gpg_key: GpgKey) -> ArchiveTree:
    return build_archive(tmp_path_factory.mktemp("archive"), gpg_key)


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "RETRY_BASE_DELAY", 0.0)


@pytest.fixture
def server(archive_tree: ArchiveTree, fast_retries: None) -> Iterator[ArchiveServer]:
    srv = ArchiveServer(archive_tree.root).start()
    yield srv
    srv.stop()


def closed_port_url() -> str:
    """A loopback URL on which nothing listens (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
