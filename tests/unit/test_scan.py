"""The scan memo's entry fingerprints: a changed jar pays only for the entries that changed, and
an entry whose raw bytes (or central directory record) changed since the memo was made is
inflated and checked again, so a corrupt one is refused however warm the memo is.

The jars are Debian's jackson-core (real class files), rewritten with fixed times.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from imagebuilder.apps.archive import Budget
from imagebuilder.apps.detect import detect
from imagebuilder.apps.scan import Memo, Usage, load_memo, save_memo, scan
from imagebuilder.errors import UserError
from support.java_apps import JACKSON

CORE = JACKSON[1]
MAIN = "com.fasterxml.jackson.core.JsonFactory"
CLASS = "com/fasterxml/jackson/core/JsonParser.class"
RESOURCE = "META-INF/maven/com.fasterxml.jackson.core/jackson-core/pom.xml"
SERVICE = "META-INF/services/com.fasterxml.jackson.core.JsonFactory"

pytestmark = pytest.mark.skipif(not CORE.is_file(), reason="needs libjackson2-core-java")


def _jar(dest: Path, changes: dict[str, bytes] | None = None) -> Path:
    """jackson-core with ``changes`` (name -> new bytes; a new name is added last), every entry
    written with the same time, so an unchanged entry has the same raw bytes in every copy."""
    changes = dict(changes or {})
    with zipfile.ZipFile(CORE) as src, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as out:
        for info in src.infolist():
            if not info.is_dir():
                data = changes.pop(info.filename, None)
                _put(out, info.filename, src.read(info) if data is None else data)
        for name, data in changes.items():
            _put(out, name, data)
    return dest


def _put(out: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    out.writestr(info, data)


def _scan(jar: Path, memo: Memo) -> tuple[int, Usage]:
    """The bytes the scan inflated (after detect's own reads), and what it found."""
    budget = Budget()
    try:
        shape = detect(jar, MAIN, budget)
        before = budget.left
        usage = scan(shape, 21, budget, jar, memo)
        return before - budget.left, usage
    finally:
        budget.close()


def _warm(tmp_path: Path) -> Memo:
    """A memo made by scanning the unchanged jar, saved and loaded as the build does."""
    memo = Memo()
    _scan(_jar(tmp_path / "v1.jar"), memo)
    save_memo(tmp_path / "memo.json", memo)
    return load_memo(tmp_path / "memo.json")


def _size(jar: Path, name: str) -> int:
    with zipfile.ZipFile(jar) as zf:
        return zf.getinfo(name).file_size


def test_a_changed_jar_inflates_only_its_new_and_changed_entries(tmp_path: Path) -> None:
    memo = _warm(tmp_path)
    with zipfile.ZipFile(CORE) as zf:
        parser = zf.read(CLASS)
        factory = zf.read(MAIN.replace(".", "/") + ".class")
    added = _jar(tmp_path / "v2.jar", {"com/example/Added.class": parser})
    assert _scan(added, memo) == (_size(added, "com/example/Added.class"),
                                  _scan(added, Memo())[1])
    changed = _jar(tmp_path / "v3.jar", {CLASS: factory})
    inflated, usage = _scan(changed, memo)
    assert inflated == _size(changed, CLASS) and usage == _scan(changed, Memo())[1]


def _corrupt_data(jar: Path, name: str) -> None:
    """Flip bytes of ``name``'s compressed data; its CRC-32 and sizes stay as they were."""
    with zipfile.ZipFile(jar) as zf:
        info = zf.getinfo(name)
    data = bytearray(jar.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    for i in range(start + 5, start + 25):
        data[i] ^= 0x5A
    jar.write_bytes(bytes(data))


def _corrupt_crc(jar: Path, name: str) -> None:
    """Change ``name``'s CRC-32 in the central directory only (the data is intact)."""
    data = bytearray(jar.read_bytes())
    record = data.rindex(b"PK\x01\x02", 0, data.rindex(name.encode()))
    data[record + 16] ^= 0xFF
    jar.write_bytes(bytes(data))


@pytest.mark.parametrize("name", [CLASS, RESOURCE, SERVICE])
@pytest.mark.parametrize("corrupt", [_corrupt_data, _corrupt_crc])
def test_the_one_entry_corrupted_since_the_memo_was_made_is_refused(
        tmp_path: Path, name: str, corrupt: object) -> None:
    """Only that entry changed (every other one is known to the memo): it is still inflated and
    refused, with the message a cold scan gives."""
    memo = _warm(tmp_path)
    jar = _jar(tmp_path / "v1.jar")
    corrupt(jar, name)  # type: ignore[operator]
    with pytest.raises(UserError) as warm:
        _scan(jar, memo)
    assert str(warm.value).startswith(f"{jar}!/{name}: corrupt entry (")
    with pytest.raises(UserError) as cold:
        _scan(jar, Memo())
    assert str(cold.value) == str(warm.value)


def test_older_versions_of_a_changed_jar_are_kept_up_to_memo_old(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The memo of a jar rebuilt again and again does not grow by a version each build: the jars
    the last scan did not use keep at most MEMO_OLD class entries (the newest of them stay)."""
    from imagebuilder.apps import scan as scan_module
    from imagebuilder.hashing.core import xxh3_file
    with zipfile.ZipFile(CORE) as zf:
        parser = zf.read(CLASS)
    memo_path = tmp_path / "memo.json"
    versions = [_jar(tmp_path / f"v{n}.jar", {f"com/example/V{n}.class": parser})
                for n in range(3)]
    for jar in versions:
        memo = load_memo(memo_path)
        _scan(jar, memo)
        monkeypatch.setattr(scan_module, "MEMO_OLD", len(memo.jars[next(reversed(memo.jars))]))
        save_memo(memo_path, memo)
    kept = [key.partition(":")[0] for key in load_memo(memo_path).jars]
    assert kept == [xxh3_file(versions[1]), xxh3_file(versions[2])]
