"""Kernel manifests and the kernel modules an image ships.

A kernel manifest (``kernels/<name>.toml``) names the Debian package a kernel comes
from, the drivers an image needs and the default kernel command line. Debian's kernel packages
ship the modules (often ``.ko.xz``) without ``modules.dep`` or ``modules.alias``: depmod runs at
install time. So this module reads each module's ``.modinfo`` section (``depends=``,
``softdep=``, ``alias=``), computes the closure of the requested drivers in load order, and writes
the modules, still xz-compressed as Debian ships them (busybox ``modprobe`` decompresses ``.ko.xz``
itself, so they cost the guest's RAM their compressed size), into the base layer together with
the ``modules.dep``,
``modules.alias`` and ``modules.builtin`` files that busybox ``modprobe`` reads.

Notes on busybox ``modprobe`` (modutils/modprobe.c, 1.37 as shipped by Debian), which the formats
below follow:

* it ``chdir``s to ``/lib/modules/$(uname -r)`` and opens every path in ``modules.dep`` relative
  to it, so ``kernel/...`` paths work;
* it does not recurse: each ``modules.dep`` line must list the *full* dependency set, and it loads
  them from the last to the first, then the module itself (kmod's order);
* it ignores ``softdep``: a ``softdep pre:`` module that is in the image is therefore written as a
  dependency in ``modules.dep`` so that it loads first (of the modules providing a softdep's
  alias, the portable ones: a dependency that fails to load, like crc32c-intel on a CPU without
  SSE4.2, stops the whole modprobe);
* ``modules.alias`` (``alias <fnmatch pattern> <module>``) is read when a name is not in
  ``modules.dep`` (FEATURE_MODUTILS_ALIAS), so ``modprobe "$(cat .../modalias)"`` works;
* ``modules.builtin`` marks built-in names: ``modprobe <builtin>`` then says so instead of
  "not found" (it still exits 1; ``-q`` silences it).
"""

from __future__ import annotations

import lzma
import os
import re
import tomllib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import zstandard

from imagebuilder.errors import ConfigError, ImageBuilderError, UserError
from imagebuilder.layers import elf
from imagebuilder.layers.cmdline import check_cmdline
from imagebuilder.resources import data_dir

__all__ = [
    "FileSink",
    "KernelManifest",
    "Module",
    "ModuleTree",
    "available_manifests",
    "decompress_module",
    "load_manifest",
    "modname",
    "modules_alias",
    "modules_dep",
    "read_module",
    "write_modules",
]

#: Module file suffixes, the compressed ones first so that ``x.ko.xz`` is not taken for ``.ko``.
_SUFFIXES = (".ko.xz", ".ko.zst", ".ko")
_MANIFEST_KEYS = {"package": str, "modules": list, "cmdline": str}


# -- manifests ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelManifest:
    """Which kernel to take and what of it an image needs."""

    name: str
    package: str  # Debian binary package, e.g. "linux-image-cloud-amd64"
    modules: tuple[str, ...]  # drivers to include with their dependencies (normalised names)
    cmdline: str  # default kernel command line


def _manifest_dir() -> Path:
    return data_dir("kernels")


def available_manifests() -> list[str]:
    """The names of the kernel manifests shipped with imagebuilder, sorted."""
    return sorted(
        entry.name[: -len(".toml")]
        for entry in _manifest_dir().iterdir()
        if entry.name.endswith(".toml") and entry.is_file()
    )


def load_manifest(name: str) -> KernelManifest:
    """Load ``kernels/<name>.toml``; ConfigError for an unknown name or an invalid manifest."""
    available = available_manifests()
    if name not in available:
        raise ConfigError(f"unknown kernel '{name}': available: {', '.join(available)}")
    source = f"kernels/{name}.toml"
    try:
        data = tomllib.loads(_manifest_dir().joinpath(f"{name}.toml").read_text("utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: invalid TOML: {e}") from None
    unknown = sorted(set(data) - set(_MANIFEST_KEYS))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s): {', '.join(unknown)}")
    for key, typ in _MANIFEST_KEYS.items():
        if key not in data:
            raise ConfigError(f"{source}: missing key '{key}'")
        if not isinstance(data[key], typ):
            raise ConfigError(f"{source}: '{key}' must be a {typ.__name__}")
    modules = data["modules"]
    if not all(isinstance(m, str) and m for m in modules):
        raise ConfigError(f"{source}: 'modules' must be a list of module names")
    names = tuple(dict.fromkeys(modname(m) for m in modules))
    try:  # the image's command line: boot-loader and iPXE text (see cmdline.py)
        check_cmdline(data["cmdline"])
    except UserError as e:
        raise ConfigError(f"{source}: cmdline: {e}") from None
    return KernelManifest(
        name=name, package=data["package"], modules=names, cmdline=data["cmdline"]
    )


# -- modules -----------------------------------------------------------------------------------


def modname(name: str) -> str:
    """A module's canonical name: no directory, no ``.ko[.xz|.zst]``, ``-`` becomes ``_``."""
    base = name.rsplit("/", 1)[-1]
    for suffix in _SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


@dataclass(frozen=True)
class Module:
    """One loadable kernel module, as described by its ``.modinfo``."""

    name: str  # normalised: "xen_blkfront"
    path: Path  # the file on disk, possibly compressed
    relpath: str  # under lib/modules/<kver>/, without .xz/.zst: "kernel/drivers/block/x.ko"
    depends: tuple[str, ...]  # modules it needs loaded first (modinfo "depends=")
    softdeps: tuple[str, ...]  # "softdep=pre: ..." names; may be aliases; "post:" ones ignored
    aliases: tuple[str, ...]  # fnmatch patterns matched against a device's modalias
    firmware: tuple[str, ...] = ()  # files it may load from /lib/firmware (modinfo "firmware=")

    @property
    def file_relpath(self) -> str:
        """Where the file goes under lib/modules/<kver>/: ``.ko.xz`` stays compressed (busybox
        decompresses xz), ``.ko.zst`` is stored uncompressed (busybox has no zstd)."""
        return self.relpath + (".xz" if self.path.name.endswith(".ko.xz") else "")


def decompress_module(path: Path) -> bytes:
    """The plain ELF bytes of a ``.ko``, ``.ko.xz`` or ``.ko.zst`` file."""
    raw = path.read_bytes()
    try:
        if path.name.endswith(".xz"):
            return lzma.decompress(raw)
        if path.name.endswith(".zst"):
            # Kernel zstd frames may omit the content size: stream rather than one-shot.
            return zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    except (lzma.LZMAError, zstandard.ZstdError) as e:
        raise ImageBuilderError(f"{path}: cannot decompress kernel module: {e}") from None
    return raw


def _split_names(value: str) -> list[str]:
    return [modname(n) for n in re.split(r"[\s,]+", value) if n]


def _parse_softdep(value: str) -> list[str]:
    """The ``pre:`` names of a ``softdep=`` value such as ``pre: a b post: c``."""
    pre: list[str] = []
    mode = None
    for token in value.split():
        if token in ("pre:", "post:"):
            mode = token
        elif mode == "pre:":
            pre.append(modname(token))
    return pre


def read_module(path: Path, relpath: str) -> Module:
    """Read one module file's ``.modinfo``."""
    info = elf.section_bytes(decompress_module(path), ".modinfo", source=str(path))
    depends: list[str] = []
    softdeps: list[str] = []
    aliases: list[str] = []
    firmware: list[str] = []
    for entry in (info or b"").split(b"\0"):
        key, sep, raw = entry.partition(b"=")
        if not sep:
            continue
        value = raw.decode("utf-8", "surrogateescape")
        if key == b"depends":
            depends.extend(_split_names(value))
        elif key == b"softdep":
            softdeps.extend(_parse_softdep(value))
        elif key == b"alias":
            aliases.append(value)
        elif key == b"firmware":
            firmware.append(value)
    name = modname(relpath)
    return Module(
        name=name,
        path=path,
        relpath=relpath,
        depends=tuple(sorted(set(depends) - {name})),
        softdeps=tuple(dict.fromkeys(s for s in softdeps if s != name)),
        aliases=tuple(dict.fromkeys(aliases)),
        firmware=tuple(dict.fromkeys(firmware)),
    )


def _provides(mod: Module, name: str) -> bool:
    """Whether ``mod`` has ``name`` (a normalised softdep name) as an exact, non-glob alias."""
    return any(a.replace("-", "_") == name for a in mod.aliases)


class ModuleTree:
    """The modules of one extracted kernel package.

    :meth:`scan` only lists files; a module's ``.modinfo`` is read (decompressing the file) when
    first needed and kept. :meth:`modules` reads all of them, in parallel.
    """

    def __init__(
        self,
        root: Path,
        moddir: Path,
        kver: str,
        vmlinuz: Path,
        files: dict[str, tuple[Path, str]],
        builtin_paths: tuple[str, ...],
    ):
        self.root = root
        self.moddir = moddir  # <root>/(usr/)lib/modules/<kver>
        self.kver = kver
        self.vmlinuz = vmlinuz
        self.builtin_paths = builtin_paths  # the lines of modules.builtin
        self.builtin: set[str] = {modname(p) for p in builtin_paths}
        self._files = files  # name -> (file on disk, relpath without compression suffix)
        self._info: dict[str, Module] = {}
        self._all_loaded = False

    @classmethod
    def scan(cls, root: Path) -> ModuleTree:
        """Index the kernel package extracted at ``root``."""
        root = Path(root)
        found: dict[str, Path] = {}
        for base in ("usr/lib/modules", "lib/modules"):
            d = root / base
            if d.is_dir() and not d.is_symlink():
                for entry in sorted(d.iterdir()):
                    if entry.is_dir() and entry.name not in found:
                        found[entry.name] = entry
        if len(found) != 1:
            what = ", ".join(sorted(found)) or "none"
            raise ImageBuilderError(
                f"{root}: expected exactly one kernel version under (usr/)lib/modules, "
                f"found: {what}"
            )
        kver, moddir = next(iter(found.items()))
        vmlinuz = root / "boot" / f"vmlinuz-{kver}"
        if not vmlinuz.is_file():
            raise ImageBuilderError(f"{root}: kernel {kver} has no boot/vmlinuz-{kver}")
        files: dict[str, tuple[Path, str]] = {}
        for dirpath, dirnames, filenames in os.walk(moddir):
            dirnames.sort()
            for fn in sorted(filenames):
                suffix = next((s for s in _SUFFIXES if fn.endswith(s)), None)
                if suffix is None:
                    continue
                path = Path(dirpath) / fn
                rel = path.relative_to(moddir).as_posix()
                rel = rel[: len(rel) - len(suffix)] + ".ko"
                # The first in sorted path order wins a (rare) duplicate name: deterministic.
                files.setdefault(modname(fn), (path, rel))
        builtin_file = moddir / "modules.builtin"
        builtin_paths: tuple[str, ...] = ()
        if builtin_file.is_file():
            builtin_paths = tuple(
                line.strip()
                for line in builtin_file.read_text("utf-8").splitlines()
                if line.strip() and not line.startswith("#")
            )
        return cls(root, moddir, kver, vmlinuz, files, builtin_paths)

    @property
    def names(self) -> list[str]:
        """The names of all loadable modules, sorted."""
        return sorted(self._files)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and modname(name) in self._files

    def module(self, name: str) -> Module:
        """The module called ``name`` (read on first use); KeyError if there is none."""
        name = modname(name)
        mod = self._info.get(name)
        if mod is None:
            path, rel = self._files[name]
            mod = self._info[name] = read_module(path, rel)
        return mod

    def modules(self) -> dict[str, Module]:
        """Every module, by name: reads all ``.modinfo`` sections, decompressing in parallel."""
        if not self._all_loaded:
            todo = [n for n in self._files if n not in self._info]

            def load(name: str) -> Module:
                path, rel = self._files[name]
                return read_module(path, rel)

            # lzma and zstandard release the GIL while decompressing: threads use every core.
            with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
                for mod in pool.map(load, todo):
                    self._info[mod.name] = mod
            self._all_loaded = True
        return {n: self._info[n] for n in sorted(self._files)}

    def _resolve_softdep(self, name: str) -> list[str]:
        """The modules a softdep names: the module itself, or those with it as an exact alias."""
        if name in self.builtin:
            return []
        if name in self._files:
            return [name]
        return sorted(m.name for m in self.modules().values() if _provides(m, name))

    def closure(self, names: Iterable[str]) -> list[Module]:
        """``names`` and everything they need, in load order (dependencies first).

        Built-in names are skipped; a name that is neither built in nor a module is a
        ConfigError. ``softdep pre:`` modules are included when the kernel has them. The order
        is a depth-first post-order over the requested names in the order given and each
        module's dependencies sorted by name, so it depends only on the inputs. Dependency
        cycles (which the kernel cannot load either) do not loop.
        """
        order: list[Module] = []
        state: dict[str, bool] = {}  # False: being visited, True: done

        def visit(name: str, needed_by: str | None) -> None:
            if name in state or name in self.builtin:
                return
            if name not in self._files:
                if needed_by is None:
                    raise ConfigError(f"kernel module '{name}' not found in {self.kver}")
                raise ImageBuilderError(
                    f"kernel module '{needed_by}' depends on '{name}', which is not in {self.kver}"
                )
            state[name] = False
            mod = self.module(name)
            for dep in mod.depends:
                visit(dep, name)
            for soft in mod.softdeps:
                for real in self._resolve_softdep(soft):
                    visit(real, name)
            state[name] = True
            order.append(mod)

        for name in names:
            visit(modname(name), None)
        return order


# -- writing -----------------------------------------------------------------------------------


class FileSink(Protocol):
    """Where :func:`write_modules` puts files: :class:`imagebuilder.layers.cpio.Tree` is one."""

    def add_file(
        self, path: str, *, data: bytes | None = None, source: Path | None = None, mode: int = ...
    ) -> None: ...


def _load_order(modules: list[Module], by_name: dict[str, Module]) -> list[Module]:
    """``modules`` in a dependency-first order (the same DFS as :meth:`ModuleTree.closure`)."""
    order: list[Module] = []
    seen: set[str] = set()

    def visit(mod: Module) -> None:
        if mod.name in seen:
            return
        seen.add(mod.name)
        for dep in _direct_deps(mod, by_name):
            visit(by_name[dep])
        order.append(mod)

    for mod in modules:
        visit(mod)
    return order


def _direct_deps(mod: Module, by_name: dict[str, Module]) -> list[str]:
    missing = [d for d in mod.depends if d not in by_name]
    if missing:
        raise ValueError(f"module {mod.name} needs {', '.join(missing)}, not in the module list")
    soft = [s for s in mod.softdeps if s in by_name]
    for name in mod.softdeps:
        if name not in by_name:
            providers = [m for m in by_name.values() if _provides(m, name)]
            # A CPU-specific implementation (crc32c-intel for "crc32c") fails to load on a CPU
            # without its feature, and busybox modprobe then loads nothing: a portable one is
            # the dependency, and the CPU's modalias loads the fast one where it can.
            portable = [m for m in providers if not any(a.startswith("cpu:") for a in m.aliases)]
            soft += sorted(m.name for m in portable or providers)
    return [d for d in dict.fromkeys([*mod.depends, *soft]) if d != mod.name]


def modules_dep(modules: list[Module]) -> str:
    """``modules.dep`` for ``modules`` in kmod's text format.

    One line per module, ``relpath: dep ...`` listing every module it needs, directly or not,
    in the reverse of the order they load (modprobe loads the last first). Lines follow load
    order. Modules named by a ``depends`` must be in ``modules`` (ValueError otherwise).
    """
    by_name = {m.name: m for m in modules}
    order = _load_order(modules, by_name)
    position = {m.name: i for i, m in enumerate(order)}
    lines = []
    for mod in order:
        needed: set[str] = set()
        stack = _direct_deps(mod, by_name)
        while stack:
            dep = stack.pop()
            if dep in needed or dep == mod.name:
                continue
            needed.add(dep)
            stack.extend(_direct_deps(by_name[dep], by_name))
        deps = sorted(needed, key=position.__getitem__, reverse=True)
        lines.append(f"{mod.file_relpath}:"
                     + "".join(f" {by_name[d].file_relpath}" for d in deps))
    return "".join(f"{line}\n" for line in lines)


def modules_alias(modules: list[Module]) -> str:
    """``modules.alias``: ``alias <pattern> <module>`` for every alias of every module."""
    by_name = {m.name: m for m in modules}
    lines = ["# Aliases extracted from modules themselves.\n"]
    for mod in _load_order(modules, by_name):
        lines.extend(f"alias {alias} {mod.name}\n" for alias in mod.aliases)
    return "".join(lines)


def write_modules(
    modules: list[Module],
    kver: str,
    tree: FileSink,
    *,
    builtin: Iterable[str] = (),
) -> None:
    """Add ``modules`` (as shipped, compressed or not) and their index files under
    ``lib/modules/<kver>/``.

    ``builtin`` is the lines of the kernel's ``modules.builtin`` (``ModuleTree.builtin_paths``),
    copied so modprobe knows built-in names.
    """
    base = f"lib/modules/{kver}"
    by_name = {m.name: m for m in modules}
    for mod in _load_order(modules, by_name):
        if mod.path.name.endswith(".zst"):
            tree.add_file(f"{base}/{mod.file_relpath}", data=decompress_module(mod.path),
                          mode=0o644)
        else:
            tree.add_file(f"{base}/{mod.file_relpath}", source=mod.path, mode=0o644)
    tree.add_file(f"{base}/modules.dep", data=modules_dep(modules).encode(), mode=0o644)
    tree.add_file(f"{base}/modules.alias", data=modules_alias(modules).encode(), mode=0o644)
    builtin_text = "".join(f"{line}\n" for line in builtin)
    tree.add_file(f"{base}/modules.builtin", data=builtin_text.encode(), mode=0o644)
