"""The configuration reference, written from the table of settings.

``docs/configuration.md`` holds a Markdown table of every key between two marker lines; this
module renders that table from :data:`.spec.SETTINGS` so that the page cannot name a key the
table lacks, miss one it has, or show another default. After changing a setting, rewrite the
page with::

    python -m imagebuilder.config.reference docs/configuration.md

and a unit test (tests/unit/test_settings.py) fails until the page and the table agree.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .settings import Setting
from .spec import SETTINGS

BEGIN = ("<!-- settings table: written by `python -m imagebuilder.config.reference"
         " docs/configuration.md` from imagebuilder/config/spec.py; do not edit by hand -->")
END = "<!-- end of settings table -->"


def dotted(setting: Setting) -> str:
    """The key as the reference names it: ``app.port``, ``env.NAME.vars``."""
    return setting.key.replace("*", "NAME")


def table(settings: tuple[Setting, ...] = SETTINGS) -> str:
    """The Markdown table: key, type, default and what it does, one row per setting."""
    rows = ["| Key | Type | Default | What it does |", "|---|---|---|---|"]
    for s in settings:
        cells = (f"`{dotted(s)}`", s.kind, s.default_text(), s.doc)
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"


def rewritten(page: str, settings: tuple[Setting, ...] = SETTINGS) -> str:
    """``page`` with the text between the markers replaced by the current table; ValueError if
    the markers are missing."""
    start = page.find(BEGIN)
    end = page.find(END, start)
    if start < 0 or end < 0:
        raise ValueError(f"the page has no lines {BEGIN!r} ... {END!r} to write the table between")
    return page[: start + len(BEGIN)] + "\n\n" + table(settings) + "\n" + page[end:]


def main(argv: list[str]) -> int:
    """Rewrite the page named by ``argv[0]`` in place."""
    if len(argv) != 1:
        sys.stderr.write("usage: python -m imagebuilder.config.reference docs/configuration.md\n")
        return 2
    path = Path(argv[0])
    page = path.read_text()
    new = rewritten(page)
    if new != page:
        path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
