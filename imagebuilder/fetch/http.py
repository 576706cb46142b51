"""Download one file from the mirror, robustly and verifiably.

Everything imagebuilder takes from the network goes through ``download``: it resumes interrupted
transfers, retries the failures a busy mirror produces (timeouts, dropped connections, 5xx, 429)
with exponential backoff, checks size and SHA-256, and only then renames the file into place. A
file that did not verify is never left at its destination, so a later run can trust whatever it
finds there. Redirects are followed here, not by requests: at most :data:`MAX_REDIRECTS`, to
``http``/``https`` only, so a redirect to ``file://`` or a loop is one line naming the URL and
the redirect, not a retried "unreachable" or a bad local file.

A body is bounded before it is trusted: a download with an expected size stops as soon as it
passes that size, one without (InRelease) at :data:`MAX_UNSIZED_BYTES`, and a Content-Length
over the bound is refused before any byte is read. A mirror sending without end (lying, broken,
or an attacker on plain HTTP) is one line, not a full disk; what it sent is discarded.
"""

from __future__ import annotations

import hashlib
import os
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from .. import progress
from ..errors import FetchError, IntegrityError
from ..fsutil import commit

if TYPE_CHECKING:  # requests is imported when a session exists: a warm build needs none
    import requests

CHUNK = 1024 * 1024
RETRIES = 4
RETRY_BASE_DELAY = 1.0  # seconds; doubled on each retry (tests patch it down)
TIMEOUT = (15.0, 60.0)  # (connect, read) seconds
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
MAX_UNSIZED_BYTES = 64 << 20
"""The most a download with no expected size (InRelease) may be: far above any real one."""


class NotOnMirrorError(FetchError):
    """The mirror answered 404 for a URL."""


class _Transient(Exception):
    """A failure worth retrying; carries a description for the final error."""


def download(
    session: requests.Session,
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    size: int | None = None,
    desc: str | None = None,
) -> Path:
    """Fetch ``url`` into ``dest`` (verified against ``sha256``/``size`` when given)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    resumed = _resume_offset(part, size) > 0
    digest = _fetch_with_retries(session, url, part, size, desc or dest.name)
    actual_size = part.stat().st_size
    if (sha256 is not None and digest != sha256) or (size is not None and actual_size != size):
        part.unlink(missing_ok=True)
        if resumed:  # the partial file may have been stale: one clean attempt
            return download(session, url, dest, sha256=sha256, size=size, desc=desc)
        raise IntegrityError(
            f"{url} did not verify: expected sha256 {sha256 or '(any)'} size {size}, "
            f"got sha256 {digest} size {actual_size}; the download was discarded"
        )
    commit(part, dest)  # its fsync is done (free), then the rename and the directory's
    return dest


def _fetch_with_retries(
    session: requests.Session, url: str, part: Path, size: int | None, desc: str
) -> str:
    """Bring ``part`` to the full body of ``url``; return its SHA-256."""
    last = ""
    for attempt in range(RETRIES + 1):
        if attempt:
            time.sleep(RETRY_BASE_DELAY * 2 ** (attempt - 1))
        try:
            return _fetch_once(session, url, part, size, desc)
        except _Transient as exc:
            last = str(exc)
    raise FetchError(
        f"the mirror is unreachable: {url} failed after {RETRIES + 1} attempts ({last}); "
        "check the network or pass --mirror URL"
    )


def _fetch_once(
    session: requests.Session, url: str, part: Path, size: int | None, desc: str
) -> str:
    import requests

    limit = size if size is not None else MAX_UNSIZED_BYTES
    offset = _resume_offset(part, size)
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        with _get(session, url, headers) as response:
            status = response.status_code
            if status == 416:  # our partial file is no prefix of the body: start over
                part.unlink(missing_ok=True)
                raise _Transient("HTTP 416 on resume")
            _check_status(url, status)
            if offset and status != 206:
                offset = 0  # the server ignored the Range: it sends the whole body
            total = _total(response, offset, size)
            bound = _Bound(url, limit, size is not None)
            bound.check_announced(response, offset, part)
            return _write_body(response, part, offset, total, desc, bound)
    except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema) as exc:
        raise FetchError(f"bad mirror URL {url}: {_short(exc)}") from None
    except requests.RequestException as exc:  # refused, timed out, cut off mid-body, ...
        raise _Transient(f"{type(exc).__name__}: {_short(exc)}") from None


def _get(session: requests.Session, url: str, headers: dict[str, str]) -> requests.Response:
    """GET ``url`` (streamed), following http(s) redirects up to MAX_REDIRECTS; FetchError, not
    retried, for a redirect anywhere else, without a Location, or one too many."""
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        response = session.get(current, headers=headers, stream=True, timeout=TIMEOUT,
                                allow_redirects=False)
        if response.status_code not in REDIRECT_STATUS:
            return response
        location = response.headers.get("Location")
        response.close()
        if not location:
            raise FetchError(f"{url} answered HTTP {response.status_code} without a Location")
        target = urllib.parse.urljoin(current, location)
        if urllib.parse.urlsplit(target).scheme not in ("http", "https"):
            raise FetchError(f"{url} redirected to {_text(target)}: only http and https "
                             "redirects are followed")
        current = target
    raise FetchError(f"{url} redirected more than {MAX_REDIRECTS} times (last to "
                     f"{_text(current)}): a redirect loop?")


def _resume_offset(part: Path, size: int | None) -> int:
    """Bytes already in ``part`` worth resuming from (0 if none or if it is too long)."""
    try:
        have = part.stat().st_size
    except FileNotFoundError:
        return 0
    if have >= (size if size is not None else MAX_UNSIZED_BYTES + 1):
        part.unlink()
        return 0
    return have


def _check_status(url: str, status: int) -> None:
    if status in (200, 206):
        return
    if status == 404:
        name = url.rstrip("/").rsplit("/", 1)[-1]
        raise NotOnMirrorError(f"{name} not found on the mirror (HTTP 404): {url}")
    if status in TRANSIENT_STATUS:
        raise _Transient(f"HTTP {status}")
    raise FetchError(f"the mirror answered HTTP {status} for {url}")


def _total(response: requests.Response, offset: int, size: int | None) -> int | None:
    if size is not None:
        return size
    length = response.headers.get("Content-Length")
    return offset + int(length) if length and length.isdigit() else None


class _Bound:
    """The most bytes a body may bring a file to, and the one line for passing it."""

    def __init__(self, url: str, limit: int, expected: bool) -> None:
        self.url, self.limit, self.expected = url, limit, expected

    def passed(self, did: str) -> str:
        """``url`` and what it ``did`` (sent, announced N bytes) past the limit."""
        if self.expected:
            return f"{self.url} did not verify: it {did} more than the expected {self.limit} bytes"
        return (f"{self.url} is too large: it {did} more than {self.limit} bytes, the limit "
                "for a file of unknown size")

    def exceeded(self, part: Path) -> IntegrityError:
        part.unlink(missing_ok=True)
        return IntegrityError(f"{self.passed('sent')}; the download was stopped and discarded")

    def check_announced(self, response: requests.Response, offset: int, part: Path) -> None:
        """IntegrityError (``part`` removed), before any byte of the body is read, if its
        Content-Length would take the file past the limit."""
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and offset + int(length) > self.limit:
            part.unlink(missing_ok=True)
            did = f"announces {offset + int(length)} bytes,"
            raise IntegrityError(f"{self.passed(did)}; refused")


def _write_body(
    response: requests.Response, part: Path, offset: int, total: int | None, desc: str,
    bound: _Bound,
) -> str:
    """Append (or write from scratch if ``offset`` is 0) the body to ``part``; return SHA-256.
    IntegrityError (``part`` removed) as soon as the body would pass ``bound``."""
    digest = hashlib.sha256()
    with open(part, "r+b" if offset else "wb") as out:
        if offset:
            _hash_prefix(out, offset, digest)
        with progress.current().progress(total, desc) as advance:
            advance(offset)
            written = offset
            for chunk in response.iter_content(CHUNK):
                written += len(chunk)
                if written > bound.limit:
                    raise bound.exceeded(part)
                out.write(chunk)
                digest.update(chunk)
                advance(len(chunk))
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest()


def _hash_prefix(out: BinaryIO, offset: int, digest: hashlib._Hash) -> None:
    """Feed the first ``offset`` bytes of ``out`` to ``digest``; leave it positioned there."""
    out.seek(0)
    remaining = offset
    while remaining:
        block = out.read(min(CHUNK, remaining))
        if not block:
            break
        digest.update(block)
        remaining -= len(block)
    out.truncate(offset)
    out.seek(offset)


def _short(exc: BaseException) -> str:
    return _text(str(exc))


def _text(text: str) -> str:
    """``text`` for a one-line message: printable and at most 200 characters."""
    text = text if text.isprintable() else repr(text)
    return text if len(text) <= 200 else text[:200] + "..."
