"""A real OCI registry for tests and benchmarks: Debian's docker-registry (distribution) on
127.0.0.1, with its own temporary storage directory and config file, optionally behind htpasswd
basic authentication; and :class:`ReferrersProxy`, which puts distribution-spec 1.1's referrers
API in front of it (docker-registry 2.8 has none, and no packaged registry does)."""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from support.servers import free_port

BINARY = "/usr/bin/docker-registry"


def _bcrypt(password: str) -> str:
    """A bcrypt hash for htpasswd, by glibc's crypt (the module is deprecated, still there)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))


@dataclass
class Registry:
    """A running docker-registry."""

    port: int
    storage: Path
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def manifest_digest(self, repo: str, tag: str) -> str | None:
        """The digest of ``repo:tag``'s OCI manifest, or None if the registry has no such tag."""
        request = urllib.request.Request(
            f"http://{self.host}/v2/{repo}/manifests/{tag}", method="HEAD",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return str(response.headers["Docker-Content-Digest"])
        except urllib.error.HTTPError as err:
            err.close()
            return None

    def has_blob(self, repo: str, digest: str) -> bool:
        request = urllib.request.Request(f"http://{self.host}/v2/{repo}/blobs/{digest}",
                                         method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=10):
                return True
        except urllib.error.HTTPError as err:
            err.close()
            return False

    def blob_data_path(self, digest: str) -> Path:
        hexd = digest.removeprefix("sha256:")
        return (self.storage / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data")


def available() -> bool:
    return Path(BINARY).exists()


def start_registry(workdir: Path, users: dict[str, str] | None = None) -> Registry:
    """Start docker-registry in ``workdir`` (storage/, config.yml, log); wait until it answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    storage = workdir / "storage"
    storage.mkdir(exist_ok=True)
    port = free_port()
    auth = ""
    if users:
        htpasswd = workdir / "htpasswd"
        htpasswd.write_text("".join(
            f"{user}:{_bcrypt(pw)}\n"
            for user, pw in users.items()))
        auth = f"auth:\n  htpasswd:\n    realm: test-realm\n    path: {htpasswd}\n"
    config = workdir / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        + auth)
    log = workdir / "registry.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([BINARY, "serve", str(config)], stdout=out,
                                stderr=subprocess.STDOUT)
    registry = Registry(port, storage, proc, log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited {proc.returncode}: {log.read_text()}")
        try:
            urllib.request.urlopen(f"http://{registry.host}/v2/", timeout=2).close()
            return registry
        except urllib.error.HTTPError as err:
            err.close()
            return registry  # 401 with auth: it answers
        except OSError:
            time.sleep(0.05)
    registry.stop()
    raise RuntimeError(f"docker-registry did not answer on {registry.host}: {log.read_text()}")


def skopeo() -> str | None:
    return shutil.which("skopeo")


# --- the referrers API (distribution-spec 1.1), in front of docker-registry ------------------

_REFERRERS = re.compile(r"^/v2/(?P<repo>.+)/referrers/(?P<digest>sha256:[0-9a-f]{64})$")
_MANIFEST = re.compile(r"^/v2/(?P<repo>.+)/manifests/(?P<ref>[^/]+)$")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length",
               "proxy-connection", "te", "trailer", "upgrade"}
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"


class ReferrersProxy:
    """An HTTP proxy on 127.0.0.1 in front of a :class:`Registry` that answers
    ``GET /v2/<name>/referrers/<digest>`` as distribution-spec 1.1 says (an OCI image index of
    the manifests whose ``subject`` is that digest, filtered by ``?artifactType=`` with
    ``OCI-Filters-Applied``) and sets ``OCI-Subject`` on the answer to a manifest PUT that has a
    subject; every other request goes to the registry as it came (the Host header too, so the
    registry's upload Locations name the proxy). It learns the referrers from the PUTs that pass
    through it; ``requests`` records (method, path) of each request."""

    def __init__(self, upstream: Registry) -> None:
        self.upstream = upstream
        self.referrers: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def learn(self, repo: str, data: bytes) -> str | None:
        """Record manifest ``data`` put into ``repo`` as a referrer if it has a subject; the
        subject's digest."""
        try:
            manifest = json.loads(data)
            subject = manifest["subject"]["digest"]
        except (ValueError, KeyError, TypeError):
            return None
        config_type = (manifest.get("config") or {}).get("mediaType")
        descriptor = {
            "mediaType": manifest.get("mediaType", "application/vnd.oci.image.manifest.v1+json"),
            "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data),
            "artifactType": manifest.get("artifactType") or config_type,
        }
        if manifest.get("annotations"):
            descriptor["annotations"] = manifest["annotations"]
        with self.lock:
            self.referrers.setdefault((repo, subject), {})[descriptor["digest"]] = descriptor
        return str(subject)

    def index(self, repo: str, subject: str, artifact_type: str | None) -> bytes:
        with self.lock:
            found = list(self.referrers.get((repo, subject), {}).values())
        if artifact_type:
            found = [d for d in found if d["artifactType"] == artifact_type]
        return json.dumps({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE,
                           "manifests": sorted(found, key=lambda d: d["digest"])}).encode()


def _handler(proxy: ReferrersProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            found = _REFERRERS.match(url.path)
            if found is None:
                self.forward()
                return
            proxy.requests.append(("GET", self.path))
            kind = urllib.parse.parse_qs(url.query).get("artifactType", [None])[0]
            body = proxy.index(found["repo"], found["digest"], kind)
            self.send_response(200)
            self.send_header("Content-Type", INDEX_MEDIA_TYPE)
            self.send_header("Content-Length", str(len(body)))
            if kind:
                self.send_header("OCI-Filters-Applied", "artifactType")
            self.end_headers()
            self.wfile.write(body)

        def forward(self) -> None:
            proxy.requests.append((self.command, self.path))
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            if body is not None:
                headers["Content-Length"] = str(len(body))
            conn = http.client.HTTPConnection(proxy.upstream.host, timeout=120)
            try:
                conn.request(self.command, self.path, body, headers)
                response = conn.getresponse()
                data = response.read()
            finally:
                conn.close()
            manifest = _MANIFEST.match(urllib.parse.urlsplit(self.path).path)
            subject = None
            if self.command == "PUT" and manifest and response.status == 201 and body:
                subject = proxy.learn(manifest["repo"], body)
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in _HOP_BY_HOP:
                    self.send_header(key, value)
            if subject:
                self.send_header("OCI-Subject", subject)
            self.send_header("Content-Length", response.getheader("Content-Length", "0")
                             if self.command == "HEAD" else str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = forward

    return Handler
