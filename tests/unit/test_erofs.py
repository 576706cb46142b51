"""The EROFS writer, checked by erofs-utils: fsck.erofs finds the image clean, and every file's
bytes, mode, owner, symlink target and device number come back out of ``fsck.erofs --extract``.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import subprocess
import zlib
from pathlib import Path

import pytest
import zstandard

from imagebuilder.errors import DamagedError, UserError
from imagebuilder.layers import erofs
from imagebuilder.layers.cpio import Tree, write_cpio, write_layer
from imagebuilder.layers.erofslayer import write_erofs
from imagebuilder.store.cache import Cache

needs_erofs_utils = pytest.mark.skipif(
    shutil.which("fsck.erofs") is None,
    reason="fsck.erofs is needed (apt-get install erofs-utils)",
)


def _noise(n: int, seed: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(b"%d:%d" % (seed, counter)).digest()
        counter += 1
    return bytes(out[:n])


def _sample_tree() -> Tree:
    tree = Tree()
    # sizes around the block size, inline tails that do and do not fit their inode's block
    for i, size in enumerate((0, 1, 31, 100, 2047, 2049, 4095, 4096, 4097, 5000, 12288,
                              3 * 4096 + 3000, 70000, 300_000)):
        tree.add_file(f"data/f{size:07d}", data=_noise(size, i), mode=0o644)
    tree.add_file("bin/run", data=b"#!/bin/sh\necho hi\n", mode=0o4755)
    tree.add_file("home/app/secret", data=b"s", mode=0o600, uid=1000, gid=1000)
    tree.add_file("home/big-ids", data=b"x" * 10, mode=0o640, uid=70000, gid=123456)
    tree.add_dir("tmp", mode=0o1777)
    tree.add_dir("home/app", uid=1000, gid=1000, mode=0o750)
    tree.add_symlink("lib", "usr/lib")
    tree.add_symlink("etc/long-link", "/" + "x" * 3000)
    tree.add_symlink("etc/longer-link", "/" + "y" * 4000)
    tree.add_node("dev/console", "char", 5, 1, mode=0o600)
    tree.add_node("dev/null", "char", 1, 3, mode=0o666)
    tree.add_node("dev/nvme0n1p300", "block", 259, 300, mode=0o660, gid=6)
    # a directory of several blocks, names of every length up to 255
    for i in range(600):
        tree.add_file(f"many/{'n' * (i % 200)}{i:04d}", data=b"%d" % i)
    tree.add_file("many/" + "z" * 255, data=b"longest name")
    tree.add_file("-dash", data=b"sorts before '.'")
    return tree


def _write(tmp_path: Path, tree: Tree, name: str = "layer") -> tuple[Path, Path]:
    layer = tmp_path / f"{name}.cpio.zst"
    write_layer(tree, layer, mtime=1700000000, level=3)
    image = tmp_path / f"{name}.erofs"
    write_erofs(layer, image, name=name, seed=b"seed")
    return layer, image


@needs_erofs_utils
def test_fsck_clean_and_every_entry_round_trips(tmp_path: Path) -> None:
    tree = _sample_tree()
    _, image = _write(tmp_path, tree)
    assert image.stat().st_size % erofs.BLOCK == 0
    subprocess.run(["fsck.erofs", str(image)], check=True, capture_output=True)
    out = tmp_path / "out"
    root = os.geteuid() == 0
    subprocess.run(["fsck.erofs", f"--extract={out}",
                    "--preserve" if root else "--preserve-perms", str(image)],
                   check=True, capture_output=True)
    entries = tree.entries()
    for entry in entries:
        path = out / entry.path
        st = path.lstat()
        if entry.mode & 0o7000:  # fsck.erofs chowns after chmod, which drops set-id bits
            assert _raw_mode(image, entry.path) == entry.mode, entry.path
        elif entry.kind != "symlink":
            assert stat.S_IMODE(st.st_mode) == entry.mode, entry.path
        if root:
            assert (st.st_uid, st.st_gid) == (entry.uid, entry.gid), entry.path
        if entry.kind == "file":
            assert stat.S_ISREG(st.st_mode) and path.read_bytes() == entry.data, entry.path
        elif entry.kind == "dir":
            assert stat.S_ISDIR(st.st_mode), entry.path
        elif entry.kind == "symlink":
            assert os.readlink(path) == entry.target, entry.path
        elif root:
            assert stat.S_ISCHR(st.st_mode) == (entry.kind == "char"), entry.path
            assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == entry.rdev, entry.path
    found = {str(p.relative_to(out)) for p in out.rglob("*")}
    assert found == {e.path for e in entries}


def _raw_mode(image: Path, path: str) -> int:
    """The permission bits of ``path``'s inode, found by dump.erofs (which prints only 0o777)."""
    dump = subprocess.run(["dump.erofs", f"--path=/{path}", str(image)], check=True,
                          capture_output=True, text=True).stdout
    nid = int(dump.split("NID:")[1].split()[0])
    with open(image, "rb") as f:
        f.seek(nid * 32 + 4)
        return stat.S_IMODE(int.from_bytes(f.read(2), "little"))


@needs_erofs_utils
def test_superblock_fields_as_dump_erofs_reads_them(tmp_path: Path) -> None:
    tree = Tree()
    tree.add_file("a", data=b"1")
    tree.add_dir("d")
    _, image = _write(tmp_path, tree)
    dump = subprocess.run(["dump.erofs", str(image)], check=True, capture_output=True,
                          text=True).stdout
    fields = dict(line.split(":", 1) for line in dump.splitlines() if ":" in line)
    assert int(fields["Filesystem magic number"], 16) == erofs.MAGIC
    assert int(fields["Filesystem root nid"]) == 36
    assert int(fields["Filesystem inode count"]) == 3
    assert int(fields["Filesystem blocks"]) * erofs.BLOCK == image.stat().st_size


def test_same_layer_same_bytes(tmp_path: Path) -> None:
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    _, first = _write(tmp_path / "one", _sample_tree())
    _, second = _write(tmp_path / "two", _sample_tree())
    assert first.read_bytes() == second.read_bytes()


def test_the_image_is_derived_from_the_archive_alone(tmp_path: Path) -> None:
    """Another archive of the same tree, the same image; a changed byte, another image."""
    tree = _sample_tree()
    _, a = _write(tmp_path, tree, "a")
    tree.add_file("data/f0000001", data=b"\xff")
    _, b = _write(tmp_path, tree, "b")
    assert zlib.crc32(a.read_bytes()) != zlib.crc32(b.read_bytes())


def _raw_layer(tmp_path: Path, members: list[tuple[str, int, int, bytes]]) -> Path:
    """A layer of hand-made newc members: (name, mode, nlink, body)."""
    buf = io.BytesIO()
    for name, mode, nlink, body in [*members, ("TRAILER!!!", 0, 1, b"")]:
        raw = name.encode() + b"\0"
        fields = (1, mode, 0, 0, nlink, 0, len(body), 0, 0, 0, 0, len(raw), 0)
        head = b"070701" + b"".join(b"%08X" % f for f in fields) + raw
        buf.write(head + b"\0" * (-len(head) % 4) + body + b"\0" * (-len(body) % 4))
    path = tmp_path / "raw.cpio.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(buf.getvalue()))
    return path


@pytest.mark.parametrize(("members", "message"), [
    ([("a", 0o100644, 2, b"x")], "hard link"),
    ([("../a", 0o100644, 1, b"x")], "'..'"),
    ([("f", 0o100644, 1, b"x"), ("f/g", 0o100644, 1, b"y")], "which is a file"),
    ([("d", 0o040755, 1, b"body")], "has a body"),
])
def test_a_bad_archive_is_refused_and_leaves_nothing(tmp_path: Path,
                                                     members: list[tuple[str, int, int, bytes]],
                                                     message: str) -> None:
    layer = _raw_layer(tmp_path, members)
    with pytest.raises(DamagedError, match=message):
        write_erofs(layer, tmp_path / "out.erofs")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw.cpio.zst"]


@needs_erofs_utils
def test_later_members_replace_earlier_ones_as_the_kernel_unpacks_them(tmp_path: Path) -> None:
    layer = _raw_layer(tmp_path, [
        ("a/b", 0o100644, 1, b"old"), ("a/b", 0o100600, 1, b"new"),
        ("d", 0o040700, 1, b""), ("d", 0o040755, 1, b""), ("d/x", 0o120777, 1, b"target"),
        ("./.", 0o040711, 1, b""),
    ])
    image = tmp_path / "out.erofs"
    write_erofs(layer, image)
    out = tmp_path / "x"
    subprocess.run(["fsck.erofs", f"--extract={out}", "--preserve-perms", str(image)],
                   check=True, capture_output=True)
    assert (out / "a" / "b").read_bytes() == b"new"
    assert stat.S_IMODE((out / "a" / "b").stat().st_mode) == 0o600
    assert stat.S_IMODE((out / "a").stat().st_mode) == 0o755  # implicit parent
    assert stat.S_IMODE((out / "d").stat().st_mode) == 0o755
    assert os.readlink(out / "d" / "x") == "target"
    assert stat.S_IMODE(out.stat().st_mode) == 0o711


def test_the_cpio_writer_and_the_erofs_writer_agree_on_the_tree(tmp_path: Path) -> None:
    """Plain write_cpio output (uncompressed) wrapped in zstd converts like write_layer's."""
    tree = _sample_tree()
    buf = io.BytesIO()
    write_cpio(tree, buf, mtime=1700000000)
    raw = tmp_path / "plain.cpio.zst"
    raw.write_bytes(zstandard.ZstdCompressor().compress(buf.getvalue()))
    write_erofs(raw, tmp_path / "plain.erofs", name="layer", seed=b"seed")
    _, image = _write(tmp_path, tree)
    assert (tmp_path / "plain.erofs").read_bytes() == image.read_bytes()


# --- names Linux cannot hold: refused by both writers, with the entry named ----------------------


def _deep(total: int) -> str:
    """A relative path of ``total`` bytes made of 200-byte directory names."""
    parts, size = [], 0
    while size + 201 < total:
        parts.append(chr(ord("a") + len(parts) % 26) * 200)
        size += 201
    return "/".join([*parts, "f" * (total - size)])


def _node_tree(path: bytes) -> erofs.Node:
    root = node = erofs.Node("dir", 0o755)
    *dirs, name = path.split(b"/")
    for part in dirs:
        node.children[part] = node = erofs.Node("dir", 0o755)
    node.children[name] = erofs.Node("file", 0o644, size=2, body=1)
    return root


def _image(root: erofs.Node, dest: Path) -> None:
    with open(dest, "wb") as out:
        erofs.write_image(root, out, lambda: [(1, [b"hi"])], volume="app")


@needs_erofs_utils
def test_a_name_over_255_bytes_is_refused_by_both_writers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = "app/lib/" + "n" * 256
    shown = f"'app/lib/{'n' * 52}...{'n' * 50}'"
    with pytest.raises(UserError) as info:
        Tree().add_file(path, data=b"hi")
    assert str(info.value) == (f"the layer: entry {shown} has a name of 256 bytes; Linux allows "
                               "at most 255: rename it")
    layer = _raw_layer(tmp_path, [(path, 0o100644, 1, b"hi")])  # an archive made elsewhere
    with pytest.raises(UserError) as info:
        write_erofs(layer, tmp_path / "out.erofs", name="app")
    assert str(info.value) == (f"layer app: entry {shown} has a name of 256 bytes; Linux allows "
                               "at most 255: rename it")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw.cpio.zst"]
    with pytest.raises(UserError, match="has a name of 256 bytes"):
        _image(_node_tree(path.encode()), tmp_path / "direct.erofs")
    # What such an image was: erofs-utils finds it corrupt.
    monkeypatch.setattr(erofs, "check_names", lambda root, layer: None)
    _image(_node_tree(path.encode()), tmp_path / "corrupt.erofs")
    done = subprocess.run(["fsck.erofs", str(tmp_path / "corrupt.erofs")], capture_output=True,
                          text=True)
    assert done.returncode != 0 and "bogus dirent namelen" in done.stderr + done.stdout


@needs_erofs_utils
def test_a_path_over_4095_bytes_is_refused_by_both_writers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ok, too_long = _deep(4095), _deep(4096)
    tree = Tree()
    tree.add_file(ok, data=b"hi")  # the longest path Linux opens
    _write(tmp_path, tree, "ok")
    subprocess.run(["fsck.erofs", str(tmp_path / "ok.erofs")], check=True, capture_output=True)
    with pytest.raises(UserError) as info:
        Tree().add_file(too_long, data=b"hi")
    assert str(info.value).startswith(f"the layer: entry '{too_long[:60]}...")
    assert str(info.value).endswith("is a path of 4096 bytes; Linux allows at most 4095: "
                                    "shorten it")
    with pytest.raises(UserError, match="is a path of 4096 bytes"):
        _image(_node_tree(too_long.encode()), tmp_path / "direct.erofs")
    assert (tmp_path / "direct.erofs").stat().st_size == 0  # refused before writing
    # What such an image was: fsck.erofs cannot extract it.
    monkeypatch.setattr(erofs, "check_names", lambda root, layer: None)
    _image(_node_tree(_deep(4300).encode()), tmp_path / "deep.erofs")
    done = subprocess.run(["fsck.erofs", f"--extract={tmp_path / 'x'}",
                           str(tmp_path / "deep.erofs")], capture_output=True)
    assert done.returncode != 0


# --- holes stay holes ---------------------------------------------------------------------------


@needs_erofs_utils
def test_a_sparse_file_gives_a_sparse_cache_entry(tmp_path: Path) -> None:
    big = 64 << 20
    sparse = tmp_path / "sparse.bin"
    with open(sparse, "wb") as f:  # data at the start, in the middle and at the end
        f.write(b"head")
        f.seek(big // 2)
        f.write(_noise(10_000, 1))
        f.truncate(big)
        f.seek(big - 3)
        f.write(b"end")
    tree = Tree()
    tree.add_file("app/sparse.bin", source=sparse)
    tree.add_file("app/zeros.bin", data=bytes(3 << 20))  # zeros that were written out
    layer = tmp_path / "layer.cpio.zst"
    write_layer(tree, layer, mtime=1700000000, level=3)
    cache = Cache(tmp_path / "cache")
    entry = cache.store("ab" * 16, lambda dest: write_erofs(layer, dest))
    assert entry.stat().st_size > big
    assert entry.stat().st_blocks * 512 < 1 << 20  # allocated: the data and metadata only
    subprocess.run(["fsck.erofs", str(entry)], check=True, capture_output=True)
    out = tmp_path / "out"
    subprocess.run(["fsck.erofs", f"--extract={out}", str(entry)], check=True,
                   capture_output=True)
    assert _same_file(out / "app" / "sparse.bin", sparse)
    assert (out / "app" / "zeros.bin").read_bytes() == bytes(3 << 20)


def _same_file(a: Path, b: Path) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True
