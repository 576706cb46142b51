"""What a registry sends, read as a stream: bounded before it is trusted, checked as it is read.

A token, a manifest or an error body is read up to a cap (:func:`read_capped`): it is never held
whole before it is bounded, whatever Content-Length says. A blob is a :class:`VerifiedStream`
that :meth:`imagebuilder.registry.client.Client.blob_stream` returns: its chunks are hashed as
they are read, the read stops as soon as more bytes arrive than the blob's descriptor gives, and
after the last chunk an IntegrityError says so if the bytes are not the digest's. Whoever writes
the chunks (the store's :func:`imagebuilder.store.blobs.receive`) discards what it wrote when
that happens; the client that makes the stream never touches the store.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from types import TracebackType

import requests

from ..errors import FetchError, IntegrityError
from ..store.oci import oci_digest

CHUNK = 1 << 20


class RegistryError(FetchError):
    """The registry is down, failed (5xx) or answered something that breaks the protocol."""


class StreamBroken(RegistryError):
    """The connection broke while a blob was being read: worth fetching it again."""


class VerifiedStream:
    """The chunks of blob ``digest`` (``size`` bytes) as the registry sends them, checked as
    they go (see the module docstring); ``received`` counts what was read so far, and
    ``progress`` hears of every chunk."""

    def __init__(self, response: requests.Response, digest: str, size: int, host: str,
                 progress: Callable[[int], None] = lambda n: None) -> None:
        self.response, self.digest, self.size, self.host = response, digest, size, host
        self.progress = progress
        self.received = 0

    def __iter__(self) -> Iterator[bytes]:
        hasher = hashlib.sha256()
        try:
            for chunk in self.response.iter_content(CHUNK):
                self.received += len(chunk)
                if self.received > self.size:
                    raise IntegrityError(f"blob {self.digest} is larger than the {self.size} "
                                         "bytes its manifest says; discarded")
                hasher.update(chunk)
                self.progress(len(chunk))
                yield chunk
        except requests.RequestException as e:
            raise StreamBroken(f"registry {self.host} failed to send blob {self.digest[:19]}: "
                               f"{short(e)}") from None
        actual = oci_digest(hasher.hexdigest())
        if actual != self.digest or self.received != self.size:
            raise IntegrityError(f"blob {self.digest} did not verify: got sha256 {actual}, "
                                 f"{self.received} of {self.size} bytes; discarded")

    def __enter__(self) -> VerifiedStream:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.response.close()


def read_capped(response: requests.Response, cap: int, what: str, host: str) -> bytes:
    """The body of ``response`` (sent with stream=True), or a RegistryError as soon as it
    passes ``cap`` bytes: what a registry sends is never held whole before it is bounded."""
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > cap:
        raise RegistryError(f"{what} from {host} is {int(length)} bytes, over the "
                            f"limit of {cap}; refused")
    data = bytearray()
    try:
        for chunk in response.iter_content(64 << 10):
            data += chunk
            if len(data) > cap:
                raise RegistryError(f"{what} from {host} is larger than the limit of "
                                    f"{cap} bytes; refused")
    except requests.RequestException as e:
        raise RegistryError(f"registry {host} failed to send {what}: {short(e)}") from None
    return bytes(data)


def error_detail(response: requests.Response) -> str:
    """The first error of a registry's JSON error body (at most 64 KiB of it is read)."""
    try:
        body = next(response.iter_content(64 << 10), b"") if response.request.method != "HEAD" \
            else b""
        first = (json.loads(body).get("errors") or [])[0]
        return f": {first.get('code', '')} {first.get('message', '')}".rstrip()[:300]
    except (ValueError, AttributeError, IndexError, TypeError, requests.RequestException):
        return ""


def short(exc: BaseException) -> str:
    """An exception's text for a one-line message: at most 200 characters."""
    text = str(exc)
    return text if len(text) <= 200 else text[:200] + "..."
