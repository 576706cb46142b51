"""The build plan: stages keyed by the hash of their inputs, cached, assembled into an image.

Stages and what keys them (each key also holds the stage's own version):

* ``kernel``   the kernel package's SHA-256                            -> vmlinuz
* ``base``     busybox, kernel, firmware packages, modules, init templates -> base layer
* ``jdk``      JDK packages                                            -> JDK package index
* ``natives``  JDK packages + module list + fonts                     -> library/font packages
* ``jvm``      JDK, library and font packages + module list            -> jvm layer
* ``packages`` the app's extra Debian packages                          -> packages layer
* ``tomcat``   for a war, Debian's Tomcat 10 packages                   -> tomcat layer
* ``libs``     the app's third-party libraries (path, xxh3 of each)    -> libs layer
* ``app``      the app's own files (path, xxh3 of each) + app.conf     -> app layer
* ``aot``      with ``[jvm] aot``: every layer above (xxh3), the command line, the training
               environment's variables                                 -> aot layer (the class
               data a training run of the app leaves, and app.conf passing it to the JVM)

Before any stage runs, the app is detected (:mod:`.apps.detect`) and every class it can load is
read (:mod:`.apps.scan`), so a broken jar fails before anything is fetched or cached (a war's
classes are read with Tomcat's, once its packages are fetched). The modules
are the scan mapped through the JDK's package index (:mod:`.apps.modules`): milliseconds, no JVM.
A new app version changes only the app key (and the jvm key if it uses a new JDK module), so it
rebuilds only the app layer. Package trees are unpacked lazily, only for stages that miss.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..apps import modules as modules_mod
from ..apps import war
from ..apps.archive import Budget
from ..apps.detect import detect
from ..apps.scan import Usage, load_memo, save_memo, scan
from ..apps.shape import File, Shape
from ..config.parse import Config
from ..errors import HostError
from ..fetch import sysroot
from ..formats import export
from ..formats.export import BootSource
from ..fsutil import disk_full
from ..hashing import core as hashing
from ..layers import aot, natives
from ..layers import app as app_layer
from ..layers import base as base_layer
from ..layers import jvm as jvm_layer
from ..layers.cpio import Tree, source_date_epoch, write_layer
from ..layers.cpioread import extract_layer
from ..layers.hardware import Selection, firmware_files, missing_firmware_message, present_modules
from ..layers.hardware import select as select_drivers
from ..layers.kernel import KernelManifest, ModuleTree, load_manifest
from ..sbom import dpkg
from ..scratch import scratch_dir
from ..signing import provenance
from ..store.home import Home
from ..store.layout import INITRD_LAYER_MEDIA_TYPE, KERNEL_MEDIA_TYPE, Descriptor
from ..store.layout import TITLE_ANNOTATION as TITLE
from . import sboms
from .packages import NATIVES, Resolution, resolve

STAGE_VERSIONS = {"kernel": 1, "base": 3, "jdk": 1, "natives": 1, "jvm": 5, "packages": 3,
                  "tomcat": 2, "libs": 1, "app": 2, "aot": 1,
                  "sbom-debs": 1, "sbom-jars": 1, "sbom-layer-jars": 1}
#: zstd level of each layer. The base is small (about 4 MB) and shared by every app: 19. The
#: jvm, packages, tomcat and libs layers are large and made again for each app's module set or
#: libraries: 12, a cold build's largest cost otherwise. WireMock's 147 MB jvm layer, 2 threads:
#: level 12 3.7 s for 38.5 MB, 15 12.8 s for 38.3 MB, 17 23.4 s for 35.6 MB, 19 40.2 s for
#: 34.2 MB. The app and aot layers change with every version: 3 (it packs an 18 MiB fat jar 8
#: times faster than level 9, for under 1% more bytes: a jar is compressed already).
LEVELS = {"base": 19, "jvm": 12, "packages": 12, "tomcat": 12, "libs": 12, "app": 3, "aot": 3}
#: What the packages layer takes from the app's extra packages.
PACKAGES_DIRS = ("etc", "opt", "usr", "var")
#: The class scan's memo (:data:`.apps.scan.Memo`), in the cache directory.
SCAN_MEMO = "scan-memo.json"
#: Where the jvm layer lists the packages of the JDK modules left out, for the init's hint.
MISSING_MODULES = "etc/imagebuilder/jdk-missing"


@dataclass
class StageResult:
    name: str
    path: Path
    hit: bool
    seconds: float


@dataclass
class BuildResult:
    ref: str
    digest: str
    size: int
    stages: list[StageResult]
    locked: bool
    disk_digest: str
    #: Per SBOM format: the document's digest and the attachment's (:class:`.sboms.Stored`).
    sboms: dict[str, dict[str, str]] = field(default_factory=dict)


class _Sysroots:
    """Package trees unpacked on first use into one scratch directory."""

    def __init__(self, resolution: Resolution, scratch: Path) -> None:
        self.resolution = resolution
        self.scratch = scratch
        self.roots: dict[str, Path] = {}

    def get(self, part: str) -> Path:
        if part not in self.roots:
            self.roots[part] = sysroot.unpack(self.resolution.debs(part), self.scratch / part)
        return self.roots[part]


class Builder:
    """Runs the stages of one build."""

    def __init__(self, cfg: Config, home: Home, *, mirror: str | None = None,
                 report: Callable[[str], None] = lambda s: None) -> None:
        self.cfg = cfg
        self.home = home
        self.mirror = mirror
        self.report = report
        self.cache = home.cache
        self.mtime = source_date_epoch()
        self.stages: list[StageResult] = []

    def _stage(self, name: str, inputs: dict[str, Any], produce: Callable[[Path], None]) -> Path:
        key = self.cache.stage_key(name, STAGE_VERSIONS[name], inputs)
        start = time.monotonic()

        def announced(dest: Path) -> None:
            self.report(f"{name}: building")
            produce(dest)
        path, hit = self.cache.get_or_make(key, announced)
        seconds = time.monotonic() - start
        self.stages.append(StageResult(name, path, hit, seconds))
        self.report(f"{name}: {'cached' if hit else f'built in {seconds:.1f} s'}")
        return path

    def _layer(self, name: str, inputs: dict[str, Any], make_tree: Callable[[], Tree]) -> Path:
        def produce(dest: Path) -> None:
            write_layer(make_tree(), dest, mtime=self.mtime, level=LEVELS[name],
                        threads=os.cpu_count() or 1)
        return self._stage(name, {**inputs, "mtime": self.mtime, "level": LEVELS[name]}, produce)

    def run(self) -> BuildResult:
        cfg = self.cfg
        manifest = load_manifest(cfg.system.kernel)
        drivers = select_drivers(manifest, cfg.system.hardware, cfg.system.modules)
        budget = Budget()
        try:
            shape = detect(cfg.app.path, cfg.app.main, budget,
                           config_dir=cfg.root if cfg.path else None)
            for warning in shape.warnings:
                self.report(f"WARNING: {warning}")
            # A war's classes are scanned with Tomcat's, once its packages are at hand.
            usage = None if shape.kind == "war" else self._scan(shape, budget)
            if cfg.jvm.aot:
                shape = aot.jarred(shape)
            resolution = resolve(cfg, drivers, self.home.downloads, mirror=self.mirror)
            with scratch_dir() as scratch:
                roots = _Sysroots(resolution, scratch)
                if usage is None:
                    shape = war.with_tomcat(shape, roots.get("tomcat"), cfg.app.port)
                    usage = self._scan(shape, budget)
                kernel = self._kernel(resolution, roots)
                layers = [("base", self._base(drivers, resolution, roots))]
                index = self._jdk(resolution, roots)
                modules = modules_mod.needed(usage, index, cfg.jvm.modules,
                                             full=cfg.jvm.runtime == "full")
                layers.append(("jvm", self._jvm(resolution, roots, modules, index)))
                for part, dirs in (("packages", PACKAGES_DIRS), ("tomcat", war.TOMCAT_DIRS)):
                    if resolution.parts.get(part):
                        layers.append((part, self._packages(part, dirs, resolution, roots)))
                if shape.libs:
                    layers.append(("libs", self._files_layer("libs", shape, shape.libs)))
                layers.append(("app", self._app(shape)))
                if cfg.jvm.aot:
                    layers.append(("aot", self._aot(layers, shape, scratch)))
                contents = self._contents(shape, budget, resolution, roots, modules, layers)
        finally:
            budget.close()
        return self._store(manifest, resolution, kernel, layers, modules, shape, usage,
                           contents)

    def _scan(self, shape: Shape, budget: Budget) -> Usage:
        cfg = self.cfg
        memo_path = self.home.root / "cache" / SCAN_MEMO
        memo = load_memo(memo_path)
        known = len(memo)
        usage = scan(shape, cfg.jvm.version, budget, cfg.app.path, memo)
        if len(memo) != known:
            save_memo(memo_path, memo)
        return usage

    def _kernel(self, resolution: Resolution, roots: _Sysroots) -> Path:
        def produce(dest: Path) -> None:
            vmlinuz = ModuleTree.scan(roots.get("kernel")).vmlinuz
            dest.write_bytes(vmlinuz.read_bytes())
        return self._stage("kernel", {"debs": resolution.key("kernel")}, produce)

    def _base(self, drivers: Selection, resolution: Resolution, roots: _Sysroots) -> Path:
        inputs = {
            "debs": resolution.key("base") + resolution.key("kernel"),
            "firmware": resolution.key("firmware"),
            "modules": list(drivers.modules),
            "explicit": list(drivers.extra),
            "init": base_layer.init_files(),  # the bytes of every file the stage renders
            "applets": base_layer.APPLETS,
            "suite": self.cfg.system.suite,
        }
        def make_tree() -> Tree:
            modules = ModuleTree.scan(roots.get("kernel"))
            present, absent = present_modules(drivers, modules, modules.kver)
            if absent:
                self.report(f"base: {modules.kver} has no {', '.join(absent)}: skipped")
            closure = modules.closure(list(present))
            fw_roots = [roots.get("firmware")] if resolution.parts.get("firmware") else []
            firmware, missing = firmware_files(closure, fw_roots)
            if fw_roots:
                for line in missing_firmware_message(missing, drivers.kernel.name):
                    self.report(line)
            records = {**_dpkg_status(resolution, ("kernel", "base", "firmware")),
                       dpkg.OS_RELEASE: dpkg.os_release(self.cfg.system.suite)}
            return base_layer.build_tree(roots.get("base"), modules, closure, firmware, records)
        return self._layer("base", inputs, make_tree)

    def _jdk(self, resolution: Resolution, roots: _Sysroots) -> modules_mod.JdkIndex:
        """The JDK's package index (which module holds which package), read from its jmods."""
        version = self.cfg.jvm.version

        def produce(dest: Path) -> None:
            root = roots.get("jvm")
            index = modules_mod.read_jmods(jvm_layer.jdk_home(root, version) / "jmods")
            dest.write_text(index.to_json())
        path = self._stage("jdk", {"debs": resolution.key("jvm"), "version": version}, produce)
        return modules_mod.JdkIndex.from_json(path.read_text())

    def _natives(self, resolution: Resolution, roots: _Sysroots, modules: list[str]) -> bool:
        """Pin the packages of the libraries and fonts the runtime's natives need; True if some
        library is still unresolved (then the packages layer is searched for it too)."""
        version, fonts = self.cfg.jvm.version, self.cfg.jvm.fonts

        def produce(dest: Path) -> None:
            root = roots.get("jvm")
            missing = natives.missing_sonames(root, jvm_layer.jdk_home(root, version), modules,
                                              fonts=fonts)
            chosen = resolution.providers(missing, "jvm")
            names = set(chosen.values())
            if fonts and natives.DESKTOP in modules:
                names.update(natives.FONT_PACKAGES)
            dest.write_text(json.dumps({"packages": sorted(names),
                                        "unresolved": sorted(set(missing) - set(chosen))}))
        inputs = {"debs": resolution.key("jvm"), "modules": modules, "fonts": fonts}
        found = json.loads(self._stage("natives", inputs, produce).read_text())
        resolution.set_part(NATIVES, found["packages"])
        return bool(found["unresolved"])

    def _jvm(self, resolution: Resolution, roots: _Sysroots, modules: list[str],
             index: modules_mod.JdkIndex) -> Path:
        version = self.cfg.jvm.version
        unresolved = self._natives(resolution, roots, modules)
        parts = ["jvm", NATIVES] if resolution.parts.get(NATIVES) else ["jvm"]
        # A library no JDK package names may be in the app's packages: only then does the jvm
        # layer depend on them.
        shared = ["packages"] if unresolved and resolution.parts.get("packages") else []

        def make_tree() -> Tree:
            root = roots.get("jvm")
            runtime = roots.scratch / "runtime"
            jvm_layer.link_runtime(root, jvm_layer.jdk_home(root, version), modules, runtime,
                                   self.mtime)
            try:
                tree = jvm_layer.build_tree(
                    [roots.get(p) for p in parts], runtime, [roots.get(p) for p in shared],
                    natives.dlopened(modules, fonts=self.cfg.jvm.fonts),
                    _dpkg_status(resolution, parts))
            except jvm_layer.MissingLibraryError as exc:
                raise jvm_layer.MissingLibraryError(
                    exc.soname, exc.needer, resolution.suggest(exc.soname)) from None
            missing = modules_mod.missing_packages(index, _linked(runtime))
            tree.add_file(MISSING_MODULES, data=missing.encode(), mode=0o644)
            return tree
        inputs = {"debs": [resolution.key(p) for p in (*parts, *shared)], "modules": modules,
                  "fonts": self.cfg.jvm.fonts}
        return self._layer("jvm", inputs, make_tree)

    def _packages(self, part: str, dirs: tuple[str, ...], resolution: Resolution,
                  roots: _Sysroots) -> Path:
        """A layer of the files below ``dirs`` of the unpacked packages of ``part``."""
        def make_tree() -> Tree:
            root = roots.get(part)
            tree = Tree()
            base_layer.add_records(tree, _dpkg_status(resolution, [part]))
            for top in dirs:
                if (root / top).is_dir():
                    tree.add_tree(root / top, top)
            return tree
        return self._layer(part, {"debs": resolution.key(part), "dirs": list(dirs)}, make_tree)

    def _files_layer(self, name: str, shape: Shape, files: tuple[File, ...]) -> Path:
        return self._layer(name, {"files": shape.key(files)},
                           lambda: app_layer.files_tree(files))

    def _app(self, shape: Shape) -> Path:
        cfg = self.cfg
        inputs = {"files": shape.key(shape.app), "conf": app_layer.app_conf(cfg, shape)}
        return self._layer("app", inputs, lambda: app_layer.build_tree(cfg, shape))

    def _aot(self, layers: list[tuple[str, Path]], shape: Shape, scratch: Path) -> Path:
        """The class data of a training run of the app in the image's root (see :mod:`.aot`),
        and the app.conf that hands it to the JVM."""
        cfg, train, version = self.cfg, self.cfg.jvm.train, self.cfg.jvm.version
        env = next((e for e in cfg.environments if e.name == train.env), None)
        variables = aot.guest_env(cfg.app.port, env.vars if env else {}, train.env)
        argv = app_layer.command(cfg, shape)
        url = None if train.seconds else f"http://127.0.0.1:{cfg.app.port}{cfg.app.healthcheck}"
        archive = aot.archive_path(version)
        conf = app_layer.app_conf(cfg, shape, aot.run_flags(version), f"/{archive}")

        def make_tree() -> Tree:
            root = scratch / "aot-root"
            for _name, path in layers:
                extract_layer(path, root)
            made, outcome = aot.train(root, argv, variables, version, url=url,
                                      seconds=train.seconds or 0, timeout=train.timeout)
            self.report(f"aot: trained in {outcome.total:.1f} s (the app "
                        f"{'answered' if url else 'ran'} after {outcome.seconds:.1f} s), "
                        f"{made.stat().st_size / (1 << 20):.1f} MiB of class data")
            tree = Tree()
            tree.add_file(archive, source=made, mode=0o644)
            tree.add_file("etc/imagebuilder/app.conf", data=conf.encode(), mode=0o644)
            return tree
        inputs = {"layers": [[name, hashing.xxh3_file(path)] for name, path in layers],
                  "argv": argv, "conf": conf, "env": variables, "url": url,
                  "seconds": train.seconds,
                  "train": hashing.xxh3_bytes(aot.training_code())}
        return self._layer("aot", inputs, make_tree)

    def _disk(self, source: BootSource) -> tuple[str, int]:
        """The digest and size of the image's raw bootable disk (its ESP is a cached stage)."""
        start = time.monotonic()
        disk, hit = export.bootable_with_hit(self.cache, source)
        digest = export.disk_digest(disk)
        seconds = time.monotonic() - start
        self.stages.append(StageResult("disk", Path(), hit, seconds))
        self.report(f"disk: {digest} in {seconds:.1f} s")
        return digest, disk.size

    def _store(self, manifest: KernelManifest, resolution: Resolution, kernel: Path,
               layers: list[tuple[str, Path]], modules: list[str], shape: Shape,
               usage: Usage, contents: sboms.Contents) -> BuildResult:
        cfg = self.cfg
        store = self.home.store
        kernel_entry = next(e for e in resolution.parts["kernel"]
                            if e.name.startswith("linux-image-") and e.name != manifest.package)
        descriptors: list[Descriptor] = [store.add_blob_file(kernel, KERNEL_MEDIA_TYPE, {
            TITLE: "vmlinuz"})]
        for name, path in layers:
            descriptors.append(store.add_blob_file(path, INITRD_LAYER_MEDIA_TYPE, {TITLE: name}))
        sboms.preload()  # the formats' libraries import while the disk is hashed
        disk_digest, disk_size = self._disk(BootSource(
            kernel=kernel, initrds=tuple(layers), cmdline=manifest.cmdline,
            digests=tuple(d.digest for d in descriptors)))
        image_config = {
            "name": cfg.image.name,
            "version": cfg.image.version,
            "kernel": {"package": kernel_entry.name, "version": kernel_entry.version,
                       "release": kernel_entry.name.removeprefix("linux-image-")},
            "cmdline": manifest.cmdline,
            "hardware": list(cfg.system.hardware),
            "modules": list(cfg.system.modules),
            "layers": [name for name, _ in layers],
            "app": {"jar": cfg.app.path.name, "shape": shape.kind, "main": shape.main,
                    "classes": usage.classes, "port": cfg.app.port,
                    "healthcheck": cfg.app.healthcheck},
            "jvm": {"version": cfg.jvm.version, "modules": modules},
            "memory": cfg.system.memory,
            "disk": {"digest": disk_digest, "size": disk_size, "boot": ["bios", "uefi"]},
            "suite": cfg.system.suite,
        }
        ref = f"{cfg.image.name}:{cfg.image.version}"
        digest = store.put_image(ref, image_config, descriptors)
        provenance.record(store, provenance.facts(  # who built it, from what (signing/)
            cfg, shape.app + shape.libs, digest,
            [e for entries in resolution.parts.values() for e in entries],
            provenance.ArchiveSnapshot.of(resolution.snapshot())))
        try:
            made = self._sboms(digest, contents)
        except BaseException:
            store.remove(ref)  # every image has its SBOMs: a build that cannot write them leaves
            raise              # no image under its name
        return BuildResult(ref, digest, sum(d.size for d in descriptors), self.stages,
                           resolution.from_lock, disk_digest, made)

    def _contents(self, shape: Shape, budget: Budget, resolution: Resolution, roots: _Sysroots,
                  modules: list[str], layers: list[tuple[str, Path]]) -> sboms.Contents:
        """What the SBOMs list but the image digest: each part a cached stage (:mod:`.sboms`)."""
        cache_dir = self.home.root / "cache"
        parts = {"kernel", "base", "firmware", "jvm", NATIVES, *(name for name, _ in layers)}
        jars = sboms.app_jars(self._stage, shape, budget, cache_dir)
        for name, path in layers:
            if name in sboms.PACKAGE_LAYERS:
                jars += sboms.layer_jars(self._stage, path, roots.scratch, cache_dir)
        return sboms.Contents(sboms.debian_packages(self._stage, resolution, parts, cache_dir),
                              tuple(sorted(jars, key=lambda j: j.path)),
                              sboms.runtime(resolution, self.cfg.jvm.version, modules))

    def _sboms(self, digest: str, contents: sboms.Contents) -> dict[str, dict[str, str]]:
        """Both SBOMs of the image, written and attached to it in the store."""
        cfg, start = self.cfg, time.monotonic()
        inv = sboms.inventory(cfg.image.name, cfg.image.version, digest, self.mtime,
                              cfg.system.suite, cfg.app.path.name, contents)
        stored = sboms.attached(self.home.store, inv)
        hit = stored is not None
        if stored is None:
            stored = sboms.attach(self.home.store, inv)
        seconds = time.monotonic() - start
        self.stages.append(StageResult("sbom", Path(), hit, seconds))
        self.report(sboms.summary(stored, seconds))
        return {s.format.key: s.to_json() for s in stored}


def _dpkg_status(resolution: Resolution, parts: Iterable[str]) -> dict[str, bytes]:
    """The dpkg status stanzas of the packages of ``parts`` (:mod:`.sbom.dpkg`), by path."""
    return dpkg.status_files(deb for part in parts for deb in resolution.debs(part))


def _linked(runtime: Path) -> set[str]:
    """The modules jlink put into ``runtime`` (its ``release`` file's MODULES line)."""
    for line in (runtime / "release").read_text().splitlines():
        if line.startswith("MODULES="):
            return set(line.partition("=")[2].strip('"').split())
    raise HostError(f"{runtime}/release names no MODULES: jlink's output is not a runtime")


def build(cfg: Config, home: Home | None = None, *, mirror: str | None = None,
          report: Callable[[str], None] = lambda s: None) -> BuildResult:
    """Build ``cfg`` into the store of ``home``; the reference, digest and stage timings."""
    try:
        return Builder(cfg, home or Home(), mirror=mirror, report=report).run()
    except OSError as exc:
        full = disk_full(exc, exc.filename or "the build's files")
        if full is not None:
            raise full from None
        raise
