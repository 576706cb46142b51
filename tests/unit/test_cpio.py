"""Deterministic cpio layers, checked against GNU cpio and the zstd CLI."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from imagebuilder.errors import HostError, UserError
from imagebuilder.layers.cpio import (
    MAX_WINDOW_LOG,
    Tree,
    compression_params,
    source_date_epoch,
    write_cpio,
    write_layer,
)

needs_tools = pytest.mark.skipif(
    shutil.which("cpio") is None or shutil.which("zstd") is None,
    reason="GNU cpio and zstd are needed (apt-get install cpio zstd)",
)


def _sample_tree(tmp_path: Path) -> Tree:
    src = tmp_path / "src"
    (src / "lib" / "deep").mkdir(parents=True)
    (src / "lib" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "lib" / "run.sh").chmod(0o700)
    (src / "lib" / "deep" / "data.txt").write_bytes(b"x" * 5)
    (src / "lib" / "deep" / "data.txt").chmod(0o600)
    (src / "lib" / "link").symlink_to("deep/data.txt")
    tree = Tree()
    tree.add_tree(src, "/opt/app")
    tree.add_file("/etc/hostname", data=b"box\n")
    tree.add_file("usr/bin/tool", data=b"\x7fELF", mode=0o4755)
    tree.add_dir("tmp", mode=0o1777)
    tree.add_symlink("bin", "usr/bin")
    return tree


def _unpack(layer: Path, dest: Path) -> None:
    dest.mkdir()
    raw = subprocess.run(["zstd", "-dc", str(layer)], check=True, capture_output=True).stdout
    subprocess.run(
        ["cpio", "-idm", "--no-absolute-filenames", "--quiet"],
        input=raw, cwd=dest, check=True, capture_output=True,
    )


def test_entries_sorted_with_implicit_parents() -> None:
    tree = Tree()
    tree.add_file("b/c/d", data=b"")
    tree.add_file("a-b", data=b"")
    tree.add_dir("b", mode=0o700)
    paths = [(e.path, e.kind, oct(e.mode)) for e in tree.entries()]
    assert paths == [
        ("a-b", "file", "0o644"),
        ("b", "dir", "0o700"),
        ("b/c", "dir", "0o755"),
        ("b/c/d", "file", "0o644"),
    ]
    assert "b/c/d" in tree and "/b/c/d" in tree and "b/c" not in tree


def test_later_add_replaces_and_paths_normalise() -> None:
    tree = Tree()
    tree.add_file("/x//y/./z", data=b"1")
    tree.add_file("x/y/z", data=b"2", mode=0o600)
    (entry,) = [e for e in tree.entries() if e.kind == "file"]
    assert entry.path == "x/y/z" and entry.data == b"2" and entry.mode == 0o600
    for bad in ("", "/", "a/../b"):
        with pytest.raises(ValueError):
            tree.add_dir(bad)
    with pytest.raises(ValueError):
        tree.add_file("f")
    with pytest.raises(ValueError):
        tree.add_file("f", data=b"", mode=0o100644)


def test_path_under_symlink_is_refused() -> None:
    tree = Tree()
    tree.add_symlink("lib", "usr/lib")
    tree.add_file("lib/libc.so", data=b"")
    with pytest.raises(ValueError, match="symlink"):
        tree.entries()


def test_newc_layout_exact_bytes() -> None:
    tree = Tree()
    tree.add_file("a", data=b"hello", mode=0o755)
    buf = io.BytesIO()
    write_cpio(tree, buf, mtime=0x5F5E100)
    out = buf.getvalue()
    header = (
        b"070701" + b"00000001" + b"000081ED" + b"00000000" * 2 + b"00000001" + b"05F5E100"
        + b"00000005" + b"00000000" * 4 + b"00000002" + b"00000000"
    )
    assert out.startswith(header + b"a\x00")
    assert len(header) == 110
    # name "a\0" ends at 112 (aligned); data at 112, padded to 120; trailer follows.
    assert out[112:120] == b"hello\x00\x00\x00"
    assert out[120:126] == b"070701"
    assert out.endswith(b"TRAILER!!!\x00" + b"\x00" * (-(110 + 11) % 4))
    assert len(out) % 4 == 0


@needs_tools
def test_round_trip_through_gnu_cpio(tmp_path: Path) -> None:
    tree = _sample_tree(tmp_path)
    layer = tmp_path / "layer.cpio.zst"
    write_layer(tree, layer, mtime=1_700_000_000)
    out = tmp_path / "out"
    _unpack(layer, out)

    app = out / "opt" / "app" / "lib"
    assert (app / "run.sh").read_text() == "#!/bin/sh\necho hi\n"
    assert stat.S_IMODE((app / "run.sh").stat().st_mode) == 0o755
    assert (app / "deep" / "data.txt").read_bytes() == b"xxxxx"
    assert stat.S_IMODE((app / "deep" / "data.txt").stat().st_mode) == 0o644
    assert os.readlink(app / "link") == "deep/data.txt"
    assert os.readlink(out / "bin") == "usr/bin"
    assert (out / "etc" / "hostname").read_bytes() == b"box\n"
    assert stat.S_IMODE((out / "usr" / "bin" / "tool").stat().st_mode) == 0o4755
    assert stat.S_IMODE((out / "tmp").stat().st_mode) == 0o1777
    assert (out / "etc" / "hostname").stat().st_mtime == 1_700_000_000
    assert stat.S_IMODE((out / "opt").stat().st_mode) == 0o755


@needs_tools
def test_listing_shows_device_nodes_and_owners(tmp_path: Path) -> None:
    tree = Tree()
    tree.add_node("dev/console", "char", 5, 1)
    tree.add_node("dev/vda", "block", 254, 0, mode=0o660, gid=6)
    tree.add_file("home/u/f", data=b"", uid=1000, gid=1000)
    buf = io.BytesIO()
    write_cpio(tree, buf, mtime=0)
    listing = subprocess.run(
        ["cpio", "-itv", "--quiet", "--numeric-uid-gid"], input=buf.getvalue(),
        check=True, capture_output=True,
    ).stdout.decode().splitlines()
    by_name = {line.split()[-1]: line.split() for line in listing}
    assert by_name["dev/console"][0] == "crw-------"
    assert by_name["dev/console"][4:6] == ["5,", "1"]
    assert by_name["dev/vda"][0] == "brw-rw----"
    assert by_name["dev/vda"][3] == "6"
    assert by_name["dev/vda"][4:6] == ["254,", "0"]
    assert by_name["home/u/f"][2:4] == ["1000", "1000"]
    assert by_name["dev"][0] == "drwxr-xr-x"


def test_same_tree_same_bytes_whatever_the_insertion_order(tmp_path: Path) -> None:
    t1 = _sample_tree(tmp_path)
    t2 = Tree()
    for entry in reversed(t1.entries()):
        if entry.kind == "file":
            t2.add_file(entry.path, source=entry.source, data=entry.data, mode=entry.mode)
        elif entry.kind == "symlink":
            assert entry.target is not None
            t2.add_symlink(entry.path, entry.target)
        else:
            t2.add_dir(entry.path, mode=entry.mode)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_layer(t1, a, mtime=0)
    write_layer(t1, b, mtime=0)
    write_layer(t2, c, mtime=0)
    assert a.read_bytes() == b.read_bytes() == c.read_bytes()
    write_layer(t1, b, mtime=1)
    assert a.read_bytes() != b.read_bytes()


def test_thread_count_does_not_change_bytes(tmp_path: Path) -> None:
    # Enough data for several zstd jobs at level 3 (job size 4 x window = 8 MiB).
    blob = tmp_path / "blob"
    blob.write_bytes(b"".join(
        hashlib.sha256(str(i).encode()).digest() * 32768 + bytes(i) * 4096 for i in range(24)
    ))
    tree = Tree()
    tree.add_file("blob", source=blob)
    digests = set()
    for threads in (0, 1, 2, 4, -1):
        dest = tmp_path / f"layer{threads}"
        write_layer(tree, dest, mtime=0, level=3, threads=threads)
        digests.add(hashlib.sha256(dest.read_bytes()).hexdigest())
    assert len(digests) == 1


def test_frame_fits_the_kernel_decompressor(tmp_path: Path) -> None:
    tree = Tree()
    tree.add_file("f", data=b"abc" * 1000)
    for level in (19, 22):
        dest = tmp_path / f"l{level}"
        write_layer(tree, dest, mtime=0, level=level)
        data = dest.read_bytes()
        params = zstandard.get_frame_parameters(data)
        assert params.window_size <= 1 << MAX_WINDOW_LOG
        assert params.has_checksum
        # one frame, which the kernel decodes in one call
        dobj = zstandard.ZstdDecompressor().decompressobj()
        raw = dobj.decompress(data)
        assert dobj.eof and dobj.unused_data == b""
        assert raw.startswith(b"070701")
    assert compression_params(19).window_log == 23


@needs_tools
def test_large_sparse_source_is_streamed(tmp_path: Path) -> None:
    big = tmp_path / "big.img"
    size = 50 * 1024 * 1024 + 3
    with open(big, "wb") as f:
        f.truncate(size)
        f.seek(17 * 1024 * 1024)
        f.write(b"middle")
        f.seek(size - 4)
        f.write(b"tail")
    tree = Tree()
    tree.add_file("disk/big.img", source=big)

    class Sink:
        def __init__(self) -> None:
            self.h = hashlib.sha256()
            self.n = 0

        def write(self, b: bytes) -> int:
            self.h.update(b)
            self.n += len(b)
            return len(b)

    sink = Sink()
    tracemalloc.start()
    try:
        write_cpio(tree, sink, mtime=0)  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, f"peak Python allocation {peak} bytes"
    assert sink.n > size

    layer = tmp_path / "big.cpio.zst"
    write_layer(tree, layer, mtime=0, level=3)
    out = tmp_path / "out"
    _unpack(layer, out)
    got = out / "disk" / "big.img"
    assert got.stat().st_size == size
    with open(big, "rb") as a, open(got, "rb") as b:
        assert hashlib.file_digest(a, "sha256").digest() == hashlib.file_digest(
            b, "sha256"
        ).digest()


def test_source_that_changes_size_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"abc")
    tree = Tree()
    tree.add_file("f", source=src)

    class Growing(io.BytesIO):
        def write(self, b: bytes) -> int:  # type: ignore[override]
            if b.startswith(b"070701") and b"f\x00" in b:
                src.write_bytes(b"abcdef")
            return super().write(b)

    with pytest.raises(HostError, match="changed size"):
        write_cpio(tree, Growing(), mtime=0)


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    gone = tmp_path / "missing"
    gone.write_bytes(b"x")
    tree = Tree()
    tree.add_file("gone", source=gone)
    gone.unlink()
    dest = tmp_path / "layer"
    with pytest.raises(Exception, match="missing"):
        write_layer(tree, dest, mtime=0)
    assert list(tmp_path.iterdir()) == []


def test_add_tree_refuses_special_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "pipe")
    with pytest.raises(UserError, match="pipe"):
        Tree().add_tree(src, "x")


def test_source_date_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    assert source_date_epoch() == 0
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert source_date_epoch() == 1_700_000_000
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(UserError, match="SOURCE_DATE_EPOCH"):
        source_date_epoch()
    for bad in ("-5", "+5", "5.0", "0x10", "4294967296"):
        monkeypatch.setenv("SOURCE_DATE_EPOCH", bad)
        with pytest.raises(UserError, match="SOURCE_DATE_EPOCH"):
            source_date_epoch()
    monkeypatch.setenv("SOURCE_DATE_EPOCH", " 4294967295 ")
    assert source_date_epoch() == 0xFFFF_FFFF


def test_a_layer_too_large_for_the_file_system_is_one_line_and_leaves_nothing(
        tmp_path: Path) -> None:
    """write_layer commits through fsutil.atomic_output: EFBIG (RLIMIT_FSIZE in a child) is one
    line naming the layer, and neither the layer nor a temporary file is left."""
    script = f"""
import os, resource, sys
from imagebuilder.errors import ImageBuilderError
from imagebuilder.layers.cpio import Tree, write_layer
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
tree = Tree()
tree.add_file("big", data=os.urandom(1 << 20))
try:
    write_layer(tree, {str(tmp_path / "layer.cpio.zst")!r}, mtime=0, level=1)
except ImageBuilderError as exc:
    print(exc)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == (f"cannot write {tmp_path / 'layer.cpio.zst'}: the file system does not allow "
                   "a file this large")
    assert list(tmp_path.iterdir()) == []


def _app_jar(tmp_path: Path) -> tuple[Path, Path]:
    """An app directory holding lib/a.jar, and a host file outside it the build must not take."""
    jar = tmp_path / "app" / "lib" / "a.jar"
    jar.parent.mkdir(parents=True)
    jar.write_bytes(b"PK\x03\x04 the app's library")
    secret = tmp_path / "shadow"
    secret.write_bytes(b"root:*:20228:0:99999:7:::\n")
    return jar, secret


def _swapped_for_a_link(jar: Path, secret: Path) -> None:
    jar.unlink()
    jar.symlink_to(secret)


def _swapped_for_a_fifo(jar: Path, secret: Path) -> None:
    jar.unlink()
    os.mkfifo(jar)


@pytest.mark.parametrize("swap", [_swapped_for_a_link, _swapped_for_a_fifo])
@pytest.mark.parametrize("tree_before_swap", [True, False])
def test_a_source_swapped_after_the_app_was_read_is_refused(
    tmp_path: Path, swap: Callable[[Path, Path], None], tree_before_swap: bool,
) -> None:
    """Review F2: the app's files are checked when the app is read, the layer is written much
    later. A file swapped meanwhile for a link to a host file, or a FIFO, is one line naming
    it (the key's digest and the writer alike): never the host file, never a hang."""
    from imagebuilder.apps.shape import File
    from imagebuilder.layers.app import files_tree

    jar, secret = _app_jar(tmp_path)
    read = File("lib/a.jar", source=jar)  # what detection records
    tree = files_tree((read,)) if tree_before_swap else None
    swap(jar, secret)
    tree = tree or files_tree((read,))
    dest = tmp_path / "libs.cpio.zst"
    outcome: list[BaseException | None] = []

    def write() -> None:
        try:
            write_layer(tree, dest, mtime=0)
            outcome.append(None)
        except BaseException as e:  # handed to the test's thread
            outcome.append(e)

    worker = threading.Thread(target=write, daemon=True)
    worker.start()
    worker.join(20)
    if worker.is_alive():  # the old writer blocks in open(): give it a writer to end the test
        os.close(os.open(jar, os.O_WRONLY))
        worker.join()
        pytest.fail("the layer writer hung on a FIFO swapped in for an app file")
    assert isinstance(outcome[0], UserError), outcome
    assert "app/lib/a.jar" in str(outcome[0])
    assert "changed while the image was built" in str(outcome[0])
    assert ("now a symbolic link" in str(outcome[0])) == (swap is _swapped_for_a_link)
    assert not dest.exists()
    with pytest.raises(UserError, match="changed while the image was built"):
        read.digest()


def test_a_source_that_changed_size_after_it_was_read_is_refused(tmp_path: Path) -> None:
    jar, _ = _app_jar(tmp_path)
    tree = Tree()
    tree.add_file("app/lib/a.jar", source=jar)
    with jar.open("ab") as f:
        f.write(b"more")
    with pytest.raises(UserError, match="changed while the image was built"):
        write_cpio(tree, io.BytesIO(), mtime=0)


def test_a_classes_directory_packed_for_aot_takes_only_the_file_detection_read(
        tmp_path: Path) -> None:
    """Review F2, the AOT path: a directory of the app's classes on the -cp is packed into a
    jar from the files detection recorded; one swapped for a link to a host file is refused."""
    from imagebuilder.apps.shape import File, Shape
    from imagebuilder.layers import aot

    jar, secret = _app_jar(tmp_path)
    props = jar.parent / "app.properties"
    props.write_text("server.port=8080\n")
    shape = Shape("dir", (File("lib/app.properties", source=props),), (),
                  ("-cp", "/app/lib", "com.example.App"), "com.example.App", ())
    props.unlink()
    props.symlink_to(secret)
    with pytest.raises(UserError, match="app.properties.*changed while the image was built"):
        aot.jarred(shape)
