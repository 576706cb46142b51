"""OCI distribution client: one registry host, its API (distribution-spec, ``/v2/``) over requests.

Authentication answers the registry's challenge: Basic, or a Bearer token fetched from the realm
it names, with the credentials of :mod:`imagebuilder.registry.creds`. Transient failures (connection
errors, 429, 5xx) are retried; every other answer becomes one line naming what was being done.
Plain HTTP (``insecure``) is only allowed on loopback.

Credentials go to the registry's own origin (scheme, host and port) and nowhere else. The
distribution spec lets a registry send an upload ``Location`` or a blob download elsewhere (blob
storage, a CDN): we go there (following GET and HEAD redirects ourselves, at most
:data:`MAX_REDIRECTS`) without the Authorization header, and never from HTTPS to plain HTTP nor
over plain HTTP off loopback (:meth:`Client.is_own`). A Bearer token realm gets the Docker-config
credentials only over HTTPS or on the registry's own origin, and its redirects are not followed.
An origin is judged from the URL exactly as requests will send it (:func:`.urls.origin`), since
urllib.parse and urllib3 read some authorities differently (``https://a\\@b/`` is host ``b`` to
one, ``a`` to the other); a URL holding a backslash, userinfo, a control character or
whitespace is refused outright (:func:`.urls.oddity`).

What the registry sends is bounded before it is trusted (:mod:`.streams`): a manifest is read as
a stream and the read stops at :data:`imagebuilder.registry.manifest.MAX_MANIFEST_BYTES`, whatever
Content-Length says; a blob comes back as a :class:`~.streams.VerifiedStream`, hashed as it is read
and cut off at the size its descriptor gives, which the caller hands to the store to write. What
push sends is the caller's stream of the local blob (:mod:`.transfer` checks it as it goes): the
client reads and writes no store.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import requests

from ..errors import NotFoundError, UserError
from ..store.oci import MANIFEST_MEDIA_TYPE, sha256_digest
from . import streams, urls
from .creds import credentials_for, docker_config_path, parse_challenge
from .manifest import MAX_MANIFEST_BYTES, load_object
from .refs import DIGEST_RE, is_loopback
from .streams import RegistryError, VerifiedStream, error_detail, short
from .urls import oddity, shown, with_query

__all__ = ["Body", "Client", "RegistryAuthError", "RegistryError", "VerifiedStream"]

DEFAULT_CHUNK_SIZE = 64 << 20
"""Blobs larger than this are uploaded in chunks of this size (PATCH); smaller in one PUT."""
RETRIES = 2
RETRY_BASE_DELAY = 0.5  # seconds, doubled each time (tests patch it down)
TIMEOUT = (10.0, 300.0)
WORKERS = 3
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
ACCEPT = ", ".join([
    MANIFEST_MEDIA_TYPE,
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])


class RegistryAuthError(UserError):
    """The registry refused our credentials (401) or the permission (403)."""


class Body(Protocol):
    """A request body sent as a stream, of known length (requests sends Content-Length)."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[bytes]: ...


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
        self.origin = urls.origin(self.base)
        self.insecure = insecure
        self.docker_config = docker_config
        self.session = session or requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_maxsize=WORKERS * 2)
        self.session.mount(self.base, adapter)
        self._auth: dict[str, str] = {}  # scope -> Authorization header
        self._basic: str | None = None
        self._lock = threading.Lock()

    # where requests may go

    def is_own(self, url: str, what: str) -> bool:
        """Whether ``url`` is on the registry's own origin, where credentials go; a
        RegistryError for a URL nothing is sent to (``what`` names where it came from): one
        the URL parsers may read differently (:func:`.urls.oddity`), not http(s), plain HTTP from an
        HTTPS registry, or plain HTTP to a host off loopback."""
        self._refuse_odd(url, what)
        try:
            origin = urls.origin(url)
        except ValueError:
            origin = ("", "", 0)
        if origin == self.origin:
            return True
        scheme, host, _ = origin
        if scheme == "https" or (scheme == "http" and self.insecure and is_loopback(host)):
            return False
        if scheme == "http":
            reason = ("from an HTTPS registry: a downgrade to plain HTTP" if not self.insecure
                      else "plain HTTP off loopback")
        else:
            reason = "not an http(s) URL"
        raise RegistryError(f"registry {self.host} sent {what} {shown(url)}, {reason}; refused")

    def _refuse_odd(self, url: str, what: str) -> None:
        if odd := oddity(url):
            raise RegistryError(f"registry {self.host} sent {what} {shown(url)}, which holds "
                                f"{odd}; refused")

    def _join(self, base: str, location: str, what: str) -> str:
        """``location`` resolved against ``base`` (RFC 9110), judged as sent: urljoin would
        drop the tabs and newlines that make it ambiguous."""
        self._refuse_odd(location, what)
        return urllib.parse.urljoin(base, location)

    # authentication

    def _header_for(self, scope: str) -> dict[str, str]:
        with self._lock:
            value = self._auth.get(scope) or self._basic
        return {"Authorization": value} if value else {}

    def _authenticate(self, response: requests.Response, scope: str, sent: str | None) -> bool:
        """Answer a 401's challenge; whether there is something other than ``sent`` (the
        Authorization the refused request carried) to retry with."""
        scheme, params = parse_challenge(response.headers.get("WWW-Authenticate", ""))
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
        if odd := oddity(realm):
            raise RegistryError(f"registry {self.host} names the token service {shown(realm)}, "
                                f"which holds {odd}; refused")
        if not self._realm_allowed(realm):
            raise RegistryError(f"registry {self.host} names the token service {shown(realm)}, "
                                "neither HTTPS nor the registry's own origin; refused: the "
                                "credentials would travel in clear")
        scopes = params.get("scope", "").split() or scope.split()
        try:
            if creds and creds[0] == "<token>":
                response = self.session.post(realm, data={
                    "grant_type": "refresh_token", "refresh_token": creds[1],
                    "service": params.get("service", ""), "scope": " ".join(scopes),
                    "client_id": "imagebuilder"}, timeout=TIMEOUT, stream=True,
                    allow_redirects=False)
            else:
                query: list[tuple[str, str]] = [("scope", s) for s in scopes]
                if params.get("service"):
                    query.append(("service", params["service"]))
                response = self.session.get(realm, params=query, timeout=TIMEOUT,
                                            auth=creds if creds else None, stream=True,
                                            allow_redirects=False)
        except requests.RequestException as e:
            raise RegistryError(f"cannot get a token for {self.host} from {realm}: "
                                f"{short(e)}") from None
        if response.status_code != 200:
            response.close()
        if response.status_code in (401, 403):
            raise RegistryAuthError(
                f"the token service {realm} refused "
                f"{'the credentials' if creds else 'anonymous access'} for {self.host} "
                f"(HTTP {response.status_code}); log in with 'docker login {self.host}'")
        if response.status_code in REDIRECT_STATUS:
            raise RegistryError(f"token service {realm} answered HTTP {response.status_code} "
                                f"(a redirect to {shown(response.headers.get('Location', ''))}, "
                                "not followed with credentials)")
        if response.status_code != 200:
            raise RegistryError(f"token service {realm} answered HTTP {response.status_code}")
        with response:
            body = self.read_capped(response, 1 << 20, f"a token from {realm}")
        try:
            answer = json.loads(body)
            return str(answer.get("token") or answer["access_token"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise RegistryError(f"token service {realm} sent no token") from None

    def _realm_allowed(self, realm: str) -> bool:
        try:
            origin = urls.origin(realm)
        except ValueError:
            return False
        return origin == self.origin or origin[0] == "https"

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
                                    f"{short(e)}") from None
            except requests.ConnectionError as e:
                last = f"cannot connect ({short(e)}); is it running?"
                continue
            except requests.Timeout:
                last = "timed out"
                continue
            if response.status_code in ok:
                return response
            if response.status_code in TRANSIENT_STATUS:
                last = f"HTTP {response.status_code}{error_detail(response)}"
                response.close()
                continue
            self._raise_for(response, what)
        raise RegistryError(f"registry {self.host} failed to {what}: {last}"
                            + (f" ({attempts} attempts)" if attempts > 1 else ""))

    def _send(self, method: str, url: str, scope: str, body: Callable[[], Any] | None,
              kwargs: dict[str, Any]) -> requests.Response:
        """One request, following the redirects of a GET or HEAD (at most MAX_REDIRECTS, each
        checked by is_own; credentials only on the registry's own origin)."""
        extra = {"stream": True, **kwargs}  # bodies are read by read_capped, never whole
        headers = extra.pop("headers", {})
        start, what = url, "a URL"
        for _ in range(MAX_REDIRECTS + 1):
            own = self.is_own(url, what)
            response = self._send_once(method, url, scope, body, headers, extra, own)
            if response.status_code not in REDIRECT_STATUS or method not in ("GET", "HEAD"):
                return response
            response.close()
            location = response.headers.get("Location")
            if not location:
                raise RegistryError(f"registry {self.host} answered HTTP "
                                    f"{response.status_code} without a Location for {shown(url)}")
            url, what = self._join(url, location, "a redirect to"), "a redirect to"
            extra.pop("params", None)  # the Location is the whole next URL
        raise RegistryError(f"registry {self.host}: {shown(start)} redirected more than "
                            f"{MAX_REDIRECTS} times (last to {shown(url)}): a redirect loop?")

    def _send_once(self, method: str, url: str, scope: str, body: Callable[[], Any] | None,
                   headers: dict[str, str], extra: dict[str, Any], own: bool
                   ) -> requests.Response:
        """One request, sent again once with new credentials if the registry's 401 challenge
        asks; elsewhere (``own`` false) without any Authorization."""
        sent = self._header_for(scope) if own else {}
        response = self.session.request(
            method, url, headers={**headers, **sent}, timeout=TIMEOUT,
            data=body() if body else None, allow_redirects=False, **extra)
        if own and response.status_code == 401:
            try:
                again = self._authenticate(response, scope, sent.get("Authorization"))
            except BaseException:
                response.close()  # else the garbage collector finds it open (ResourceWarning)
                raise
            if not again:
                return response
            response.close()
            response = self.session.request(
                method, url, headers={**headers, **self._header_for(scope)}, timeout=TIMEOUT,
                data=body() if body else None, allow_redirects=False, **extra)
        return response

    def _raise_for(self, response: requests.Response, what: str) -> None:
        status = response.status_code
        detail = error_detail(response)
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
        digest = response.headers.get("Docker-Content-Digest", "")
        if DIGEST_RE.fullmatch(digest):
            return digest
        data = self.get_manifest(repo, reference)
        return None if data is None else sha256_of(data[0])

    def get_manifest(self, repo: str, reference: str) -> tuple[bytes, str] | None:
        """(bytes, media type) of manifest ``reference``, or None if there is none. The body
        is read as a stream and the read stops at MAX_MANIFEST_BYTES."""
        what = f"manifest {repo}:{reference}"
        response = self.request("GET", f"/v2/{repo}/manifests/{reference}", scope=_pull(repo),
                                ok=(200, 404), what=f"get {what}", headers={"Accept": ACCEPT})
        with response:
            if response.status_code == 404:
                return None
            data = self.read_capped(response, MAX_MANIFEST_BYTES, what)
            media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        if DIGEST_RE.fullmatch(reference) and sha256_of(data) != reference:
            raise RegistryError(f"manifest {repo}@{reference} from {self.host} does not match "
                                "its digest")
        return data, str(load_object(data, what).get("mediaType") or media_type)

    def read_capped(self, response: requests.Response, cap: int, what: str) -> bytes:
        """:func:`.streams.read_capped` of this registry's ``response``."""
        return streams.read_capped(response, cap, what, self.host)

    def put_manifest(self, repo: str, reference: str, data: bytes, media_type: str) -> str:
        response = self.request(
            "PUT", f"/v2/{repo}/manifests/{reference}", scope=_push(repo), ok=(201, 200),
            what=f"store manifest {repo}:{reference}",
            headers={"Content-Type": media_type}, body=lambda: data)
        response.close()
        digest = sha256_of(data)
        echoed = response.headers.get("Docker-Content-Digest")
        if echoed and echoed != digest:
            raise RegistryError(f"registry {self.host} stored manifest {repo}:{reference} as "
                                f"{shown(echoed)}, not {digest}")
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
        url = self._join(response.url or self.base + "/", location, "an upload Location")
        self.is_own(url, "an upload Location")
        return url

    def upload(self, repo: str, url: str, digest: str, size: int,
               body: Callable[[int, int], Body], chunk_size: int) -> None:
        """Send blob ``digest`` (``size`` bytes; ``body(offset, length)`` streams a range of
        it, again if a request is sent again) to the upload session at ``url``: one PUT, or
        PATCH chunks then a closing PUT when it is larger than ``chunk_size``."""
        scope = _push(repo)
        what = f"upload blob {digest[:19]} to {repo}"
        if size <= chunk_size:
            response = self.request(
                "PUT", with_query(url, digest=digest), scope=scope, ok=(201,), what=what,
                retry=False, headers={"Content-Type": "application/octet-stream"},
                body=lambda: body(0, size))
            response.close()
            return
        offset = 0
        while offset < size:
            length = min(chunk_size, size - offset)
            start = offset
            response = self.request(
                "PATCH", url, scope=scope, ok=(202,), what=what, retry=False,
                headers={"Content-Type": "application/octet-stream",
                         "Content-Range": f"{start}-{start + length - 1}"},
                body=lambda s=start, n=length: body(s, n))  # type: ignore[misc]
            response.close()
            url = self._location(response)
            offset += length
        response = self.request("PUT", with_query(url, digest=digest), scope=scope,
                                ok=(201,), what=what, retry=False,
                                headers={"Content-Type": "application/octet-stream"})
        response.close()

    def ensure_blob(self, repo: str, digest: str, size: int, body: Callable[[int, int], Body],
                    chunk_size: int = DEFAULT_CHUNK_SIZE) -> bool:
        """Upload blob ``digest`` to ``repo`` unless the registry has it; whether it was sent."""
        if self.head_blob(repo, digest):
            return False
        self.upload(repo, self.start_upload(repo), digest, size, body, chunk_size)
        return True

    def ensure_blob_bytes(self, repo: str, data: bytes) -> bool:
        """:meth:`ensure_blob` of ``data`` held in memory (a signature, an SBOM, a config)."""
        return self.ensure_blob(repo, sha256_digest(data), len(data),
                                lambda offset, length: data_body(data, offset, length))

    def blob_stream(self, repo: str, digest: str, size: int,
                    progress: Callable[[int], None]) -> VerifiedStream:
        """Blob ``digest`` of ``repo`` (``size`` bytes, as its descriptor says) as a stream
        checked as it is read (:class:`~.streams.VerifiedStream`); close it when done."""
        response = self.request("GET", f"/v2/{repo}/blobs/{digest}", scope=_pull(repo),
                                ok=(200,), what=f"get blob {digest[:19]} from {repo}",
                                stream=True)
        return VerifiedStream(response, digest, size, self.host, progress)


def data_body(data: bytes, offset: int, length: int) -> Body:
    """A range of ``data`` held in memory as a request body (what :meth:`Client.upload`'s
    ``body`` returns)."""
    return _Bytes(data[offset:offset + length])


class _Bytes:
    """A request body of bytes held in memory."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __iter__(self) -> Iterator[bytes]:
        yield self.data


def _pull(repo: str) -> str:
    return f"repository:{repo}:pull"


def _push(repo: str) -> str:
    return f"repository:{repo}:pull,push"


sha256_of = sha256_digest
