"""The validated spec of an image: what imagebuilder.toml says, typed and frozen, and the one
table of its settings.

Each key of the file is declared once, here, as a field of its section's dataclass: its name,
type and default are the field's, its one-line doc and check are in :func:`~.settings.rule`.
:data:`SETTINGS`, read from these fields, is the table :mod:`.parse` reads the file with, the
unknown-key error suggests from, and ``docs/configuration.md``'s reference is generated from
(:mod:`.reference`).

Everything downstream (the plan, the layers, ``run``, ``promote``) takes a :class:`Config` from
here and never looks at TOML again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..errors import NotFoundError
from . import checks
from . import network as network_mod
from .settings import At, Setting, declared, read, rule, show
from .settings import shown as shown_path

CONFIG_NAME = "imagebuilder.toml"
LOCK_NAME = "imagebuilder.lock"

T = TypeVar("T")


@dataclass(frozen=True)
class ImageSection:
    """``[image]``: what the image is called; ``name:version`` is its reference."""

    name: str = field(metadata=rule(
        "the image's name, part of its OCI reference", checks.name, example='"hello"'))
    version: str = field(metadata=rule(
        "the image's version, its OCI tag", checks.version, example='"1.0.0"'))


@dataclass(frozen=True)
class AppSection:
    """``[app]``: what to run. ``path`` is absolute (relative paths are taken from the config's
    directory)."""

    path: Path = field(metadata=rule(
        "the app: an executable jar, a Spring Boot jar, a thin jar with Class-Path, an app"
        " directory or a war; relative to the config's directory", checks.app_path,
        example='"target/app.jar"'))
    main: str | None = field(default=None, metadata=rule(
        "a main class other than the jar manifest's", checks.class_name, default="the manifest's"))
    args: tuple[str, ...] = field(default=(), metadata=rule(
        "program arguments", checks.strings))
    port: int | None = field(default=None, metadata=rule(
        "the port it serves: forwarded by `run`, probed by `run --wait` and the training run",
        checks.port, default="none"))
    healthcheck: str = field(default="/", metadata=rule(
        "HTTP path answering 2xx when the app is up", checks.healthcheck))
    packages: tuple[str, ...] = field(default=(), metadata=rule(
        "extra Debian packages the app needs at run time, with their dependencies",
        checks.packages))


@dataclass(frozen=True)
class TrainSection:
    """``[jvm] train``: how the training run of ``aot`` goes. ``env`` names the environment
    whose variables the app gets (none: no variables); the run lasts until the healthcheck
    answers, or ``seconds`` if given; ``timeout`` bounds the wait."""

    env: str | None = field(default=None, metadata=rule(
        "the environment whose variables the training run gets", checks.train_env,
        default="none: no variables"))
    timeout: int = field(default=120, metadata=rule(
        f"seconds the training run may wait for the healthcheck (1-{checks.MAX_TRAIN_TIMEOUT})",
        checks.train_timeout))
    seconds: int | None = field(default=None, metadata=rule(
        "train for this many seconds instead of until the healthcheck answers",
        checks.train_seconds, default="none"))


def _train(value: object, at: At) -> TrainSection:
    """A table of the ``jvm.train`` keys."""
    if not isinstance(value, dict):
        raise at.fail(f'expected a table like {{ env = "test", timeout = 120 }}, got {show(value)}')
    return read_section(TrainSection, value, at)


@dataclass(frozen=True)
class JvmSection:
    """``[jvm]``: which JDK the runtime is linked from and the options it starts with."""

    version: int = field(default=21, metadata=rule(
        "the JDK's feature release: 21 or 25; 17 with `suite = \"bookworm\"`", checks.jvm_version))
    args: tuple[str, ...] = field(default=(), metadata=rule(
        "JVM options (the default heap is `-XX:MaxRAMPercentage=75`)", checks.strings))
    fonts: bool = field(default=True, metadata=rule(
        "with `java.desktop` linked, fontconfig and fonts-dejavu-core come along", checks.boolean))
    modules: tuple[str, ...] = field(default=(), metadata=rule(
        "JDK modules to add to those found in the app's classes", checks.jdk_modules))
    runtime: str = field(default="minimal", metadata=rule(
        '`"minimal"` (the modules the app uses) or `"full"` (the whole JDK)', checks.runtime))
    aot: bool = field(default=False, metadata=rule(
        "run the app once at build time and ship the class data it leaves", checks.boolean))
    train: TrainSection = field(default_factory=lambda: TrainSection(), metadata=rule(
        "how the training run of `aot` goes: the `jvm.train` keys below", _train, kind="table",
        default="see below"))


@dataclass(frozen=True)
class SystemSection:
    """``[system]``: where the kernel and userland come from, and the VM size for ``run``.

    ``mirror`` is a Debian mirror URL without a trailing slash, or None for the host's own apt
    configuration. ``hardware`` names driver sets (``kernels/hardware/<set>.toml``) and
    ``modules`` single kernel modules, both added to the kernel manifest's own modules.
    """

    suite: str = field(default="trixie", metadata=rule(
        "the Debian suite of the kernel, busybox and JDK", checks.suite))
    kernel: str = field(default="debian", metadata=rule(
        'a manifest in `kernels/`: `"debian"` (generic), `"debian-cloud"`', checks.kernel))
    memory: int = field(default=1024, metadata=rule(
        f"MiB of guest memory for `run` (at least {checks.MIN_MEMORY_MIB})", checks.memory))
    mirror: str | None = field(default=None, metadata=rule(
        "the Debian mirror, an `http://` or `https://` URL", checks.mirror,
        default="the host's apt configuration"))
    hardware: tuple[str, ...] = field(default=("virtual",), metadata=rule(
        'driver sets in `kernels/hardware/`: `"virtual"`, `"metal"`', checks.hardware))
    modules: tuple[str, ...] = field(default=(), metadata=rule(
        "single kernel modules to add, with their dependencies", checks.kernel_modules))


@dataclass(frozen=True)
class Environment:
    """One ``[env.NAME]`` table: variables and static network settings injected at boot, never
    baked into the image, and the public keys (absolute paths) one of which must have signed an
    image that enters or runs here (none: any image)."""

    name: str
    vars: dict[str, str] = field(default_factory=dict, hash=False, metadata=rule(
        "variables the app gets at boot, never baked into the image", checks.env_vars,
        kind="table of strings"))
    network: tuple[network_mod.StaticNetwork, ...] = field(default=(), metadata=rule(
        "static IPv4 settings `{ address, gateway, dns }`, or a list of them each with a `mac`",
        checks.env_network, kind="table or list of tables", default="none: DHCP"))
    signed_by: tuple[Path, ...] = field(default=(), metadata=rule(
        "public keys (PEM, relative to the config's directory): an image enters or runs here"
        " only signed by one of them (`imagebuilder sign`)", checks.signed_by,
        kind="list of paths", default="none: any image"))

    def boot_vars(self) -> dict[str, str]:
        """What the guest receives: the variables and the network lines (IMAGEBUILDER_NET_n)."""
        return {**self.vars, **network_mod.env_vars(self.network)}


@dataclass(frozen=True)
class EnvironmentsSection:
    """``[environments]``: how the environments follow each other. Read, then used to order
    :attr:`Config.environments`."""

    order: tuple[str, ...] | None = field(default=None, metadata=rule(
        "promotion order: every `[env.NAME]` table, each once", checks.order,
        default="the order of the `[env.*]` tables"))


#: Each table of the file and the dataclass declaring its keys, in the order errors list them.
#: "env.*" stands for every [env.NAME].
SECTIONS: dict[str, type] = {
    "image": ImageSection, "app": AppSection, "jvm": JvmSection, "jvm.train": TrainSection,
    "system": SystemSection, "environments": EnvironmentsSection, "env.*": Environment,
}
#: The tables allowed at the top of the file.
TABLES = tuple(s.removesuffix(".*") for s in SECTIONS if "." not in s.removesuffix(".*"))
#: The one table of settings.
SETTINGS: tuple[Setting, ...] = tuple(s for section, cls in SECTIONS.items()
                                      for s in declared(section, cls))


def settings_of(section: str) -> tuple[Setting, ...]:
    """The settings of one section ("env.*" for an environment's)."""
    return tuple(s for s in SETTINGS if s.section == section)


def read_section(cls: type[T], table: object, at: At, **given: Any) -> T:
    """The TOML table at ``at`` (checked to be a table) as a ``cls``, one of :data:`SECTIONS`."""
    if not isinstance(table, dict):
        raise at.fail(f"expected a table [{at.key}], got {show(table)}")
    section = next(name for name, c in SECTIONS.items() if c is cls)
    return read(cls, at.key, table, at.context, settings_of(section), **given)


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
        where = shown_path(self.path)
        if not self.environments:
            raise NotFoundError(
                f"unknown environment '{name}' in {where}: it defines no environments; add an"
                f" [env.{name}] table with vars = {{ KEY = \"value\" }}"
            )
        raise NotFoundError(
            f"unknown environment '{name}' in {where}: known: {', '.join(self.env_names)}"
        )

