"""Where a registry's requests may go: a URL judged as requests will send it.

urllib.parse and urllib3 read some authorities differently (``https://a\\@b/`` is host ``b`` to
one, ``a`` to the other), so an origin is read from the URL exactly as requests prepares and
connects it (:func:`origin`), and a URL the parsers may read differently (a backslash,
userinfo, a control character or whitespace) is refused outright (:func:`oddity`).
:class:`imagebuilder.registry.client.Client` decides from these where credentials go.
"""

from __future__ import annotations

import urllib.parse

import requests
from urllib3.util import parse_url


def with_query(url: str, **params: str) -> str:
    sep = "&" if urllib.parse.urlsplit(url).query else "?"
    return url + sep + urllib.parse.urlencode(params)


def oddity(url: str) -> str | None:
    """What in ``url`` parsers may read differently, or None: a backslash (urllib3 ends the
    authority there, urllib.parse does not), userinfo (an ``@`` in the authority), a control
    character or whitespace (stripped by some, refused or kept by others)."""
    if "\\" in url:
        return "a backslash"
    if any(c.isspace() or not c.isprintable() for c in url):
        return "a control character or whitespace"
    try:  # with no backslash nor whitespace left, both parsers end the authority alike
        userinfo = "@" in urllib.parse.urlsplit(url).netloc or bool(parse_url(url).auth)
    except ValueError:  # urllib3's LocationParseError is one
        return "an authority that does not parse"
    return "userinfo (an '@' before the host)" if userinfo else None


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) that requests connects to for ``url``, the port made explicit:
    the URL is prepared as requests prepares it, then split as its adapter splits the result
    (requests.adapters). ValueError if it has no origin."""
    prepared = requests.models.PreparedRequest()
    try:
        prepared.prepare_url(url, None)
    except requests.RequestException as e:
        raise ValueError(f"no origin in {url!r}: {e}") from None
    parts = urllib.parse.urlsplit(prepared.url or "")
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme)
    if not host or port is None:
        raise ValueError(f"no origin in {url!r}")
    return scheme, f"[{host}]" if ":" in host else host, port


def shown(url: str) -> str:
    """``url`` for a one-line message: printable, at most 200 characters."""
    text = url if url.isprintable() else repr(url)
    return text if len(text) <= 200 else text[:200] + "..."
