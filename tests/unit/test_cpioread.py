"""Reading layers back (inspect --sizes): members of a layer written by layers/cpio.py."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import zstandard

from imagebuilder.errors import DamagedError
from imagebuilder.layers.cpio import Tree, write_cpio, write_layer
from imagebuilder.layers.cpioread import Member, extract_layer, layer_members, members
from imagebuilder.store.sizes import _group


def _tree(tmp_path: Path) -> Tree:
    big = tmp_path / "big"
    big.write_bytes(b"x" * 70001)
    tree = Tree()
    tree.add_file("opt/java/lib/modules", source=big)
    tree.add_file("etc/odd", data=b"abc")  # a body that needs padding
    tree.add_symlink("bin/sh", "busybox")
    tree.add_dir("tmp", 0o1777)
    return tree


def test_reads_back_every_member_with_its_kind_and_size(tmp_path: Path) -> None:
    layer = tmp_path / "layer.cpio.zst"
    write_layer(_tree(tmp_path), layer, mtime=0)
    found = {m.path: m for m in layer_members(layer)}
    assert found["opt/java/lib/modules"] == Member("opt/java/lib/modules", "file", 70001)
    assert found["etc/odd"] == Member("etc/odd", "file", 3)
    assert found["bin/sh"] == Member("bin/sh", "symlink", len("busybox"))
    assert found["tmp"].kind == "dir" and found["opt/java"].kind == "dir"


def test_a_truncated_or_foreign_archive_is_damaged(tmp_path: Path) -> None:
    raw = io.BytesIO()
    write_cpio(_tree(tmp_path), raw, mtime=0)
    data = raw.getvalue()
    with pytest.raises(DamagedError, match="ends inside"):
        list(members(io.BytesIO(data[:5000])))
    with pytest.raises(DamagedError, match="not newc"):
        list(members(io.BytesIO(b"070707" + data[6:])))
    bad = tmp_path / "bad.cpio.zst"
    bad.write_bytes(zstandard.ZstdCompressor().compress(data)[:-40])
    with pytest.raises(DamagedError):
        list(layer_members(bad))


def test_files_are_counted_under_their_directory_at_most_three_levels_deep() -> None:
    assert _group("opt/java/lib/modules") == "/opt/java/lib"
    assert _group("usr/lib/modules/6.12/kernel/net/x.ko") == "/usr/lib/modules"
    assert _group("init") == "/"


def test_extract_unpacks_files_with_their_mode_and_mtime_over_earlier_layers(
        tmp_path: Path) -> None:
    first, second = tmp_path / "first.cpio.zst", tmp_path / "second.cpio.zst"
    write_layer(_tree(tmp_path), first, mtime=0)
    later = Tree()
    later.add_file("etc/odd", data=b"replaced", mode=0o755)
    later.add_symlink("bin/sh", "ash")
    later.add_node("dev/console", "char", 5, 1)
    write_layer(later, second, mtime=1234)
    root = tmp_path / "root"
    assert extract_layer(first, root) == len(list(layer_members(first)))
    extract_layer(second, root)
    assert (root / "opt/java/lib/modules").read_bytes() == b"x" * 70001
    assert (root / "opt/java/lib/modules").stat().st_mtime == 0  # CDS compares jar mtimes
    odd = (root / "etc/odd").stat()
    assert (root / "etc/odd").read_bytes() == b"replaced"
    assert (odd.st_mtime, odd.st_mode & 0o777) == (1234, 0o755)
    assert os.readlink(root / "bin/sh") == "ash"
    assert (root / "tmp").is_dir() and not (root / "dev/console").exists()


@pytest.mark.parametrize("name", ["../escape", "/etc/passwd", "a/../../escape"])
def test_extract_refuses_names_that_leave_the_root(tmp_path: Path, name: str) -> None:
    raw = io.BytesIO()
    write_cpio(Tree(), raw, mtime=0)
    evil = _member(name, b"x")
    with pytest.raises(DamagedError, match="leaves the archive's root"):
        list(members(io.BytesIO(evil + raw.getvalue()), tmp_path / "root"))
    assert not (tmp_path / "escape").exists()


def test_extract_refuses_a_file_below_a_symlink_out_of_the_root(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    raw = io.BytesIO()
    write_cpio(Tree(), raw, mtime=0)
    data = _member("lnk", b"/tmp", 0o120777) + _member("lnk/x", b"x") + raw.getvalue()
    with pytest.raises(DamagedError, match="below a symlink that leaves the root"):
        list(members(io.BytesIO(data), tmp_path / "root"))


def _member(name: str, body: bytes, mode: int = 0o100644) -> bytes:
    """One newc member, written by hand (the Tree refuses such names)."""
    encoded = name.encode() + b"\0"
    fields = (1, mode, 0, 0, 1, 0, len(body), 0, 0, 0, 0, len(encoded), 0)
    head = b"070701" + b"".join(b"%08X" % f for f in fields) + encoded
    head += b"\0" * (-len(head) % 4)
    return head + body + b"\0" * (-len(body) % 4)
