"""Driver sets: which kernel modules and firmware an image carries for the machines it boots on.

A kernel manifest (``kernels/<kernel>.toml``) lists what every image needs; the machine's drivers
come from driver sets, ``kernels/hardware/<set>.toml`` (``modules``, and ``firmware``: Debian
packages holding the firmware files those modules load), chosen by ``[system] hardware``, plus
single modules from ``[system] modules``. ``virtual`` covers every hypervisor and cloud,
``metal`` physical servers.

A set is a list of names, not of files: a module the chosen kernel lacks is skipped (the cloud
kernel has no e1000), while a module the user names explicitly must exist, else a ConfigError
naming the kernel and the closest module names. Firmware is taken file by file: only what the
image's modules name in their ``.modinfo`` (``firmware=``) is copied; a module whose firmware is
in none of the packages is reported so the user knows which card may not work.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..config.parse import driver_sets
from ..errors import ConfigError
from ..resources import data_dir
from .kernel import KernelManifest, Module, ModuleTree, modname

#: Where a firmware package puts its files (merged /usr first).
FIRMWARE_DIRS = ("usr/lib/firmware", "lib/firmware")
#: The kernel also looks for firmware compressed with these (CONFIG_FW_LOADER_COMPRESS_*).
_FW_SUFFIXES = ("", ".zst", ".xz")
_SET_KEYS = {"description": str, "modules": list, "firmware": list}


@dataclass(frozen=True)
class DriverSet:
    name: str
    description: str
    modules: tuple[str, ...]
    firmware: tuple[str, ...] = ()  # Debian packages (non-free-firmware)


@dataclass(frozen=True)
class Selection:
    """The drivers an image asks for: its kernel's modules, its sets and single modules."""

    kernel: KernelManifest
    sets: tuple[DriverSet, ...]
    extra: tuple[str, ...]  # [system] modules, normalised

    @property
    def modules(self) -> tuple[str, ...]:
        names = [*self.kernel.modules, *(m for s in self.sets for m in s.modules), *self.extra]
        return tuple(dict.fromkeys(names))

    @property
    def firmware_packages(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p for s in self.sets for p in s.firmware))


def _set_dir() -> Path:
    return data_dir("kernels") / "hardware"


def load_set(name: str, kernel: str) -> DriverSet:
    """``kernels/hardware/<name>.toml``; ConfigError naming the closest sets if there is none."""
    known = driver_sets()
    if name not in known:
        raise ConfigError(f"kernel '{kernel}' has no driver set '{name}' ({_closest(name, known)})")
    source = f"kernels/hardware/{name}.toml"
    try:
        data = tomllib.loads((_set_dir() / f"{name}.toml").read_text("utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: invalid TOML: {e}") from None
    for key, value in data.items():
        typ = _SET_KEYS.get(key)
        if typ is None:
            raise ConfigError(f"{source}: unknown key '{key}' (known: {', '.join(_SET_KEYS)})")
        if not isinstance(value, typ) or (typ is list and not all(
                isinstance(v, str) and v for v in value)):
            what = "list of names" if typ is list else "string"
            raise ConfigError(f"{source}: '{key}' must be a {what}")
    if "modules" not in data:
        raise ConfigError(f"{source}: missing key 'modules'")
    return DriverSet(name=name, description=data.get("description", ""),
                     modules=tuple(dict.fromkeys(modname(m) for m in data["modules"])),
                     firmware=tuple(data.get("firmware", ())))


def select(kernel: KernelManifest, hardware: Iterable[str], modules: Iterable[str]) -> Selection:
    """The drivers of ``[system] hardware`` and ``[system] modules`` on ``kernel``."""
    sets = tuple(load_set(name, kernel.name) for name in dict.fromkeys(hardware))
    return Selection(kernel, sets, tuple(dict.fromkeys(modname(m) for m in modules)))


def present_modules(selection: Selection, tree: ModuleTree, kernel_release: str,
                    ) -> tuple[tuple[str, ...], list[str]]:
    """The selected modules this kernel has (loadable or built in), and the skipped names.

    A module named by ``[system] modules`` that the kernel lacks is a ConfigError naming the
    kernel and the closest names; one from a manifest or a set is skipped.
    """
    def has(name: str) -> bool:
        return name in tree or name in tree.builtin

    for name in selection.extra:
        if not has(name):
            close = _closest(name, [*tree.names, *sorted(tree.builtin)])
            raise ConfigError(
                f"system.modules: kernel '{selection.kernel.name}' ({kernel_release}) has no"
                f" module '{name}' ({close})")
    present = tuple(m for m in selection.modules if has(m))
    return present, [m for m in selection.modules if not has(m)]


def firmware_files(modules: Iterable[Module], roots: Iterable[Path],
                   ) -> tuple[dict[str, Path], dict[str, list[str]]]:
    """The firmware files ``modules`` name, found in the unpacked firmware packages ``roots``.

    Returns ``{name under /lib/firmware: file}`` and ``{module: [names found nowhere]}``. A file
    shipped compressed keeps its suffix (the kernel tries ``.zst`` and ``.xz``); a symlink in a
    package is followed and stored as the file it names.
    """
    roots = list(roots)
    found: dict[str, Path] = {}
    missing: dict[str, list[str]] = {}
    for mod in modules:
        for name in mod.firmware:
            hit = _find_firmware(name, roots)
            if hit is None:
                missing.setdefault(mod.name, []).append(name)
            else:
                found[hit[0]] = hit[1]
    return found, missing


def _find_firmware(name: str, roots: list[Path]) -> tuple[str, Path] | None:
    if name.startswith("/") or ".." in name.split("/"):
        return None
    for root in roots:
        for folder in FIRMWARE_DIRS:
            for suffix in _FW_SUFFIXES:
                path = root / folder / f"{name}{suffix}"
                if path.is_file() and path.resolve().is_relative_to(root.resolve()):
                    return f"{name}{suffix}", path.resolve()
    return None


def missing_firmware_message(missing: dict[str, list[str]], kernel: str) -> list[str]:
    """One warning line per module whose firmware none of the packages has."""
    lines = []
    for module, names in sorted(missing.items()):
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        lines.append(f"WARNING: kernel '{kernel}': firmware of module {module} is missing from"
                     f" the firmware packages: {shown}; a card that needs it may not work")
    return lines


def _closest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    if close:
        return "closest: " + ", ".join(close)
    return "known: " + ", ".join(known) if len(known) <= 10 else "no close name"
