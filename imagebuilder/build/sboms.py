"""The SBOMs every build makes: the image's inventory, assembled from what the build read, written
as CycloneDX and SPDX and attached to the image in the store.

The inventory has three parts, each cached as a stage so that a rebuild reads nothing it read
before: the Debian packages (keyed by the SHA-256s of each part's .debs: an app-only rebuild
never opens a .deb), the jars (keyed by the app's files, and by the content of each layer made
of packages, whose jars are read from the layer itself), and the jlink runtime (the JDK package
and the module list, known without reading anything). The documents themselves depend on the
image digest, so each new image writes them again: tens of milliseconds, once the formats'
libraries are imported (a third of a second of Python, most of what SBOMs add to an app-only
rebuild). :func:`preload` imports them in a thread while the build does its other work (much of
it hashing and compressing, which leave the interpreter free); :func:`attach` waits for it.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import __version__
from ..apps.archive import Budget
from ..apps.shape import Shape
from ..fetch.debian import fetch_locked
from ..hashing import core as hashing
from ..layers.cpioread import extract_layer
from ..sbom import debian
from ..sbom import jars as jars_mod
from ..sbom.formats import CYCLONEDX, SPDX, Format
from ..sbom.model import DebPackage, Inventory, Jar, Runtime
from ..store import attachments
from ..store.layout import Store
from .packages import Resolution, jdk_package

#: A stage of the build: name, inputs, producer -> the cached output (Builder's ``_stage``).
Stage = Callable[[str, dict[str, Any], Callable[[Path], None]], Path]
#: The annotation OCI gives an artifact's creation time (the SBOM's, from SOURCE_DATE_EPOCH).
CREATED = "org.opencontainers.image.created"
#: On each SBOM attachment: the xxh3 of the inventory it was written from, and how many
#: components it lists (so a rebuild of the same inputs neither writes nor imports anything).
INVENTORY = "io.imagebuilder.inventory"
COMPONENTS = "io.imagebuilder.components"
#: The layers whose jars are read from the layer (the app's are read from the app's files).
PACKAGE_LAYERS = ("base", "jvm", "packages", "tomcat")
#: What :func:`attach` imports: the writers, and through them the formats' libraries.
WRITERS = ("imagebuilder.sbom.cyclonedx", "imagebuilder.sbom.spdx")
_preloading: list[threading.Thread] = []


@dataclass(frozen=True)
class Contents:
    """The image's inventory but for what only the stored image knows (its digest)."""

    packages: tuple[DebPackage, ...]
    jars: tuple[Jar, ...]
    runtime: Runtime | None


@dataclass(frozen=True)
class Stored:
    """An SBOM attached to the image: its format, the document's digest and the attachment's."""

    format: Format
    digest: str
    attachment: str
    components: int

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "attachment": self.attachment}


def debian_packages(stage: Stage, resolution: Resolution, parts: Iterable[str],
                    cache_dir: Path) -> tuple[DebPackage, ...]:
    """The Debian packages of ``parts``, read on a miss only, and then only those .debs the
    per-package records in ``cache_dir`` (the home's cache) know nothing of."""
    parts = sorted(p for p in set(parts) if resolution.parts.get(p))

    def produce(dest: Path) -> None:
        entries = {p: resolution.parts[p] for p in parts}
        found = debian.packages(entries, lambda e: fetch_locked(
            resolution.cache_dir, resolution.mirror, e, resolution.session), cache_dir)
        _write_part(dest, packages=found)
    inputs = {"debs": {p: resolution.key(p) for p in parts}, "form": debian.CACHE_FORMAT}
    return _read_part(stage("sbom-debs", inputs, produce)).packages


def app_jars(stage: Stage, shape: Shape, budget: Budget, cache_dir: Path) -> tuple[Jar, ...]:
    """Every jar the app puts in the image, read on a miss only (and then only the jars the
    per-jar records in ``cache_dir``, the home's cache, know nothing of)."""
    def produce(dest: Path) -> None:
        _write_part(dest, jars=jars_mod.jars(shape, budget, cache_dir / jars_mod.CACHE_DIR))
    inputs = {"app": shape.key(shape.app), "libs": shape.key(shape.libs),
              "form": jars_mod.CACHE_FORM}
    return _read_part(stage("sbom-jars", inputs, produce)).jars


def layer_jars(stage: Stage, layer: Path, scratch: Path, cache_dir: Path) -> tuple[Jar, ...]:
    """The jars a layer of packages holds (the runtime's jrt-fs.jar, Tomcat's, the app's
    packages' /usr/share/java), as scanners find them in the image: read from the layer itself,
    on a miss only (the key is the layer's content)."""
    def produce(dest: Path) -> None:
        root = scratch / f"sbom-{dest.name}"
        extract_layer(layer, root)
        _write_part(dest, jars=jars_mod.jars_in_tree(root, "/",
                                                     cache=cache_dir / jars_mod.CACHE_DIR))
    inputs = {"layer": hashing.xxh3_file(layer), "form": jars_mod.CACHE_FORM}
    return _read_part(stage("sbom-layer-jars", inputs, produce)).jars


def runtime(resolution: Resolution, version: int, modules: list[str]) -> Runtime | None:
    """The jlink runtime, as a component of the JDK package it was linked from."""
    name = jdk_package(version)
    entry = next((e for e in resolution.parts.get("jvm", []) if e.name == name), None)
    return jars_mod.runtime(entry, version, modules) if entry else None


def inventory(name: str, version: str, digest: str, created: int, suite: str, app: str,
              contents: Contents) -> Inventory:
    return Inventory(name=name, version=version, digest=digest, created=created, suite=suite,
                     packages=contents.packages, jars=contents.jars, runtime=contents.runtime,
                     app=app, tool=f"imagebuilder {__version__}")


def preload() -> None:
    """Start importing :data:`WRITERS` in a thread (once a process), for :func:`attach`."""
    if not _preloading:
        _preloading.append(threading.Thread(target=_import_writers, name="sbom-preload",
                                            daemon=True))
        _preloading[0].start()


def _import_writers() -> None:
    for name in WRITERS:
        with contextlib.suppress(Exception):  # attach imports it again, and says what failed
            importlib.import_module(name)


def attached(store: Store, inv: Inventory) -> list[Stored] | None:
    """Both documents of ``inv`` if this store's build attached them already (a rebuild of the
    same inputs: each carries the hash of the inventory it was written from), else None. A
    pulled document is never taken for the build's own, whatever it says."""
    key = inventory_key(inv)
    came = attachments.origins(store, inv.digest)
    out = []
    for fmt in (CYCLONEDX, SPDX):
        found = attachments.referrers(store, inv.digest, fmt.media_type)
        ours = len(found) == 1 and came.get(found[0].digest) is None
        notes = (found[0].annotations or {}) if ours else {}
        if notes.get(INVENTORY) != key or not notes.get(COMPONENTS, "").isdigit():
            return None
        layer = attachments.manifest(store, found[0])["layers"][0]
        out.append(Stored(fmt, str(layer["digest"]), found[0].digest, int(notes[COMPONENTS])))
    return out


def inventory_key(inv: Inventory) -> str:
    """What marks the documents written from ``inv``: the xxh3 of its JSON."""
    return hashing.xxh3_bytes(inv.to_json().encode())


def attach(store: Store, inv: Inventory) -> list[Stored]:
    """Write both documents of ``inv`` and attach them to its image (replacing older ones)."""
    for thread in _preloading:
        thread.join()
    from ..sbom import cyclonedx, identity, spdx  # a third of a second of imports
    from ..store.oci import sha256_digest
    created = datetime.fromtimestamp(inv.created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    components = identity.count(inv)
    out = []
    writers: tuple[tuple[Format, Callable[[Inventory], bytes]], ...] = (
        (CYCLONEDX, cyclonedx.document), (SPDX, lambda i: spdx.document(i, validate=False)))
    for fmt, write in writers:
        payload = write(inv)
        desc = attachments.attach(store, inv.digest, fmt.media_type, payload, fmt.media_type,
                                  {CREATED: created, INVENTORY: inventory_key(inv),
                                   COMPONENTS: str(components)})
        out.append(Stored(fmt, sha256_digest(payload), desc.digest, components))
    return out


def summary(stored: list[Stored], seconds: float) -> str:
    """The build's one line about its SBOMs."""
    formats = " and ".join(s.format.title for s in stored)
    count = stored[0].components if stored else 0
    return f"sbom: {formats}, {count} components, in {seconds:.2f} s"


def _write_part(dest: Path, packages: tuple[DebPackage, ...] = (),
                jars: tuple[Jar, ...] = ()) -> None:
    """A cached part of the inventory, as the model writes an inventory."""
    dest.write_text(Inventory("", "", "", 0, "", packages=packages, jars=jars).to_json())


def _read_part(path: Path) -> Inventory:
    return Inventory.from_json(path.read_text())
