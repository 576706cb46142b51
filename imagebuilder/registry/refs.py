"""Registry references: ``HOST[:PORT]/REPO[:TAG|@DIGEST]``, checked whole before any request.

The grammar is the distribution spec's (a lowercase repository path, a tag of at most 128
characters, a sha256 digest); a host must look like one (a dot, a port or ``localhost``) so that
``hello:1.0`` is never taken for a registry. Loopback is what ``--insecure`` (plain HTTP) allows.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from ..errors import UserError

_HOST_RE = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9a-fA-F:]+\])(?::\d{1,5})?$")
_REPO_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)"
                      r"[a-z0-9]+)*)*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


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
            if not DIGEST_RE.fullmatch(digest):
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
