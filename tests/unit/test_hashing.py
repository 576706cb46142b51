"""The hashing core against hashlib/xxhash reference values, and cache-key canonical encoding."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import xxhash

from imagebuilder.hashing import (
    MultiHasher,
    hash_file,
    key_of,
    sha256_bytes,
    sha256_file,
    xxh3_bytes,
    xxh3_file,
)

# Published constants: SHA-256("") and SHA-256("abc"); XXH3-128 of "" with seed 0.
SHA256_EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
SHA256_ABC = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
XXH3_128_EMPTY = "99aa06d3014798d86001c324468d497f"


def test_reference_values() -> None:
    assert sha256_bytes(b"") == SHA256_EMPTY
    assert sha256_bytes(b"abc") == SHA256_ABC
    assert xxh3_bytes(b"") == XXH3_128_EMPTY
    assert xxh3_bytes(b"abc") == xxhash.xxh3_128(b"abc").hexdigest()


def test_multihasher_matches_single_hashers() -> None:
    h = MultiHasher()
    h.update(b"hello ")
    h.update(memoryview(b"world"))
    assert h.hexdigests() == {
        "xxh3": xxhash.xxh3_128(b"hello world").hexdigest(),
        "sha256": hashlib.sha256(b"hello world").hexdigest(),
    }
    assert h.size == 11


def test_multihasher_rejects_unknown_algo() -> None:
    with pytest.raises(ValueError, match="md4"):
        MultiHasher(("xxh3", "md4"))


def test_hash_file_spans_chunks(tmp_path: Path) -> None:
    data = bytes(range(256)) * 12289  # ~3 MiB, not a multiple of the 1 MiB chunk
    path = tmp_path / "f"
    path.write_bytes(data)
    assert hash_file(path) == {"xxh3": xxhash.xxh3_128(data).hexdigest()}
    both = hash_file(path, ("sha256", "xxh3"))
    assert list(both) == ["sha256", "xxh3"]
    assert both["sha256"] == hashlib.sha256(data).hexdigest()
    assert xxh3_file(path) == xxhash.xxh3_128(data).hexdigest()
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_hash_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.touch()
    assert sha256_file(path) == SHA256_EMPTY
    assert xxh3_file(path) == XXH3_128_EMPTY


def test_key_of_is_stable_and_order_independent_for_dicts() -> None:
    a = key_of("stage", 1, {"b": [1, 2], "a": {"y": b"\x00", "x": None}})
    b = key_of("stage", 1, {"a": {"x": None, "y": b"\x00"}, "b": [1, 2]})
    assert a == b
    assert len(a) == 32 and int(a, 16) >= 0


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (("ab", "c"), ("a", "bc")),
        (("1",), (1,)),
        ((b"x",), ("x",)),
        (([1, 2],), ([[1], 2],)),
        (({"a": "b"},), (["a", "b"],)),
        ((True,), (1,)),
        ((None,), ("",)),
        (("a",), ("a", "")),
        (({"k": 1},), ({"k": "1"},)),
    ],
)
def test_key_of_is_unambiguous(left: tuple[object, ...], right: tuple[object, ...]) -> None:
    assert key_of(*left) != key_of(*right)


def test_key_of_refuses_paths_floats_and_non_str_keys() -> None:
    with pytest.raises(TypeError, match="paths"):
        key_of(Path("/etc"))
    with pytest.raises(TypeError):
        key_of(1.5)
    with pytest.raises(TypeError, match="str keys"):
        key_of({1: "a"})
