"""What a jar says about itself: its Maven coordinates and its licenses.

A jar built by Maven carries ``META-INF/maven/GROUP/ARTIFACT/pom.properties`` (groupId,
artifactId, version) and the ``pom.xml`` beside it; a shaded or "uber" jar carries one such set
per artifact packed into it. Which set is the jar's own (:func:`choose`):

* the set whose artifactId the jar's file name starts with (``ARTIFACT.jar``, ``ARTIFACT-...``),
  preferring one whose ``ARTIFACT-VERSION`` starts the name, then the longest artifactId
  (``byte-buddy-dep-1.8.jar`` is byte-buddy-dep, not byte-buddy); a tie is no choice;
* else the only set, unless the version the jar states itself (in its file name, else its
  manifest) is another: Debian's ``guice.jar`` (Bundle-Version 4.2.3) holds only cglib 3.2.12's
  set, shaded into it, while ``plexus-utils2.jar`` holds plexus-utils 3.4.2's, its own;
* none chosen: the jar has no coordinates (its version is the one it states), and every set is
  an artifact embedded in it.

The other sets are the artifacts embedded in the jar: scanners report them (a shaded jackson
is still jackson), so the SBOM does too. Every set is taken, whatever its values hold (a
version "2.9.10 final", a groupId "org.apache.commons!"), as a scanner takes it: the purl
percent-encodes them (``jackson-databind@2.9.10%20final``), so they cannot name someone else.
Values are only cleaned, never dropped: a character that is not printable, and a "/" in a groupId
or artifactId (purl's separator, which packageurl leaves as it is there), become U+FFFD, and a
value is cut to :data:`MAX_NAME` characters. A set without a version is no set. A
pom.properties is read as ``java.util.Properties`` reads it (line continuations, escapes), so
its version is the one Java and Maven tools see.

Licenses come from the chosen set's ``pom.xml`` ``<licenses>``, else from the manifest's
``Bundle-License``; names and URLs map to SPDX ids where the mapping is unambiguous
(:func:`spdx_id`), other names are kept as written. Everything read here is hostile input:
files are capped (:data:`MAX_PROPERTIES`, :data:`MAX_POM`), a ``pom.xml`` with a DOCTYPE (the only
way to declare an entity, external or recursive) is not read at all, and nothing is fetched.
"""

from __future__ import annotations

import re
import xml.parsers.expat
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache

#: The largest pom.properties read (Maven writes about 100 bytes).
MAX_PROPERTIES = 64 << 10
#: The largest pom.xml read for its licenses (large real poms are about 100 KiB).
MAX_POM = 2 << 20
#: The most licenses kept for one jar, and the longest name kept.
MAX_LICENSES = 16
MAX_NAME = 200
_PROPERTIES = re.compile(r"META-INF/maven/([^/]+)/([^/]+)/pom\.properties")
#: The manifest attributes a jar without coordinates gets its version from, after the version in
#: its file name: syft's order (pkg/cataloger/java, selectVersion), so both report the same.
MANIFEST_VERSIONS = ("implementation-version", "specification-version", "plugin-version",
                     "bundle-version")
_FILE_VERSION = re.compile(r"[^-]+(?:-[^0-9-][^-]*)*-([0-9][^/]*)\.[A-Za-z]+")


@dataclass(frozen=True)
class Coordinates:
    group: str
    artifact: str
    version: str
    #: The pom.properties entry the set came from (its pom.xml sits beside it).
    entry: str = field(default="", compare=False)

    @property
    def pom(self) -> str:
        return self.entry.removesuffix("pom.properties") + "pom.xml"


def properties_entries(names: list[str]) -> list[str]:
    """The ``META-INF/maven/G/A/pom.properties`` entries among a jar's entry names, sorted."""
    return sorted(n for n in names if _PROPERTIES.fullmatch(n))


def parse_properties(entry: str, data: bytes) -> Coordinates | None:
    """The coordinates in the pom.properties ``entry`` holding ``data`` (cleaned, see the module
    docstring); None if the version is missing. groupId and artifactId default to the entry's
    folders."""
    match = _PROPERTIES.fullmatch(entry)
    if match is None or len(data) > MAX_PROPERTIES:
        return None
    values = properties(data.decode("latin-1"))
    group = _clean(values.get("groupId") or match[1], "/")
    artifact = _clean(values.get("artifactId") or match[2], "/")
    version = _clean(values.get("version", ""), "")
    if not (group and artifact and version):
        return None
    return Coordinates(group, artifact, version, entry)


def properties(text: str) -> dict[str, str]:
    """The pairs of a ``.properties`` text as ``java.util.Properties.load`` reads them: a line
    ending in an odd number of backslashes goes on in the next (its leading blanks dropped),
    keys end at an unescaped ``=``, ``:`` or blank, escapes (``\\uXXXX``, ``\\t``...) are
    undone; values are stripped of surrounding blanks."""
    values: dict[str, str] = {}
    lines = iter(re.split(r"\r\n|\r|\n", text))
    for raw in lines:
        line = raw.lstrip(" \t\f")
        if not line or line[0] in "#!":
            continue
        parts = [line]
        while _continues(parts[-1]):
            parts[-1] = parts[-1][:-1]
            parts.append(next(lines, "").lstrip(" \t\f"))
        line = "".join(parts)
        pair = re.match(r"((?:\\.|[^=:\s\\])*)\s*[=:]?\s*(.*)", line, re.DOTALL)
        if pair:
            values[_unescape(pair[1])] = _unescape(pair[2]).strip()
    return values


def _continues(line: str) -> bool:
    return (len(line) - len(line.rstrip("\\"))) % 2 == 1


def _unescape(text: str) -> str:
    def one(m: re.Match[str]) -> str:
        c = m[1]
        if c.startswith("u"):
            return chr(int(c[1:], 16)) if re.fullmatch(r"u[0-9A-Fa-f]{4}", c) else c
        return {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}.get(c, c)
    return re.sub(r"\\(u[0-9A-Fa-f]{4}|.?)", one, text, flags=re.DOTALL)


def _clean(value: str, separators: str) -> str:
    """``value`` with each unprintable character and each of ``separators`` as U+FFFD, cut to
    :data:`MAX_NAME` characters."""
    return "".join(c if c.isprintable() and c not in separators else "\ufffd"
                   for c in value[:MAX_NAME])


def file_version(file_name: str) -> str | None:
    """The version in an archive's file name, after the first "-" followed by a digit
    ("greet-1.0-SNAPSHOT.jar": 1.0-SNAPSHOT), as scanners read it; else None."""
    match = _FILE_VERSION.fullmatch(file_name)
    return manifest_version(match[1]) if match else None


def manifest_version(value: str | None) -> str | None:
    """A manifest's version attribute as a version: printable, at most :data:`MAX_NAME`
    characters (it names no purl: "26.9.27 (c6ba02c)" is vnu's); else None."""
    value = (value or "").strip()
    return value if value and len(value) <= MAX_NAME and value.isprintable() else None


def choose(file_name: str, sets: list[Coordinates], version: str | None) -> Coordinates | None:
    """The jar's own set among ``sets`` (see the module docstring), or None. ``version``: the
    version the jar's file name or manifest states, if any."""
    named = _named(file_name, sets)
    if named is not None or len(sets) != 1:
        return named
    return sets[0] if version in (None, sets[0].version) else None


def _named(file_name: str, sets: list[Coordinates]) -> Coordinates | None:
    """The set whose artifactId the file name starts with (see the module docstring)."""
    stem = re.sub(r"\.[A-Za-z]+$", "", file_name)

    def rank(c: Coordinates) -> tuple[bool, int] | None:
        if stem != c.artifact and not stem.startswith(c.artifact + "-"):
            return None
        versioned = stem == f"{c.artifact}-{c.version}" or stem.startswith(
            f"{c.artifact}-{c.version}-")
        return versioned, len(c.artifact)
    ranked = sorted(((r, c) for c in sets if (r := rank(c)) is not None),
                    key=lambda rc: rc[0], reverse=True)
    if not ranked or (len(ranked) > 1 and ranked[0][0] == ranked[1][0]):
        return None
    return ranked[0][1]


# -- licenses ---------------------------------------------------------------------------------

#: License names as poms write them (lower-cased, runs of other characters as one space).
_NAMES = {
    "apache license version 2 0": "Apache-2.0", "the apache software license version 2 0":
    "Apache-2.0", "apache software license version 2 0": "Apache-2.0",
    "the apache license version 2 0": "Apache-2.0", "apache license 2 0": "Apache-2.0",
    "apache 2 0": "Apache-2.0", "apache 2": "Apache-2.0", "apache license v2 0": "Apache-2.0",
    "apache software license 2 0": "Apache-2.0", "asl 2 0": "Apache-2.0",
    "mit license": "MIT", "the mit license": "MIT", "mit": "MIT", "the mit license mit": "MIT",
    "eclipse public license 2 0": "EPL-2.0", "eclipse public license v 2 0": "EPL-2.0",
    "eclipse public license version 2 0": "EPL-2.0", "eclipse public license v2 0": "EPL-2.0",
    "eclipse public license 1 0": "EPL-1.0", "eclipse public license v 1 0": "EPL-1.0",
    "eclipse public license v1 0": "EPL-1.0", "eclipse public license version 1 0": "EPL-1.0",
    # SPDX: the Eclipse Distribution License 1.0 is BSD-3-Clause.
    "eclipse distribution license v 1 0": "BSD-3-Clause",
    "eclipse distribution license 1 0": "BSD-3-Clause", "edl 1 0": "BSD-3-Clause",
    "bsd 3 clause": "BSD-3-Clause", "bsd 3 clause license": "BSD-3-Clause",
    "the bsd 3 clause license": "BSD-3-Clause", "new bsd license": "BSD-3-Clause",
    "bsd 2 clause": "BSD-2-Clause", "bsd 2 clause license": "BSD-2-Clause",
    "the bsd 2 clause license": "BSD-2-Clause", "simplified bsd license": "BSD-2-Clause",
    "mozilla public license version 2 0": "MPL-2.0", "mozilla public license 2 0": "MPL-2.0",
    "the unlicense": "Unlicense", "cc0": "CC0-1.0", "cc0 1 0": "CC0-1.0",
}
#: License URLs (scheme, "www.", a trailing "/" and ".txt"/".html"/".php" removed; lower case).
_URLS = {
    "apache.org/licenses/license-2.0": "Apache-2.0",
    "opensource.org/licenses/apache-2.0": "Apache-2.0",
    "opensource.org/licenses/mit": "MIT", "opensource.org/license/mit": "MIT",
    "opensource.org/licenses/mit-license": "MIT",
    "eclipse.org/legal/epl-2.0": "EPL-2.0", "eclipse.org/legal/epl-v20": "EPL-2.0",
    "eclipse.org/legal/epl-v10": "EPL-1.0", "eclipse.org/org/documents/epl-v10": "EPL-1.0",
    "eclipse.org/org/documents/edl-v10": "BSD-3-Clause",
    "opensource.org/licenses/bsd-3-clause": "BSD-3-Clause",
    "opensource.org/licenses/bsd-2-clause": "BSD-2-Clause",
    "mozilla.org/mpl/2.0": "MPL-2.0",
}


def spdx_id(name: str, url: str = "") -> str | None:
    """The SPDX id a license ``name`` or ``url`` means, when that is unambiguous, else None."""
    key = re.sub(r"[^a-z0-9]+", " ", name.lower()).strip()
    if key in _NAMES:
        return _NAMES[key]
    for text in (url, name):
        short = re.sub(r"^([a-z]+://)?(www\.)?", "", text.strip().lower()).rstrip("/")
        short = re.sub(r"\.(txt|html|php)$", "", short)
        if short in _URLS:
            return _URLS[short]
        if short.startswith("spdx.org/licenses/"):
            return _listed(short.rpartition("/")[2])
    return _listed(name.strip())


def _listed(text: str) -> str | None:
    """``text`` as an id of the SPDX license list (canonical case), or None."""
    if not re.fullmatch(r"[A-Za-z0-9.+\-]{2,64}", text):
        return None
    symbol = _symbols().get(text.lower())
    return symbol if symbol and not symbol.lower().startswith("licenseref-") else None


@cache
def _symbols() -> dict[str, str]:
    """SPDX ids by their lower case (license-expression's list, loaded once: ~0.2 s)."""
    from license_expression import get_spdx_licensing

    return {k: s.key for k, s in get_spdx_licensing().known_symbols_lowercase.items()
            if not s.is_exception}


def _license(name: str, url: str) -> str | None:
    name, url = " ".join(name.split())[:MAX_NAME], url.strip()[:MAX_NAME]
    return spdx_id(name, url) or name or url or None


def pom_licenses(data: bytes) -> tuple[str, ...]:
    """The licenses of a pom.xml's ``project/licenses/license`` (SPDX ids, else names); none if
    the pom is too large, not well-formed or declares a DOCTYPE."""
    if len(data) > MAX_POM:
        return ()
    found: list[tuple[str, str]] = []
    stack: list[str] = []
    text: list[str] = []

    def start(tag: str, _attrs: object) -> None:
        stack.append(tag.rpartition(":")[2])
        text.clear()
        if stack == ["project", "licenses", "license"]:
            found.append(("", ""))

    def end(_tag: str) -> None:
        if stack[:3] == ["project", "licenses", "license"] and len(stack) == 4 and found:
            name, url = found[-1]
            value = "".join(text)
            found[-1] = (value, url) if stack[3] == "name" else (
                (name, value) if stack[3] == "url" else (name, url))
        stack.pop()
        text.clear()

    parser = xml.parsers.expat.ParserCreate()
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = lambda s: text.append(s) if len(text) < 1000 else None
    parser.StartDoctypeDeclHandler = _refuse
    parser.EntityDeclHandler = _refuse
    parser.SetParamEntityParsing(xml.parsers.expat.XML_PARAM_ENTITY_PARSING_NEVER)
    try:
        parser.Parse(data, True)
    except (xml.parsers.expat.ExpatError, _Refused, ValueError):
        return ()
    return _unique(_license(n, u) for n, u in found)


class _Refused(Exception):
    pass


def _refuse(*_args: object) -> None:
    raise _Refused


def bundle_licenses(value: str | None) -> tuple[str, ...]:
    """The licenses of an OSGi ``Bundle-License`` header: comma-separated SPDX ids, URLs or
    names, each with optional ``;description=...;link=...`` parameters."""
    if not value:
        return ()
    items = []
    for clause in re.split(r",(?=(?:[^\"]*\"[^\"]*\")*[^\"]*$)", value[:4096]):
        head, *params = clause.split(";")
        link = next((p.partition("=")[2].strip('" ') for p in params
                     if p.strip().startswith("link=")), "")
        head = head.strip().strip('"')
        if head.startswith(("http://", "https://")):
            items.append(spdx_id("", head) or head[:MAX_NAME])
        elif head:
            items.append(_license(head, link))
    return _unique(items)


def _unique(items: Iterable[str | None]) -> tuple[str, ...]:
    out: list[str] = []
    for item in items:
        if item and item not in out:
            out.append(item)
    return tuple(out[:MAX_LICENSES])

