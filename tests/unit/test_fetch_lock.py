"""The lock file: deterministic TOML, a faithful round trip, clear errors when it is broken."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from imagebuilder.errors import ConfigError
from imagebuilder.fetch.lock import Lock, LockEntry

A = LockEntry(
    "zlib1g", "1:1.3.dfsg+really1.3.1-1+b1", "pool/main/z/zlib/zlib1g_1.3_amd64.deb", "a" * 64, 123
)
B = LockEntry(
    "busybox-static", "1:1.37.0-6+b9", "pool/main/b/busybox/busybox-static.deb", "b" * 64, 955316
)


def make() -> Lock:
    return Lock(
        "trixie", {"kernel": ["linux-image-cloud-amd64"], "base": ["busybox-static"]}, [A, B]
    )


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "imagebuilder.lock"
    lock = make()
    lock.write(path)
    loaded = Lock.load(path)
    assert loaded is not None
    assert loaded.suite == "trixie" and loaded.roots == lock.roots
    assert loaded.packages == [B, A]  # sorted by name
    assert [p["name"] for p in tomllib.loads(path.read_text())["package"]] == [
        "busybox-static",
        "zlib1g",
    ]


def test_the_archive_snapshot_round_trips_and_an_old_lock_has_none(tmp_path: Path) -> None:
    path = tmp_path / "imagebuilder.lock"
    make().write(path)
    old = Lock.load(path)
    assert old is not None and old.archive is None and "[archive]" not in path.read_text()
    snapshot = ("c" * 64, "Sat, 15 Nov 2026 09:12:33 UTC")
    Lock("trixie", make().roots, [A, B], archive=snapshot).write(path)
    loaded = Lock.load(path)
    assert loaded is not None and loaded.archive == snapshot


def test_write_is_deterministic_and_atomic(tmp_path: Path) -> None:
    first, second = tmp_path / "a.lock", tmp_path / "b.lock"
    make().write(first)
    Lock(
        "trixie", {"base": ["busybox-static"], "kernel": ["linux-image-cloud-amd64"]}, [B, A]
    ).write(second)
    assert first.read_bytes() == second.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.lock", "b.lock"]
    text = first.read_text()
    assert text.index("[roots]") < text.index("base = ") < text.index("kernel = ")
    assert "delete it to re-resolve" in text.lower()


def test_strings_are_escaped(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    odd = LockEntry('we"ird\\name', "1\t2", "pool/x\ny.deb", "c" * 64, 0)
    Lock('su"ite', {"app purpose": ["p\u00e9"]}, [odd]).write(path)
    loaded = Lock.load(path)
    assert loaded is not None
    assert loaded.packages == [odd] and loaded.suite == 'su"ite'
    assert loaded.roots == {"app purpose": ["p\u00e9"]}


def test_missing_file_is_none(tmp_path: Path) -> None:
    assert Lock.load(tmp_path / "absent.lock") is None


def test_matches() -> None:
    lock = make()
    assert lock.matches(
        "trixie", {"base": ["busybox-static"], "kernel": ["linux-image-cloud-amd64"], "app": []}
    )
    assert not lock.matches("forky", lock.roots)
    assert not lock.matches("trixie", {"base": ["busybox-static"]})
    assert not lock.matches("trixie", {**lock.roots, "app": ["fonts-dejavu-core"]})


GOOD_PACKAGE = (
    '[[package]]\nname = "a"\nversion = "1"\nfilename = "pool/a.deb"\n'
    f'sha256 = "{"d" * 64}"\nsize = 1\n'
)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("suite = ", "invalid TOML"),
        ("suite = " + "[" * 5000 + "]" * 5000, "nested too deeply"),
        ('suite = "t"\n[archive]\ninrelease_sha256 = "xyz"\ndate = "d"\n', "[archive] must"),
        ('suite = "t"\n[archive]\ndate = "d"\n', "[archive] must"),
        ('suite = "t"\n[archive]\ninrelease_sha256 = "' + "a" * 64 + '"\ndate = "d"\nx = 1\n',
         "[archive] must"),
        ("[roots]\n", "'suite' must be a non-empty string"),
        ('suite = "t"\nversion = 7\n', "unsupported version"),
        ('suite = "t"\nextra = 1\n', "unknown key"),
        ('suite = "t"\nroots = 3\n', "'roots' must be a table"),
        ('suite = "t"\n[roots]\nbase = "busybox"\n', "roots.base must be a list"),
        ('suite = "t"\npackage = 3\n', "array of tables"),
        ('suite = "t"\n[[package]]\nname = "a"\n', "lacks version, filename, sha256, size"),
        ('suite = "t"\n' + GOOD_PACKAGE.replace('"1"\n', "1\n", 1), "'version' must be a str"),
        ('suite = "t"\n' + GOOD_PACKAGE.replace("d" * 64, "xyz"), "sha256 must be 64"),
        ('suite = "t"\n' + GOOD_PACKAGE.replace("size = 1", "size = -1"), "size must not be"),
        ('suite = "t"\n' + GOOD_PACKAGE.replace("pool/a.deb", "../a.deb"), "pool path"),
        ('suite = "t"\n' + GOOD_PACKAGE + 'colour = "red"\n', "unknown key"),
        ('suite = "t"\n' + GOOD_PACKAGE + GOOD_PACKAGE, "listed twice: a"),
    ],
)
def test_malformed_lock_is_a_config_error(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "imagebuilder.lock"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        Lock.load(path)
    message = str(info.value)
    assert str(path) in message and problem in message and "delete it to re-resolve" in message


def test_binary_garbage_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "imagebuilder.lock"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        Lock.load(path)
