"""Block maps (imagebuilder/formats/bmap.py): written in the same pass as the raw image, in
bmaptool's format 2.0, accepted by Debian's `bmaptool copy`, and checked against their image."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from imagebuilder.errors import UserError
from imagebuilder.formats import write_disk
from imagebuilder.formats.bmap import (
    BLOCK_SIZE,
    Range,
    bmap_of,
    check_image,
    disk_of_image,
    read_bmap,
    write_raw_with_bmap,
)
from tests.unit.disk_fixture import sample_disk, sha256

BMAPTOOL = shutil.which("bmaptool")
needs_bmaptool = pytest.mark.skipif(BMAPTOOL is None,
                                    reason="bmaptool not installed (apt-get install bmap-tools)")


def test_raw_is_the_disk_and_the_map_lists_its_nonzero_blocks(tmp_path: Path) -> None:
    disk = sample_disk(tmp_path)
    write_disk(disk, tmp_path / "ref.raw", "raw")
    result = write_raw_with_bmap(disk, tmp_path / "disk.raw")
    assert sha256(tmp_path / "disk.raw") == sha256(tmp_path / "ref.raw")
    assert read_bmap(tmp_path / "disk.raw.bmap") == result == bmap_of(disk)
    raw = (tmp_path / "disk.raw").read_bytes()
    nonzero = {i for i in range(len(raw) // BLOCK_SIZE)
               if raw[i * BLOCK_SIZE:(i + 1) * BLOCK_SIZE].count(0) != BLOCK_SIZE}
    mapped = {b for r in result.ranges for b in range(r.first, r.last + 1)}
    assert mapped == nonzero
    for r in result.ranges:
        start, length = r.span(BLOCK_SIZE, len(raw))
        assert r.sha256 == hashlib.sha256(raw[start:start + length]).hexdigest()
    text = (tmp_path / "disk.raw.bmap").read_text()
    assert '<bmap version="2.0">' in text and "<ChecksumType> sha256 </ChecksumType>" in text
    assert f"<BlocksCount> {len(raw) // BLOCK_SIZE} </BlocksCount>" in text
    check_image(tmp_path / "disk.raw", result)


def test_progress_reaches_the_disk_size(tmp_path: Path) -> None:
    disk = sample_disk(tmp_path)
    seen: list[int] = []
    write_raw_with_bmap(disk, tmp_path / "d.raw", tmp_path / "other.bmap", progress=seen.append)
    assert sum(seen) == disk.size and (tmp_path / "other.bmap").exists()


@needs_bmaptool
@pytest.mark.parametrize("extra", [0, 512])
def test_bmaptool_copy_accepts_the_map_and_writes_the_disk(tmp_path: Path, extra: int) -> None:
    """Also with an image size that is not a whole number of blocks (a partial last block)."""
    disk = sample_disk(tmp_path, extra=extra)
    write_raw_with_bmap(disk, tmp_path / "disk.raw")
    target = tmp_path / "target.img"
    target.write_bytes(b"\xff" * 4096)  # bmaptool makes a file target the image's size
    result = subprocess.run([BMAPTOOL or "bmaptool", "copy", str(tmp_path / "disk.raw"),
                             str(target)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "bmap file" in result.stderr
    assert sha256(target) == sha256(tmp_path / "disk.raw")


@needs_bmaptool
def test_maps_made_by_bmaptool_are_read_and_checked(tmp_path: Path) -> None:
    disk = sample_disk(tmp_path)
    write_disk(disk, tmp_path / "disk.raw", "raw")
    subprocess.run([BMAPTOOL or "bmaptool", "create", "-o", str(tmp_path / "theirs.bmap"),
                    str(tmp_path / "disk.raw")], check=True, capture_output=True)
    theirs = read_bmap(tmp_path / "theirs.bmap")
    assert theirs.image_size == disk.size and theirs.block_size == BLOCK_SIZE
    check_image(tmp_path / "disk.raw", theirs)
    # Their map follows the file system's extents, ours the non-zero blocks: same content.
    rebuilt = disk_of_image(tmp_path / "disk.raw", theirs)
    write_disk(rebuilt, tmp_path / "again.raw", "raw")
    assert sha256(tmp_path / "again.raw") == sha256(tmp_path / "disk.raw")


def test_an_image_that_does_not_match_its_map_is_named_by_block_range(tmp_path: Path) -> None:
    disk = sample_disk(tmp_path)
    result = write_raw_with_bmap(disk, tmp_path / "disk.raw")
    target = next(r for r in result.ranges if r.first * BLOCK_SIZE >= 1 << 20)
    with open(tmp_path / "disk.raw", "r+b") as f:
        f.seek(target.first * BLOCK_SIZE + 10)
        f.write(b"corrupt")
    with pytest.raises(UserError) as info:
        check_image(tmp_path / "disk.raw", result)
    assert f"blocks {target.first}-{target.last}" in str(info.value)
    assert "does not match its block map" in str(info.value)
    os.truncate(tmp_path / "disk.raw", disk.size - 4096)
    with pytest.raises(UserError, match="do not belong together"):
        check_image(tmp_path / "disk.raw", result)


@needs_bmaptool
def test_bmaptool_rejects_a_mismatching_image_too(tmp_path: Path) -> None:
    disk = sample_disk(tmp_path)
    write_raw_with_bmap(disk, tmp_path / "disk.raw")
    with open(tmp_path / "disk.raw", "r+b") as f:
        f.seek((1 << 20) + 5)
        f.write(b"x")
    result = subprocess.run([BMAPTOOL or "bmaptool", "copy", str(tmp_path / "disk.raw"),
                             str(tmp_path / "t.img")], capture_output=True, text=True)
    assert result.returncode != 0 and "checksum mismatch" in result.stderr


@pytest.mark.parametrize(("edit", "message"), [
    (lambda t: t.replace("<Range", "<Rang", 1), "bad XML"),
    (lambda t: t.replace("<MappedBlocksCount> ", "<MappedBlocksCount> 9", 1), "own checksum"),
    (lambda t: t.replace('version="2.0"', 'version="3.0"'), "version 2.0"),
])
def test_bad_maps_are_refused(tmp_path: Path, edit: object, message: str) -> None:
    write_raw_with_bmap(sample_disk(tmp_path), tmp_path / "disk.raw")
    path = tmp_path / "disk.raw.bmap"
    path.write_text(edit(path.read_text()))  # type: ignore[operator]
    with pytest.raises(UserError, match=message):
        read_bmap(path)
    with pytest.raises(UserError, match="does not exist"):
        read_bmap(tmp_path / "missing.bmap")


def test_ranges_describe_their_bytes() -> None:
    r = Range(2, 3, None)
    assert r.span(4096, 3 * 4096 + 100) == (8192, 4096 + 100)
    assert r.describe(4096, 1 << 20) == "blocks 2-3 (bytes 8192-16383)"


def test_nothing_is_left_when_the_directory_is_missing(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        write_raw_with_bmap(sample_disk(tmp_path), tmp_path / "no" / "disk.raw")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]
