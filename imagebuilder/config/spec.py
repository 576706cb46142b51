"""The validated spec of an image: what imagebuilder.toml says, typed and frozen.

:mod:`imagebuilder.config.parse` is the one place that reads and checks user input; everything
downstream (the plan, the layers, ``run``, ``promote``) takes a :class:`Config` from here and
never looks at TOML again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import NotFoundError
from . import network as network_mod

CONFIG_NAME = "imagebuilder.toml"
LOCK_NAME = "imagebuilder.lock"


@dataclass(frozen=True)
class ImageSection:
    """``[image]``: what the image is called; ``name:version`` is its reference."""

    name: str
    version: str


@dataclass(frozen=True)
class AppSection:
    """``[app]``: what to run. ``path`` is absolute (relative paths are taken from the config's
    directory)."""

    path: Path
    args: tuple[str, ...] = ()
    port: int | None = None
    main: str | None = None
    healthcheck: str = "/"
    packages: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainSection:
    """``[jvm] train``: how the training run of ``aot`` goes. ``env`` names the environment
    whose variables the app gets (none: no variables); the run lasts until the healthcheck
    answers, or ``seconds`` if given; ``timeout`` bounds the wait."""

    env: str | None = None
    timeout: int = 120
    seconds: int | None = None


@dataclass(frozen=True)
class JvmSection:
    """``[jvm]``: which JDK the runtime is linked from and the options it starts with."""

    version: int = 21
    args: tuple[str, ...] = ()
    #: With java.desktop linked: fontconfig and fonts-dejavu-core come along unless False.
    fonts: bool = True
    modules: tuple[str, ...] = ()
    runtime: str = "minimal"
    #: Run the app once at build time and ship the class data it leaves (imagebuilder.layers.aot).
    aot: bool = False
    train: TrainSection = field(default_factory=lambda: TrainSection())


@dataclass(frozen=True)
class SystemSection:
    """``[system]``: where the kernel and userland come from, and the VM size for ``run``.

    ``mirror`` is a Debian mirror URL without a trailing slash, or None for the host's own apt
    configuration. ``hardware`` names driver sets (``kernels/hardware/<set>.toml``) and
    ``modules`` single kernel modules, both added to the kernel manifest's own modules.
    """

    suite: str = "trixie"
    kernel: str = "debian"
    memory: int = 1024
    mirror: str | None = None
    hardware: tuple[str, ...] = ("virtual",)
    modules: tuple[str, ...] = ()


@dataclass(frozen=True)
class Environment:
    """One ``[env.NAME]`` table: variables and static network settings injected at boot, never
    baked into the image."""

    name: str
    vars: dict[str, str] = field(default_factory=dict, hash=False)
    network: tuple[network_mod.StaticNetwork, ...] = ()

    def boot_vars(self) -> dict[str, str]:
        """What the guest receives: the variables and the network lines (IMAGEBUILDER_NET_n)."""
        return {**self.vars, **network_mod.env_vars(self.network)}


@dataclass(frozen=True)
class Config:
    """The whole, validated spec. ``path`` is the toml file (None for zero-config); ``root`` is
    the directory the lock file lives in."""

    path: Path | None
    root: Path
    image: ImageSection
    app: AppSection
    jvm: JvmSection = JvmSection()
    system: SystemSection = SystemSection()
    environments: tuple[Environment, ...] = ()

    @property
    def lock_path(self) -> Path:
        return self.root / LOCK_NAME

    @property
    def env_names(self) -> tuple[str, ...]:
        """Environment names in promotion order."""
        return tuple(e.name for e in self.environments)

    def env(self, name: str) -> Environment:
        """The environment called ``name``; NotFoundError naming the known ones if there is
        none."""
        for environment in self.environments:
            if environment.name == name:
                return environment
        if self.path is None:
            raise NotFoundError(
                f"unknown environment '{name}': no {CONFIG_NAME} was used; environments are"
                f" defined in it as [env.{name}] tables with vars = {{ KEY = \"value\" }}"
            )
        where = shown(self.path)
        if not self.environments:
            raise NotFoundError(
                f"unknown environment '{name}' in {where}: it defines no environments; add an"
                f" [env.{name}] table with vars = {{ KEY = \"value\" }}"
            )
        raise NotFoundError(
            f"unknown environment '{name}' in {where}: known: {', '.join(self.env_names)}"
        )


def absolute(path: Path) -> Path:
    """Absolute and normalised, without resolving symlinks (a jar keeps the name it was given)."""
    return Path(os.path.normpath(path.absolute()))


def shown(path: Path) -> str:
    """``path`` relative to the working directory when it is below it, else absolute."""
    full = absolute(path)
    cwd = absolute(Path.cwd())
    if cwd == Path(cwd.anchor):
        return str(full)
    try:
        return str(full.relative_to(cwd))
    except ValueError:
        return str(full)
