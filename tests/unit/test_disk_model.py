"""The disk model: extents, validation, walking a disk in bounded pieces, files with holes."""

from __future__ import annotations

import errno
import mmap
import os
import random
from pathlib import Path

import pytest

from imagebuilder.disk import Disk, DiskBuilder, Extent, FileSlice
from imagebuilder.errors import HostError, NotFoundError, UserError

MiB = 1 << 20


def expected_bytes(disk: Disk) -> bytes:
    """The disk's content built independently of Disk's own readers."""
    out = bytearray(disk.size)
    for e in disk.extents:
        if isinstance(e.source, bytes):
            out[e.offset : e.end] = e.source
        else:
            with open(e.source.path, "rb") as f:
                f.seek(e.source.offset)
                out[e.offset : e.end] = f.read(e.length)
    return bytes(out)


def from_regions(disk: Disk, chunk: int) -> bytes:
    out = bytearray()
    for off, data in disk.iter_regions(chunk):
        assert off == len(out)
        out += bytes(data) if isinstance(data, int) else data
    return bytes(out)


@pytest.fixture
def sample(tmp_path: Path) -> Disk:
    src = tmp_path / "src.bin"
    src.write_bytes(random.Random(7).randbytes(200_000))
    return Disk(
        4 * MiB,
        [
            Extent(4 * MiB - 1, 1, b"\xff"),
            Extent(0, 1, b"\x01"),
            Extent(65535, 3, b"abc"),
            Extent(100_000, 150_001, FileSlice(src, 17)),
            Extent(250_001, 2, b"xy"),  # right after the file slice
            Extent(MiB - 5, 10, b"0123456789"),  # crosses a 1 MiB chunk boundary
        ],
    )


def test_extent_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="negative"):
        Extent(-1, 1, b"x")
    with pytest.raises(ValueError, match="non-positive"):
        Extent(0, 0, b"")
    with pytest.raises(ValueError, match="length 3 but 2 bytes"):
        Extent(0, 3, b"xy")
    with pytest.raises(TypeError):
        Extent(0, 1, "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="negative file offset"):
        FileSlice(tmp_path, -1)
    assert Extent(0, 2, bytearray(b"ab")).source == b"ab"  # type: ignore[arg-type]


def test_disk_validation() -> None:
    with pytest.raises(ValueError, match="multiple of 512"):
        Disk(1000)
    with pytest.raises(ValueError, match="multiple of 512"):
        Disk(0)
    with pytest.raises(ValueError, match="overlaps"):
        Disk(4096, [Extent(0, 10, bytes(10)), Extent(9, 1, b"x")])
    with pytest.raises(ValueError, match="past the end"):
        Disk(4096, [Extent(4095, 2, b"xx")])
    disk = Disk(4096, [Extent(10, 1, b"b"), Extent(0, 1, b"a")])
    assert [e.offset for e in disk.extents] == [0, 10]
    assert disk.data_size() == 2


def test_iter_regions_covers_the_disk_in_bounded_pieces(sample: Disk) -> None:
    want = expected_bytes(sample)
    for chunk in (1, 4096, 65536, MiB):
        pos = 0
        for off, data in sample.iter_regions(chunk):
            assert off == pos
            if isinstance(data, int):
                assert data > 0
                pos += data
            else:
                assert 0 < len(data) <= chunk
                assert off // chunk == (off + len(data) - 1) // chunk  # never crosses a multiple
                assert data == want[off : off + len(data)]
                pos += len(data)
        assert pos == sample.size
    assert from_regions(sample, MiB) == want


def test_iter_regions_of_an_empty_disk() -> None:
    assert list(Disk(8 * MiB).iter_regions()) == [(0, 8 * MiB)]


def test_iter_blocks(sample: Disk) -> None:
    want = expected_bytes(sample)
    blocks = list(sample.iter_blocks(65536))
    offsets = [off for off, _ in blocks]
    assert offsets == sorted(set(offsets))
    touched = {b for e in sample.extents for b in range(e.offset // 65536 * 65536, e.end, 65536)}
    assert set(offsets) == touched
    for off, block in blocks:
        assert len(block) == 65536
        assert block == want[off : off + 65536]


def test_iter_blocks_pads_past_the_end() -> None:
    disk = Disk(1536, [Extent(1535, 1, b"z")])
    assert list(disk.iter_blocks(4096)) == [(0, bytes(1535) + b"z" + bytes(4096 - 1536))]


def nonzero_blocks(disk: Disk, block: int, window: int = 8 * MiB) -> list[tuple[int, bytes]]:
    """The blocks of :meth:`Disk.iter_nonzero`, checked as they come: whole blocks, runs inside
    one window, and the file range given for a run holding exactly the run's bytes."""
    out = []
    for off, view, where in disk.iter_nonzero(block, window):
        assert off % block == 0 and len(view) % block == 0 and len(view) > 0
        assert off // window == (off + len(view) - 1) // window  # never crosses a window
        if where is not None:
            fd, file_off = where
            assert os.pread(fd, len(view), file_off) == view  # the kernel may copy from here
        out += [(off + j, bytes(view[j : j + block])) for j in range(0, len(view), block)]
    return out


def layouts(tmp_path: Path) -> list[Disk]:
    """Extents at odd offsets and sharing blocks, zero blocks inside file data, the disk's end."""
    rnd = random.Random(9)
    data = bytearray(rnd.randbytes(600_000))
    data[131072:262144] = bytes(131072)  # two zero 64 KiB blocks (at file offsets 131072..)
    data[300_000:304_096] = bytes(4096)
    src = tmp_path / "layouts.bin"
    src.write_bytes(bytes(data))
    size = 2 * MiB + 1536
    return [
        Disk(
            size,
            [
                Extent(0, 1, b"\x01"),
                Extent(65535, 3, b"abc"),  # across a block boundary
                Extent(100_003, 500_000, FileSlice(src, 13)),  # unaligned in file and guest
                Extent(600_003, 1, b"!"),  # shares a block with the file slice's end
                Extent(MiB, 400_000, FileSlice(src, 65536)),  # aligned: its zero blocks skipped
                Extent(size - 1, 1, b"\xff"),  # the very last byte, in a partial block
            ],
        ),
        Disk(4 * MiB, [Extent(0, 4 * MiB, bytes(MiB) + rnd.randbytes(MiB) + bytes(2 * MiB))]),
        Disk(MiB, [Extent(4096, 65536, bytes(65536))]),  # data extent, all zeros
    ]


@pytest.mark.parametrize("block", [512, 4096, 65536])
def test_iter_nonzero_is_iter_blocks_without_zero_blocks(tmp_path: Path, block: int) -> None:
    disks = [*layouts(tmp_path), Disk(4 * MiB)]
    for disk in disks:
        want = [(o, b) for o, b in disk.iter_blocks(block) if b != bytes(block)]
        assert nonzero_blocks(disk, block) == want
        assert nonzero_blocks(disk, block, window=3 * block) == want  # many small windows


def test_iter_nonzero_views_outlive_the_walk(tmp_path: Path) -> None:
    disk = layouts(tmp_path)[0]
    runs = list(disk.iter_nonzero(65536))  # every window's mapping kept alive by its views
    want = expected_bytes(disk) + bytes(-disk.size % 65536)
    assert runs
    for off, view, _ in runs:
        assert view == want[off : off + len(view)]


def test_iter_nonzero_reads_where_it_cannot_map(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = layouts(tmp_path)[0]
    want = nonzero_blocks(disk, 65536)

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENODEV, "no mmap here")

    monkeypatch.setattr(mmap, "mmap", refuse)
    assert nonzero_blocks(disk, 65536) == want
    assert all(where is None for _, _, where in disk.iter_nonzero(65536))


def test_iter_nonzero_of_a_file_that_is_too_short(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_bytes(b"abc")
    disk = Disk(MiB, [Extent(0, 200_000, FileSlice(short, 0))])
    with pytest.raises(HostError, match="ended at byte 3"):
        list(disk.iter_nonzero(65536))
    missing = Disk(MiB, [Extent(0, 200_000, FileSlice(tmp_path / "missing", 0))])
    with pytest.raises(HostError, match="cannot read .*missing"):
        list(missing.iter_nonzero(65536))


def test_iter_nonzero_reads_files_that_are_not_regular() -> None:
    # a character device has no size to check a mapping against: it is read instead
    disk = Disk(MiB, [Extent(0, 200_000, FileSlice(Path("/dev/zero"), 0))])
    assert list(disk.iter_nonzero(65536)) == []


def test_iter_nonzero_of_a_sparse_file(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    sparse_file(raw, 64 * MiB, [(0, b"\x01"), (5 * MiB + 7, b"x" * 70_000), (64 * MiB - 1, b"e")])
    disk = Disk.from_file(raw)
    offsets = [off for off, _ in nonzero_blocks(disk, 65536)]
    assert offsets == [0, 5 * MiB, 5 * MiB + 65536, 64 * MiB - 65536]


def test_extents_and_file_slices_are_values(tmp_path: Path) -> None:
    a = Extent(0, 3, FileSlice(tmp_path, 5))
    assert a == Extent(0, 3, FileSlice(tmp_path, 5)) != Extent(0, 3, FileSlice(tmp_path, 6))
    assert hash(a) == hash(Extent(0, 3, FileSlice(tmp_path, 5)))
    assert a.end == 3 and "FileSlice" in repr(a)
    with pytest.raises(AttributeError):
        a.offset = 1  # type: ignore[misc]
    with pytest.raises(AttributeError):
        a.source.offset = 1  # type: ignore[union-attr, misc]


def test_read(sample: Disk) -> None:
    want = expected_bytes(sample)
    rnd = random.Random(3)
    for _ in range(200):
        off = rnd.randrange(sample.size)
        n = rnd.randrange(min(300_000, sample.size - off) + 1)
        assert sample.read(off, n) == want[off : off + n]
    with pytest.raises(ValueError):
        sample.read(sample.size - 1, 2)


def test_file_slices_are_read_lazily(tmp_path: Path) -> None:
    disk = Disk(MiB, [Extent(0, 10, FileSlice(tmp_path / "missing", 0))])  # no error yet
    with pytest.raises(HostError, match="cannot read .*missing"):
        list(disk.iter_regions())


def test_file_shorter_than_its_extent(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_bytes(b"abc")
    disk = Disk(MiB, [Extent(0, 10, FileSlice(short, 0))])
    with pytest.raises(HostError, match="ended at byte 3"):
        list(disk.iter_regions())


def test_big_file_slice_is_walked_in_chunks(tmp_path: Path) -> None:
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(64 * MiB)
    disk = Disk(64 * MiB, [Extent(0, 64 * MiB, FileSlice(big, 0))])
    sizes = {len(d) for _, d in disk.iter_regions() if not isinstance(d, int)}
    assert sizes == {MiB}


def sparse_file(path: Path, size: int, pieces: list[tuple[int, bytes]]) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        for off, data in pieces:
            f.seek(off)
            f.write(data)


def test_from_file_skips_holes(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    rnd = random.Random(1)
    pieces = [(0, b"\x01"), (3 * MiB + 7, rnd.randbytes(5000)), (64 * MiB - 3, b"end")]
    sparse_file(raw, 64 * MiB, pieces)
    disk = Disk.from_file(raw)
    assert disk.size == 64 * MiB
    assert disk.data_size() < MiB  # the holes are not extents (file systems with SEEK_HOLE)
    assert all(isinstance(e.source, FileSlice) for e in disk.extents)
    content = raw.read_bytes()
    assert from_regions(disk, MiB) == content
    for off, data in pieces:
        assert disk.read(off, len(data)) == data


def test_from_file_sizes(tmp_path: Path) -> None:
    odd = tmp_path / "odd"
    odd.write_bytes(b"x" * 1000)
    disk = Disk.from_file(odd)
    assert disk.size == 1024
    assert disk.read(0, 1024) == b"x" * 1000 + bytes(24)
    assert Disk.from_file(odd, size=8192).size == 8192
    with pytest.raises(UserError, match="does not fit"):
        Disk.from_file(odd, size=512)
    empty = tmp_path / "empty"
    empty.touch()
    with pytest.raises(UserError, match="empty"):
        Disk.from_file(empty)
    with pytest.raises(NotFoundError):
        Disk.from_file(tmp_path / "nope")


def test_builder_sorts_and_merges(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(bytes(range(256)) * 16)
    b = DiskBuilder(MiB)
    b.put(512, b"B")
    b.put(0, b"A" * 512)  # merges with the following bytes
    b.put(4096, FileSlice(src, 0), 100)
    b.put(4196, FileSlice(src, 100), 50)  # the next range of the same file: merged
    b.put(4246, FileSlice(src, 500), 10)  # same file, not contiguous in it: kept apart
    b.put(8192, b"")  # nothing
    assert [(e.offset, e.length) for e in b.extents] == [(0, 513), (4096, 150), (4246, 10)]
    assert b.extents[0].source == b"A" * 512 + b"B"
    assert b.put_file(10_000, src) == 4096
    disk = b.build()
    assert disk.read(4096, 150) == src.read_bytes()[:150]
    assert disk.read(4246, 10) == src.read_bytes()[500:510]
    assert disk.read(10_000, 4096) == src.read_bytes()


def test_builder_refuses_overlaps() -> None:
    b = DiskBuilder(8192)
    b.put(100, b"x" * 100)
    with pytest.raises(ValueError, match="overlaps"):
        b.put(150, b"y")
    with pytest.raises(ValueError, match="overlaps"):
        b.put(50, b"y" * 51)
    with pytest.raises(ValueError, match="past the end"):
        b.put(8191, b"yy")
    with pytest.raises(ValueError, match="needs a length"):
        b.put(0, FileSlice(Path(os.devnull)))
    b.put(99, b"y")  # touching is fine
    b.put(200, b"z")
    assert [(e.offset, e.length) for e in b.extents] == [(99, 102)]
