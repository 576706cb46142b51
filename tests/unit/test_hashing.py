"""The hashing core against hashlib/xxhash reference values, and cache-key canonical encoding."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest
import xxhash

from imagebuilder.hashing import core as hashing
from imagebuilder.hashing import parallel, sparse
from imagebuilder.hashing.core import (
    MultiHasher,
    digest_fd,
    digest_file,
    digest_regions,
    hash_file,
    hash_paths,
    sha256_bytes,
    sha256_file,
    supported_algos,
    xxh3_bytes,
    xxh3_file,
)
from imagebuilder.hashing.keys import key_of
from imagebuilder.hashing.sparse import data_extents, iter_regions

# Published constants: SHA-256("") and SHA-256("abc"); XXH3-128 of "" with seed 0.
SHA256_EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
SHA256_ABC = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
XXH3_128_EMPTY = "99aa06d3014798d86001c324468d497f"
MIB = 1 << 20
XXH3_3MIB_KNOWN = "bdf09532fcfb84f6eea647480980395e"


def ref_xxh3(data: bytes) -> str:
    """The block-tree ``xxh3`` by its definition (imagebuilder/hashing/core.py docstring)."""
    if len(data) <= MIB:
        return xxhash.xxh3_128(data).hexdigest()
    leaves = b"".join(xxhash.xxh3_128(data[i : i + MIB]).digest() for i in range(0, len(data), MIB))
    seed = int.from_bytes(b"ib-xxh3t", "big")
    return xxhash.xxh3_128(leaves + len(data).to_bytes(8, "little"), seed=seed).hexdigest()


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
    assert hash_file(path) == {"xxh3": ref_xxh3(data)}
    both = hash_file(path, ("sha256", "xxh3", "xxh128"))
    assert list(both) == ["sha256", "xxh3", "xxh128"]
    assert both["sha256"] == hashlib.sha256(data).hexdigest()
    assert both["xxh128"] == xxhash.xxh3_128(data).hexdigest()
    assert xxh3_file(path) == ref_xxh3(data) == xxh3_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_xxh3_is_plain_xxh3_128_up_to_one_leaf(tmp_path: Path) -> None:
    for n in (0, 1, 240, 241, MIB - 1, MIB):
        data = os.urandom(n)
        assert xxh3_bytes(data) == xxhash.xxh3_128(data).hexdigest()
    data = os.urandom(MIB + 1)
    assert xxh3_bytes(data) == ref_xxh3(data) != xxhash.xxh3_128(data).hexdigest()


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


# --- sparse files, one pass, many digests -----------------------------------------------------


def make_sparse(path: Path, size: int, writes: list[tuple[int, bytes]]) -> bytes:
    """``path`` of ``size`` bytes holding ``writes``, the rest never written; its content."""
    content = bytearray(size)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
        for offset, data in writes:
            os.pwrite(fd, data, offset)
            content[offset : offset + len(data)] = data
    finally:
        os.close(fd)
    return bytes(content)


def ref_blocks(content: bytes, block_size: int) -> list[str | None]:
    out: list[str | None] = []
    for i in range(0, len(content), block_size):
        block = content[i : i + block_size]
        out.append(None if block.count(0) == len(block) else hashlib.sha256(block).hexdigest())
    return out


ALGOS = ("xxh3", "sha256", "xxh128", "sha512", "xxh64")

LAYOUTS: dict[str, tuple[int, list[tuple[int, bytes]]]] = {
    "odd-offsets": (
        3 * MIB + 123,
        [
            (1, b"a" * 9),
            (4095, os.urandom(5000)),
            (MIB + 7, os.urandom(MIB)),
            (3 * MIB + 100, b"z"),
        ],
    ),
    "hole-data-hole": (5 * MIB, [(2 * MIB + 1, os.urandom(3000))]),
    "empty": (0, []),
    "only-a-hole": (4 * MIB + 5, []),
    "only-a-leaf-of-hole": (MIB, []),
    "dense": (2 * MIB + 17, [(0, os.urandom(2 * MIB + 17))]),
    "written-zeros": (3 * MIB, [(0, bytes(MIB + 3)), (2 * MIB - 1, os.urandom(2))]),
    "small": (12288, [(5000, b"q" * 10)]),
    "leaf-multiple": (2 * MIB, [(MIB - 1, b"xy")]),
    "data-then-long-hole": (9 * MIB + 1, [(0, os.urandom(MIB + 1))]),
}


@pytest.fixture(params=sorted(LAYOUTS))
def sparse_file(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, bytes]:
    size, writes = LAYOUTS[request.param]
    path = tmp_path / request.param
    return path, make_sparse(path, size, writes)


def test_digests_match_references(sparse_file: tuple[Path, bytes]) -> None:
    path, content = sparse_file
    d = digest_file(path, ALGOS)
    assert d.size == len(content)
    assert d.hexdigests == {
        "xxh3": ref_xxh3(content),
        "sha256": hashlib.sha256(content).hexdigest(),
        "xxh128": xxhash.xxh3_128(content).hexdigest(),
        "sha512": hashlib.sha512(content).hexdigest(),
        "xxh64": xxhash.xxh64(content).hexdigest(),
    }
    assert d.data_bytes <= d.size
    assert d.blocks == [] and d.block_size is None


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_xxh3_alone_on_any_number_of_threads(
    sparse_file: tuple[Path, bytes], threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, content = sparse_file
    monkeypatch.setattr(parallel, "WINDOW_LEAVES", 2)  # several windows even on small files
    assert digest_file(path, "xxh3", threads=threads).xxh3 == ref_xxh3(content)


@pytest.mark.parametrize("block_size", [4096, 512 << 10, 1000, MIB, 3 * MIB])
def test_per_block_sha256(sparse_file: tuple[Path, bytes], block_size: int) -> None:
    path, content = sparse_file
    d = digest_file(path, ("sha256", "xxh3"), block_size=block_size)
    assert d.block_size == block_size
    assert d.blocks == ref_blocks(content, block_size)
    assert d.sha256 == hashlib.sha256(content).hexdigest()
    assert d.xxh3 == ref_xxh3(content)


def test_sparse_equals_fully_written(sparse_file: tuple[Path, bytes], tmp_path: Path) -> None:
    path, content = sparse_file
    dense = tmp_path / "dense-copy"
    dense.write_bytes(content)
    a = digest_file(path, ALGOS, block_size=4096)
    b = digest_file(dense, ALGOS, block_size=4096)
    assert (a.hexdigests, a.blocks, a.size) == (b.hexdigests, b.blocks, b.size)
    assert b.data_bytes == len(content)


def test_holes_are_not_read_where_the_filesystem_keeps_them(tmp_path: Path) -> None:
    path = tmp_path / "f"
    content = make_sparse(path, 64 * MIB, [(32 * MIB + 5, os.urandom(1000))])
    d = digest_file(path, ("xxh3", "sha256"), block_size=512 << 10)
    extents = data_extents(path)
    assert d.data_bytes == sum(length for _, length in extents)
    assert d.sha256 == hashlib.sha256(content).hexdigest()
    assert [i for i, b in enumerate(d.blocks) if b is not None] == [64]
    if d.data_bytes < d.size:  # holes supported by the filesystem holding tmp_path
        assert d.data_bytes <= 2 * 4096 * 16


def test_digests_right_without_hole_support(
    sparse_file: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, content = sparse_file
    monkeypatch.setattr(sparse, "_SEEK_DATA", None)
    d = digest_file(path, ALGOS, block_size=4096)
    assert d.data_bytes == len(content)
    assert d.xxh3 == ref_xxh3(content)
    assert d.sha256 == hashlib.sha256(content).hexdigest()
    assert d.blocks == ref_blocks(content, 4096)
    assert digest_file(path, "xxh3", threads=2).xxh3 == ref_xxh3(content)


def test_digest_regions_matches_digest_file(sparse_file: tuple[Path, bytes]) -> None:
    path, content = sparse_file
    from_file = digest_file(path, ALGOS, block_size=4096)
    walked = digest_regions(iter_regions(path, chunk=3000), len(content), ALGOS, block_size=4096)
    assert walked.hexdigests == from_file.hexdigests
    assert walked.blocks == from_file.blocks
    # fully in memory, no holes: the same digests
    in_memory = digest_regions([(0, content)], len(content), ALGOS, block_size=4096)
    assert in_memory.hexdigests == from_file.hexdigests


def test_digest_regions_gaps_tail_and_errors() -> None:
    content = bytearray(5 * MIB + 3)
    content[7:10] = b"abc"
    content[3 * MIB : 3 * MIB + 4] = b"wxyz"
    regions: list[tuple[int, bytes | memoryview | int]] = [
        (7, b"abc"),
        (10, 100),
        (3 * MIB, memoryview(b"wxyz")),
    ]
    d = digest_regions(regions, len(content), ("xxh3", "sha256"))  # gaps and the tail are zeros
    assert d.xxh3 == ref_xxh3(bytes(content))
    assert d.sha256 == hashlib.sha256(content).hexdigest()
    assert d.data_bytes == 7
    assert digest_regions([], None, "xxh3").xxh3 == XXH3_128_EMPTY
    with pytest.raises(ValueError, match="overlaps"):
        digest_regions([(0, b"abcd"), (2, b"x")], 10)
    with pytest.raises(ValueError, match="past the total"):
        digest_regions([(8, b"abcd")], 10)


def test_multihasher_any_split_of_data_and_zeros() -> None:
    rng = random.Random(7)
    content = bytearray()
    h = MultiHasher(ALGOS, block_size=5000)
    while len(content) < 5 * MIB:
        n = rng.choice([1, 17, 4095, 4096, MIB - 1, MIB, MIB + 1, 3 * MIB])
        if rng.random() < 0.5:
            piece = rng.randbytes(n)
            h.update(bytearray(piece))
            content += piece
        else:
            h.zeros(n)
            content += bytes(n)
    d = h.digests()
    assert d.size == len(content)
    assert d.xxh3 == ref_xxh3(bytes(content))
    assert d.hexdigests["xxh128"] == xxhash.xxh3_128(content).hexdigest()
    assert d.sha256 == hashlib.sha256(content).hexdigest()
    assert d.blocks == ref_blocks(bytes(content), 5000)
    # digests can be read mid-stream and feeding goes on
    h.update(b"more")
    assert h.digests().xxh3 == ref_xxh3(bytes(content) + b"more")


def test_xxh3_known_answer() -> None:
    """Pins the definition: a change to the tree would silently invalidate every cache."""
    data = bytes(range(256)) * (3 * MIB // 256) + b"tail"
    assert xxh3_bytes(data) == ref_xxh3(data) == XXH3_3MIB_KNOWN
    assert xxh3_bytes(bytes(MIB)) == xxhash.xxh3_128(bytes(MIB)).hexdigest()


def test_hash_paths(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"abc")
    make_sparse(b, 3 * MIB, [(MIB + 1, b"x")])
    assert hash_paths([a, str(b)], "sha256") == [
        (a, SHA256_ABC, 3),
        (str(b), hashlib.sha256(bytes(MIB + 1) + b"x" + bytes(2 * MIB - 2)).hexdigest(), 3 * MIB),
    ]
    assert hash_paths([a], "xxh3") == [(a, xxhash.xxh3_128(b"abc").hexdigest(), 3)]
    with pytest.raises(ValueError, match="md5"):
        hash_paths([a], "md5")
    assert "xxh3" in supported_algos() and "xxh128" in supported_algos()


def test_non_regular_file_is_streamed(tmp_path: Path) -> None:
    r, w = os.pipe()
    os.write(w, b"abc")
    os.close(w)
    try:
        d = digest_fd(r, ("sha256", "xxh3"))
    finally:
        os.close(r)
    assert d.sha256 == SHA256_ABC and d.size == 3


def test_xxh128_equals_xxhsum_h2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`imagebuilder hash --algo xxh128` against the reference tool, on empty, small, chunk-
    spanning and sparse files (holes are hashed as the zeros they read as)."""
    import shutil
    import subprocess

    from imagebuilder.cli import main
    if shutil.which("xxhsum") is None:
        pytest.skip("xxhsum missing (apt-get install xxhash)")
    rng = random.Random(128)
    files = {"empty": b"", "small": b"hello world\n",
             "chunks": rng.randbytes((3 << 20) + 12345)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    with open(tmp_path / "sparse", "wb") as f:
        f.truncate(9 << 20)
        f.seek(5 << 20)
        f.write(rng.randbytes(70000))
    paths = sorted(tmp_path.iterdir())
    reference = subprocess.run(["xxhsum", "-H2", *map(str, paths)], capture_output=True,
                               text=True, check=True).stdout
    expected = {}
    for line in reference.splitlines():
        digest, name = line.split(None, 1)
        expected[name.strip()] = digest.removeprefix("XXH128_").lower()
    assert len(expected) == 4
    got = {str(p): d for p, d, _ in hashing.hash_paths(paths, "xxh128")}
    assert got == expected
    assert main(["hash", "--algo", "xxh128", *map(str, paths)]) == 0
    assert capsys.readouterr().out == "".join(f"{expected[str(p)]}  {p}\n" for p in paths)
