"""The README and docs/ stay walkable: a short README whose two commands CI runs as they are,
links and named files that exist, pages that open with a command, and a layout page that names
every folder of the package.

Docs are read by people who then run what they say, so a link to a moved page, a test that no
longer exists under the name given, or a changed first command is a defect like any other.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PACKAGE = ROOT / "imagebuilder"

#: The top of the README, byte for byte: CI (.ci/run) and people run these two commands.
COMMANDS = """\
# imagebuilder

```sh
./scripts/setup.sh && examples/hello/build.sh && .venv/bin/imagebuilder build examples/hello \
&& .venv/bin/imagebuilder run hello:1.0.0 --config examples/hello --env test
```

```sh
./scripts/setup.sh && .venv/bin/python -m pytest
```
"""
MAX_README_LINES = 200
#: Pages written by others: benchmarks.md by bench/'s scripts, configuration.md from the settings.
NOT_OURS = {"benchmarks.md", "configuration.md"}
#: Folders of the repository whose files the docs name by path.
REPO_DIRS = ("imagebuilder", "tests", "support", "bench", "templates", "scripts", "kernels",
             "examples", "docs")

_FENCE = re.compile(r"^```.*?^```[ \t]*$", re.M | re.S)
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_DIRS = "|".join(REPO_DIRS)
_PATH = re.compile(rf"(?<![\w/.$~-])((?:{_DIRS})/[\w./-]*\w)")


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    for line in _FENCE.sub("", page.read_text()).splitlines():
        if m := re.match(r"#{1,6} (.+)", line):
            base = slug(m.group(1))
            name, n = base, 0
            while name in found:
                n += 1
                name = f"{base}-{n}"
            found.add(name)
    return found


def broken_links(page: Path) -> list[str]:
    """The relative links of ``page`` whose file (or heading) does not exist."""
    broken = []
    for target in _LINK.findall(_FENCE.sub("", page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{page.name}: {target} (no such file)")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(f"{page.name}: {target} (no such heading)")
    return broken


def missing_paths(page: Path) -> list[str]:
    """Files of the repository that ``page`` names (``tests/e2e/test_boot.py``) and that do not
    exist; placeholders in capitals (``kernels/NAME.toml``) and globs are not names."""
    missing = []
    for path in sorted(set(_PATH.findall(page.read_text()))):
        if re.search(r"[A-Z]{3,}|\*", path):
            continue
        if not (ROOT / path).exists():
            missing.append(f"{page.name}: {path}")
    return missing


def opens_with_a_command(page: Path) -> bool:
    """The page's first block after its title is a shell command."""
    body = page.read_text().split("\n", 1)[1].lstrip("\n")
    return body.startswith("```sh\n")


def test_the_readme_is_short() -> None:
    lines = len(README.read_text().splitlines())
    assert lines < MAX_README_LINES, f"README.md has {lines} lines: move a section into docs/"


def test_the_readme_opens_with_the_two_commands_unchanged() -> None:
    assert README.read_text().startswith(COMMANDS)


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.name)
def test_every_relative_link_reaches_a_file(page: Path) -> None:
    assert broken_links(page) == []


@pytest.mark.parametrize("page", [p for p in pages() if p.name not in NOT_OURS],
                         ids=lambda p: p.name)
def test_every_file_named_exists(page: Path) -> None:
    assert missing_paths(page) == []


@pytest.mark.parametrize("page", [p for p in DOCS.glob("*.md") if p.name not in NOT_OURS],
                         ids=lambda p: p.name)
def test_every_page_opens_with_a_command(page: Path) -> None:
    assert opens_with_a_command(page)


def test_every_page_is_linked_from_the_readme() -> None:
    linked = {Path(t.partition("#")[0]).name for t in _LINK.findall(README.read_text())}
    assert {p.name for p in DOCS.glob("*.md")} - linked == set()


def test_every_command_has_its_line_in_the_commands_page() -> None:
    import click

    from imagebuilder.cli import cli
    text = (DOCS / "commands.md").read_text()
    names = cli.list_commands(click.Context(cli))
    assert names and [n for n in names if f"| `{n}` |" not in text] == []


def test_the_code_sends_readers_to_pages_that_exist() -> None:
    """Help texts and comments name the docs/ page that explains them: the README keeps no
    details any more, and a page they name must exist."""
    stale = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        where = path.relative_to(ROOT)
        stale += [f"{where}: README" for _ in re.findall(r"\bREADME\b", text)]
        stale += [f"{where}: {page}" for page in re.findall(r"\bdocs/[\w-]+\.md", text)
                  if not (ROOT / page).exists()]
    assert stale == []


def test_the_layout_page_names_every_folder_and_root_module() -> None:
    text = (DOCS / "architecture.md").read_text()
    folders = {p.parent.relative_to(ROOT).as_posix() + "/" for p in PACKAGE.rglob("__init__.py")
               if p.parent != PACKAGE}
    modules = {p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    assert {f for f in folders if f"`{f}`" not in text} == set()
    assert {m for m in modules if f"`{m}`" not in text and f"`imagebuilder/{m}`" not in text} \
        == set()


def test_the_layout_page_names_only_modules_that_exist() -> None:
    stale = []
    for line in (DOCS / "architecture.md").read_text().splitlines():
        if m := re.match(r"\| `(imagebuilder/[\w/]+/)` \|", line):
            folder = ROOT / m.group(1)
            stale += [f"{m.group(1)}{name}" for name in re.findall(r"`(\w+\.py)`", line)
                      if not (folder / name).exists()]
    assert stale == []


def test_a_broken_link_a_missing_file_and_a_missing_command_are_found(tmp_path: Path) -> None:
    (tmp_path / "there.md").write_text("# There\n\n## A `code` heading, twice\n")
    page = tmp_path / "page.md"
    page.write_text("# Page\n\nText first.\n\n[ok](there.md#a-code-heading-twice) [web](https://x)"
                    " [gone](gone.md) [no heading](there.md#nowhere)\n\n```sh\n[x](in-code.md)\n"
                    "```\n\n`tests/unit/test_docs.py` and `tests/unit/test_nothing_here.py`, "
                    "`kernels/NAME.toml`, /usr/share/imagebuilder/env.awk\n")
    assert broken_links(page) == ["page.md: gone.md (no such file)",
                                  "page.md: there.md#nowhere (no such heading)"]
    assert missing_paths(page) == ["page.md: tests/unit/test_nothing_here.py"]
    assert not opens_with_a_command(page)
    assert opens_with_a_command(DOCS / "commands.md")
