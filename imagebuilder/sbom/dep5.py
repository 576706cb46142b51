"""A Debian copyright file's licenses as one SPDX license expression.

Debian's machine-readable copyright format (DEP-5) names each Files paragraph's license with a
short name (``GPL-2+``, ``Expat``, ``BSD-3-clause``), joined by ``or``/``and`` (``and`` binds
tighter, as in SPDX; a comma binds loosest) and qualified by ``with NAME exception``. SPDX names
the same licenses differently (``GPL-2.0-or-later``, ``MIT``, ``BSD-3-Clause``). A package's
license is every Files paragraph's, joined with AND, deduplicated and sorted.

The mapping is exact or nothing: a copyright file that is not DEP-5, or any name SPDX has no id
for (``public-domain``, ``BSD-3-clause-Berkeley``, ``GPL`` without a version), makes the whole
license None, which the SBOM writes as NOASSERTION: a partial expression would claim more than
the file says. Every expression returned is checked with license-expression's SPDX licensing.
"""

from __future__ import annotations

import re
import warnings
from functools import cache

from license_expression import Licensing, get_license_index, get_spdx_licensing

#: DEP-5 short names (lower case) whose SPDX id is not the name itself.
ALIASES = {
    "expat": "MIT",
    "apache-2": "Apache-2.0",
    "cc0": "CC0-1.0",
    "mpl-2": "MPL-2.0",
    "zope-2.1": "ZPL-2.1",
    "perl": "(Artistic-1.0-Perl OR GPL-1.0-or-later)",
}
#: The GNU licenses, whose DEP-5 names carry a version and ``+`` for "or any later version":
#: GPL-2 is GPL-2.0-only, LGPL-2.1+ LGPL-2.1-or-later, GFDL-NIV-1.3 the GFDL without invariant
#: sections. OpenJDK's copyright writes GPL2, without the hyphen.
_GNU = re.compile(r"(?P<family>A?GPL|LGPL|GFDL-NIV|GFDL)-?(?P<version>\d+(?:\.\d+)?)"
                  r"(?P<later>\+)?", re.IGNORECASE)
#: ``with NAME exception`` -> the SPDX exception id, by the major version of the GPL it
#: qualifies where the exception's text differs with it (0: any).
EXCEPTIONS = {
    "classpath": {0: "Classpath-exception-2.0"},
    "font": {0: "Font-exception-2.0"},
    "libtool": {0: "Libtool-exception"},
    "llvm": {0: "LLVM-exception"},
    "bison": {0: "Bison-exception-2.2"},
    "autoconf": {2: "Autoconf-exception-2.0", 3: "Autoconf-exception-3.0"},
    "gcc": {2: "GCC-exception-2.0", 3: "GCC-exception-3.1"},
}

# python-debian logs a line when it fixes a copyright file's Format URL: the command line
# (imagebuilder/cli.py) keeps it quiet, as a library never configures logging.


def license_of(text: bytes) -> str | None:
    """The SPDX expression of the copyright file ``text``, or None (NOASSERTION) when it is not
    DEP-5 or names a license SPDX has no id for."""
    paragraphs = _files_paragraphs(text)
    if not paragraphs:
        return None
    terms: set[str] = set()
    for synopsis in paragraphs:
        found = expression_terms(synopsis)
        if found is None:
            return None
        terms.update(found)
    result = " AND ".join(sorted(terms))
    if len(terms) == 1 and result.startswith("("):  # one choice: no parentheses needed
        result = result[1:-1]
    return result if valid(result) else None


def _files_paragraphs(text: bytes) -> list[str] | None:
    """The license synopsis of each Files paragraph; None if the file is not DEP-5 or a Files
    paragraph has no license."""
    from debian import copyright as debian_copyright  # parsing on a cache miss only

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lines = text.decode("utf-8", "replace").splitlines()
            parsed = debian_copyright.Copyright(lines, strict=False)
    except (debian_copyright.Error, ValueError):
        return None
    synopses = [p.license.synopsis if p.license else ""  # type: ignore[attr-defined]
                for p in parsed.all_files_paragraphs()]
    return None if not all(synopses) else synopses


def expression_terms(synopsis: str) -> list[str] | None:
    """The SPDX expression of one DEP-5 license synopsis, as the terms it ANDs together (one
    term, parenthesised, when it is a choice); None if a name has no SPDX id."""
    terms: list[str] = []
    for i, segment in enumerate(re.split(r"\s*,\s*", synopsis.strip())):
        words = segment.split()
        joiner = "and"
        if i and words and words[0].lower() in ("and", "or"):
            joiner = words.pop(0).lower()
        found = _segment(words)
        if found is None:
            return None
        if joiner == "or" and terms:
            terms = [f"({_joined(terms)} OR {_joined(found)})"]
        else:
            terms += found
    return terms or None


def _segment(words: list[str]) -> list[str] | None:
    """``A and B or C with X exception``: its AND terms."""
    choices: list[list[str]] = [[]]
    i = 0
    while i < len(words):
        name, i = words[i], i + 1
        exception = None
        if i < len(words) and words[i].lower() == "with":
            end = next((j for j in range(i + 1, len(words))
                        if words[j].lower().endswith("exception")), len(words) - 1)
            exception, i = " ".join(words[i + 1:end + 1]), end + 1
        term = _term(name, exception)
        if term is None:
            return None
        choices[-1].append(term)
        if i < len(words):
            operator, i = words[i].lower(), i + 1
            if operator == "or":
                choices.append([])
            elif operator != "and":
                return None
    if any(not c for c in choices):
        return None
    if len(choices) == 1:
        return choices[0]
    return ["(" + " OR ".join(_joined(c) for c in choices) + ")"]


def _joined(terms: list[str]) -> str:
    return terms[0] if len(terms) == 1 else "(" + " AND ".join(terms) + ")"


def _term(name: str, exception: str | None) -> str | None:
    license_id = spdx_id(name)
    if license_id is None or exception is None:
        return license_id
    exception_id = _exception_id(exception, license_id)
    if exception_id is None or " " in license_id:
        return None
    return f"{license_id} WITH {exception_id}"


def spdx_id(name: str) -> str | None:
    """The SPDX license id (or expression, for Perl) of the DEP-5 short name ``name``."""
    lower = name.lower()
    if lower in ALIASES:
        return ALIASES[lower]
    gnu = _GNU.fullmatch(name)
    if gnu:
        family = gnu["family"].upper()
        version = gnu["version"] if "." in gnu["version"] else f"{gnu['version']}.0"
        later = "or-later" if gnu["later"] else "only"
        license_id = (f"GFDL-{version}-no-invariants-{later}" if family == "GFDL-NIV"
                      else f"{family}-{version}-{later}")
        return license_id if license_id.lower() in _spdx_ids() else None
    return _spdx_ids().get(lower)


def _exception_id(words: str, license_id: str) -> str | None:
    key = re.sub(r"[- ]?exception$", "", words.lower()).strip()
    if key in _spdx_exceptions():
        return _spdx_exceptions()[key]
    by_version = EXCEPTIONS.get(key, {})
    major = re.search(r"GPL-(\d)", license_id)
    return by_version.get(0) or (by_version.get(int(major[1])) if major else None)


@cache
def _spdx_ids() -> dict[str, str]:
    """The current SPDX license ids, by their lower-case form."""
    return {e["spdx_license_key"].lower(): e["spdx_license_key"] for e in get_license_index()
            if _is_spdx(e) and not e["is_exception"]}


@cache
def _spdx_exceptions() -> dict[str, str]:
    return {e["spdx_license_key"].lower(): e["spdx_license_key"] for e in get_license_index()
            if _is_spdx(e) and e["is_exception"]}


def _is_spdx(entry: dict[str, object]) -> bool:
    key = entry.get("spdx_license_key")
    return isinstance(key, str) and bool(key) and not key.startswith("LicenseRef-")


def valid(expression: str) -> bool:
    """Whether ``expression`` is a valid SPDX expression of known ids, as written."""
    try:
        info = _licensing().validate(expression)
    except (IndexError, AttributeError, RecursionError):
        return False  # the parser's errors on malformed text ("()", "MIT AND")
    return not info.errors and not info.invalid_symbols


@cache
def _licensing() -> Licensing:
    return get_spdx_licensing()
