"""``imagebuilder check``: verify a whole image store (and the stage cache) and say what is damaged.

Commands that read a blob verify it as they go (:mod:`imagebuilder.store.blobs`), so damage is never
used; this finds it before a command trips over it, and after a crash, a full disk or a failing
drive. It reads every blob of the store once through the hashing core (SHA-256, the blob's name)
and every cache entry once (its XXH3 sidecar), parses index.json and every manifest it names, and
checks that each manifest's config and layers are present, of the size it records and intact.
Each problem comes with what it affects (the images whose blob it is) and how to repair it.
Scratch left by killed commands (proven dead: :mod:`imagebuilder.scratch`) is counted but is not
damage: ``gc``, or the next command working in the same place, removes it.

The check only reads (under the store's and the cache's shared locks); it repairs nothing. It
never opens anything but a regular file (:func:`imagebuilder.fsutil.open_regular`): a blob, a
cache entry or its hash that is a symbolic link (to ``/dev/zero``, say), a FIFO or a device is
reported as damage instead of being followed or read, so the check cannot hang on one.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ImageBuilderError
from ..fsutil import NotRegularError, dir_lock
from ..scratch import remove_stale
from . import index
from .blobs import digest_regular, read_regular
from .cache import Cache
from .layout import ENV_ANNOTATION, HISTORY_ANNOTATION, REF_NAME_ANNOTATION, TITLE_ANNOTATION, Store
from .oci import oci_digest

_HEX64 = re.compile(r"[0-9a-f]{64}")
_KEY = re.compile(r"[0-9a-f]{8,128}")


@dataclass
class Problem:
    """One damaged thing: what it is, what is wrong, which images it affects, how to repair."""

    kind: str  # index | manifest | blob | cache
    name: str
    path: str
    problem: str
    images: list[str] = field(default_factory=list)
    repair: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "path": self.path,
                "problem": self.problem, "images": self.images, "repair": self.repair}


@dataclass
class Report:
    """What :func:`check` looked at and what it found."""

    blobs: int = 0
    blob_bytes: int = 0
    entries: int = 0
    cache_entries: int = 0
    scratch: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "blobs": self.blobs, "blob_bytes": self.blob_bytes,
                "index_entries": self.entries, "cache_entries": self.cache_entries,
                "stale_scratch": self.scratch,
                "problems": [p.to_json() for p in self.problems]}


def _rebuild_hint(refs: list[str]) -> str:
    versions = [r for r in refs if r]
    if not versions:
        return "nothing uses it: 'imagebuilder gc' deletes it"
    return (f"rebuild {', '.join(versions)} ('imagebuilder build' in the app's directory "
            "replaces a damaged blob) or pull it again ('imagebuilder pull ... --force')")


def check(store: Store, cache: Cache | None = None,
          progress: Callable[[int], None] = lambda n: None) -> Report:
    """Verify ``store`` (and ``cache`` if given); ``progress(bytes)`` as blobs are read."""
    report = Report()
    if store.root.exists():
        with dir_lock(store.root, exclusive=False):
            _check_store(store, report, progress)
    if cache is not None and cache.stages_dir.exists():
        with dir_lock(cache.root, exclusive=False):
            _check_cache(cache, report, progress)
    if cache is not None:
        report.scratch += len(remove_stale(cache.tmp_dir, dry_run=True))
    return report


def _check_store(store: Store, report: Report, progress: Callable[[int], None]) -> None:
    actual, sizes = _hash_blobs(store, report, progress)
    users: dict[str, list[str]] = {}  # blob digest -> refs whose image uses it
    try:
        entries = index.read(store.index_path)
    except ImageBuilderError as e:
        report.problems.append(Problem(
            "index", "index.json", str(store.index_path), str(e),
            repair="restore index.json from a backup; its images can be rebuilt or pulled"))
        entries = []
    report.entries = len(entries)
    for entry in entries:
        _check_index_entry(store, report, entry, actual, sizes, users)
    reported = {p.name for p in report.problems}
    for digest, got in actual.items():
        if got is not None and got != digest and digest not in reported:
            report.problems.append(Problem(
                "blob", digest, str(_path(store, digest)),
                f"is damaged: its content hashes to {got[:19]}...",
                repair=_rebuild_hint([])))
    # blobs damaged but used: name every image that uses them in one problem each
    for p in report.problems:
        if p.kind == "blob" and p.name in users:
            p.images = sorted({u for u in users[p.name] if u})
            if p.images:
                p.repair = _rebuild_hint(p.images)
    _merge_duplicates(report)
    report.scratch += len(remove_stale(store.tmp_dir, dry_run=True))


def _hash_blobs(store: Store, report: Report, progress: Callable[[int], None]
                ) -> tuple[dict[str, str | None], dict[str, int]]:
    """Every blob's digest -> what its bytes hash to (None: unreadable), and -> its size; a
    problem for each entry of blobs/ that is not a readable file named by a SHA-256."""
    actual: dict[str, str | None] = {}
    sizes: dict[str, int] = {}
    if not store.blobs_dir.is_dir():
        return actual, sizes
    for path in sorted(store.blobs_dir.iterdir()):
        if not _HEX64.fullmatch(path.name):
            report.problems.append(Problem(
                "blob", path.name, str(path), "is not a blob (its name is not a SHA-256)",
                repair=f"remove {path}"))
            continue
        digest = oci_digest(path.name)
        try:
            d = digest_regular(path, ("sha256",))
        except NotRegularError as e:
            actual[digest] = None
            report.problems.append(Problem("blob", digest, str(path),
                                           f"is {e.kind}, not a file (never followed)",
                                           repair=f"remove {path}"))
            continue
        except OSError as e:
            actual[digest] = None
            report.problems.append(Problem("blob", digest, str(path),
                                           f"cannot be read: {e.strerror}"))
            continue
        report.blobs += 1
        report.blob_bytes += d.size
        progress(d.size)
        actual[digest] = oci_digest(d.sha256)
        sizes[digest] = d.size
    return actual, sizes


def _check_index_entry(store: Store, report: Report, entry: dict[str, Any],
                       actual: dict[str, str | None], sizes: dict[str, int],
                       users: dict[str, list[str]]) -> None:
    """One index entry: its manifest and every blob it names are present and intact (a
    problem for each that is not); records in ``users`` which refs use which blobs."""
    annotations = entry.get("annotations") or {}
    ref = str(annotations.get(REF_NAME_ANNOTATION, entry["digest"]))
    is_version = not (ENV_ANNOTATION in annotations or HISTORY_ANNOTATION in annotations)
    repair_of_ref = _rebuild_hint([ref]) if is_version else "promote the image again"
    if subject := index.subject_of(entry):  # an attachment: an SBOM, a signature...
        is_version, ref = False, f"the {entry.get('artifactType')} attached to {subject[:19]}"
        repair_of_ref = "rebuild or pull its image again, or sign it again"
    digest = str(entry["digest"])
    users.setdefault(digest, []).append(ref if is_version else "")
    problem = _blob_state(digest, actual)
    if problem:
        report.problems.append(Problem(
            "manifest", digest, str(_path(store, digest)), f"the manifest of {ref} {problem}",
            images=[ref], repair=repair_of_ref))
        return
    try:
        manifest = json.loads(read_regular(store.blob_path(digest), 1 << 24))
        parts = _parts(manifest, role=None if is_version else
                       "payload" if subject else "promotion history")
    except (ValueError, TypeError, KeyError) as e:
        report.problems.append(Problem(
            "manifest", digest, str(_path(store, digest)),
            f"the manifest of {ref} is not a valid image manifest ({e})",
            images=[ref], repair=_rebuild_hint([ref])))
        return
    for part_digest, size, role in parts:
        users.setdefault(part_digest, []).append(ref if is_version else "")
        state = _blob_state(part_digest, actual)
        if state is None and sizes.get(part_digest) != size:
            state = f"has {sizes.get(part_digest)} bytes where the manifest says {size}"
        if state:
            report.problems.append(Problem(
                "blob", part_digest, str(_path(store, part_digest)),
                f"the {role} of {ref} {state}", images=[ref], repair=repair_of_ref))


def _merge_duplicates(report: Report) -> None:
    seen: set[tuple[str, str]] = set()
    kept = []
    for p in report.problems:
        if (p.kind, p.name) in seen and p.kind == "blob":
            continue
        seen.add((p.kind, p.name))
        kept.append(p)
    report.problems = kept


def _path(store: Store, digest: str) -> Path | str:
    try:
        return store.blob_path(digest)
    except ValueError:
        return digest


def _blob_state(digest: str, actual: dict[str, str | None]) -> str | None:
    """What is wrong with blob ``digest`` (None: present and intact)."""
    if digest not in actual:
        return "is missing"
    got = actual[digest]
    if got is None:
        return "cannot be read"
    if got != digest:
        return f"is damaged: its content hashes to {got[:19]}..."
    return None


def _parts(manifest: Any, *, role: str | None) -> list[tuple[str, int, str]]:
    """(digest, size, role) of a manifest's config and layers; ValueError if malformed."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("config"), dict):
        raise ValueError("no config descriptor")
    layers = manifest.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ValueError("no layers")
    out = []
    for i, desc in enumerate([manifest["config"], *layers]):
        if not isinstance(desc, dict):
            raise ValueError("a descriptor is not an object")
        digest, size = desc.get("digest"), desc.get("size")
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest.removeprefix("sha256:")) \
                or not digest.startswith("sha256:") or not isinstance(size, int):
            raise ValueError(f"descriptor {desc!r} has no sha256 digest and size")
        title = (desc.get("annotations") or {}).get(TITLE_ANNOTATION)
        out.append((digest, size, "config" if i == 0 else role or f"{title or f'layer {i}'} layer"))
    return out


def _check_cache(cache: Cache, report: Report, progress: Callable[[int], None]) -> None:
    for shard in sorted(cache.stages_dir.iterdir()):
        if shard.is_symlink():
            report.problems.append(Problem(
                "cache", shard.name, str(shard), "is a symbolic link, not a directory "
                "(never followed)", repair=f"remove {shard}"))
            continue
        if not shard.is_dir():
            continue
        for path in sorted(shard.iterdir()):
            if path.name.endswith(".xxh3"):
                if not os.path.lexists(path.with_name(path.name.removesuffix(".xxh3"))):
                    path_key = path.name.removesuffix(".xxh3")
                    report.problems.append(Problem(
                        "cache", path_key, str(path), "is a hash with no cache entry",
                        repair=f"remove {path} (harmless: a build rewrites it)"))
                continue
            if _KEY.fullmatch(path.name):
                _check_entry(path, report, progress)


def _check_entry(path: Path, report: Report, progress: Callable[[int], None]) -> None:
    """One cache entry against its XXH3 sidecar; only regular files are ever opened."""
    report.cache_entries += 1
    try:
        expected = _sidecar(path)
        got = digest_regular(path, ("xxh3",))
    except NotRegularError as e:
        report.problems.append(Problem(
            "cache", path.name, str(e.path), f"is {e.kind}, not a file (never followed)",
            repair=f"remove {e.path}; the next build that needs it rebuilds it"))
        return
    except OSError as e:
        report.problems.append(Problem("cache", path.name, str(path),
                                       f"cannot be read: {e.strerror}",
                                       repair=f"remove {path}"))
        return
    progress(got.data_bytes)
    if got.xxh3 != expected:
        report.problems.append(Problem(
            "cache", path.name, str(path),
            "is damaged: its content does not match its recorded XXH3"
            if expected else "has no recorded XXH3",
            repair="none needed: the next build that uses it deletes and rebuilds it"))


def _sidecar(entry: Path) -> str:
    """The XXH3 recorded beside cache entry ``entry`` ("" if there is none)."""
    try:
        data = read_regular(entry.with_name(entry.name + ".xxh3"))
    except FileNotFoundError:
        return ""
    return data.decode("ascii", "replace").strip()
