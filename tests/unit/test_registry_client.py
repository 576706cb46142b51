"""The OCI distribution client against an in-process stand-in registry.

The stand-in exists for what the real registry (tests/e2e/test_registry.py) cannot be made to
do: Bearer-token challenges, 5xx answers, corrupted blobs on the wire, and counting PATCH
requests of chunked uploads.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import stat
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from imagebuilder.errors import IntegrityError, NotFoundError, UserError
from imagebuilder.registry import client as regclient
from imagebuilder.registry import transfer as registry
from imagebuilder.registry.transfer import (
    BlobLocations,
    Client,
    RegistryAuthError,
    RegistryError,
    RegistryRef,
    credentials_for,
)
from imagebuilder.store.layout import INITRD_LAYER_MEDIA_TYPE, KERNEL_MEDIA_TYPE, Store


class FakeRegistry(ThreadingHTTPServer):
    """A minimal in-memory distribution API with optional Bearer auth and failure injection."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.blobs: dict[str, bytes] = {}
        self.repo_blobs: dict[str, set[str]] = {}
        self.manifests: dict[tuple[str, str], bytes] = {}
        self.uploads: dict[str, bytearray] = {}
        self.requests: list[tuple[str, str]] = []
        self.token: str | None = None  # Bearer auth required when set
        self.password = "s3cret"
        self.fail_status: int | None = None
        self.corrupt = False

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeRegistry

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None
              ) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self) -> None:
        srv = self.server
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        srv.requests.append((self.command, url.path))
        body = self._body() if self.command in ("PUT", "PATCH", "POST") else b""
        if url.path == "/token":
            expected = base64.b64encode(f"user:{srv.password}".encode()).decode()
            if self.headers.get("Authorization") != f"Basic {expected}":
                return self._send(401)
            return self._send(200, json.dumps({"token": srv.token}).encode())
        if srv.fail_status:
            return self._send(srv.fail_status, b'{"errors":[{"code":"UNKNOWN","message":"x"}]}')
        if srv.token and self.headers.get("Authorization") != f"Bearer {srv.token}":
            challenge = (f'Bearer realm="http://{srv.host}/token",service="fake",'
                         'scope="repository:demo:pull,push"')
            return self._send(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"no"}]}',
                              {"WWW-Authenticate": challenge})
        if url.path == "/v2/":
            return self._send(200, b"{}")
        if m := re.fullmatch(r"/v2/(.+)/blobs/(sha256:[0-9a-f]+)", url.path):
            repo, digest = m.groups()
            if digest not in srv.repo_blobs.get(repo, set()):
                return self._send(404)
            data = srv.blobs[digest]
            if srv.corrupt and len(data) > 100:
                data = b"X" + data[1:]
            return self._send(200, data)
        if m := re.fullmatch(r"/v2/(.+)/blobs/uploads/", url.path):
            repo = m.group(1)
            if "mount" in query and query["mount"] in srv.repo_blobs.get(query["from"], set()):
                srv.repo_blobs.setdefault(repo, set()).add(query["mount"])
                return self._send(201)
            uid = uuid.uuid4().hex
            srv.uploads[uid] = bytearray()
            return self._send(202, headers={"Location": f"/v2/{repo}/blobs/uploads/{uid}"})
        if m := re.fullmatch(r"/v2/(.+)/blobs/uploads/([0-9a-f]+)", url.path):
            repo, uid = m.groups()
            srv.uploads[uid] += body
            if self.command == "PATCH":
                return self._send(202, headers={"Location": url.path})
            data = bytes(srv.uploads.pop(uid))
            if "sha256:" + hashlib.sha256(data).hexdigest() != query["digest"]:
                return self._send(400, b'{"errors":[{"code":"DIGEST_INVALID"}]}')
            srv.blobs[query["digest"]] = data
            srv.repo_blobs.setdefault(repo, set()).add(query["digest"])
            return self._send(201)
        if m := re.fullmatch(r"/v2/(.+)/manifests/(.+)", url.path):
            repo, ref = m.groups()
            if self.command == "PUT":
                srv.manifests[(repo, ref)] = body
                digest = "sha256:" + hashlib.sha256(body).hexdigest()
                srv.manifests[(repo, digest)] = body
                return self._send(201, headers={"Docker-Content-Digest": digest})
            stored = srv.manifests.get((repo, ref))
            if stored is None:
                return self._send(404)
            data = stored
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            media = json.loads(data)["mediaType"]
            return self._send(200, data, {"Docker-Content-Digest": digest,
                                          "Content-Type": media})
        return self._send(404)

    do_GET = do_HEAD = do_PUT = do_PATCH = do_POST = _handle


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    server = FakeRegistry()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def no_docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Docker config dir, and no waiting between retries."""
    config = tmp_path / "docker"
    config.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    monkeypatch.setattr(regclient, "RETRY_BASE_DELAY", 0.0)
    return config


def _image(store: Store, app: bytes = b"app v1", ref: str = "demo:1.0.0") -> str:
    kernel = store.add_blob_bytes(b"k" * 5000, KERNEL_MEDIA_TYPE)
    base = store.add_blob_bytes(os.urandom(3000), INITRD_LAYER_MEDIA_TYPE)
    layer = store.add_blob_bytes(app, INITRD_LAYER_MEDIA_TYPE)
    name, version = ref.split(":")
    return store.put_image(ref, {"name": name, "version": version}, [kernel, base, layer])


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.mark.parametrize(("text", "parsed"), [
    ("127.0.0.1:5000/hello", ("127.0.0.1:5000", "hello", None, None)),
    ("localhost/team/hello:1.0.0", ("localhost", "team/hello", "1.0.0", None)),
    ("ghcr.io/a/b@sha256:" + "a" * 64, ("ghcr.io", "a/b", None, "sha256:" + "a" * 64)),
])
def test_parse_ref(text: str, parsed: tuple[str, str, str | None, str | None]) -> None:
    ref = RegistryRef.parse(text)
    assert (ref.host, ref.repository, ref.tag, ref.digest) == parsed
    assert str(ref) == text


@pytest.mark.parametrize("text", ["hello:1.0.0", "hello/x", "127.0.0.1:5000/Hello",
                                  "127.0.0.1:5000/", "h.io/x@sha256:12", "h.io/x:-bad"])
def test_parse_ref_rejects(text: str) -> None:
    with pytest.raises(UserError):
        RegistryRef.parse(text)


def test_insecure_only_on_loopback() -> None:
    with pytest.raises(UserError, match="only allowed for a registry on loopback"):
        Client("registry.example.com", insecure=True)
    Client("[::1]:5000", insecure=True)
    Client("localhost:5000", insecure=True)


def test_credentials_from_auths_and_helper(no_docker_config: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    config = no_docker_config / "config.json"
    assert credentials_for("h.io") is None
    auth = base64.b64encode(b"me:pw:with:colons").decode()
    config.write_text(json.dumps({"auths": {"https://h.io": {"auth": auth}}}))
    assert credentials_for("h.io") == ("me", "pw:with:colons")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-fake"
    helper.write_text('#!/bin/sh\nread host\n[ "$host" = other.io ] || '
                      '{ echo "credentials not found in native keychain"; exit 1; }\n'
                      'echo \'{"Username":"bot","Secret":"tok"}\'\n')
    helper.chmod(helper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    config.write_text(json.dumps({"credHelpers": {"other.io": "fake"}, "credsStore": "fake"}))
    assert credentials_for("other.io") == ("bot", "tok")
    assert credentials_for("third.io") is None
    config.write_text(json.dumps({"credsStore": "missing"}))
    with pytest.raises(UserError, match="docker-credential-missing is not on PATH"):
        credentials_for("h.io")


def test_push_pull_bearer_chunked_and_mount(fake: FakeRegistry, tmp_path: Path,
                                            no_docker_config: Path) -> None:
    fake.token = "tok123"
    auth = base64.b64encode(f"user:{fake.password}".encode()).decode()
    (no_docker_config / "config.json").write_text(json.dumps({"auths": {fake.host: {
        "auth": auth}}}))
    store = Store(tmp_path / "store")
    digest = _image(store, os.urandom(10_000))
    image = store.resolve("demo:1.0.0")
    client = Client(fake.host, insecure=True)
    locations = BlobLocations(tmp_path / "locations.json")
    result = registry.push(store, image, RegistryRef.parse(f"{fake.host}/demo"), client,
                           chunk_size=4096, locations=locations)
    assert result.digest == digest and len(result.blobs_sent) == 4
    assert result.bytes_sent == sum(d.size for d in image.layers) + \
        image.manifest["config"]["size"]
    patches = [p for m, p in fake.requests if m == "PATCH"]
    assert len(patches) == 2 + 3  # 5000 B and 10000 B in 4096 B chunks; the rest in one PUT
    assert fake.manifests[("demo", "1.0.0")] == store.read_blob(digest)

    # Everything is there now: a second push sends nothing.
    again = registry.push(store, image, RegistryRef.parse(f"{fake.host}/demo"), client)
    assert (again.bytes_sent, len(again.blobs_skipped)) == (0, 4)
    # Another repository on the same host: blobs are mounted, not uploaded.
    fake.token = None
    other = registry.push(store, image, RegistryRef.parse(f"{fake.host}/team/demo"),
                          Client(fake.host, insecure=True), locations=locations)
    assert (other.bytes_sent, len(other.blobs_mounted)) == (0, 4)

    fresh = Store(tmp_path / "fresh")
    pulled = registry.pull(fresh, RegistryRef.parse(f"{fake.host}/demo:1.0.0"),
                           Client(fake.host, insecure=True))
    assert (pulled.ref, pulled.digest) == ("demo:1.0.0", digest)
    assert pulled.bytes_received == result.bytes_sent
    assert fresh.read_blob(digest) == store.read_blob(digest)


def test_push_refuses_to_move_a_tag_without_force(fake: FakeRegistry, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    _image(store, b"one", "demo:1.0.0")
    _image(store, b"two", "demo:2.0.0")
    client = Client(fake.host, insecure=True)
    target = RegistryRef.parse(f"{fake.host}/demo:latest")
    registry.push(store, store.resolve("demo:1.0.0"), target, client)
    before = dict(fake.manifests)
    with pytest.raises(UserError, match="already names another image.*--force"):
        registry.push(store, store.resolve("demo:2.0.0"), target, client)
    assert fake.manifests == before
    registry.push(store, store.resolve("demo:2.0.0"), target, client, force=True)
    assert fake.manifests[("demo", "latest")] == store.read_blob(store.resolve("demo:2.0.0").digest)


def test_bearer_without_credentials_is_a_user_error(fake: FakeRegistry, tmp_path: Path) -> None:
    fake.token = "tok"
    store = Store(tmp_path / "store")
    _image(store)
    with pytest.raises(RegistryAuthError, match="refused anonymous access") as e:
        registry.push(store, store.resolve("demo:1.0.0"),
                      RegistryRef.parse(f"{fake.host}/demo"), Client(fake.host, insecure=True))
    assert e.value.exit_code == 2 and "\n" not in str(e.value)


def test_5xx_is_retried_then_fails_and_pull_leaves_the_store(fake: FakeRegistry,
                                                             tmp_path: Path) -> None:
    fake.fail_status = 500
    store = Store(tmp_path / "store")
    _image(store)
    before = _snapshot(store.root)
    with pytest.raises(RegistryError, match=r"HTTP 500: UNKNOWN x \(3 attempts\)") as e:
        registry.pull(store, RegistryRef.parse(f"{fake.host}/demo:1.0.0"),
                      Client(fake.host, insecure=True))
    assert e.value.exit_code == 1
    assert _snapshot(store.root) == before
    assert len(fake.requests) == regclient.RETRIES + 1


def test_registry_down(tmp_path: Path) -> None:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(RegistryError, match="cannot connect.*is it running"):
        Client(f"127.0.0.1:{port}", insecure=True).check()


def test_pull_digest_mismatch_leaves_the_store_as_it_was(fake: FakeRegistry,
                                                          tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    _image(store, os.urandom(5000))
    client = Client(fake.host, insecure=True)
    registry.push(store, store.resolve("demo:1.0.0"), RegistryRef.parse(f"{fake.host}/demo"),
                  client)
    fresh = Store(tmp_path / "fresh")
    _image(fresh, b"other", "other:1.0.0")
    before = _snapshot(fresh.root)
    fake.corrupt = True
    with pytest.raises(IntegrityError, match="did not verify"):
        registry.pull(fresh, RegistryRef.parse(f"{fake.host}/demo:1.0.0"), client)
    assert _snapshot(fresh.root) == before
    with pytest.raises(NotFoundError, match="not found in the registry"):
        registry.pull(fresh, RegistryRef.parse(f"{fake.host}/demo:9"), client)
