"""Reading layers back (inspect --sizes): members of a layer written by layers/cpio.py."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import zstandard

from imagebuilder.errors import DamagedError
from imagebuilder.layers.cpio import Tree, write_cpio, write_layer
from imagebuilder.layers.cpioread import Member, layer_members, members
from imagebuilder.sizes import _group


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
