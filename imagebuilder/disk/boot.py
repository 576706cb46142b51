"""What a boot loader boots: the kernel, the initrd layers in order and the command line.

A stored image is the kernel and its layers by digest plus a command line; :class:`BootSource`
is that, resolved to files, and it is what every disk and format writer takes whole: the ESP
(:mod:`.esp`), the bootable GPT disk (:mod:`.bootable`), the ISO and the kernel-initrd
directory (:mod:`imagebuilder.formats`). Its :attr:`~BootSource.seed`, a content hash of all of
it, is the source of every identifier on those outputs (GUIDs, serials, MBR ids), so the same
image gives the same bytes on any machine.

A disk keeps the root on the disk: every layer is an EROFS partition named by its digest
(:attr:`~BootSource.partitions`), and the ESP loads only the kernel and the base layer with a
command line that lists those partitions (:meth:`~BootSource.on_disk`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..store import blobs
from ..store.layout import TITLE_ANNOTATION, Image, Store

LAYERS_PARAM = "imagebuilder.layers"
PARTITION_PREFIX = "ib-"


@dataclass(frozen=True)
class BootSource:
    """What a boot loader needs: the kernel, the initrd layers in order, the command line."""

    kernel: Path
    initrds: tuple[tuple[str, Path], ...]
    """Each layer's name and file, in unpack order (the base layer first)."""
    cmdline: str
    digests: tuple[str, ...]
    """The kernel's and the layers' digests, in the order of ``kernel`` and ``initrds``."""
    disk_digest: str | None = None
    """The recorded digest of the raw disk at its default size (None while building)."""
    seed: bytes = b""
    """A content hash of everything on the disk: the source of every GUID and serial
    (default: the hash of ``digests`` and ``cmdline``)."""

    def __post_init__(self) -> None:
        if not self.seed:
            text = "\n".join((*self.digests, self.cmdline))
            object.__setattr__(self, "seed", hashlib.sha256(text.encode()).digest())

    @classmethod
    def of_image(cls, store: Store, image: Image) -> BootSource:
        kernel, layers = image.boot_layers()
        return cls(
            kernel=store.blob_path(kernel.digest),
            initrds=tuple(((layer.annotations or {}).get(TITLE_ANNOTATION, f"layer{i}"),
                           store.blob_path(layer.digest)) for i, layer in enumerate(layers, 1)),
            cmdline=str(image.config.get("cmdline", "console=ttyS0")),
            digests=tuple(d.digest for d in image.layers),
            disk_digest=(image.config.get("disk") or {}).get("digest"),
        )

    @classmethod
    def of_files(cls, kernel: Path, initrds: Sequence[tuple[str, Path]], cmdline: str, *,
                 seed: bytes) -> BootSource:
        """Files that are not in a store (no digests to verify), with the caller's ``seed``."""
        if not isinstance(seed, bytes) or not seed:
            raise ValueError("seed must be non-empty bytes (a content hash of the image)")
        return cls(Path(kernel), tuple((name, Path(p)) for name, p in initrds), cmdline, (),
                   seed=seed)

    @property
    def partitions(self) -> tuple[tuple[str, str], ...]:
        """Each layer's name and the name of its EROFS partition on the disk, lowest first."""
        return tuple((name, PARTITION_PREFIX + digest.split(":")[-1][:32])
                     for (name, _), digest in zip(self.initrds, self.digests[1:], strict=True))

    @property
    def disk_cmdline(self) -> str:
        """The command line of a disk boot: the image's, and the layer partitions to mount."""
        layers = ",".join(f"{name}:{part.removeprefix(PARTITION_PREFIX)}"
                          for name, part in self.partitions)
        return f"{self.cmdline} {LAYERS_PARAM}={layers}"

    def on_disk(self) -> BootSource:
        """What a disk's ESP boots: the kernel and the base layer with :attr:`disk_cmdline`
        (the other layers are partitions the base layer's init mounts); the same seed."""
        return dataclasses.replace(self, initrds=self.initrds[:1], digests=self.digests[:2],
                                   cmdline=self.disk_cmdline, disk_digest=None)

    def verify(self) -> None:
        """Check the kernel and every layer against their digests (DamagedError if one is
        missing or differs); a file already verified in this process is not read again."""
        paths = (self.kernel, *(path for _, path in self.initrds))
        for path, digest in zip(paths, self.digests, strict=True):
            blobs.verify(path, digest)

    def chunks(self, path: Path) -> Iterator[bytes]:
        """The bytes of the kernel or a layer, verified against its digest as they are read."""
        paths = (self.kernel, *(p for _, p in self.initrds))
        return blobs.verified_chunks(path, self.digests[paths.index(path)])
