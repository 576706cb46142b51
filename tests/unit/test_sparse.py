"""Data extents and region walks of sparse files, on whatever filesystem holds tmp_path.

The tests never assume that the filesystem keeps holes: where it does not, every extent list must
still cover the data and every walk must still give back the file's exact content.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from imagebuilder.hashing import sparse
from imagebuilder.hashing.sparse import data_extents, iter_regions, layout

MIB = 1 << 20


def make_sparse(path: Path, size: int, writes: list[tuple[int, bytes]]) -> bytes:
    """Create ``path`` of ``size`` bytes holding ``writes`` (the rest never written); return its
    expected content."""
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


def holes_supported(tmp_path: Path) -> bool:
    probe = tmp_path / "probe"
    make_sparse(probe, 8 * MIB, [(4 * MIB, b"x")])
    total = sum(length for _, length in data_extents(probe))
    probe.unlink()
    return total < 8 * MIB


def check_extents(extents: list[tuple[int, int]], size: int, content: bytes) -> None:
    """Sorted, disjoint, non-empty, inside the file, and every non-zero byte inside one."""
    pos = 0
    for offset, length in extents:
        assert length > 0
        assert offset >= pos
        pos = offset + length
    assert pos <= size
    covered = bytearray(size)
    for offset, length in extents:
        covered[offset : offset + length] = b"\x01" * length
    missing = [i for i, b in enumerate(content) if b and not covered[i]]
    assert not missing, f"non-zero bytes outside the extents, first at {missing[0]}"


ODD = [(1, b"a" * 10), (4095, os.urandom(5000)), (MIB + 7, os.urandom(MIB)), (3 * MIB + 100, b"z")]


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.touch()
    assert data_extents(path) == []
    assert list(iter_regions(path)) == []


def test_only_a_hole(tmp_path: Path) -> None:
    path = tmp_path / "hole"
    make_sparse(path, 4 * MIB + 5, [])
    extents = data_extents(path)
    if holes_supported(tmp_path):
        assert extents == []
        assert list(iter_regions(path)) == [(0, 4 * MIB + 5)]
    else:
        assert extents == [(0, 4 * MIB + 5)]


@pytest.mark.parametrize(
    ("size", "writes"),
    [
        (3 * MIB + 123, ODD),
        (5 * MIB, [(2 * MIB + 1, os.urandom(3000))]),  # starts and ends with holes
        (2 * MIB + 17, [(0, os.urandom(2 * MIB + 17))]),  # dense
        (12288, [(5000, b"q" * 10)]),
    ],
)
def test_extents_cover_the_data(tmp_path: Path, size: int, writes: list[tuple[int, bytes]]) -> None:
    path = tmp_path / "f"
    content = make_sparse(path, size, writes)
    extents = data_extents(path)
    check_extents(extents, size, content)
    # the fd form gives the same answer and leaves the file position alone
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, 1234, os.SEEK_SET)
        assert data_extents(fd) == extents
        assert os.lseek(fd, 0, os.SEEK_CUR) == 1234
    finally:
        os.close(fd)
    written = sum(len(data) for _, data in writes)
    if holes_supported(tmp_path) and written + 2 * 4096 * len(writes) < size:
        assert sum(length for _, length in extents) < size  # the holes are not data


def test_file_ending_in_a_hole(tmp_path: Path) -> None:
    path = tmp_path / "f"
    content = make_sparse(path, 8 * MIB, [(0, b"head")])
    extents = data_extents(path)
    check_extents(extents, 8 * MIB, content)
    if holes_supported(tmp_path):
        assert extents[-1][0] + extents[-1][1] < 8 * MIB
    regions = list(iter_regions(path))
    assert isinstance(regions[-1][1], int) or not holes_supported(tmp_path)


def test_size_limits_the_walk(tmp_path: Path) -> None:
    path = tmp_path / "f"
    make_sparse(path, 4 * MIB, [(0, os.urandom(3 * MIB))])
    extents = data_extents(path, size=MIB + 3)
    assert extents and extents[-1][0] + extents[-1][1] <= MIB + 3
    assert data_extents(path, size=0) == []


def test_unsupported_lseek_falls_back_to_one_extent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "f"
    make_sparse(path, 3 * MIB, [(MIB, b"x")])
    real_lseek = os.lseek

    def einval(fd: int, pos: int, how: int) -> int:
        if how in (sparse._SEEK_DATA, sparse._SEEK_HOLE):
            raise OSError(errno.EINVAL, "not supported")
        return real_lseek(fd, pos, how)

    monkeypatch.setattr(os, "lseek", einval)
    assert data_extents(path) == [(0, 3 * MIB)]
    monkeypatch.setattr(os, "lseek", real_lseek)
    monkeypatch.setattr(sparse, "_SEEK_DATA", None)
    assert data_extents(path) == [(0, 3 * MIB)]


def test_enxio_means_no_more_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f"
    make_sparse(path, 3 * MIB, [(0, b"x")])
    real_lseek = os.lseek

    def enxio(fd: int, pos: int, how: int) -> int:
        if how == sparse._SEEK_DATA:
            raise OSError(errno.ENXIO, "no data")
        return real_lseek(fd, pos, how)

    monkeypatch.setattr(os, "lseek", enxio)
    assert data_extents(path) == []


def test_layout_covers_the_file() -> None:
    assert list(layout([], 0)) == []
    assert list(layout([], 10)) == [(0, 10, False)]
    assert list(layout([(0, 10)], 10)) == [(0, 10, True)]
    assert list(layout([(3, 2), (7, 10)], 12)) == [
        (0, 3, False),
        (3, 2, True),
        (5, 2, False),
        (7, 5, True),
    ]


@pytest.mark.parametrize("chunk", [MIB, 4096, 1000])
def test_iter_regions_gives_back_the_content(tmp_path: Path, chunk: int) -> None:
    path = tmp_path / "f"
    size = 3 * MIB + 123
    # written zeros are data: the walk never scans for zeros, it only skips holes
    content = make_sparse(path, size, [*ODD, (2 * MIB + 3, bytes(5000))])
    extents = data_extents(path)
    rebuilt = bytearray()
    for offset, item in iter_regions(path, chunk=chunk):
        assert offset == len(rebuilt)
        if isinstance(item, int):
            assert item > 0
            rebuilt += bytes(item)
            # a hole yielded is a hole the filesystem reported
            assert not any(o <= offset < o + n for o, n in extents)
        else:
            assert 0 < len(item) <= chunk
            assert any(o <= offset and offset + len(item) <= o + n for o, n in extents)
            rebuilt += item
    assert bytes(rebuilt) == content


def test_iter_regions_rejects_bad_chunk(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    with pytest.raises(ValueError):
        list(iter_regions(path, chunk=0))
