"""The stage-output cache: hits, misses, self-repair of corrupt entries, failing producers."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from imagebuilder.errors import UserError
from imagebuilder.hashing.core import xxh3_bytes
from imagebuilder.store.cache import Cache


def _writer(data: bytes, calls: list[Path] | None = None) -> Callable[[Path], None]:
    def produce(tmp: Path) -> None:
        if calls is not None:
            calls.append(tmp)
        tmp.write_bytes(data)

    return produce


def test_stage_key_depends_on_everything_but_order() -> None:
    k = Cache.stage_key("layer", 1, {"a": "x", "b": 2})
    assert k == Cache.stage_key("layer", 1, {"b": 2, "a": "x"})
    assert k != Cache.stage_key("layer", 2, {"a": "x", "b": 2})
    assert k != Cache.stage_key("kernel", 1, {"a": "x", "b": 2})
    assert k != Cache.stage_key("layer", 1, {"a": "x", "b": 3})


def test_miss_then_hit(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    key = Cache.stage_key("s", 1, {})
    assert cache.lookup(key) is None
    calls: list[Path] = []
    path, hit = cache.get_or_make(key, _writer(b"output", calls))
    assert not hit and path.read_bytes() == b"output"
    assert path == tmp_path / "cache" / "stages" / key[:2] / key
    assert (path.parent / f"{key}.xxh3").read_text().strip() == xxh3_bytes(b"output")
    path2, hit2 = cache.get_or_make(key, _writer(b"other", calls))
    assert hit2 and path2 == path and path2.read_bytes() == b"output"
    assert len(calls) == 1
    assert not any((tmp_path / "cache" / "tmp").iterdir())


def test_corrupt_entry_is_deleted_and_rebuilt(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    key = Cache.stage_key("s", 1, {"x": 1})
    path = cache.store(key, _writer(b"good"))
    path.write_bytes(b"bad!")
    assert cache.lookup(key) is None
    assert not path.exists()
    path, hit = cache.get_or_make(key, _writer(b"good"))
    assert not hit and path.read_bytes() == b"good"
    assert cache.lookup(key) == path


def test_missing_sidecar_is_a_miss(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    key = Cache.stage_key("s", 1, {})
    path = cache.store(key, _writer(b"data"))
    (path.parent / f"{key}.xxh3").unlink()
    assert cache.lookup(key) is None
    assert not path.exists()


def test_failing_producer_leaves_nothing(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    key = Cache.stage_key("s", 1, {})

    def produce(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        cache.get_or_make(key, produce)
    assert cache.lookup(key) is None
    assert not cache.path_of(key).exists()
    assert list((tmp_path / "tmp").iterdir()) == []


def test_producer_must_write_a_file(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    with pytest.raises(RuntimeError, match="did not write"):
        cache.store(Cache.stage_key("s", 1, {}), lambda tmp: None)


def test_store_replaces_existing_entry_atomically(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    key = Cache.stage_key("s", 1, {})
    first = cache.store(key, _writer(b"same"))
    second = cache.store(key, _writer(b"same"))
    assert first == second and cache.lookup(key) == first


def test_invalid_key_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Cache(tmp_path).lookup("../etc/passwd")


def _hammer(root: str) -> None:
    cache = Cache(Path(root))
    key = Cache.stage_key("s", 1, {"shared": True})
    for _ in range(25):
        path = cache.store(key, _writer(b"deterministic output" * 1000))
        hit = cache.lookup(key)
        assert hit == path and hit.read_bytes() == b"deterministic output" * 1000


def test_concurrent_stores_of_one_key(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(str(tmp_path),)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    key = Cache.stage_key("s", 1, {"shared": True})
    assert Cache(tmp_path).lookup(key) is not None
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.parametrize("link", ["stages", "tmp"])
def test_a_cache_whose_directories_are_links_is_refused(tmp_path: Path, link: str) -> None:
    home = tmp_path / "home"
    cache = Cache(home / "cache")
    cache.store("ab" * 16, lambda dest: dest.write_bytes(b"output"))
    cache.tmp_dir.mkdir(exist_ok=True)
    elsewhere = tmp_path / "elsewhere"
    shutil.move(cache.root / link, elsewhere)
    (cache.root / link).symlink_to(elsewhere)
    before = sorted(p.name for p in elsewhere.rglob("*"))
    done = subprocess.run([sys.executable, "-m", "imagebuilder.cli", "gc"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "IMAGEBUILDER_HOME": str(home)})
    assert done.returncode == 2, done.stdout
    assert done.stderr == (f"ERROR: {cache.root / link} is a symbolic link: imagebuilder does "
                           "not follow links out of its cache; put the real directory (or file) "
                           "there\n")
    with pytest.raises(UserError, match="is a symbolic link"):
        cache.lookup("ab" * 16)
    assert sorted(p.name for p in elsewhere.rglob("*")) == before
