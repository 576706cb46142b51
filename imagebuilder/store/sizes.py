"""What an image carries and why: `inspect --sizes`.

For each initrd layer (and the kernel), the bytes it adds to the image (compressed, as stored and
shipped) and to the guest's RAM (unpacked: the root is an initramfs), the directories that hold
most of it and its largest files. Read from the stored layers themselves, so the report is the
truth about the image, not about the config that built it.
"""

from __future__ import annotations

import posixpath
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from ..layers.cpioread import layer_members
from .layout import Image, Store
from .oci import TITLE_ANNOTATION, Descriptor

TOP_FILES = 8
TOP_DIRS = 6
DIR_DEPTH = 3


@dataclass
class LayerSizes:
    """One layer's sizes: ``stored`` compressed bytes, ``unpacked`` bytes of file bodies."""

    title: str
    digest: str
    stored: int
    unpacked: int = 0
    files: int = 0
    dirs: list[tuple[str, int]] = field(default_factory=list)
    largest: list[tuple[str, int]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["dirs"] = [{"path": p, "bytes": n} for p, n in self.dirs]
        out["largest"] = [{"path": p, "bytes": n} for p, n in self.largest]
        return out


def _group(path: str) -> str:
    """The directory a file is counted under: its parent, at most DIR_DEPTH levels deep."""
    parent = posixpath.dirname(path)
    return "/" + "/".join(parent.split("/")[:DIR_DEPTH]) if parent else "/"


def _title(layer: Descriptor, default: str) -> str:
    return (layer.annotations or {}).get(TITLE_ANNOTATION, default)


def layer_sizes(store: Store, image: Image) -> list[LayerSizes]:
    """Sizes of the kernel and of every initrd layer of ``image``, in boot order."""
    kernel, layers = image.boot_layers()
    report = [LayerSizes(_title(kernel, "kernel"), kernel.digest, kernel.size, kernel.size, 1)]
    for layer in layers:
        title = _title(layer, "?")
        sizes = LayerSizes(title, layer.digest, layer.size)
        by_dir: Counter[str] = Counter()
        files: list[tuple[int, str]] = []
        for member in layer_members(store.verified_blob(layer.digest)):
            if member.kind != "file":
                continue
            sizes.files += 1
            sizes.unpacked += member.size
            by_dir[_group(member.path)] += member.size
            files.append((member.size, "/" + member.path))
        files.sort(key=lambda f: (-f[0], f[1]))
        sizes.largest = [(path, size) for size, path in files[:TOP_FILES]]
        sizes.dirs = sorted(by_dir.items(), key=lambda d: (-d[1], d[0]))[:TOP_DIRS]
        report.append(sizes)
    return report
