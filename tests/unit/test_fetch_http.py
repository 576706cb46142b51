"""Downloading: resume, retry, verification, and never a bad file at the destination."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from imagebuilder.errors import FetchError, IntegrityError
from imagebuilder.fetch import http

try:  # pytest puts tests/unit itself on sys.path while it is no package
    import archive_fixture as fx
except ImportError:
    from tests.unit import archive_fixture as fx  # type: ignore[no-redef]

fast_retries = fx.fast_retries  # a fixture

BLOB = os.urandom(3 * 1024 * 1024 + 12345)
SHA = hashlib.sha256(BLOB).hexdigest()


@pytest.fixture
def blob_server(tmp_path: Path, fast_retries: None) -> Iterator[fx.ArchiveServer]:
    root = tmp_path / "srv"
    root.mkdir()
    (root / "blob.bin").write_bytes(BLOB)
    srv = fx.ArchiveServer(root).start()
    yield srv
    srv.stop()


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def get(srv: fx.ArchiveServer, session: requests.Session, dest: Path, **kw: object) -> Path:
    return http.download(session, f"{srv.url}/blob.bin", dest, **kw)  # type: ignore[arg-type]


def test_download_verifies_and_renames(
    blob_server: fx.ArchiveServer, session: requests.Session, tmp_path: Path
) -> None:
    dest = tmp_path / "out/blob"
    assert get(blob_server, session, dest, sha256=SHA, size=len(BLOB)) == dest
    assert dest.read_bytes() == BLOB
    assert not dest.with_name("blob.part").exists()


def test_digest_mismatch_leaves_nothing(
    blob_server: fx.ArchiveServer, session: requests.Session, tmp_path: Path
) -> None:
    dest = tmp_path / "blob"
    wrong = "0" * 64
    with pytest.raises(IntegrityError) as info:
        get(blob_server, session, dest, sha256=wrong)
    message = str(info.value)
    assert f"{blob_server.url}/blob.bin" in message and wrong in message and SHA in message
    assert list(tmp_path.iterdir()) == [tmp_path / "srv"]


def test_size_mismatch_leaves_nothing(
    blob_server: fx.ArchiveServer, session: requests.Session, tmp_path: Path
) -> None:
    dest = tmp_path / "blob"
    with pytest.raises(IntegrityError):
        get(blob_server, session, dest, sha256=SHA, size=len(BLOB) + 1)
    assert not dest.exists() and not dest.with_name("blob.part").exists()


def test_retries_503_then_succeeds(
    blob_server: fx.ArchiveServer, session: requests.Session, tmp_path: Path
) -> None:
    blob_server.fail_first["/blob.bin"] = 2
    dest = get(blob_server, session, tmp_path / "blob", sha256=SHA)
    assert dest.read_bytes() == BLOB
    assert len(blob_server.requested("/blob.bin")) == 3


def test_gives_up_after_retries(
    blob_server: fx.ArchiveServer, session: requests.Session, tmp_path: Path
) -> None:
    blob_server.fail_first["/blob.bin"] = 100
    with pytest.raises(
        FetchError, match="unreachable.*HTTP 503.*check the network or pass --mirror"
    ):
        get(blob_server, session, tmp_path / "blob", sha256=SHA)
    assert len(blob_server.requested("/blob.bin")) == http.RETRIES + 1
    assert not (tmp_path / "blob").exists()


def test_unreachable_mirror(session: requests.Session, tmp_path: Path, fast_retries: None) -> None:
    with pytest.raises(FetchError, match="mirror is unreachable.*pass --mirror"):
        http.download(session, f"{fx.closed_port_url()}/x", tmp_path / "x")


def test_resumes_after_dropped_connection(
    blob_server: fx.ArchiveServer, session: requests.Session, tmp_path: Path
) -> None:
    cut = 2 * 1024 * 1024 + 7
    blob_server.drop_after["/blob.bin"] = cut
    dest = get(blob_server, session, tmp_path / "blob", sha256=SHA, size=len(BLOB))
    assert dest.read_bytes() == BLOB
    first, second = blob_server.requested("/blob.bin")
    assert "Range" not in first.headers
    start = int(second.headers["Range"].removeprefix("bytes=").removesuffix("-"))
    assert 1024 * 1024 <= start <= cut  # resumed from what had arrived, not from scratch


def test_server_ignoring_range_restarts(
    blob_server: fx.ArchiveServer, session: requests.Session, tmp_path: Path
) -> None:
    dest = tmp_path / "blob"
    dest.with_name("blob.part").write_bytes(BLOB[:5000])
    blob_server.ignore_range = True
    assert get(blob_server, session, dest, sha256=SHA).read_bytes() == BLOB
    assert blob_server.requested("/blob.bin")[0].headers["Range"] == "bytes=5000-"


def test_stale_partial_file_is_discarded(
    blob_server: fx.ArchiveServer, session: requests.Session, tmp_path: Path
) -> None:
    dest = tmp_path / "blob"
    dest.with_name("blob.part").write_bytes(b"x" * 5000)  # not a prefix of the body
    assert get(blob_server, session, dest, sha256=SHA).read_bytes() == BLOB
    assert [r.headers.get("Range") for r in blob_server.requested("/blob.bin")] == [
        "bytes=5000-",
        None,
    ]


def test_not_found(
    blob_server: fx.ArchiveServer, session: requests.Session, tmp_path: Path
) -> None:
    with pytest.raises(FetchError, match=r"not found on the mirror \(HTTP 404\): .*/nope"):
        http.download(session, f"{blob_server.url}/nope", tmp_path / "nope")
    assert len(blob_server.requests) == 1
    assert not (tmp_path / "nope").exists()


def test_existing_destination_is_only_replaced_by_a_verified_file(
    blob_server: fx.ArchiveServer, session: requests.Session, tmp_path: Path
) -> None:
    dest = tmp_path / "blob"
    dest.write_bytes(b"previous")
    with pytest.raises(IntegrityError):
        get(blob_server, session, dest, sha256="1" * 64)
    assert dest.read_bytes() == b"previous"


class _Redirects(ThreadingHTTPServer):
    """Answers each path in ``routes`` with a 302 to its target; anything else is BLOB."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _RedirectHandler)
        self.routes: dict[str, str] = {}
        self.paths: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _RedirectHandler(BaseHTTPRequestHandler):
    server: _Redirects

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        target = self.server.routes.get(self.path)
        self.send_response(302 if target else 200)
        if target:
            self.send_header("Location", target)
        body = b"" if target else BLOB
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def redirects(fast_retries: None) -> Iterator[_Redirects]:
    server = _Redirects()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_redirect_is_followed(redirects: _Redirects, session: requests.Session,
                                tmp_path: Path) -> None:
    redirects.routes["/old/blob.bin"] = "/pool/blob.bin"
    dest = http.download(session, f"{redirects.url}/old/blob.bin", tmp_path / "blob", sha256=SHA)
    assert dest.read_bytes() == BLOB
    assert redirects.paths == ["/old/blob.bin", "/pool/blob.bin"]


def test_a_redirect_to_a_file_url_is_one_line(redirects: _Redirects, session: requests.Session,
                                              tmp_path: Path) -> None:
    redirects.routes["/blob.bin"] = "file:///etc/passwd"
    with pytest.raises(FetchError) as e:
        http.download(session, f"{redirects.url}/blob.bin", tmp_path / "blob", sha256=SHA)
    assert str(e.value) == (f"{redirects.url}/blob.bin redirected to file:///etc/passwd: only "
                            "http and https redirects are followed")
    assert redirects.paths == ["/blob.bin"]  # not retried
    assert list(tmp_path.iterdir()) == []


def test_a_redirect_loop_is_capped(redirects: _Redirects, session: requests.Session,
                                   tmp_path: Path) -> None:
    redirects.routes.update({"/a": "/b", "/b": "/a"})
    with pytest.raises(FetchError, match=rf"^{redirects.url}/a redirected more than "
                       rf"{http.MAX_REDIRECTS} times \(last to {redirects.url}/a\): a redirect "
                       "loop"):
        http.download(session, f"{redirects.url}/a", tmp_path / "a")
    assert len(redirects.paths) == http.MAX_REDIRECTS + 1
    assert list(tmp_path.iterdir()) == []


# --- bodies larger than they may be (review F5) -----------------------------------------------


class _Endless(ThreadingHTTPServer):
    """Answers every GET with 200 and zeros: without a Content-Length, or with ``announce`` as
    one, for ever (up to ``safety`` bytes, so that a client that does not stop fails a test
    instead of filling the disk). ``sent`` counts the bytes that left."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _EndlessHandler)
        self.announce: int | None = None
        self.safety = 256 << 20
        self.sent = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _EndlessHandler(BaseHTTPRequestHandler):
    server: _Endless

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        if self.server.announce is not None:
            self.send_header("Content-Length", str(self.server.announce))
        self.end_headers()
        block = bytes(256 << 10)
        try:
            while self.server.sent < self.server.safety:
                self.wfile.write(block)
                self.server.sent += len(block)
        except OSError:  # the client hung up: what it should do
            pass


@pytest.fixture
def endless(fast_retries: None) -> Iterator[_Endless]:
    server = _Endless()
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_body_past_its_expected_size_stops_there(endless: _Endless, session: requests.Session,
                                                   tmp_path: Path) -> None:
    # the review's reproduction: download(..., size=1000000) of an endless body
    url = f"{endless.url}/pool/main/x.deb"
    with pytest.raises(IntegrityError) as e:
        http.download(session, url, tmp_path / "x.deb", sha256=SHA, size=1_000_000)
    assert str(e.value) == (f"{url} did not verify: it sent more than the expected 1000000 "
                            "bytes; the download was stopped and discarded")
    assert list(tmp_path.iterdir()) == []
    assert endless.sent < 16 << 20  # what the socket buffers held when we hung up, at most


def test_a_body_without_an_expected_size_is_capped(endless: _Endless, session: requests.Session,
                                                   tmp_path: Path) -> None:
    # InRelease has no size to check against: the cap for indexes of unknown size holds
    url = f"{endless.url}/dists/stable/InRelease"
    with pytest.raises(FetchError) as e:
        http.download(session, url, tmp_path / "InRelease")
    assert str(e.value) == (f"{url} is too large: it sent more than {64 << 20} bytes, the limit "
                            "for a file of unknown size; the download was stopped and discarded")
    assert http.MAX_UNSIZED_BYTES == 64 << 20
    assert list(tmp_path.iterdir()) == []
    assert endless.sent < (64 << 20) + (16 << 20)


@pytest.mark.parametrize("size", [1000, None])
def test_an_announced_length_over_the_limit_is_refused_before_the_body(
        endless: _Endless, session: requests.Session, tmp_path: Path, size: int | None) -> None:
    endless.announce = 10 << 30
    url = f"{endless.url}/x"
    with pytest.raises(IntegrityError, match=rf"^{url} (did not verify|is too large): it "
                       rf"announces {10 << 30} bytes, more than .*; refused$"):
        http.download(session, url, tmp_path / "x", size=size)
    assert list(tmp_path.iterdir()) == []
    assert endless.sent < 16 << 20


def test_a_partial_file_over_the_limit_is_not_resumed(
        blob_server: fx.ArchiveServer, session: requests.Session, tmp_path: Path) -> None:
    dest = tmp_path / "blob"
    dest.with_name("blob.part").write_bytes(b"\0" * (http.MAX_UNSIZED_BYTES + 1))
    assert get(blob_server, session, dest, sha256=SHA).read_bytes() == BLOB
    assert "Range" not in blob_server.requested("/blob.bin")[0].headers
