"""A jar manifest's ``Class-Path`` as the JVM reads it (JDK 17 to 25).

The JVM's rules, from ``java.util.jar.Manifest``/``Attributes`` and
``jdk.internal.loader.URLClassPath``, which this module follows step by step:

* the manifest: lines end with CRLF, LF or CR, at most 512 bytes with the newline; a line
  starting with a space continues the one before it; ``Name: value`` (colon, one space); the
  main section ends at the first empty line; a repeated name keeps its last value. A main
  section that breaks these rules makes the manifest unreadable, and the JVM then drops the jar
  (and its own ``Class-Path``) from the class path altogether.
* the value is split on white space (``StringTokenizer``: space, tab, CR, LF, FF); each token is
  a URL relative to the jar's own URL (``java.net.URL(context, spec)``): ``lib/a.jar``,
  ``../b.jar``, ``/usr/share/java/c.jar``, ``file:/usr/share/java/c.jar``, ``file:lib/a.jar``
  (a scheme equal to the jar's is dropped), ``//host/x.jar``, with ``.`` and ``..`` segments
  removed, a ``#fragment`` dropped and the query kept in the file name;
* an absolute URL of another scheme that the JDK knows (``http:``, ``jar:``, ...) is ignored; an
  unknown scheme (``foo:x.jar``) is a MalformedURLException, which drops the whole jar;
* a URL whose path ends with ``/`` is a directory of classes; any other is opened as a jar: the
  file named by the percent-decoded path (UTF-8), on this host only (a ``file://host/`` other
  than ``localhost`` never exists); a jar that is missing, a directory or not readable is
  skipped without a word, as is a path with a malformed escape; a URL already on the class path
  is not opened twice.

Paths here are POSIX strings on the machine the JVM runs on (the guest): :func:`resolve` takes
the jar's absolute path there and gives the absolute path an entry names.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

#: StringTokenizer's default delimiters.
_WHITESPACE = re.compile("[ \t\n\r\f]+")
#: java.net.URL's protocol syntax.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
#: The protocols java.base has handlers for (sun.net.www.protocol.*.Handler).
KNOWN_SCHEMES = frozenset({"file", "jar", "jrt", "jmod", "ftp", "http", "https", "mailto"})
#: java.util.jar.Manifest's line buffer.
MAX_LINE = 512
_CLASS_PATH = b"class-path: "
#: java.util.jar.Attributes.Name's syntax.
_NAME = re.compile(rb"[A-Za-z0-9_-]{1,70}")


class ManifestError(ValueError):
    """A manifest the JDK's parser refuses (the JVM then drops the jar from the class path)."""


@dataclass(frozen=True)
class Entry:
    """One Class-Path token as the JVM resolves it. Exactly one of ``path`` (the absolute local
    path it names; ``directory`` if the URL ends with ``/``; ``url_path``, the URL's path still
    encoded, which the entries of the jar it names resolve against), ``ignored`` (why the JVM
    skips it) and ``fatal`` (why the JVM drops the jar naming it) is set."""

    token: str
    path: str | None = None
    directory: bool = False
    ignored: str | None = None
    fatal: str | None = None
    url_path: str = ""


def main_attributes(data: bytes) -> dict[str, str]:
    """The main section of a manifest as ``java.util.jar.Manifest`` reads it (names
    lower-cased: they are case-insensitive). ManifestError if the JDK would refuse it."""
    attrs: dict[str, str] = {}
    name: str | None = None
    continued: bytes | None = None
    for number, line in enumerate(_lines(data), 1):
        if len(line) > MAX_LINE:
            raise ManifestError(f"line {number} is longer than {MAX_LINE} bytes")
        line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
        if not line:
            break
        if line.startswith(b" "):
            if name is None:
                raise ManifestError(f"line {number} continues no header")
            continued = (continued or b"") + line[1:]
            attrs[name] = continued.decode("utf-8", "replace")
            continue
        key, sep, value = line.partition(b":")
        if not sep or not value.startswith(b" ") or not _NAME.fullmatch(key):
            raise ManifestError(f"line {number} is not 'Name: value'")
        name = key.decode("utf-8", "replace").lower()
        continued = value[1:]
        attrs[name] = continued.decode("utf-8", "replace")
    return attrs


def _lines(data: bytes) -> list[bytes]:
    """The manifest's lines with their newlines (CRLF, LF or a lone CR); a last line without a
    newline is dropped, as the JDK's reader drops it."""
    return re.findall(rb"[^\r\n]*(?:\r\n|\n|\r)", data)


def class_path(data: bytes) -> str | None:
    """The Class-Path value of a manifest's main section, None if it has none (the JDK looks
    for the bytes ``class-path: `` before it parses anything). ManifestError if the JDK
    cannot read the manifest."""
    if _CLASS_PATH not in data.lower():
        return None
    return main_attributes(data).get("class-path")


def split(value: str) -> list[str]:
    """The tokens of a Class-Path value."""
    return [t for t in _WHITESPACE.split(value) if t]


def resolve(base: str, token: str) -> Entry:
    """The entry ``token`` of the Class-Path of the jar whose URL has the path ``base`` (still
    percent-encoded: the jar's absolute path, or an :attr:`Entry.url_path`)."""
    spec = token.strip("".join(chr(c) for c in range(33)))
    if spec[:4].lower() == "url:":
        spec = spec[4:]
    scheme = None
    if not spec.startswith("#"):
        head = re.match(r"[^/:]*:", spec)
        if head and _SCHEME.fullmatch(head.group()[:-1]):
            scheme = head.group()[:-1].lower()
    if scheme is not None and scheme != "file":
        if scheme not in KNOWN_SCHEMES:
            return Entry(token, fatal=f"unknown protocol {scheme}")
        return Entry(token, ignored=f"a {scheme}: URL, which the JVM ignores")
    if scheme is not None:
        spec = spec[len(scheme) + 1:]
    spec = spec.split("#", 1)[0]
    path, query = spec, None
    if "?" in spec:
        path, query = spec.split("?", 1)
    host = ""
    if path.startswith("//") and not path.startswith("////"):
        host, slash, rest = path[2:].partition("/")
        path = slash + rest
        if host and not _valid_host(host):
            return Entry(token, fatal=f"invalid host in {token}")
    if host and not path:
        return Entry(token, ignored="a URL without a path, which names no file")
    if not path:
        full = base[:base.rfind("/") + 1] if query is not None else base
    elif path.startswith("/"):
        full = path
    else:
        full = _remove_dots(base[:base.rfind("/") + 1] + path)
    file = full + (f"?{query}" if query is not None else "")
    host_name = host.rpartition("@")[2].partition(":")[0].lower()
    if host_name not in ("", "localhost"):
        return Entry(token, ignored=f"a file on host {host_name}, which the JVM never opens")
    try:
        decoded = _decode(file)
    except ValueError as exc:
        return Entry(token, ignored=f"{exc}, so the JVM skips it")
    if "\0" in decoded:
        return Entry(token, ignored="a path with a NUL, which the JVM skips")
    return Entry(token, path=decoded, directory=file.endswith("/"), url_path=full)


def _valid_host(host: str) -> bool:
    """Whether URLStreamHandler.parseURL accepts the authority (a numeric port if any)."""
    if host.count("@") > 1:
        return True
    hostport = host.rpartition("@")[2]
    if hostport.startswith("["):
        return "]" in hostport
    port = hostport.partition(":")[2]
    return not port or port.isdigit()


def _remove_dots(path: str) -> str:
    """URLStreamHandler.parseURL's removal of ``.`` and ``..`` segments from a relative path."""
    while "/./" in path:
        i = path.index("/./")
        path = path[:i] + path[i + 2:]
    i = 0
    while (i := path.find("/../", i)) >= 0:
        limit = path.rfind("/", 0, i) if i > 0 else -1
        if limit >= 0 and path.find("/../", limit) != 0:
            path = path[:limit] + path[i + 3:]
            i = 0
        else:
            i += 3
    while path.endswith("/.."):
        i = path.index("/..")
        limit = path.rfind("/", 0, i)
        if limit < 0:
            break
        path = path[:limit + 1]
    if path.startswith("./") and len(path) > 2:
        path = path[2:]
    if path.endswith("/."):
        path = path[:-1]
    return path


def _decode(text: str) -> str:
    """sun.net.www.ParseUtil.decode: %XX escapes as UTF-8 bytes."""
    if "%" not in text:
        return text
    out: list[str] = []
    parts = re.split(r"((?:%[0-9A-Fa-f]{2})+)", text)
    for i, part in enumerate(parts):
        if i % 2:
            try:
                out.append(bytes.fromhex(part.replace("%", "")).decode("utf-8"))
            except UnicodeDecodeError:
                raise ValueError("percent-encoding that is not UTF-8") from None
        elif "%" in part:
            raise ValueError("a malformed %-escape")
        else:
            out.append(part)
    return "".join(out)


def normalised(path: str) -> str:
    """``path`` with ``.``, ``..`` and repeated ``/`` resolved as the guest's file system
    resolves them (the app's directory in the guest holds no symbolic links)."""
    return posixpath.normpath("/" + path.lstrip("/")) if path.startswith("/") else path
