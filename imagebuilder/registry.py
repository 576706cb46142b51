"""OCI distribution client: push images from the local store to a registry and pull them back.

Registries (ECR, GHCR, Harbor, Artifactory, Docker Hub, distribution) are the artifact
repositories teams already run, so an image travels between machines as what it already is in
the store: an OCI manifest, its config and its layers. This module speaks the distribution API
(distribution-spec, ``/v2/``) over requests:

- push HEADs every blob first and uploads only what the registry lacks (an app-only change
  uploads the app layer and the config), by a cross-repository mount when the registry already
  holds the blob in another repository we pushed to, else monolithically (one streamed PUT) or,
  above ``chunk_size``, in chunks (PATCH with Content-Range). The manifest goes last, so a tag
  never names a manifest whose blobs are missing, however a push is interrupted; a rerun sends
  only what is still missing. A tag that already names another manifest is not moved without
  ``force``.
- pull streams every blob into a scratch directory of the store while hashing it, checks digest
  and size, and only then moves the blobs and the manifest into the store, so the store is left
  as it was if anything fails. Memory stays flat whatever the layer size.
- authentication answers the registry's challenge: Basic, or a Bearer token fetched from the
  realm it names, with credentials from the Docker config file (``$DOCKER_CONFIG/config.json``
  or ``~/.docker/config.json``: ``auths``, ``credHelpers``, ``credsStore``; a helper is run as
  ``docker-credential-NAME get``). Plain HTTP (``insecure``) is only allowed on loopback.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import re
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from . import blobs
from .errors import FetchError, NotFoundError, UserError
from .hashing import MultiHasher
from .store import (
    ARTIFACT_TYPE,
    CONFIG_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    Descriptor,
    Image,
    Store,
    split_ref,
)

CHUNK = 1 << 20
DEFAULT_CHUNK_SIZE = 64 << 20
"""Blobs larger than this are uploaded in chunks of this size (PATCH); smaller in one PUT."""
RETRIES = 2
RETRY_BASE_DELAY = 0.5  # seconds, doubled each time (tests patch it down)
TIMEOUT = (10.0, 300.0)
WORKERS = 3
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
ACCEPT = ", ".join([
    MANIFEST_MEDIA_TYPE,
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])

_HOST_RE = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9a-fA-F:]+\])(?::\d{1,5})?$")
_REPO_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)"
                      r"[a-z0-9]+)*)*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


class RegistryError(FetchError):
    """The registry is down, failed (5xx) or answered something that breaks the protocol."""


class RegistryAuthError(UserError):
    """The registry refused our credentials (401) or the permission (403)."""


# --- references ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegistryRef:
    """``HOST[:PORT]/REPO[:TAG|@DIGEST]``: where an image lives in a registry."""

    host: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> RegistryRef:
        usage = (f"'{text}' is not a registry reference of the form HOST[:PORT]/REPO[:TAG] "
                 "(e.g. 127.0.0.1:5000/hello:1.0.0)")
        host, sep, rest = text.partition("/")
        if not sep or not rest or not _HOST_RE.fullmatch(host) or not (
                "." in host or ":" in host or host == "localhost"):
            raise UserError(usage)
        digest = None
        if "@" in rest:
            rest, _, digest = rest.partition("@")
            if not _DIGEST_RE.fullmatch(digest):
                raise UserError(f"'{digest}' in '{text}' is not a sha256 digest")
        repo, tag = rest, None
        last = rest.rsplit("/", 1)[-1]
        if ":" in last:
            repo, _, tag = rest.rpartition(":")
            if not _TAG_RE.fullmatch(tag):
                raise UserError(f"'{tag}' in '{text}' is not a valid tag")
        if not _REPO_RE.fullmatch(repo):
            raise UserError(f"{usage}; the repository must be lowercase letters, digits, "
                            "'.', '_', '-' and '/'")
        return cls(host, repo, tag, digest)

    def with_tag(self, tag: str) -> RegistryRef:
        return RegistryRef(self.host, self.repository, tag, None)

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest if given, else the tag."""
        ref = self.digest or self.tag
        if ref is None:
            raise UserError(f"'{self}' names no tag or digest")
        return ref

    def __str__(self) -> str:
        out = f"{self.host}/{self.repository}"
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


# --- credentials ---------------------------------------------------------------------------


def docker_config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def credentials_for(host: str, config_path: Path | None = None) -> tuple[str, str] | None:
    """(username, secret) for ``host`` from the Docker config file or its credential helper."""
    path = config_path or docker_config_path()
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read the Docker config file: {e}") from None
    if not isinstance(config, dict):
        raise UserError(f"{path}: not a Docker config file (expected a JSON object)")
    helper = (config.get("credHelpers") or {}).get(host) or config.get("credsStore")
    auths = config.get("auths") or {}
    entry = next((auths[k] for k in (host, f"https://{host}", f"http://{host}",
                                     f"https://{host}/v2/") if k in auths), None)
    if isinstance(entry, dict):
        if entry.get("identitytoken"):
            return "<token>", str(entry["identitytoken"])
        if entry.get("auth"):
            try:
                user, _, secret = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise UserError(f"{path}: auths.{host}.auth is not base64 of USER:PASSWORD"
                                ) from None
            return user, secret
        if entry.get("username"):
            return str(entry["username"]), str(entry.get("password", ""))
    if helper:
        return _from_helper(str(helper), host)
    return None


def _from_helper(helper: str, host: str) -> tuple[str, str] | None:
    program = f"docker-credential-{helper}"
    try:
        result = subprocess.run([program, "get"], input=host, capture_output=True, text=True,
                                timeout=60)
    except FileNotFoundError:
        raise UserError(f"the Docker config names credential helper '{helper}' but "
                        f"{program} is not on PATH") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"{program} get did not answer in 60 s") from None
    if result.returncode != 0:
        if "not found" in (result.stdout + result.stderr).lower():
            return None
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
        raise UserError(f"{program} get failed (exit {result.returncode}): {tail[0]}")
    try:
        answer = json.loads(result.stdout)
        return str(answer["Username"]), str(answer["Secret"])
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{program} get printed no JSON with Username and Secret") from None


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    return scheme.lower(), params


# --- the client ----------------------------------------------------------------------------


class Client:
    """One registry host: requests with authentication, retries and one-line errors."""

    def __init__(self, host: str, *, insecure: bool = False,
                 docker_config: Path | None = None,
                 session: requests.Session | None = None) -> None:
        if insecure and not is_loopback(host):
            raise UserError(f"--insecure (plain HTTP) is only allowed for a registry on loopback, "
                            f"not {host}; use HTTPS")
        self.host = host
        self.base = f"{'http' if insecure else 'https'}://{host}"
        self.insecure = insecure
        self.docker_config = docker_config
        self.session = session or requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_maxsize=WORKERS * 2)
        self.session.mount(self.base, adapter)
        self._auth: dict[str, str] = {}  # scope -> Authorization header
        self._basic: str | None = None
        self._lock = threading.Lock()

    # authentication

    def _header_for(self, scope: str) -> dict[str, str]:
        with self._lock:
            value = self._auth.get(scope) or self._basic
        return {"Authorization": value} if value else {}

    def _authenticate(self, response: requests.Response, scope: str, sent: str | None) -> bool:
        """Answer a 401's challenge; whether there is something other than ``sent`` (the
        Authorization the refused request carried) to retry with."""
        scheme, params = _parse_challenge(response.headers.get("WWW-Authenticate", ""))
        creds = credentials_for(self.host, self.docker_config)
        if scheme == "basic":
            if creds is None or creds[0] == "<token>":
                return False
            value = "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
            with self._lock:
                self._basic = value
            return value != sent
        if scheme != "bearer" or "realm" not in params:
            return False
        token = self._fetch_token(params, scope, creds)
        value = f"Bearer {token}"
        with self._lock:
            self._auth[scope] = value
        return value != sent

    def _fetch_token(self, params: dict[str, str], scope: str,
                     creds: tuple[str, str] | None) -> str:
        realm = params["realm"]
        scopes = params.get("scope", "").split() or scope.split()
        try:
            if creds and creds[0] == "<token>":
                response = self.session.post(realm, data={
                    "grant_type": "refresh_token", "refresh_token": creds[1],
                    "service": params.get("service", ""), "scope": " ".join(scopes),
                    "client_id": "imagebuilder"}, timeout=TIMEOUT)
            else:
                query: list[tuple[str, str]] = [("scope", s) for s in scopes]
                if params.get("service"):
                    query.append(("service", params["service"]))
                response = self.session.get(realm, params=query, timeout=TIMEOUT,
                                            auth=creds if creds else None)
        except requests.RequestException as e:
            raise RegistryError(f"cannot get a token for {self.host} from {realm}: "
                                f"{_short(e)}") from None
        if response.status_code in (401, 403):
            raise RegistryAuthError(
                f"the token service {realm} refused "
                f"{'the credentials' if creds else 'anonymous access'} for {self.host} "
                f"(HTTP {response.status_code}); log in with 'docker login {self.host}'")
        if response.status_code != 200:
            raise RegistryError(f"token service {realm} answered HTTP {response.status_code}")
        try:
            body = response.json()
            return str(body.get("token") or body["access_token"])
        except (ValueError, KeyError, TypeError):
            raise RegistryError(f"token service {realm} sent no token") from None

    # requests

    def request(self, method: str, url: str, *, scope: str, ok: tuple[int, ...],
                what: str, retry: bool = True, body: Callable[[], Any] | None = None,
                **kwargs: Any) -> requests.Response:
        """Send (re-sending after an auth challenge, retrying transient failures when
        ``retry``); the response if its status is in ``ok``, else a one-line error."""
        if not url.startswith("http"):
            url = self.base + url
        attempts = RETRIES + 1 if retry else 1
        last = ""
        for attempt in range(attempts):
            if attempt:
                time.sleep(RETRY_BASE_DELAY * 2 ** (attempt - 1))
            try:
                response = self._send(method, url, scope, body, kwargs)
            except requests.exceptions.SSLError as e:
                hint = (" (plain HTTP? pass --insecure for a registry on loopback)"
                        if is_loopback(self.host) and not self.insecure else "")
                raise RegistryError(f"TLS with registry {self.host} failed{hint}: "
                                    f"{_short(e)}") from None
            except requests.ConnectionError as e:
                last = f"cannot connect ({_short(e)}); is it running?"
                continue
            except requests.Timeout:
                last = "timed out"
                continue
            if response.status_code in ok:
                return response
            if response.status_code in TRANSIENT_STATUS:
                last = f"HTTP {response.status_code}{_error_detail(response)}"
                response.close()
                continue
            self._raise_for(response, what)
        raise RegistryError(f"registry {self.host} failed to {what}: {last}"
                            + (f" ({attempts} attempts)" if attempts > 1 else ""))

    def _send(self, method: str, url: str, scope: str, body: Callable[[], Any] | None,
              kwargs: dict[str, Any]) -> requests.Response:
        """One request, sent again once with new credentials if a 401 challenge asks."""
        extra = dict(kwargs)
        headers = extra.pop("headers", {})
        sent = self._header_for(scope)
        response = self.session.request(
            method, url, headers={**headers, **sent}, timeout=TIMEOUT,
            data=body() if body else None, **extra)
        if response.status_code == 401 and self._authenticate(
                response, scope, sent.get("Authorization")):
            response.close()
            response = self.session.request(
                method, url, headers={**headers, **self._header_for(scope)}, timeout=TIMEOUT,
                data=body() if body else None, **extra)
        return response

    def _raise_for(self, response: requests.Response, what: str) -> None:
        status = response.status_code
        detail = _error_detail(response)
        response.close()
        if status == 401:
            creds = credentials_for(self.host, self.docker_config)
            raise RegistryAuthError(
                f"registry {self.host} refused {'the credentials' if creds else 'anonymous '}"
                f"{'' if creds else 'access'} to {what} (HTTP 401{detail}); log in with "
                f"'docker login {self.host}' or add it to {docker_config_path()}")
        if status == 403:
            raise RegistryAuthError(f"registry {self.host} denied permission to {what} "
                                    f"(HTTP 403{detail})")
        if status == 404:
            raise NotFoundError(f"registry {self.host} has no such thing: cannot {what} "
                                f"(HTTP 404{detail})")
        raise RegistryError(f"registry {self.host} failed to {what}: HTTP {status}{detail}")

    # distribution API

    def check(self) -> None:
        """GET /v2/: the registry is there and speaks the API (authenticating if asked)."""
        self.request("GET", "/v2/", scope="", ok=(200,), what="answer /v2/").close()

    def head_blob(self, repo: str, digest: str) -> bool:
        response = self.request("HEAD", f"/v2/{repo}/blobs/{digest}", scope=_pull(repo),
                                ok=(200, 404), what=f"check blob {digest[:19]} in {repo}")
        response.close()
        return response.status_code == 200

    def manifest_digest(self, repo: str, reference: str) -> str | None:
        """Digest of the manifest ``reference`` names in ``repo``, or None if there is none."""
        response = self.request("HEAD", f"/v2/{repo}/manifests/{reference}", scope=_pull(repo),
                                ok=(200, 404), what=f"look up {repo}:{reference}",
                                headers={"Accept": ACCEPT})
        response.close()
        if response.status_code == 404:
            return None
        digest = response.headers.get("Docker-Content-Digest")
        if digest:
            return digest
        data = self.get_manifest(repo, reference)
        return None if data is None else _sha256(data[0])

    def get_manifest(self, repo: str, reference: str) -> tuple[bytes, str] | None:
        """(bytes, media type) of manifest ``reference``, or None if there is none."""
        response = self.request("GET", f"/v2/{repo}/manifests/{reference}", scope=_pull(repo),
                                ok=(200, 404), what=f"get manifest {repo}:{reference}",
                                headers={"Accept": ACCEPT})
        with response:
            if response.status_code == 404:
                return None
            data = response.content
            if len(data) > 4 << 20:
                raise RegistryError(f"manifest {repo}:{reference} is larger than 4 MiB")
            media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        if _DIGEST_RE.fullmatch(reference) and _sha256(data) != reference:
            raise RegistryError(f"manifest {repo}@{reference} from {self.host} does not match "
                                "its digest")
        try:
            media_type = json.loads(data).get("mediaType") or media_type
        except (ValueError, AttributeError):
            raise RegistryError(f"manifest {repo}:{reference} is not JSON") from None
        return data, media_type

    def put_manifest(self, repo: str, reference: str, data: bytes, media_type: str) -> str:
        response = self.request(
            "PUT", f"/v2/{repo}/manifests/{reference}", scope=_push(repo), ok=(201, 200),
            what=f"store manifest {repo}:{reference}",
            headers={"Content-Type": media_type}, body=lambda: data)
        response.close()
        digest = _sha256(data)
        echoed = response.headers.get("Docker-Content-Digest")
        if echoed and echoed != digest:
            raise RegistryError(f"registry {self.host} stored manifest {repo}:{reference} as "
                                f"{echoed}, not {digest}")
        return digest

    def mount_blob(self, repo: str, digest: str, source: str) -> str | None:
        """Try a cross-repository mount; None if mounted, else the upload URL it opened."""
        response = self.request(
            "POST", f"/v2/{repo}/blobs/uploads/", scope=f"{_push(repo)} {_pull(source)}",
            ok=(201, 202), what=f"mount blob {digest[:19]} into {repo}",
            params={"mount": digest, "from": source})
        response.close()
        if response.status_code == 201:
            return None
        return self._location(response)

    def start_upload(self, repo: str) -> str:
        response = self.request("POST", f"/v2/{repo}/blobs/uploads/", scope=_push(repo),
                                ok=(202,), what=f"start an upload to {repo}")
        response.close()
        return self._location(response)

    def _location(self, response: requests.Response) -> str:
        location = response.headers.get("Location")
        if not location:
            raise RegistryError(f"registry {self.host} gave no upload Location")
        return urllib.parse.urljoin(self.base + "/", location)

    def upload(self, repo: str, url: str, path: Path, desc: Descriptor, chunk_size: int,
               progress: Callable[[int], None]) -> None:
        """Send blob ``path`` to the upload session at ``url``: one PUT, or PATCH chunks then
        a closing PUT when it is larger than ``chunk_size``."""
        scope = _push(repo)
        what = f"upload blob {desc.digest[:19]} to {repo}"
        check = _SentDigest(path, desc)
        if desc.size <= chunk_size:
            response = self.request(
                "PUT", _with_query(url, digest=desc.digest), scope=scope, ok=(201,),
                what=what, retry=False,
                headers={"Content-Type": "application/octet-stream"},
                body=lambda: _FileBody(path, 0, desc.size, progress, check))
            response.close()
            return
        offset = 0
        while offset < desc.size:
            length = min(chunk_size, desc.size - offset)
            start = offset
            response = self.request(
                "PATCH", url, scope=scope, ok=(202,), what=what, retry=False,
                headers={"Content-Type": "application/octet-stream",
                         "Content-Range": f"{start}-{start + length - 1}"},
                body=lambda s=start, n=length: _FileBody(path, s, n, progress,  # type: ignore[misc]
                                                         check))
            response.close()
            url = self._location(response)
            offset += length
        response = self.request("PUT", _with_query(url, digest=desc.digest), scope=scope,
                                ok=(201,), what=what, retry=False,
                                headers={"Content-Type": "application/octet-stream"})
        response.close()

    def fetch_blob(self, repo: str, desc: Descriptor, store: Store, staging: Path,
                   progress: Callable[[int], None]) -> Path:
        """Stream blob ``desc`` into ``staging``, verified (IntegrityError if not)."""
        last: Exception | None = None
        for attempt in range(RETRIES + 1):
            if attempt:
                time.sleep(RETRY_BASE_DELAY * 2 ** (attempt - 1))
            response = self.request("GET", f"/v2/{repo}/blobs/{desc.digest}", scope=_pull(repo),
                                    ok=(200,), what=f"get blob {desc.digest[:19]} from {repo}",
                                    stream=True)
            received = 0

            def chunks(r: requests.Response = response) -> Iterator[bytes]:
                nonlocal received
                for chunk in r.iter_content(CHUNK):
                    received += len(chunk)
                    progress(len(chunk))
                    yield chunk

            try:
                with response:
                    return store.receive_blob(staging, desc.digest, desc.size, chunks())
            except requests.RequestException as e:
                progress(-received)
                last = e
        raise RegistryError(f"registry {self.host} failed to send blob {desc.digest[:19]}: "
                            f"{_short(last or Exception())}")


class _SentDigest:
    """The SHA-256 of a blob as its bytes are sent, in order, whatever the chunking; a range
    sent again (after an auth challenge) is not hashed twice. Once the last byte has gone,
    DamagedError unless it is the blob's digest: a damaged local blob is never pushed."""

    def __init__(self, path: Path, desc: Descriptor) -> None:
        self.path, self.digest, self.size = path, desc.digest, desc.size
        self.hasher = MultiHasher(("sha256",))

    def add(self, offset: int, data: bytes) -> None:
        if offset == self.hasher.size:
            self.hasher.update(data)
        if self.hasher.size == self.size:
            actual = self.hasher.hexdigests()["sha256"]
            if "sha256:" + actual != self.digest:
                raise blobs.mismatch(self.path, self.digest, actual)


class _FileBody:
    """A request body streaming ``length`` bytes of a file from ``offset`` in 1 MiB reads;
    ``len()`` gives requests the Content-Length. What it sends goes through ``check``."""

    def __init__(self, path: Path, offset: int, length: int,
                 progress: Callable[[int], None], check: _SentDigest) -> None:
        self.path, self.offset, self.length, self.progress = path, offset, length, progress
        self.check = check

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[bytes]:
        try:
            f = open(self.path, "rb")  # noqa: SIM115
        except FileNotFoundError:
            raise blobs.missing(self.path, self.check.digest) from None
        with f:
            f.seek(self.offset)
            left, pos = self.length, self.offset
            while left:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    raise blobs.mismatch(self.path, self.check.digest, "(shorter than recorded)")
                self.check.add(pos, chunk)  # raises before the last chunk leaves if damaged
                left -= len(chunk)
                pos += len(chunk)
                self.progress(len(chunk))
                yield chunk


def _pull(repo: str) -> str:
    return f"repository:{repo}:pull"


def _push(repo: str) -> str:
    return f"repository:{repo}:pull,push"


def _with_query(url: str, **params: str) -> str:
    sep = "&" if urllib.parse.urlsplit(url).query else "?"
    return url + sep + urllib.parse.urlencode(params)


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _error_detail(response: requests.Response) -> str:
    try:
        errors = response.json().get("errors") or []
        first = errors[0]
        return f": {first.get('code', '')} {first.get('message', '')}".rstrip()
    except (ValueError, AttributeError, IndexError, TypeError):
        return ""


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:200] + "..."


# --- where blobs were pushed: sources for cross-repository mounts ---------------------------


class BlobLocations:
    """A small JSON map host -> digest -> repositories we pushed the blob to."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._data: dict[str, dict[str, list[str]]] = {}
        if path is not None:
            try:
                data = json.loads(path.read_text())
                if isinstance(data, dict):
                    self._data = data
            except (OSError, ValueError):
                pass

    def source(self, host: str, digest: str, repo: str) -> str | None:
        repos = self._data.get(host, {}).get(digest, [])
        return next((r for r in repos if r != repo), None)

    def add(self, host: str, digest: str, repo: str) -> None:
        repos = self._data.setdefault(host, {}).setdefault(digest, [])
        if repo not in repos:
            repos.append(repo)
            del repos[:-4]

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(self._data, sort_keys=True))
        os.replace(tmp, self.path)


# --- push and pull -------------------------------------------------------------------------


@dataclass
class TransferResult:
    """What a push or pull moved."""

    ref: str
    target: str
    digest: str
    bytes_sent: int = 0
    bytes_received: int = 0
    blobs_sent: list[str] = field(default_factory=list)
    blobs_mounted: list[str] = field(default_factory=list)
    blobs_skipped: list[str] = field(default_factory=list)
    blobs_received: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "ref": self.ref, "target": self.target, "digest": self.digest,
            "bytes_sent": self.bytes_sent, "bytes_received": self.bytes_received,
            "blobs_sent": len(self.blobs_sent), "blobs_mounted": len(self.blobs_mounted),
            "blobs_skipped": len(self.blobs_skipped),
            "blobs_received": len(self.blobs_received), "seconds": round(self.seconds, 3),
        }


Progress = Callable[[int, int], Callable[[int], None]]
"""progress(total_bytes) -> update(n): how push and pull report bytes moved."""


def _no_progress(total: int, count: int) -> Callable[[int], None]:
    return lambda n: None


def push(store: Store, image: Image, target: RegistryRef, client: Client, *,
         force: bool = False, chunk_size: int = DEFAULT_CHUNK_SIZE,
         locations: BlobLocations | None = None, progress: Progress = _no_progress,
         ) -> TransferResult:
    """Push ``image`` to ``target`` (its tag defaults to the image's version)."""
    started = time.monotonic()
    if target.digest:
        raise UserError(f"push to a tag, not a digest: '{target}'")
    target = target if target.tag else target.with_tag(image.version)
    repo, tag = target.repository, target.reference
    manifest = store.read_blob(image.digest)
    current = client.manifest_digest(repo, tag)
    if current is not None and current != image.digest and not force:
        raise UserError(f"{target} already names another image ({current[:19]}); pass "
                        "--force to move the tag")
    result = TransferResult(image.ref, str(target), image.digest)
    descs = [*image.layers, Descriptor.from_json(image.manifest["config"])]
    for desc in descs:
        if not store.has_blob(desc.digest, desc.size):
            raise UserError(f"blob {desc.digest[:19]} of {image.ref} is missing from the "
                            "local store; rebuild the image")
    missing = [d for d in _unique(descs) if not client.head_blob(repo, d.digest)]
    result.blobs_skipped = [d.digest for d in _unique(descs) if d not in missing]
    update = progress(sum(d.size for d in missing), len(missing))
    sent = [0]
    lock = threading.Lock()

    def count(n: int) -> None:
        with lock:
            sent[0] += n
        update(n)

    def one(desc: Descriptor) -> str:
        source = locations.source(client.host, desc.digest, repo) if locations else None
        url = client.mount_blob(repo, desc.digest, source) if source else None
        if source and url is None:
            return "mounted"
        for attempt in range(RETRIES + 1):
            if url is None:
                url = client.start_upload(repo)
            before = sent[0]
            try:
                client.upload(repo, url, store.blob_path(desc.digest), desc, chunk_size, count)
                return "sent"
            except RegistryError:
                count(before - sent[0])  # do not count what the failed attempt sent
                if attempt == RETRIES:
                    raise
                time.sleep(RETRY_BASE_DELAY * 2 ** attempt)
                url = None
        raise AssertionError("unreachable")

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        outcomes = list(pool.map(one, missing))
    for desc, outcome in zip(missing, outcomes, strict=True):
        (result.blobs_mounted if outcome == "mounted" else result.blobs_sent).append(desc.digest)
    result.bytes_sent = sent[0]
    client.put_manifest(repo, tag, manifest, MANIFEST_MEDIA_TYPE)
    if locations is not None:
        for desc in descs:
            locations.add(client.host, desc.digest, repo)
        locations.save()
    result.seconds = time.monotonic() - started
    return result


def pull(store: Store, source: RegistryRef, client: Client, *, force: bool = False,
         local_ref: str | None = None, progress: Progress = _no_progress) -> TransferResult:
    """Pull ``source`` into the store under ``local_ref`` (default: the image's own name and
    version from its config). Nothing enters the store unless every blob verified."""
    started = time.monotonic()
    repo = source.repository
    got = client.get_manifest(repo, source.reference)
    if got is None:
        raise NotFoundError(f"{source} not found in the registry")
    data, media_type = got
    digest = _sha256(data)
    manifest = json.loads(data)
    config_desc = manifest.get("config") or {}
    if media_type != MANIFEST_MEDIA_TYPE or config_desc.get("mediaType") != CONFIG_MEDIA_TYPE:
        raise UserError(f"{source} is not an imagebuilder image ({media_type or 'no media type'}"
                        f", config {config_desc.get('mediaType')}); pull it with skopeo instead")
    if manifest.get("artifactType", ARTIFACT_TYPE) != ARTIFACT_TYPE:
        raise UserError(f"{source} is a {manifest.get('artifactType')}, not an image")
    descs = [Descriptor.from_json(config_desc),
             *(Descriptor.from_json(layer) for layer in manifest.get("layers", []))]
    missing = [d for d in _unique(descs) if not store.has_intact_blob(d.digest, d.size)]
    result = TransferResult("", str(source), digest,
                            blobs_skipped=[d.digest for d in _unique(descs) if d not in missing])
    update = progress(sum(d.size for d in missing), len(missing))
    received = [0]
    lock = threading.Lock()

    def count(n: int) -> None:
        with lock:
            received[0] += n
        update(n)

    with store.staging() as staging:
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            paths = list(pool.map(
                lambda d: client.fetch_blob(repo, d, store, staging, count), missing))
        staged = {d.digest: p for d, p in zip(missing, paths, strict=True)}
        config_path = staged.get(descs[0].digest) or store.blob_path(descs[0].digest)
        config = json.loads(config_path.read_bytes())
        if local_ref is None:
            name = config.get("name") or repo.rsplit("/", 1)[-1]
            version = config.get("version") or source.tag or digest[7:19]
            local_ref = f"{name}:{version}"
        split_ref(local_ref)
        store.put_manifest(local_ref, data, staged=staged, force=force)
    result.ref = local_ref
    result.blobs_received = list(staged)
    result.bytes_received = received[0]
    result.seconds = time.monotonic() - started
    return result


def _unique(descs: list[Descriptor]) -> list[Descriptor]:
    seen: dict[str, Descriptor] = {}
    for d in descs:
        seen.setdefault(d.digest, d)
    return list(seen.values())
