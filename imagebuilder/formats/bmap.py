"""Block maps: which blocks of a raw disk image hold data, in bmaptool's format 2.0.

A raw disk image of 16 GiB may hold 100 MiB of data; the rest reads as zeros. Copying it whole
onto a server's disk writes 16 GiB. A *block map* lists the ranges of 4 KiB blocks that hold
data, each with its SHA-256, so a flasher (Debian's ``bmaptool copy``, or ``imagebuilder
flash``) writes only those and checks what it read. Blocks outside the map are "don't care": the
image has zeros there and the flasher leaves the target's bytes alone.

Format 2.0 (bmaptool's ``BmapCreate``): an XML document ``<bmap version="2.0">`` with
``ImageSize`` (bytes), ``BlockSize``, ``BlocksCount`` (``ceil(ImageSize / BlockSize)``),
``MappedBlocksCount``, ``ChecksumType`` (``sha256``), ``BmapFileChecksum`` (the SHA-256 of the
whole file as written with this field's value replaced by 64 ASCII zeros) and a ``BlockMap`` of
``<Range chksum="...">first-last</Range>`` elements (inclusive block numbers; a single block is
written ``first``). A range's checksum covers the image's bytes of those blocks, cut at the end
of the image.

:func:`write_raw_with_bmap` writes the raw image and its map in one pass over the disk model:
every run of non-zero blocks that goes to the image file is also fed to the hashing core, so the
map describes exactly the bytes written. :func:`read_bmap` parses and checks a map;
:func:`check_image` checks an image against one, naming the first range that differs.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

from ..disk.model import Disk
from ..errors import UserError
from ..hashing.core import MultiHasher
from . import atomic_output

BLOCK_SIZE = 4096
"""Bytes per block of the maps imagebuilder writes (bmaptool's default)."""
VERSION = "2.0"
_ZERO_CHECKSUM = "0" * 64
_WRITE_GATHER = 8 << 20


@dataclass(frozen=True)
class Range:
    """Blocks ``first`` to ``last`` (inclusive) hold data whose SHA-256 is ``sha256``."""

    first: int
    last: int
    sha256: str | None

    def span(self, block_size: int, image_size: int) -> tuple[int, int]:
        """``(offset, length)`` in bytes, cut at the end of the image."""
        start = self.first * block_size
        return start, min((self.last + 1) * block_size, image_size) - start

    def describe(self, block_size: int, image_size: int) -> str:
        start, length = self.span(block_size, image_size)
        return f"blocks {self.first}-{self.last} (bytes {start}-{start + length - 1})"


@dataclass(frozen=True)
class Bmap:
    """A parsed block map."""

    image_size: int
    block_size: int
    ranges: tuple[Range, ...]

    @property
    def blocks_count(self) -> int:
        return -(-self.image_size // self.block_size)

    @property
    def mapped_blocks(self) -> int:
        return sum(r.last - r.first + 1 for r in self.ranges)

    def record(self) -> bytes:
        """The XML text, with its ``BmapFileChecksum`` filled in."""
        return _record(self.image_size, self.block_size, self.ranges)


def _human(n: int) -> str:
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "bytes" else f"{n} bytes"
        value /= 1024
    return f"{n} bytes"


def _record(image_size: int, block_size: int, ranges: tuple[Range, ...] | list[Range]) -> bytes:
    import hashlib

    blocks = -(-image_size // block_size)
    mapped = sum(r.last - r.first + 1 for r in ranges)
    percent = mapped * 100.0 / blocks if blocks else 0.0
    lines = [
        '<?xml version="1.0" ?>',
        "<!-- This file contains the block map for an image file, which is basically",
        "     a list of useful (mapped) block numbers in the image file. In other words,",
        "     it lists only those blocks which contain data (boot sector, partition",
        "     table, file-system metadata, files, directories, extents, etc). These",
        "     blocks have to be copied to the target device. The other blocks do not",
        "     contain any useful data and do not have to be copied to the target",
        "     device. Written by imagebuilder. -->",
        "",
        f'<bmap version="{VERSION}">',
        f"    <!-- Image size in bytes: {_human(image_size)} -->",
        f"    <ImageSize> {image_size} </ImageSize>",
        "",
        "    <!-- Size of a block in bytes -->",
        f"    <BlockSize> {block_size} </BlockSize>",
        "",
        "    <!-- Count of blocks in the image file -->",
        f"    <BlocksCount> {blocks} </BlocksCount>",
        "",
        f"    <!-- Count of mapped blocks: {_human(mapped * block_size)} or {percent:.1f}% -->",
        f"    <MappedBlocksCount> {mapped} </MappedBlocksCount>",
        "",
        "    <!-- Type of checksum used in this file -->",
        "    <ChecksumType> sha256 </ChecksumType>",
        "",
        "    <!-- The checksum of this bmap file. When it is calculated, the value of",
        '         the checksum has be zero (all ASCII "0" symbols).  -->',
        f"    <BmapFileChecksum> {_ZERO_CHECKSUM} </BmapFileChecksum>",
        "",
        "    <!-- The block map which consists of elements which may either be a",
        "         range of blocks or a single block. The 'chksum' attribute",
        "         (if present) is the checksum of this blocks range. -->",
        "    <BlockMap>",
    ]
    for r in ranges:
        attr = f' chksum="{r.sha256}"' if r.sha256 else ""
        span = f"{r.first}-{r.last}" if r.first != r.last else f"{r.first}"
        lines.append(f"        <Range{attr}> {span} </Range>")
    lines += ["    </BlockMap>", "</bmap>", ""]
    text = "\n".join(lines).encode()
    digest = hashlib.sha256(text).hexdigest()
    return text.replace(_ZERO_CHECKSUM.encode(), digest.encode(), 1)


class RangeHasher:
    """Turns runs of non-zero blocks, fed in increasing order, into bmap :class:`Range` s.

    Adjacent runs merge into one range; each range's SHA-256 comes from the hashing core
    (:class:`~imagebuilder.hashing.core.MultiHasher`) over exactly the bytes fed.
    """

    def __init__(self, block_size: int = BLOCK_SIZE) -> None:
        self.block_size = block_size
        self.ranges: list[Range] = []
        self._start = self._end = -1
        self._hasher: MultiHasher | None = None

    def add(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Feed ``data`` found at ``offset`` (a multiple of the block size)."""
        if offset % self.block_size:
            raise ValueError(f"run at {offset} is not aligned to {self.block_size}")
        if offset < self._end:
            raise ValueError(f"run at {offset} goes backwards (previous ended at {self._end})")
        if self._hasher is None or offset != self._end:
            self._close()
            self._start, self._hasher = offset, MultiHasher(("sha256",))
        self._hasher.update(data)
        self._end = offset + len(data)

    def _close(self) -> None:
        if self._hasher is not None:
            bs = self.block_size
            self.ranges.append(Range(self._start // bs, (self._end - 1) // bs,
                                     self._hasher.hexdigests()["sha256"]))
            self._hasher = None

    def finish(self) -> list[Range]:
        self._close()
        return self.ranges


def mapped_runs(disk: Disk, block_size: int = BLOCK_SIZE) -> Iterator[tuple[int, memoryview]]:
    """``(offset, bytes)`` of the disk's runs of non-zero blocks, cut at the disk's end.

    The views are valid until the next run is asked for.
    """
    for off, view, _where in disk.iter_nonzero(block_size):
        n = len(view)
        if off + n > disk.size:
            n = disk.size - off
        if n > 0:
            yield off, view[:n]


def bmap_of(disk: Disk, block_size: int = BLOCK_SIZE) -> Bmap:
    """The block map of ``disk`` written as a raw image (without writing it)."""
    hasher = RangeHasher(block_size)
    for off, view in mapped_runs(disk, block_size):
        hasher.add(off, view)
    return Bmap(disk.size, block_size, tuple(hasher.finish()))


class _Gather:
    """Writes pieces at offsets, gathering the ones that follow each other into one pwritev."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._bufs: list[bytes] = []
        self._start = self._end = 0
        self._size = 0

    def write(self, offset: int, data: memoryview) -> None:
        if self._bufs and offset != self._end:
            self.flush()
        if not self._bufs:
            self._start = self._end = offset
        self._bufs.append(bytes(data))
        self._end += len(data)
        self._size += len(data)
        if self._size >= _WRITE_GATHER or len(self._bufs) >= 512:
            self.flush()

    def flush(self) -> None:
        if not self._bufs:
            return
        view = memoryview(b"".join(self._bufs))
        pos = self._start
        while view:
            n = os.pwrite(self.fd, view, pos)
            view, pos = view[n:], pos + n
        self._bufs, self._size = [], 0


def write_raw_with_bmap(disk: Disk, dest: Path, bmap_dest: Path | None = None, *,
                        progress: Callable[[int], None] | None = None,
                        sync: bool = True) -> Bmap:
    """Write ``disk`` as a sparse raw image at ``dest`` and its block map at ``bmap_dest``
    (default: ``dest`` + ``.bmap``), in one pass: each run of non-zero 4 KiB blocks is written
    to the image and fed to the range hasher. Both files appear whole or not at all; with
    ``sync`` both are fsynced first."""
    dest = Path(dest)
    bmap_dest = Path(bmap_dest) if bmap_dest is not None else dest.with_name(dest.name + ".bmap")
    hasher = RangeHasher(BLOCK_SIZE)
    done = 0
    with contextlib.ExitStack() as stack:
        fd = stack.enter_context(atomic_output(dest, sync=sync))
        os.ftruncate(fd, disk.size)
        out = _Gather(fd)
        for off, view in mapped_runs(disk):
            hasher.add(off, view)
            out.write(off, view)
            if progress is not None:
                progress(off + len(view) - done)
                done = off + len(view)
        out.flush()
        result = Bmap(disk.size, BLOCK_SIZE, tuple(hasher.finish()))
        with atomic_output(bmap_dest, sync=sync) as bfd:
            data = memoryview(result.record())
            while data:
                data = data[os.write(bfd, data):]
    if progress is not None and disk.size > done:
        progress(disk.size - done)
    return result


_RANGE_RE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def read_bmap(path: Path) -> Bmap:
    """Parse and check the block map at ``path`` (format 2.0, or 1.4, with SHA-256 or none).

    UserError for a file that is not a block map, has a wrong ``BmapFileChecksum``, or whose
    ranges are out of order or past the image's end.
    """
    import hashlib

    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"block map {path} does not exist") from None
    except OSError as e:
        raise UserError(f"cannot read block map {path}: {e.strerror}") from None
    try:
        root = ElementTree.fromstring(raw)
    except ElementTree.ParseError as e:
        raise UserError(f"{path} is not a block map (bad XML: {e})") from None

    def field(name: str) -> str:
        node = root.find(name)
        if node is None or node.text is None:
            raise UserError(f"{path}: block map has no <{name}>")
        return node.text.strip()

    version = root.get("version", "")
    if root.tag != "bmap" or version not in ("2.0", "1.4"):
        raise UserError(f"{path}: not a bmap of version 2.0 (root <{root.tag}> "
                        f"version {version or '?'})")
    if field("ChecksumType") != "sha256":
        raise UserError(f"{path}: checksum type {field('ChecksumType')} is not supported "
                        "(sha256 only)")
    stated = field("BmapFileChecksum")
    zeroed = raw.replace(stated.encode(), _ZERO_CHECKSUM.encode(), 1)
    if hashlib.sha256(zeroed).hexdigest() != stated:
        raise UserError(f"{path}: the block map's own checksum does not match (corrupt or "
                        "edited)")
    try:
        image_size, block_size = int(field("ImageSize")), int(field("BlockSize"))
        blocks_count, mapped_count = int(field("BlocksCount")), int(field("MappedBlocksCount"))
    except ValueError:
        raise UserError(f"{path}: a size field is not a number") from None
    if block_size <= 0 or image_size < 0 or blocks_count != -(-image_size // block_size):
        raise UserError(f"{path}: image size {image_size} and {blocks_count} blocks of "
                        f"{block_size} bytes disagree")
    block_map = root.find("BlockMap")
    ranges: list[Range] = []
    prev = -1
    for node in [] if block_map is None else block_map.findall("Range"):
        m = _RANGE_RE.match(node.text or "")
        if not m:
            raise UserError(f"{path}: bad range {node.text!r}")
        first = int(m[1])
        last = int(m[2]) if m[2] is not None else first
        if first <= prev or last < first or last >= blocks_count:
            raise UserError(f"{path}: range {first}-{last} is out of order or past the image's "
                            f"{blocks_count} blocks")
        ranges.append(Range(first, last, node.get("chksum")))
        prev = last
    result = Bmap(image_size, block_size, tuple(ranges))
    if result.mapped_blocks != mapped_count:
        raise UserError(f"{path}: MappedBlocksCount is {mapped_count} but the ranges map "
                        f"{result.mapped_blocks} blocks")
    return result


def check_image(image: Path, bmap: Bmap) -> None:
    """UserError naming the first range whose bytes in ``image`` do not have the map's checksum
    (or an image whose size is not the map's)."""
    image = Path(image)
    size = image.stat().st_size
    if size != bmap.image_size:
        raise UserError(f"{image} is {size} bytes but its block map describes an image of "
                        f"{bmap.image_size} bytes: they do not belong together")
    buf = memoryview(bytearray(1 << 20))
    with open(image, "rb", buffering=0) as f:
        fd = f.fileno()
        for r in bmap.ranges:
            if not r.sha256:
                continue
            start, length = r.span(bmap.block_size, bmap.image_size)
            h = MultiHasher(("sha256",))
            pos, end = start, start + length
            while pos < end:
                n = os.preadv(fd, [buf[: min(len(buf), end - pos)]], pos)
                if n <= 0:
                    raise UserError(f"{image} ended inside {r.describe(bmap.block_size, size)}")
                h.update(buf[:n])
                pos += n
            if h.hexdigests()["sha256"] != r.sha256:
                raise UserError(f"{image} does not match its block map at "
                                f"{r.describe(bmap.block_size, bmap.image_size)}: checksum "
                                "differs")


def disk_of_image(image: Path, bmap: Bmap) -> Disk:
    """The disk whose data extents are the mapped ranges of the raw file ``image``."""
    from ..disk.model import Extent, FileSlice

    extents = []
    for r in bmap.ranges:
        start, length = r.span(bmap.block_size, bmap.image_size)
        extents.append(Extent(start, length, FileSlice(Path(image), start)))
    size = -(-bmap.image_size // 512) * 512
    return Disk(size, extents)
