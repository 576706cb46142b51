"""Where credentials and blobs go: hostile registries that send uploads, blob downloads and token
requests to another origin, over HTTPS and plain HTTP.

Each server is a small in-process distribution API that records every request it gets, headers
and body included, so that a test can assert that no Authorization header (and no refresh token)
reached another origin than the registry's, and that nothing at all went over plain HTTP from an
HTTPS registry. HTTPS uses a throwaway self-signed certificate for 127.0.0.1 made by openssl.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import ssl
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from imagebuilder.registry import client as regclient
from imagebuilder.registry import transfer as registry
from imagebuilder.registry.transfer import Client, RegistryError, RegistryRef
from imagebuilder.store.layout import INITRD_LAYER_MEDIA_TYPE, KERNEL_MEDIA_TYPE, Store

USER, PASSWORD = "ci", "s3cret"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


@dataclass(frozen=True)
class Seen:
    """One request as a server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class Server(ThreadingHTTPServer):
    """A distribution API (optionally behind Basic or Bearer auth), an upload target and a blob
    CDN in one: what it does with a request depends on the settings below."""

    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext | None = None, bind: str = "127.0.0.1") -> None:
        super().__init__((bind, 0), _Handler)
        self.name = bind  # as URLs name it: "localhost" is not 127.0.0.1 to an origin check
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.scheme = "https" if tls else "http"
        self.seen: list[Seen] = []
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, bytes] = {}
        self.uploads: dict[str, bytearray] = {}
        self.basic = False  # require the Basic credentials
        self.realm: str | None = None  # require a Bearer token from this realm
        self.upload_to = ""  # where upload Locations point (default: here)
        self.redirects: dict[str, str] = {}  # path -> Location of a redirect
        self.redirect_status = 307

    @property
    def host(self) -> str:
        return f"{self.name}:{self.server_address[1]}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def authorizations(self) -> list[str]:
        return [s.headers["Authorization"] for s in self.seen if "Authorization" in s.headers]


class _Handler(BaseHTTPRequestHandler):
    server: Server

    def log_message(self, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
               ) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        srv, url = self.server, urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        srv.seen.append(Seen(self.command, self.path, dict(self.headers), body))
        if url.path.startswith("/v2/") and not self._authorized():
            return None
        if url.path in srv.redirects:  # after the challenge, as a registry does
            return self._reply(srv.redirect_status,
                               headers={"Location": srv.redirects[url.path]})
        if url.path == "/token":
            return self._reply(200, json.dumps({"token": "tok"}).encode())
        if url.path == "/v2/":
            return self._reply(200, b"{}")
        if m := re.fullmatch(r"/(?:v2/.+/blobs|cdn)/(sha256:[0-9a-f]{64})", url.path):
            data = srv.blobs.get(m.group(1))
            return self._reply(404) if data is None else self._reply(200, data)
        if re.fullmatch(r"/v2/.+/blobs/uploads/", url.path):
            uid = uuid.uuid4().hex
            srv.uploads[uid] = bytearray()
            return self._reply(202, headers={"Location": f"{srv.upload_to}/upload/{uid}"})
        if m := re.fullmatch(r"/upload/([0-9a-f]+)", url.path):
            srv.uploads[m.group(1)] += body
            if self.command == "PATCH":
                return self._reply(202, headers={"Location": url.path})
            data = bytes(srv.uploads.pop(m.group(1)))
            if "sha256:" + hashlib.sha256(data).hexdigest() != query.get("digest"):
                return self._reply(400)
            srv.blobs[query["digest"]] = data
            return self._reply(201)
        if m := re.fullmatch(r"/v2/.+/manifests/(.+)", url.path):
            if self.command == "PUT":
                srv.manifests[m.group(1)] = body
                srv.manifests["sha256:" + hashlib.sha256(body).hexdigest()] = body
                return self._reply(201)
            data = srv.manifests.get(m.group(1))
            if data is None:
                return self._reply(404)
            return self._reply(200, data, {"Content-Type": json.loads(data)["mediaType"]})
        return self._reply(404)

    def _authorized(self) -> bool:
        srv, sent = self.server, self.headers.get("Authorization")
        if srv.basic and sent != BASIC:
            self._reply(401, headers={"WWW-Authenticate": 'Basic realm="registry"'})
            return False
        if srv.realm and sent != "Bearer tok":
            self._reply(401, headers={"WWW-Authenticate": f'Bearer realm="{srv.realm}",'
                                      'service="registry"'})
            return False
        return True

    do_GET = do_HEAD = do_PUT = do_PATCH = do_POST = _handle


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, Path]:
    """A server context and the certificate clients trust (127.0.0.1, 127.0.0.2 and localhost,
    self-signed): valid for every host a test sends to, so TLS never hides where a header went."""
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=127.0.0.1", "-addext",
                    "subjectAltName=IP:127.0.0.1,IP:127.0.0.2,DNS:localhost"], check=True,
                   capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context, cert


@pytest.fixture
def serve(tls: tuple[ssl.SSLContext, Path]) -> Iterator[Callable[..., Server]]:
    """serve(https, bind="127.0.0.1") -> a running Server; all are stopped at the end of the
    test."""
    servers: list[Server] = []

    def start(https: bool, bind: str = "127.0.0.1") -> Server:
        server = Server(tls[0] if https else None, bind)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                  tls: tuple[ssl.SSLContext, Path]) -> Path:
    """An empty Docker config; our certificate trusted the way a private CA is."""
    config = tmp_path / "docker"
    config.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls[1]))
    monkeypatch.setattr(regclient, "RETRY_BASE_DELAY", 0.0)
    return config


def _login(config: Path, host: str, entry: dict[str, str] | None = None) -> None:
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (config / "config.json").write_text(json.dumps({"auths": {host: entry or {"auth": auth}}}))


def _client(server: Server, tls: tuple[ssl.SSLContext, Path]) -> Client:
    return Client(server.host, insecure=server.scheme == "http")


def _store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "store")
    kernel = store.add_blob_bytes(b"k" * 5000, KERNEL_MEDIA_TYPE)
    layer = store.add_blob_bytes(os.urandom(9000), INITRD_LAYER_MEDIA_TYPE)
    store.put_image("demo:1.0.0", {"name": "demo", "version": "1.0.0"}, [kernel, layer])
    return store


def _push(store: Store, server: Server, client: Client, chunk_size: int = 1 << 20,
          ) -> registry.TransferResult:
    return registry.push(store, store.resolve("demo:1.0.0"),
                         RegistryRef.parse(f"{server.host}/demo"), client, chunk_size=chunk_size)


def _pull(server: Server, client: Client, tmp_path: Path) -> registry.TransferResult:
    return registry.pull(Store(tmp_path / "pulled"),
                         RegistryRef.parse(f"{server.host}/demo:1.0.0"), client)


def _one_line(error: pytest.ExceptionInfo[Exception], pattern: str) -> None:
    assert isinstance(error.value, RegistryError), repr(error.value)
    assert re.search(pattern, str(error.value)), str(error.value)
    assert "\n" not in str(error.value) and error.value.exit_code == 1


# --- upload Locations -------------------------------------------------------------------------


@pytest.mark.parametrize("https", [False, True])
@pytest.mark.parametrize("chunk_size", [1 << 20, 4096])
def test_an_upload_location_elsewhere_gets_the_blobs_but_no_credentials(
        serve: Callable[[bool], Server], tls: tuple[ssl.SSLContext, Path], docker_config: Path,
        tmp_path: Path, https: bool, chunk_size: int) -> None:
    reg, storage = serve(https), serve(https)
    reg.basic, reg.upload_to = True, storage.url
    storage.blobs, storage.uploads = reg.blobs, reg.uploads
    _login(docker_config, reg.host)
    store = _store(tmp_path)
    result = _push(store, reg, _client(reg, tls), chunk_size)
    assert len(result.blobs_sent) == 3 and len(reg.blobs) == 3
    assert [s.method for s in storage.seen if s.method == "PATCH"] == (
        [] if chunk_size > 9000 else ["PATCH"] * 5)  # 5000 B and 9000 B in 4096 B chunks
    assert storage.seen and storage.authorizations() == []
    assert set(reg.authorizations()) == {BASIC}


def test_a_plain_http_upload_location_from_https_is_refused(
        serve: Callable[[bool], Server], tls: tuple[ssl.SSLContext, Path], docker_config: Path,
        tmp_path: Path) -> None:
    reg, storage = serve(True), serve(False)
    reg.basic, reg.upload_to = True, storage.url
    _login(docker_config, reg.host)
    with pytest.raises(RegistryError) as e:
        _push(_store(tmp_path), reg, _client(reg, tls))
    _one_line(e, rf"^registry {reg.host} sent an upload Location {storage.url}/upload/[0-9a-f]+, "
                 "from an HTTPS registry: a downgrade to plain HTTP; refused$")
    assert storage.seen == [] and not any("/manifests/1.0.0" in s.path and s.method == "PUT"
                                          for s in reg.seen)


# --- blob downloads ---------------------------------------------------------------------------


def _pushed(serve: Callable[[bool], Server], tls: tuple[ssl.SSLContext, Path],
            docker_config: Path, tmp_path: Path, https: bool) -> Server:
    """A registry behind Basic auth holding demo:1.0.0."""
    reg = serve(https)
    reg.basic = True
    _login(docker_config, reg.host)
    _push(_store(tmp_path), reg, _client(reg, tls))
    reg.seen.clear()
    return reg


def _to_cdn(reg: Server, cdn: Server) -> None:
    cdn.blobs = reg.blobs
    for digest in reg.blobs:
        reg.redirects[f"/v2/demo/blobs/{digest}"] = f"{cdn.url}/cdn/{digest}"


def test_a_blob_redirect_elsewhere_is_followed_without_credentials(
        serve: Callable[[bool], Server], tls: tuple[ssl.SSLContext, Path], docker_config: Path,
        tmp_path: Path) -> None:
    reg = _pushed(serve, tls, docker_config, tmp_path, True)
    cdn = serve(True)
    _to_cdn(reg, cdn)
    result = _pull(reg, _client(reg, tls), tmp_path)
    assert len(result.blobs_received) == 3
    assert len([s for s in cdn.seen if s.method == "GET"]) == 3 and cdn.authorizations() == []


def test_a_blob_redirect_from_https_to_plain_http_is_refused(
        serve: Callable[[bool], Server], tls: tuple[ssl.SSLContext, Path], docker_config: Path,
        tmp_path: Path) -> None:
    reg = _pushed(serve, tls, docker_config, tmp_path, True)
    cdn = serve(False)
    _to_cdn(reg, cdn)
    with pytest.raises(RegistryError) as e:
        _pull(reg, _client(reg, tls), tmp_path)
    _one_line(e, rf"^registry {reg.host} sent a redirect to {cdn.url}/cdn/sha256:[0-9a-f]{{64}}, "
                 "from an HTTPS registry: a downgrade to plain HTTP; refused$")
    assert cdn.seen == []
    assert not (tmp_path / "pulled" / "index.json").exists()


def test_a_blob_redirect_loop_is_capped(
        serve: Callable[[bool], Server], tls: tuple[ssl.SSLContext, Path], docker_config: Path,
        tmp_path: Path) -> None:
    reg = _pushed(serve, tls, docker_config, tmp_path, False)
    config = json.loads(reg.manifests["1.0.0"])["config"]["digest"]
    reg.redirects[f"/v2/demo/blobs/{config}"] = f"/v2/demo/blobs/{config}"
    with pytest.raises(RegistryError) as e:
        _pull(reg, _client(reg, tls), tmp_path)
    _one_line(e, rf"redirected more than {regclient.MAX_REDIRECTS} times .*: a redirect loop")
    assert len([s for s in reg.seen if config in s.path]) == regclient.MAX_REDIRECTS + 1


# --- token realms -----------------------------------------------------------------------------


@pytest.mark.parametrize("https", [False, True])
def test_a_plain_http_token_realm_elsewhere_gets_nothing(
        serve: Callable[[bool], Server], tls: tuple[ssl.SSLContext, Path], docker_config: Path,
        tmp_path: Path, https: bool) -> None:
    reg, auth = serve(https), serve(False)
    reg.realm = f"{auth.url}/token"
    _login(docker_config, reg.host)
    with pytest.raises(RegistryError) as e:
        _push(_store(tmp_path), reg, _client(reg, tls))
    _one_line(e, rf"^registry {reg.host} names the token service {auth.url}/token, neither "
                 "HTTPS nor the registry's own origin; refused: the credentials would travel")
    assert auth.seen == [] and reg.authorizations() == []


@pytest.mark.parametrize("https", [False, True])
def test_a_refused_challenge_leaves_no_response_open(
        serve: Callable[[bool], Server], tls: tuple[ssl.SSLContext, Path], docker_config: Path,
        tmp_path: Path, https: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The 401 whose token service is refused is closed before the error leaves: a response
    left to the garbage collector is a ResourceWarning, a failure of some later test."""
    reg, auth = serve(https), serve(False)
    reg.realm = f"{auth.url}/token"
    _login(docker_config, reg.host)
    responses: list[requests.Response] = []
    send = requests.Session.request

    def recorded(self: requests.Session, *args: Any, **kwargs: Any) -> requests.Response:
        responses.append(send(self, *args, **kwargs))
        return responses[-1]

    monkeypatch.setattr(requests.Session, "request", recorded)
    with pytest.raises(RegistryError, match="names the token service"):
        _push(_store(tmp_path), reg, _client(reg, tls))
    assert responses and [r.status_code for r in responses if not r.raw.closed] == []


def test_an_https_token_realm_elsewhere_gets_the_credentials_and_the_registry_the_token(
        serve: Callable[[bool], Server], tls: tuple[ssl.SSLContext, Path], docker_config: Path,
        tmp_path: Path) -> None:
    reg, auth = serve(True), serve(True)
    reg.realm = f"{auth.url}/token"
    _login(docker_config, reg.host)
    _push(_store(tmp_path), reg, _client(reg, tls))
    assert set(auth.authorizations()) == {BASIC}  # what docker login is for
    assert set(reg.authorizations()) == {"Bearer tok"}


def test_a_token_realm_redirect_is_not_followed_with_the_refresh_token(
        serve: Callable[[bool], Server], tls: tuple[ssl.SSLContext, Path], docker_config: Path,
        tmp_path: Path) -> None:
    reg, auth, elsewhere = serve(True), serve(True), serve(True)
    reg.realm = f"{auth.url}/token"
    auth.redirects["/token"] = f"{elsewhere.url}/token"
    _login(docker_config, reg.host, {"identitytoken": "refresh-me"})
    with pytest.raises(RegistryError) as e:
        _push(_store(tmp_path), reg, _client(reg, tls))
    _one_line(e, rf"token service {auth.url}/token answered HTTP 307 \(a redirect to "
                 rf"{elsewhere.url}/token, not followed with credentials\)")
    assert b"refresh-me" in auth.seen[0].body and elsewhere.seen == []


# --- URLs that urllib.parse and requests read differently (review F1) -------------------------


def _odd(scheme: str, third: Server, reg: Server, path: str) -> str:
    """A URL that urllib.parse reads as ``reg``'s origin while requests connects to ``third``."""
    return f"{scheme}://{third.host}\\@{reg.host}{path}"


@pytest.mark.parametrize("https", [False, True])
def test_a_backslash_redirect_does_not_carry_the_credentials_to_a_third_host(
        serve: Callable[..., Server], tls: tuple[ssl.SSLContext, Path], docker_config: Path,
        tmp_path: Path, https: bool) -> None:
    # the review's reproduction: the registry (Basic) sends a 307 to a CDN on localhost, whose
    # 302 names "http://127.0.0.2:P3\@127.0.0.1:P1/v2/...": requests would connect to 127.0.0.2
    reg = _pushed(serve, tls, docker_config, tmp_path, https)
    cdn, third = serve(https, "localhost"), serve(https, "127.0.0.2")
    cdn.redirect_status = 302
    reg.redirects["/v2/demo/manifests/1.0.0"] = f"{cdn.url}/cdn/manifest"
    cdn.redirects["/cdn/manifest"] = _odd(reg.scheme, third, reg, "/v2/demo/manifests/1.0.0")
    with pytest.raises(Exception) as e:
        _pull(reg, _client(reg, tls), tmp_path)
    assert third.authorizations() == [], "the registry's credentials reached a third host"
    assert third.seen == [] and cdn.authorizations() == []
    _one_line(e, rf"^registry {reg.host} sent a redirect to "
                 rf"{re.escape(cdn.redirects['/cdn/manifest'])}, .*backslash.*; refused$")


@pytest.mark.parametrize("https", [False, True])
def test_a_backslash_upload_location_does_not_carry_the_credentials_to_a_third_host(
        serve: Callable[..., Server], tls: tuple[ssl.SSLContext, Path], docker_config: Path,
        tmp_path: Path, https: bool) -> None:
    reg, third = serve(https), serve(https, "127.0.0.2")
    reg.basic, reg.upload_to = True, _odd(reg.scheme, third, reg, "")
    third.blobs, third.uploads = reg.blobs, reg.uploads
    _login(docker_config, reg.host)
    with pytest.raises(Exception) as e:
        _push(_store(tmp_path), reg, _client(reg, tls))
    assert third.authorizations() == [], "the registry's credentials reached a third host"
    assert third.seen == []
    _one_line(e, rf"^registry {reg.host} sent an upload Location "
                 rf"{re.escape(reg.upload_to)}/upload/[0-9a-f]+, .*backslash.*; refused$")


def test_a_backslash_token_realm_gets_no_credentials(
        serve: Callable[..., Server], tls: tuple[ssl.SSLContext, Path], docker_config: Path,
        tmp_path: Path) -> None:
    reg, third = serve(False), serve(False, "127.0.0.2")
    reg.realm = _odd("http", third, reg, "/token")
    _login(docker_config, reg.host)
    with pytest.raises(Exception) as e:
        _push(_store(tmp_path), reg, _client(reg, tls))
    assert third.authorizations() == [], "the registry's credentials reached a third host"
    assert third.seen == []
    _one_line(e, rf"^registry {reg.host} names the token service {re.escape(reg.realm)}, "
                 ".*backslash.*; refused")


@pytest.mark.parametrize("url", [
    "https://evil.example\\@registry.example/v2/x",   # the review's example
    "https://evil.example\\registry.example/v2/x",
    "https://ci:s3cret@registry.example/v2/x",          # userinfo, even on the registry's host
    "https://evil.example@registry.example/v2/x",
    "https://registry.example/v2/x\\..\\y",
    "https://registry.example/v2/x y",
    "https://registry.example/v2/x\ty",
    "https://registry.example\t/v2/x",
    " https://registry.example/v2/x",
    "https://registry.example/v2/x\r\nX-Injected: 1",
    "https://registry.example/v2/x\x00",
    "https://registry.example/v2/x\x1b[2K",
    "https://registry.example/v2/x\u00a0",
    "https://registry.example/v2/x\u2028",
])
def test_a_url_the_parsers_may_read_differently_is_refused_in_one_line(url: str) -> None:
    with pytest.raises(RegistryError) as e:
        Client("registry.example").is_own(url, "a redirect to")
    assert str(e.value).startswith("registry registry.example sent a redirect to ")
    assert str(e.value).endswith("; refused") and str(e.value).isprintable()


@pytest.mark.parametrize(("url", "own"), [
    ("https://registry.example/v2/x", True),
    ("https://REGISTRY.example:443/v2/x", True),
    ("https://registry.example/v2/x@y?sig=a@b#@c", True),  # '@' past the authority is data
    ("https://evil.example/%5C@registry.example/v2/x", False),
    ("https://registry.example:444/v2/x", False),
    ("https://registry.example.evil.example/v2/x", False),
])
def test_the_origin_is_the_one_requests_connects_to(url: str, own: bool) -> None:
    assert Client("registry.example").is_own(url, "a redirect to") is own


def test_a_redirect_with_an_at_sign_past_the_authority_is_still_followed(
        serve: Callable[..., Server], tls: tuple[ssl.SSLContext, Path], docker_config: Path,
        tmp_path: Path) -> None:
    reg = _pushed(serve, tls, docker_config, tmp_path, True)
    cdn = serve(True)
    _to_cdn(reg, cdn)
    for path, target in reg.redirects.items():
        reg.redirects[path] = target + "?sig=user@example&x=%5C"
    assert len(_pull(reg, _client(reg, tls), tmp_path).blobs_received) == 3
    assert cdn.authorizations() == [] and len(cdn.seen) == 3


def test_a_location_that_urljoin_would_clean_is_refused_as_sent(
        serve: Callable[..., Server], tls: tuple[ssl.SSLContext, Path], docker_config: Path,
        tmp_path: Path) -> None:
    # urllib.parse drops tabs before joining: the Location is judged as it came
    reg = _pushed(serve, tls, docker_config, tmp_path, True)
    cdn = serve(True)
    _to_cdn(reg, cdn)
    for path, target in reg.redirects.items():
        reg.redirects[path] = target.replace("//", "//\t", 1)
    with pytest.raises(Exception) as e:
        _pull(reg, _client(reg, tls), tmp_path)
    _one_line(e, rf"^registry {reg.host} sent a redirect to .*, which holds a control "
                 "character or whitespace; refused$")
    assert cdn.seen == []
