"""Small real layers for tests that store images: a zstd-compressed newc cpio holding one file,
since a disk carries every layer as an EROFS image made from its archive."""

from __future__ import annotations

import io

import zstandard

from imagebuilder.layers.cpio import Tree, write_cpio


def tiny_layer(content: bytes, path: str = "etc/layer") -> bytes:
    """A layer whose only file ``path`` holds ``content``."""
    tree = Tree()
    tree.add_file(path, data=content)
    buf = io.BytesIO()
    write_cpio(tree, buf, mtime=0)
    return zstandard.ZstdCompressor().compress(buf.getvalue())
