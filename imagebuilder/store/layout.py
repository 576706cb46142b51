"""The local image store: an OCI image layout on disk.

Built images live where standard tools can read them (skopeo, oras, registries via push): an OCI
image layout (image-spec, image-layout.md) with ``oci-layout``, ``index.json`` and content-addressed
``blobs/sha256/<hex>``. An image is an OCI artifact manifest whose config is imagebuilder's boot
configuration and whose layers are the kernel and the initrd layers, each named by digest; the
manifest's SHA-256 is the image digest, the image's identity everywhere. Those structures (media
types, descriptors, the image, references) are defined in :mod:`imagebuilder.store.oci`.

Manifests and configs are canonical JSON with no timestamps, so the same inputs give the same image
digest on every machine. Every file is written to a temporary name, fsynced and renamed, and
index.json changes happen under an fcntl lock, so an interrupted or concurrent command never
leaves a half-written blob or index behind.

Besides one entry per image version (``hello:1.0.0``), index.json holds two kinds of tag entries,
marked by an annotation so that ``images`` does not list them as versions while skopeo still
reads them (``skopeo inspect oci:STORE:hello:prod``): an environment tag (``hello:prod``, moved
by ``promote``) and the promotion history of an image name (``hello:_promotions``), an OCI
artifact whose one layer is the JSON list of promotions. Artifacts attached to an image (SBOMs,
signatures: :mod:`imagebuilder.store.attachments`) are unnamed entries marked by the manifest
they are about; ``rm`` of that image removes them, ``gc`` those whose image is gone. ``gc``
deletes the blobs no entry reaches.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import fsutil
from ..errors import DamagedError, ImageBuilderError, UserError
from ..fsutil import dir_lock, fsync_dir, refuse_links
from ..scratch import owned, remove_stale
from . import blobs, index
from .oci import (
    ARTIFACT_TYPE,
    CONFIG_MEDIA_TYPE,
    DIGEST_RE,
    ENV_ANNOTATION,
    HISTORY_ANNOTATION,
    HISTORY_TAG,
    INDEX_MEDIA_TYPE,
    INITRD_LAYER_MEDIA_TYPE,
    KERNEL_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    MIN_DIGEST_PREFIX,
    OCI_LAYOUT_VERSION,
    REF_NAME_ANNOTATION,
    TITLE_ANNOTATION,
    Descriptor,
    Image,
    canonical_json,
    oci_digest,
    sha256_digest,
    split_ref,
)
from .reach import reachable
from .refs import pick, version_key

# The OCI structures are importable from here too, where they were first defined.
__all__ = [
    "ARTIFACT_TYPE",
    "CONFIG_MEDIA_TYPE",
    "ENV_ANNOTATION",
    "HISTORY_ANNOTATION",
    "HISTORY_TAG",
    "INDEX_MEDIA_TYPE",
    "INITRD_LAYER_MEDIA_TYPE",
    "KERNEL_MEDIA_TYPE",
    "MANIFEST_MEDIA_TYPE",
    "MIN_DIGEST_PREFIX",
    "OCI_LAYOUT_VERSION",
    "REF_NAME_ANNOTATION",
    "TITLE_ANNOTATION",
    "Descriptor",
    "GcResult",
    "Image",
    "Store",
    "canonical_json",
    "split_ref",
]

_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True)
class GcResult:
    """What ``gc`` deleted: blob digests and the bytes they held, and scratch entries of
    commands that were killed."""

    removed: list[str]
    bytes_freed: int
    scratch: list[str] = field(default_factory=list)


class Store:
    """The OCI image layout at ``root`` (created on first write)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blobs_dir = self.root / "blobs" / "sha256"
        self.tmp_dir = self.root / ".tmp"
        self.index_path = self.root / "index.json"

    # --- plumbing ---------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        """Where the blob ``sha256:<hex>`` lives."""
        if not DIGEST_RE.fullmatch(digest):
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return self.blobs_dir / digest.removeprefix("sha256:")

    def _lock(self, exclusive: bool = True) -> contextlib.AbstractContextManager[None]:
        self._refuse_links()
        return dir_lock(self.root, exclusive)

    def _refuse_links(self) -> None:
        """UserError if a directory (or the index) of the store is a symbolic link: nothing
        that deletes or reads blobs may be led out of the store."""
        refuse_links((self.root / "blobs", self.blobs_dir, self.tmp_dir, self.index_path),
                     "its store")

    @contextlib.contextmanager
    def _tmp_path(self) -> Iterator[Path]:
        """A fresh name in .tmp/, owned by this process for the block (imagebuilder.scratch)."""
        with owned(self.tmp_dir) as token:
            yield self.tmp_dir / f"{token}.{secrets.token_hex(8)}"

    def _write_atomic(self, dest: Path, data: bytes) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self._tmp_path() as tmp:
            fsutil.write_atomic(dest, data, mode=0o644, tmp=tmp)

    def _ensure_layout(self) -> None:
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        layout = self.root / "oci-layout"
        if not layout.exists():
            self._write_atomic(layout, canonical_json({"imageLayoutVersion": OCI_LAYOUT_VERSION}))
        if not self.index_path.exists():
            self._write_index([])

    def _read_index(self) -> list[index.Entry]:
        return index.read(self.index_path)

    def _write_index(self, entries: list[index.Entry]) -> None:
        self._write_atomic(self.index_path, index.encode(entries))

    def _read_json_blob(self, digest: str) -> dict[str, Any]:
        obj = json.loads(self.read_blob(digest))
        if not isinstance(obj, dict):
            raise ImageBuilderError(f"blob {digest} in {self.root} is not a JSON object")
        return obj

    # --- blobs ------------------------------------------------------------------------------

    def add_blob_file(
        self, path: Path, media_type: str, annotations: dict[str, str] | None = None,
    ) -> Descriptor:
        """Add the file at ``path`` as a blob (hard-linked when possible, else copied)."""
        path = Path(path)
        self._ensure_layout()
        with self._tmp_path() as tmp:
            h = hashlib.sha256()
            try:
                try:
                    os.link(path, tmp)
                    with open(tmp, "rb") as f:
                        while chunk := f.read(1 << 20):
                            h.update(chunk)
                        size = f.tell()
                        hashed = os.fstat(f.fileno())
                except OSError as e:
                    if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                        raise
                    tmp.unlink(missing_ok=True)
                    with open(path, "rb") as src, open(tmp, "wb") as dst:
                        while chunk := src.read(1 << 20):
                            h.update(chunk)
                            dst.write(chunk)
                        dst.flush()
                        os.fsync(dst.fileno())
                        size = dst.tell()
                    os.chmod(tmp, 0o644)
                    hashed = os.stat(tmp)
                digest = oci_digest(h.hexdigest())
                dest = self.blob_path(digest)
                # what tmp holds was hashed just now: it replaces whatever dest holds (a blob of
                # the same name may have been damaged since it was stored)
                if dest.exists() and os.path.samefile(tmp, dest):
                    tmp.unlink()  # rename() between two links of one file does nothing
                else:
                    fsutil.commit(tmp, dest)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        blobs.record(dest, hashed, digest)
        return Descriptor(media_type, digest, size, dict(annotations) if annotations else None)

    def add_blob_bytes(
        self, data: bytes, media_type: str, annotations: dict[str, str] | None = None,
    ) -> Descriptor:
        """Add ``data`` as a blob."""
        self._ensure_layout()
        digest = sha256_digest(data)
        dest = self.blob_path(digest)
        try:
            intact = dest.read_bytes() == data
        except FileNotFoundError:
            intact = False
        if not intact:
            self._write_atomic(dest, data)
        return Descriptor(media_type, digest, len(data), dict(annotations) if annotations else None)

    # --- images -----------------------------------------------------------------------------

    def has_blob(self, digest: str, size: int) -> bool:
        """Whether blob ``digest`` of ``size`` bytes is in the store."""
        try:
            return self.blob_path(digest).stat().st_size == size
        except FileNotFoundError:
            return False

    def has_intact_blob(self, digest: str, size: int) -> bool:
        """Whether blob ``digest`` of ``size`` bytes is in the store and matches its digest
        (one read of it, through the hashing core)."""
        if not self.has_blob(digest, size):
            return False
        try:
            blobs.verify(self.blob_path(digest), digest)
        except DamagedError:
            return False
        return True

    def verified_blob(self, digest: str) -> Path:
        """The path of blob ``digest``, checked against its digest (DamagedError if it is
        missing or differs): for consumers that hand the file to another program."""
        path = self.blob_path(digest)
        blobs.verify(path, digest)
        return path

    def read_blob(self, digest: str) -> bytes:
        """The bytes of a small blob (a manifest or a config), checked against its digest."""
        return blobs.read_small(self.blob_path(digest), digest)

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A scratch directory inside the store for blobs on their way in; removed on exit."""
        with self._tmp_path() as path:
            path.mkdir()
            try:
                yield path
            finally:
                shutil.rmtree(path, ignore_errors=True)

    receive_blob = staticmethod(blobs.receive)

    def _check_blobs(self, descriptors: Iterable[Descriptor], staged: dict[str, Path]) -> None:
        for desc in descriptors:
            path = staged.get(desc.digest)
            if path is not None and path.stat().st_size == desc.size:
                continue
            if not self.has_blob(desc.digest, desc.size):
                raise ImageBuilderError(
                    f"blob {desc.digest} is not in the image store (removed by a concurrent "
                    "'imagebuilder rm' or 'gc'?); run the command again"
                )

    def _put_manifest_unlocked(
        self, ref: str, data: bytes, annotations: dict[str, str] | None = None,
        staged: dict[str, Path] | None = None,
    ) -> str:
        """Commit manifest ``data`` (its blobs present, or staged) as index entry ``ref``."""
        manifest = json.loads(data)
        staged = staged or {}
        parts = [Descriptor.from_json(manifest["config"])]
        parts += [Descriptor.from_json(layer) for layer in manifest.get("layers", [])]
        self._check_blobs(parts, staged)
        for digest, path in staged.items():  # verified as received: replaces what is there
            fsutil.commit(path, self.blob_path(digest), sync=False)  # fsynced as received
        if staged:
            fsync_dir(self.blobs_dir)
        desc = self.add_blob_bytes(data, MANIFEST_MEDIA_TYPE)
        entries = index.without(self._read_index(), ref)
        self._write_index([*entries, index.named(ref, desc.digest, desc.size, annotations)])
        return desc.digest

    def put_image(self, ref: str, config: dict[str, Any], layers: list[Descriptor]) -> str:
        """Store an image (config + layers already added as blobs) under ``ref``; its digest.

        ``ref`` is NAME:VERSION. An image already stored under ``ref`` is replaced; its blobs
        stay on disk (nothing is garbage-collected except by :meth:`remove` and :meth:`gc`).
        """
        split_ref(ref)
        self._ensure_layout()
        with self._lock():
            remove_stale(self.tmp_dir)
            self._check_blobs(layers, {})
            config_desc = self.add_blob_bytes(canonical_json(config), CONFIG_MEDIA_TYPE)
            manifest = {
                "schemaVersion": 2,
                "mediaType": MANIFEST_MEDIA_TYPE,
                "artifactType": ARTIFACT_TYPE,
                "config": config_desc.to_json(),
                "layers": [layer.to_json() for layer in layers],
            }
            return self._put_manifest_unlocked(ref, canonical_json(manifest))

    def put_manifest(
        self, ref: str, data: bytes, *, staged: dict[str, Path] | None = None,
        annotations: dict[str, str] | None = None, force: bool = False,
    ) -> str:
        """Commit manifest bytes ``data`` as it is (a pulled image keeps its digest) under
        ``ref``, moving ``staged`` blobs (digest -> verified file) into the store first.

        Without ``force`` a ``ref`` that already names another manifest is refused (UserError)
        and the store is left as it was.
        """
        split_ref(ref)
        digest = sha256_digest(data)
        self._ensure_layout()
        with self._lock():
            remove_stale(self.tmp_dir)
            current = {index.entry_ref(m): m["digest"] for m in self._read_index()}.get(ref)
            if current is not None and current != digest and not force:
                raise UserError(
                    f"'{ref}' in the local store is another image ({current[:19]}); pass "
                    "--force to replace it, or remove it first with 'imagebuilder rm'"
                )
            return self._put_manifest_unlocked(ref, data, annotations, staged)

    # --- environment tags and promotion history ----------------------------------------------

    def tags(self, name: str) -> dict[str, str]:
        """Environment tags of image ``name``: environment -> manifest digest."""
        with self._lock(exclusive=False):
            return index.tags_of(self._read_index(), name)

    def set_env_tag(self, name: str, env: str, digest: str) -> str | None:
        """Point ``name:env`` at manifest ``digest`` (in the store); the previous digest."""
        ref = f"{name}:{env}"
        split_ref(ref)
        with self._lock():
            self.read_blob(digest)
            size = self.blob_path(digest).stat().st_size
            entries, previous = index.retag(self._read_index(), name, env, digest, size)
            self._write_index(entries)
        return previous

    def history_manifest(self, name: str) -> str | None:
        """Digest of the promotion-history artifact of image ``name``, if any."""
        with self._lock(exclusive=False):
            for m in self._read_index():
                if index.entry_ref(m) == f"{name}:{HISTORY_TAG}":
                    return str(m["digest"])
        return None

    def put_history(self, name: str, data: bytes) -> str:
        """Commit the promotion-history artifact manifest ``data`` (its blobs stored)."""
        ref = f"{name}:{HISTORY_TAG}"
        self._ensure_layout()
        with self._lock():
            return self._put_manifest_unlocked(ref, data, {HISTORY_ANNOTATION: "true"})

    # --- index entries beside the images (attachments) ------------------------------------

    def entries(self) -> list[index.Entry]:
        """index.json's entries, read under the store's shared lock."""
        with self._lock(exclusive=False):
            return self._read_index()

    def edit_index(self, change: Callable[[list[index.Entry]], list[index.Entry]]) -> None:
        """Rewrite index.json as ``change(entries)`` under the store's lock; ``change`` may add
        the blobs its entries name (``gc`` cannot run meanwhile)."""
        self._ensure_layout()
        with self._lock():
            self._write_index(change(self._read_index()))

    # --- reading ------------------------------------------------------------------------------

    def _load(self, ref: str, digest: str, refs: list[str]) -> Image:
        manifest = self._read_json_blob(digest)
        config_digest = (manifest.get("config") or {}).get("digest", "")
        config = self._read_json_blob(config_digest)
        size = sum(int(layer.get("size", 0)) for layer in manifest.get("layers", []))
        return Image(ref=ref, digest=digest, manifest=manifest, config=config, size=size,
                     refs=refs)

    def _pick_unlocked(self, ref: str) -> tuple[str, str, list[str]]:
        """The ref shown, the manifest digest and every ref to it, of the image ``ref`` names
        (its blobs not read)."""
        entries = self._read_index()
        return pick(ref, index.refs_by_digest(entries), index.env_tags(entries))

    def _resolve_unlocked(self, ref: str) -> Image:
        return self._load(*self._pick_unlocked(ref))

    def resolve(self, ref: str) -> Image:
        """The image named by ``ref``: NAME:VERSION, NAME:ENVIRONMENT (the image promoted to
        it), NAME (if it has one version only), or a digest or unique digest prefix
        ``sha256:<at least 12 hex digits>``."""
        with self._lock(exclusive=False):
            return self._resolve_unlocked(ref)

    def images(self) -> list[Image]:
        """Every named image, sorted by name, then version (naturally: 1.9 < 1.10)."""
        with self._lock(exclusive=False):
            by_digest = index.refs_by_digest(self._read_index())
            out = [
                self._load(ref, digest, refs)
                for digest, refs in by_digest.items() for ref in refs
            ]
        out.sort(key=lambda im: (im.name, version_key(im.version), im.version))
        return out

    # --- removing -----------------------------------------------------------------------------

    def remove(self, ref: str) -> str:
        """Remove ``ref`` (or, for a digest, every ref to it); delete blobs nothing else uses.

        Returns the removed manifest digest. Blobs shared with remaining images (a kernel or
        layer used by two versions) stay. When the image's own manifest or config is damaged,
        what it uses is unknown: its entry goes, no blob. Environment tags of the image's name
        that point at a manifest no version names any more go too; the promotion history
        stays.
        """
        with self._lock():
            shown, digest, refs = self._pick_unlocked(ref)
            try:
                image: Image | None = self._load(shown, digest, refs)
            except DamagedError:  # its own manifest or config: the entry goes, no blob
                image = None
            entries = self._read_index()
            remaining = index.after_remove(entries, ref, shown, digest)
            self._write_index(remaining)

            candidates = set() if image is None else {
                digest, image.manifest.get("config", {}).get("digest", ""),
                *(layer.digest for layer in image.layers)}
            detached = [m for m in entries if index.subject_of(m) and m not in remaining]
            candidates |= reachable(self.blob_path, detached)[0]  # its attachments' blobs
            keep, damaged = reachable(self.blob_path, remaining)
            if damaged:  # what the damaged manifests use is unknown: delete no blob
                candidates = set()
            for unused in sorted(candidates - keep):
                if DIGEST_RE.fullmatch(unused):
                    self.blob_path(unused).unlink(missing_ok=True)
            if self.blobs_dir.exists():
                fsync_dir(self.blobs_dir)
        return digest

    def gc(self, dry_run: bool = False) -> GcResult:
        """Delete every blob no index entry reaches, and scratch files of dead processes
        (proven dead: see :mod:`imagebuilder.scratch`). Every manifest and index reached is
        read and checked against its digest first: if one is damaged, what it uses is unknown,
        so DamagedError names it and nothing is deleted. Links are never followed: the blob
        directory is walked through descriptors opened with O_NOFOLLOW, and a blob that is a
        symbolic link is removed as a link."""
        with self._lock():
            entries = index.without_orphans(self._read_index())  # attachments of removed images
            keep, damaged = reachable(self.blob_path, entries)
            if not damaged and not dry_run:
                self._write_index(entries)
            if damaged:
                raise DamagedError(f"gc deleted nothing: {damaged[0]}"
                                   + (f" (and {len(damaged) - 1} more)" if len(damaged) > 1
                                      else "")
                                   + "; 'imagebuilder check' tells more")
            removed, freed = blobs.sweep(self.root, keep, dry_run)
            scratch = [] if dry_run else remove_stale(self.tmp_dir)
            if self.tmp_dir.exists() and not dry_run:
                for path in self.tmp_dir.iterdir():  # named by pid, before owner tokens
                    pid, _, rest = path.name.partition(".")
                    if pid.isdigit() and _HEX.fullmatch(rest) and not _alive(int(pid)):
                        scratch.append(path.name)
                        if path.is_dir() and not path.is_symlink():
                            shutil.rmtree(path, ignore_errors=True)
                        else:
                            path.unlink(missing_ok=True)
        return GcResult(removed, freed, scratch)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
