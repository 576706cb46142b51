"""Disk format writers, validated by the real reader: qemu-img check, info and compare.

Every format must show the guest exactly the bytes of the raw image written from the same disk.
For VHD, QEMU is told to size the disk by the footer's current size (``force_size_calc``): for a
creator application it does not know it would otherwise use the CHS geometry, which rounds down.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import struct
import subprocess
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from imagebuilder import formats
from imagebuilder.cli import main
from imagebuilder.disk import Disk, Extent, FileSlice
from imagebuilder.errors import HostError, UserError
from imagebuilder.formats import DISK_FORMATS, write_disk, writer_for
from imagebuilder.formats.qcow2 import (
    CLUSTER_SIZE,
    REFCOUNTS_PER_BLOCK,
    Qcow2Header,
    plan_metadata,
)
from imagebuilder.formats.vhd import (
    VhdFooter,
    chs_geometry,
    vhd_size,
    vhd_timestamp,
)
from imagebuilder.formats.vmdk import (
    GD_AT_END,
    MARKER_EOS,
    MARKER_FOOTER,
    Marker,
    SparseExtentHeader,
)
from imagebuilder.layers.cpio import Tree, write_layer
from imagebuilder.store.layout import INITRD_LAYER_MEDIA_TYPE, KERNEL_MEDIA_TYPE, Store

MiB = 1 << 20
GiB = 1 << 30

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")


def qemu_img(*args: str) -> str:
    r = subprocess.run(["qemu-img", *args], capture_output=True, text=True)
    assert r.returncode == 0, f"qemu-img {' '.join(args)}: {r.stdout}{r.stderr}"
    return r.stdout


def vhd_opts(path: Path) -> str:
    return f"driver=vpc,force_size_calc=current_size,file.filename={path}"


def check_against_raw(fmt: str, raw: Path, out: Path, size: int) -> None:
    """qemu-img check, info and compare of ``out`` against the raw image of the same disk."""
    if fmt == "vhd":
        info = json.loads(qemu_img("info", "--output=json", "--image-opts", vhd_opts(out)))
        assert info["format"] == "vpc"
        assert info["virtual-size"] == vhd_size(size)
        qemu_img("compare", "--image-opts", f"driver=raw,file.filename={raw}", vhd_opts(out))
        return
    qfmt = {"raw": "raw", "qcow2": "qcow2", "vmdk": "vmdk"}[fmt]
    if fmt != "raw":
        assert "No errors were found" in qemu_img("check", "-f", qfmt, str(out))
    info = json.loads(qemu_img("info", "--output=json", "-f", qfmt, str(out)))
    assert info["format"] == qfmt
    assert info["virtual-size"] == size
    if fmt == "vmdk":
        assert info["format-specific"]["data"]["create-type"] == "streamOptimized"
    qemu_img("compare", "-f", "raw", "-F", qfmt, str(raw), str(out))


# --- the disks ------------------------------------------------------------------------------


def odd_disk(tmp: Path) -> Disk:
    """Data at unaligned offsets: 1-byte extents, byte 0, the last sector, zero clusters."""
    src = tmp / "src.bin"
    src.write_bytes(random.Random(11).randbytes(400_000))
    size = 3 * MiB + 1536
    return Disk(
        size,
        [
            Extent(0, 1, b"\x01"),
            Extent(65535, 3, b"abc"),  # across a cluster boundary
            Extent(100_003, 300_001, FileSlice(src, 13)),
            Extent(400_004, 1, b"!"),  # right after the file slice
            Extent(MiB + 7, 5000, b"text " * 1000),
            Extent(2 * MiB, 3 * 65536 + 4, bytes(3 * 65536) + b"tail"),  # zero clusters inside
            Extent(size - 1, 1, b"\xff"),  # the very last byte
        ],
    )


def empty_disk(tmp: Path) -> Disk:
    return Disk(8 * MiB)


def zero_cluster_disk(tmp: Path) -> Disk:
    """A dense file extent that is mostly zero clusters (as a file system image is)."""
    src = tmp / "dense.bin"
    data = bytearray(8 * MiB)
    for i in range(0, len(data), 4 * 65536):
        data[i + 100 : i + 104] = b"data"
    src.write_bytes(bytes(data))
    return Disk(16 * MiB, [Extent(4 * MiB, 8 * MiB, FileSlice(src, 0))])


def big_sparse_disk(tmp: Path) -> Disk:
    """A few GiB, data across L2 (512 MiB) and grain-table (32 MiB) boundaries."""
    rnd = random.Random(5)
    size = 3 * GiB + 512
    return Disk(
        size,
        [
            Extent(0, 4096, rnd.randbytes(4096)),
            Extent(32 * MiB - 10, 20, rnd.randbytes(20)),
            Extent(512 * MiB - 70_000, 140_000, rnd.randbytes(140_000)),
            Extent(2 * GiB, MiB, rnd.randbytes(MiB)),
            Extent(size - 512, 512, rnd.randbytes(512)),
        ],
    )


def file_disk(tmp: Path) -> Disk:
    """File data at aligned and unaligned offsets, with zero clusters inside (kernel copies)."""
    rnd = random.Random(21)
    src = tmp / "file-disk.bin"
    src.write_bytes(rnd.randbytes(3 * 65536) + bytes(2 * 65536) + rnd.randbytes(5 * 65536 + 99))
    big = tmp / "file-disk-big.bin"
    big.write_bytes(rnd.randbytes(5 * MiB + 3 * 65536))
    return Disk(
        32 * MiB,
        [
            Extent(0, 10 * 65536 + 99, FileSlice(src, 0)),  # aligned: copied from the file
            Extent(2 * MiB + 7, 9 * 65536, FileSlice(src, 13)),  # unaligned: edges assembled
            Extent(8 * MiB, 6 * 65536, FileSlice(src, 65536 * 4)),  # starts in a zero cluster
            Extent(16 * MiB, 5 * MiB + 3 * 65536, FileSlice(big, 0)),  # copied by two threads
        ],
    )


DISKS: dict[str, Callable[[Path], Disk]] = {
    "odd": odd_disk,
    "files": file_disk,
    "empty": empty_disk,
    "zero-clusters": zero_cluster_disk,
    "big-sparse": big_sparse_disk,
}


@pytest.mark.parametrize("fmt", DISK_FORMATS)
@pytest.mark.parametrize("name", list(DISKS))
def test_guest_content_equals_raw(tmp_path: Path, name: str, fmt: str) -> None:
    disk = DISKS[name](tmp_path)
    raw = tmp_path / "disk.raw"
    write_disk(disk, raw, "raw")
    if name != "big-sparse":
        assert raw.read_bytes() == disk.read(0, disk.size)
    out = tmp_path / f"out.{fmt}"
    write_disk(disk, out, fmt)
    check_against_raw(fmt, raw, out, disk.size)


# --- sizes, sparseness, determinism ---------------------------------------------------------


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def test_mostly_empty_disk_gives_small_files(tmp_path: Path) -> None:
    disk = Disk(4 * GiB, [Extent(0, MiB, b"\x07" * MiB), Extent(4 * GiB - 1, 1, b"e")])
    sizes = {}
    for fmt in DISK_FORMATS:
        out = tmp_path / f"out.{fmt}"
        write_disk(disk, out, fmt)
        sizes[fmt] = (out.stat().st_size, allocated(out))
    assert sizes["qcow2"][0] < 2 * MiB
    assert sizes["vmdk"][0] < 128 * 1024  # 64 KiB of header, a compressible MiB and a byte
    assert sizes["raw"][0] == 4 * GiB and sizes["raw"][1] < 2 * MiB
    assert sizes["vhd"][0] == 4 * GiB + 512 and sizes["vhd"][1] < 2 * MiB


@pytest.mark.parametrize("fmt", DISK_FORMATS)
def test_output_is_reproducible(tmp_path: Path, fmt: str) -> None:
    disk = odd_disk(tmp_path)
    outs = []
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        out = tmp_path / d / f"disk.{fmt}"
        write_disk(disk, out, fmt)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def test_vmdk_parallel_compression_is_deterministic(tmp_path: Path) -> None:
    writer = writer_for("vmdk")
    disk = zero_cluster_disk(tmp_path)
    outs = []
    for workers in (1, 3):
        out = tmp_path / str(workers) / "d.vmdk"
        out.parent.mkdir()
        writer(disk, out, workers=workers)  # type: ignore[call-arg]
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def test_ids_follow_content(tmp_path: Path) -> None:
    a = Disk(MiB, [Extent(0, 3, b"abc")])
    b = Disk(MiB, [Extent(0, 3, b"abd")])
    ids = {}
    for name, disk in (("a", a), ("b", b)):
        write_disk(disk, tmp_path / f"{name}.vhd", "vhd")
        write_disk(disk, tmp_path / f"{name}.vmdk", "vmdk")
        footer = VhdFooter.parse((tmp_path / f"{name}.vhd").read_bytes()[-512:])
        desc = (tmp_path / f"{name}.vmdk").read_bytes()[512 : 21 * 512]
        ids[name] = (footer.unique_id, desc.split(b"CID=")[1][:8])
    assert ids["a"][0] != ids["b"][0]
    assert ids["a"][1] != ids["b"][1]
    # the same content laid out in other extents gives the same ids
    c = Disk(MiB, [Extent(0, 1, b"a"), Extent(1, 2, b"bc")])
    write_disk(c, tmp_path / "c.vhd", "vhd")
    assert VhdFooter.parse((tmp_path / "c.vhd").read_bytes()[-512:]).unique_id == ids["a"][0]


# --- failures leave nothing behind ----------------------------------------------------------


@pytest.mark.parametrize("fmt", DISK_FORMATS)
def test_failure_mid_write_leaves_no_file(tmp_path: Path, fmt: str) -> None:
    disk = Disk(
        8 * MiB,
        [Extent(0, MiB, b"\x01" * MiB), Extent(4 * MiB, 10, FileSlice(tmp_path / "gone", 0))],
    )
    out = tmp_path / "out" / f"disk.{fmt}"
    out.parent.mkdir()
    with pytest.raises(HostError, match="cannot read .*gone"):
        write_disk(disk, out, fmt)
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize("fmt", DISK_FORMATS)
def test_sync_decides_whether_the_output_is_fsynced(
    tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Internal files (sync, the default) are fsynced with their directory before they appear;
    exports without --sync are not, and either way appear whole, with the same bytes."""
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    disk = Disk(8 * MiB, [Extent(MiB, MiB, bytes(range(256)) * 4096)])
    a, b = tmp_path / "a", tmp_path / "b"  # the same file name: a vmdk's descriptor holds it
    a.mkdir()
    b.mkdir()
    write_disk(disk, a / f"disk.{fmt}", fmt)
    assert synced and str(a) in synced  # the file (renamed since) and its directory
    synced.clear()
    write_disk(disk, b / f"disk.{fmt}", fmt, sync=False)
    assert synced == []
    assert (a / f"disk.{fmt}").read_bytes() == (b / f"disk.{fmt}").read_bytes()
    assert [p.name for p in b.iterdir()] == [f"disk.{fmt}"]


def test_failure_keeps_the_previous_file(tmp_path: Path) -> None:
    out = tmp_path / "disk.qcow2"
    out.write_bytes(b"previous")
    disk = Disk(MiB, [Extent(0, 10, FileSlice(tmp_path / "gone", 0))])
    with pytest.raises(HostError):
        write_disk(disk, out, "qcow2")
    assert out.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["disk.qcow2"]


@pytest.mark.parametrize("fmt", DISK_FORMATS)
def test_full_disk_is_one_line_error(
    tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwritev", full)
    monkeypatch.setattr(os, "pwrite", full)
    out = tmp_path / f"disk.{fmt}"
    with pytest.raises(HostError) as exc:
        write_disk(Disk(MiB, [Extent(0, 3, b"abc")]), out, fmt)
    assert str(exc.value) == f"no space left on device writing {out}"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", ["raw", "qcow2", "vhd"])
def test_file_data_is_copied_and_reserved(
    tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whole clusters of files are copied from the file and their blocks reserved first; where
    the file system cannot reserve (EOPNOTSUPP) the bytes come out the same."""
    disk = file_disk(tmp_path)
    real = formats._fallocate()
    assert real is not None
    reserved: list[int] = []

    def counting(fd: int, mode: int, offset: int, length: int) -> int:
        reserved.append(length)
        return real(fd, mode, offset, length)

    def unsupported(*args: object) -> int:
        import ctypes

        ctypes.set_errno(errno.EOPNOTSUPP)
        return -1

    outputs = {}
    for name, fn in (("counting", counting), ("unsupported", unsupported)):
        monkeypatch.setattr(formats, "_fallocate", lambda fn=fn: fn)
        out = tmp_path / f"{name}.{fmt}"
        write_disk(disk, out, fmt)
        outputs[name] = out.read_bytes()
    assert sum(reserved) >= 12 * 65536  # the aligned clusters, not only the edges
    assert outputs["counting"] == outputs["unsupported"]
    raw = tmp_path / "ref.raw"
    monkeypatch.undo()
    write_disk(disk, raw, "raw")
    check_against_raw(fmt, raw, tmp_path / f"counting.{fmt}", disk.size)


def test_a_failing_copy_thread_fails_the_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = formats.Output._copy_range

    def failing(self: formats.Output, src_fd: int, src_offset: int, offset: int, n: int,
                buf: memoryview) -> None:
        if buf is self._copy_bufs[-1] and len(self._copy_bufs) == 2:  # the helper's half
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real(self, src_fd, src_offset, offset, n, buf)

    monkeypatch.setattr(formats.Output, "_copy_range", failing)
    out = tmp_path / "out" / "disk.raw"
    out.parent.mkdir()
    with pytest.raises(HostError, match="Input/output error"):
        write_disk(file_disk(tmp_path), out, "raw")
    assert list(out.parent.iterdir()) == []


def test_full_disk_when_reserving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: object) -> int:
        import ctypes

        ctypes.set_errno(errno.ENOSPC)
        return -1

    monkeypatch.setattr(formats, "_fallocate", lambda: full)
    out = tmp_path / "out" / "disk.qcow2"
    out.parent.mkdir()
    with pytest.raises(HostError) as exc:
        write_disk(file_disk(tmp_path), out, "qcow2")
    assert str(exc.value) == f"no space left on device writing {out}"
    assert list(out.parent.iterdir()) == []


def test_missing_output_directory(tmp_path: Path) -> None:
    out = tmp_path / "nope" / "disk.qcow2"
    with pytest.raises(UserError) as exc:
        write_disk(Disk(MiB), out, "qcow2")
    assert str(exc.value) == f"output directory {out.parent} does not exist"


def test_output_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is a directory"):
        write_disk(Disk(MiB), tmp_path, "raw")


def test_unknown_format() -> None:
    with pytest.raises(UserError, match="unknown disk format 'vdi'; choose one of raw, qcow2"):
        writer_for("vdi")


def test_progress_adds_up_to_the_disk_size(tmp_path: Path) -> None:
    disk = odd_disk(tmp_path)
    for fmt in DISK_FORMATS:
        seen: list[int] = []
        write_disk(disk, tmp_path / f"p.{fmt}", fmt, progress=seen.append)
        assert sum(seen) == disk.size
        assert all(n > 0 for n in seen)


# --- the structures -------------------------------------------------------------------------


def test_qcow2_header_and_metadata_plan(tmp_path: Path) -> None:
    out = tmp_path / "d.qcow2"
    write_disk(odd_disk(tmp_path), out, "qcow2")
    data = out.read_bytes()
    h = Qcow2Header.parse(data)
    assert (h.version, h.cluster_bits, h.refcount_order, h.header_length) == (3, 16, 4, 112)
    assert h.size == 3 * MiB + 1536 and h.l1_size == 1
    assert data[112:120] == bytes(8)  # end of header extensions
    assert h.refcount_table_offset % CLUSTER_SIZE == 0 and h.l1_table_offset % CLUSTER_SIZE == 0
    assert len(data) % CLUSTER_SIZE == 0

    # the refcount blocks count themselves: crossing a block boundary needs a second block
    p = plan_metadata(REFCOUNTS_PER_BLOCK - 3, 1)
    assert (p.l1_clusters, p.refcount_table_clusters, p.refcount_blocks) == (1, 1, 1)
    assert p.total_clusters == REFCOUNTS_PER_BLOCK
    p = plan_metadata(REFCOUNTS_PER_BLOCK - 2, 1)
    assert (p.l1_clusters, p.refcount_table_clusters, p.refcount_blocks) == (1, 1, 2)
    assert p.total_clusters == REFCOUNTS_PER_BLOCK - 2 + 1 + 1 + 2
    p = plan_metadata(10, 0)
    assert (p.l1_clusters, p.refcount_blocks, p.total_clusters) == (0, 1, 12)


def test_vmdk_structures(tmp_path: Path) -> None:
    out = tmp_path / "d.vmdk"
    write_disk(odd_disk(tmp_path), out, "vmdk")
    data = out.read_bytes()
    assert len(data) % 512 == 0
    head = SparseExtentHeader.parse(data[:512])
    assert head.capacity == (3 * MiB + 1536) // 512
    assert (head.version, head.flags, head.grain_size, head.gd_offset) == (
        3,
        0x30001,
        128,
        GD_AT_END,
    )
    assert head.compress_algorithm == 1 and head.newline_chars == b"\n \r\n"
    desc = data[512 : 21 * 512].rstrip(b"\0").decode()
    assert 'createType="streamOptimized"' in desc
    assert 'ddb.adapterType = "lsilogic"' in desc
    assert f'RW {head.capacity} SPARSE "d.vmdk"' in desc
    assert Marker.parse(data[-1536:-1024]) == Marker(1, MARKER_FOOTER)
    footer = SparseExtentHeader.parse(data[-1024:-512])
    assert footer.gd_offset not in (0, GD_AT_END)
    assert Marker.parse(data[-512:]) == Marker(0, MARKER_EOS)
    # the first grain: marker (LBA 0), zlib stream of the first 64 KiB
    lba, size = struct.unpack_from("<QI", data, 128 * 512)
    assert lba == 0
    grain = zlib.decompress(data[128 * 512 + 12 : 128 * 512 + 12 + size])
    assert grain[:1] == b"\x01" and grain[65535:] == b"a"


@pytest.mark.parametrize(
    ("size", "chs"),
    [
        (4 * MiB, (120, 4, 17)),
        (GiB, (2080, 16, 63)),
        (200 * GiB, (65535, 16, 255)),
    ],
)
def test_vhd_chs_geometry(size: int, chs: tuple[int, int, int]) -> None:
    assert chs_geometry(size) == chs


def test_vhd_footer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    disk = odd_disk(tmp_path)
    out = tmp_path / "d.vhd"
    write_disk(disk, out, "vhd")
    size = vhd_size(disk.size)
    assert size == 4 * MiB
    assert out.stat().st_size == size + 512
    raw = out.read_bytes()
    f = VhdFooter.parse(raw[-512:])
    assert raw[:size][: disk.size] == disk.read(0, disk.size)
    assert f.current_size == f.original_size == size
    assert (f.features, f.format_version, f.data_offset) == (2, 0x10000, 0xFFFFFFFFFFFFFFFF)
    assert (f.disk_type, f.creator_app, f.saved_state) == (2, b"qem2", 0)
    assert f.timestamp == 1700000000 - 946684800 == vhd_timestamp(1700000000)
    assert (f.cylinders, f.heads, f.sectors_per_track) == chs_geometry(size)
    # QEMU knows the "qem2" creator and sizes the disk by the footer, not by the rounded CHS
    info = json.loads(qemu_img("info", "--output=json", "-f", "vpc", str(out)))
    assert info["virtual-size"] == size
    bad = bytearray(raw[-512:])
    bad[100] ^= 1
    with pytest.raises(ValueError, match="checksum"):
        VhdFooter.parse(bytes(bad))


def test_vhd_timestamp_defaults_to_zero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    write_disk(Disk(MiB), tmp_path / "d.vhd", "vhd")
    assert VhdFooter.parse((tmp_path / "d.vhd").read_bytes()[-512:]).timestamp == 0
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(UserError, match="SOURCE_DATE_EPOCH"):
        write_disk(Disk(MiB), tmp_path / "e.vhd", "vhd")


def _stored_image(home: Path, work: Path) -> None:
    """hello:1.0.0 in the store of ``home``: a stand-in kernel and three real (tiny) layers."""
    store = Store(home / "store")
    layers = []
    for name in ("base", "jvm", "app"):
        write_layer(Tree(), work / name, mtime=0)
        layers.append(store.add_blob_file(work / name, INITRD_LAYER_MEDIA_TYPE,
                                          {"org.opencontainers.image.title": name}))
    kernel = store.add_blob_bytes(b"not a kernel", KERNEL_MEDIA_TYPE,
                                  {"org.opencontainers.image.title": "vmlinuz"})
    store.put_image("hello:1.0.0", {"name": "hello", "version": "1.0.0", "cmdline": "",
                                    "memory": 512, "layers": ["base", "jvm", "app"]},
                    [kernel, *layers])


@pytest.mark.parametrize("value, what", [
    ("-1", "negative"), ("1.5", "not a whole number"), ("1_700_000_000", "not a whole number")])
def test_a_bad_source_date_epoch_is_one_line_and_exit_2(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        value: str, what: str) -> None:
    """The export of a VHD stamps SOURCE_DATE_EPOCH as the layers do: by the same rule."""
    monkeypatch.setenv("IMAGEBUILDER_HOME", str(tmp_path / "home"))
    _stored_image(tmp_path / "home", tmp_path)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", value)
    out = tmp_path / "out"
    out.mkdir()
    capsys.readouterr()
    code = main(["export", "hello:1.0.0", "--format", "vhd", "-o", str(out / "d.vhd")])
    assert (code, capsys.readouterr().err) == (
        2, f"ERROR: SOURCE_DATE_EPOCH={value!r} is {what}: set it to the seconds since 1970 "
           "(0 or more) or unset it\n")
    assert list(out.iterdir()) == []


def test_writers_are_importable_by_name() -> None:
    for fmt in DISK_FORMATS:
        assert getattr(writer_for(fmt), "__name__", None) == f"write_{fmt}"
    assert formats.zero_block(512) == bytes(512)
