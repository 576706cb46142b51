"""Finding the mirror in the host's apt configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagebuilder.errors import UserError
from imagebuilder.fetch.sources import mirror_from_apt, parse_deb822, parse_one_line

SECURITY_STANZA = """\
Types: deb
URIs: http://security.example.invalid/debian-security
Suites: trixie-security
Components: main
"""


def write(root: Path, rel: str, text: str) -> None:
    path = root / "etc/apt" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_deb822_skips_disabled_source_only_and_security(tmp_path: Path) -> None:
    write(
        tmp_path,
        "sources.list.d/debian.sources",
        f"""\
# the security archive comes first here, and must be skipped
{SECURITY_STANZA}
Types: deb
URIs: http://disabled.example.invalid/debian
Suites: trixie
Components: main
Enabled: no

Types: deb-src
URIs: http://src.example.invalid/debian
Suites: trixie
Components: main

Types: deb deb-src
# a comment inside a stanza
URIs: https://mirror.example.invalid/debian/
Suites: trixie trixie-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
""",
    )
    assert mirror_from_apt(tmp_path) == "https://mirror.example.invalid/debian"


def test_one_line_format_with_options_and_comments(tmp_path: Path) -> None:
    write(
        tmp_path,
        "sources.list",
        """\
# deb http://commented.example.invalid/debian trixie main
deb-src http://src.example.invalid/debian trixie main
deb http://security.example.invalid/debian-security trixie-security main
deb cdrom:[Debian GNU/Linux]/ trixie main
deb [arch=amd64 signed-by=/etc/k.gpg] http://one.example.invalid/debian/ trixie main  # note
""",
    )
    assert mirror_from_apt(tmp_path) == "http://one.example.invalid/debian"


def test_sources_list_comes_before_the_parts_directory(tmp_path: Path) -> None:
    write(tmp_path, "sources.list", "deb http://first.example.invalid/debian trixie main\n")
    write(
        tmp_path,
        "sources.list.d/a.sources",
        "Types: deb\nURIs: http://second.example.invalid/debian\nSuites: trixie\n",
    )
    assert mirror_from_apt(tmp_path) == "http://first.example.invalid/debian"


def test_parts_are_read_in_name_order_and_other_suffixes_ignored(tmp_path: Path) -> None:
    write(
        tmp_path,
        "sources.list.d/a.list.disabled",
        "deb http://ignored.example.invalid/debian trixie main\n",
    )
    write(tmp_path, "sources.list.d/b.list", "deb http://b.example.invalid/debian trixie main\n")
    write(
        tmp_path,
        "sources.list.d/c.sources",
        "Types: deb\nURIs: http://c.example.invalid/debian\nSuites: trixie\n",
    )
    assert mirror_from_apt(tmp_path) == "http://b.example.invalid/debian"


def test_updates_and_backports_suites_are_the_main_archive(tmp_path: Path) -> None:
    write(
        tmp_path,
        "sources.list",
        "deb http://security.example.invalid/debian-security trixie-security main\n"
        "deb http://archive.example.invalid/debian trixie-backports main\n",
    )
    assert mirror_from_apt(tmp_path) == "http://archive.example.invalid/debian"


@pytest.mark.parametrize(
    "content",
    [
        "",
        "deb http://security.example.invalid/debian trixie-security main\n",
        "deb http://security.example.invalid/ buster/updates main\n",
        "deb file:/srv/mirror trixie main\n",
        "deb-src http://src.example.invalid/debian trixie main\n",
    ],
)
def test_nothing_usable_is_a_user_error(tmp_path: Path, content: str) -> None:
    write(tmp_path, "sources.list", content)
    with pytest.raises(UserError, match=r"no Debian mirror found .* pass --mirror URL"):
        mirror_from_apt(tmp_path)


def test_no_apt_directory_at_all(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="set \\[system\\] mirror"):
        mirror_from_apt(tmp_path)


def test_parsers() -> None:
    assert parse_one_line("deb [ trusted=yes ] http://x.invalid/d sid main") == (
        "http://x.invalid/d",
        ["sid"],
    )
    assert parse_one_line("deb http://x.invalid/d") is None
    assert parse_one_line("  # deb http://x.invalid/d sid") is None
    stanzas = parse_deb822("A: 1\nLong: x\n y\n\n\n# c\nb: 2\n")
    assert stanzas == [{"a": "1", "long": "x\ny"}, {"b": "2"}]
