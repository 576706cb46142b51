"""imagebuilder.toml -> a typed, validated, frozen spec.

Everything downstream (the plan, the layers, ``run``, ``promote``) takes a :class:`Config` and
never looks at TOML again, so this module and the checks it uses are the one place where user
input is checked. Every mistake becomes a single-line :class:`~imagebuilder.errors.ConfigError`
naming the file, the dotted key and what was expected, e.g.::

    hello/imagebuilder.toml: app.port: expected an integer 1-65535, got "80a"

Each section is read by the table of settings (:data:`.spec.SETTINGS`); what is left here is
what spans sections: the environments' names and order, and the keys that depend on another
section's. The same file holds the environments: they are read here but never reach the image;
``configdrive`` injects them at boot.

Three ways in: :func:`load` (a toml file or the directory holding one), :func:`from_jar`
(zero-config, ``imagebuilder build APP.jar --name N --version V``) and :func:`with_overrides`
(the command line's ``--name``/``--version``/``--mirror`` win over the file).
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from . import checks
from .checks import ENV_NAME_RE, check_env_var, driver_sets, file_kind
from .settings import At, Context, absolute, check_unknown, show
from .settings import shown as shown_path
from .spec import (
    CONFIG_NAME,
    LOCK_NAME,
    TABLES,
    AppSection,
    Config,
    Environment,
    EnvironmentsSection,
    ImageSection,
    JvmSection,
    SystemSection,
    TrainSection,
    read_section,
)

__all__ = [
    "CONFIG_NAME", "ENV_NAME_RE", "LOCK_NAME", "AppSection", "Config", "Environment",
    "ImageSection", "JvmSection", "SystemSection", "TrainSection", "check_env_var", "driver_sets",
    "file_kind", "from_jar", "load", "with_aot", "with_overrides",
]


# ---------------------------------------------------------------------------------------------
# entry points


def load(path: Path, *, check_app: bool = True) -> Config:
    """Read and validate ``path``: an imagebuilder.toml or a directory containing one.

    ``check_app=False`` skips the check that ``app.path`` exists: commands that only read the
    environments (``run --env``) work where the jar was never built.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_NAME
        if not path.exists():
            raise ConfigError(
                f"{shown_path(path)}: not found; write one (see examples/hello/{CONFIG_NAME}) or"
                f" build a jar without one: imagebuilder build APP.jar --name N --version V"
            )
    elif not path.exists():
        raise ConfigError(
            f"{shown_path(path)}: not found; pass an {CONFIG_NAME} or the directory holding it, or"
            f" build a jar without one: imagebuilder build APP.jar --name N --version V"
        )
    shown = shown_path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{shown}: invalid TOML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{shown}: invalid TOML: arrays or tables nested too deeply") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{shown}: invalid TOML: the file is not UTF-8 text") from None
    except OSError as e:
        raise ConfigError(f"{shown}: cannot read: {e.strerror}") from None
    path = path.absolute()
    return _parse(data, file=path, shown=shown, check_app=check_app)


def from_jar(jar: Path, name: str | None, version: str | None) -> Config:
    """The zero-config spec for ``imagebuilder build APP.jar --name N --version V``: every key
    takes its default and the lock file goes next to the jar."""
    missing = [opt for opt, value in (("--name", name), ("--version", version)) if value is None]
    if missing:
        raise ConfigError(
            f"{' and '.join(missing)} required when building a jar without an {CONFIG_NAME}:"
            f" imagebuilder build {jar} --name N --version V"
        )
    assert name is not None and version is not None
    checks.name(name, At("--name"))
    checks.version(version, At("--version"))
    jar_path = absolute(Path(jar))
    if not jar_path.is_file():
        kind = file_kind(jar_path)
        what = "file not found" if kind == "missing" else f"expected a jar file, got {kind}"
        raise ConfigError(f"{jar}: {what}: {jar_path}")
    return Config(
        path=None,
        root=jar_path.parent,
        image=ImageSection(name=name, version=version),
        app=AppSection(path=jar_path),
    )


def with_overrides(
    cfg: Config,
    name: str | None = None,
    version: str | None = None,
    mirror: str | None = None,
) -> Config:
    """``cfg`` with the command line's ``--name``, ``--version`` and ``--mirror`` applied (None
    leaves a value as it is)."""
    image = cfg.image
    if name is not None:
        image = dataclasses.replace(image, name=checks.name(name, At("--name")))
    if version is not None:
        image = dataclasses.replace(image, version=checks.version(version, At("--version")))
    system = cfg.system
    if mirror is not None:
        system = dataclasses.replace(system, mirror=checks.mirror(mirror, At("--mirror")))
    return dataclasses.replace(cfg, image=image, system=system)


def with_aot(cfg: Config, aot: bool | None) -> Config:
    """``cfg`` with the command line's ``--aot``/``--no-aot`` applied (None: as the file says)."""
    if aot is None or aot == cfg.jvm.aot:
        return cfg
    problem = checks.aot_problem(cfg.app.port, cfg.jvm.train.seconds) if aot else None
    if problem:
        raise ConfigError(f"--aot: {problem}")
    return dataclasses.replace(cfg, jvm=dataclasses.replace(cfg.jvm, aot=aot))


# ---------------------------------------------------------------------------------------------
# the parser: each section by the table, then what spans sections


def _parse(data: dict[str, Any], *, file: Path, shown: str, check_app: bool = True) -> Config:
    context = Context(shown, file.parent, check_app)
    check_unknown(data, "", TABLES, context)
    image = read_section(ImageSection, data.get("image", {}), At("image", context))
    app = read_section(AppSection, data.get("app", {}), At("app", context))
    jvm = read_section(JvmSection, data.get("jvm", {}), At("jvm", context))
    system = read_section(SystemSection, data.get("system", {}), At("system", context))
    environments = _environments(data, context)
    _check_across(app, jvm, environments, context)
    return Config(path=file, root=file.parent, image=image, app=app, jvm=jvm, system=system,
                  environments=environments)


def _environments(data: dict[str, Any], context: Context) -> tuple[Environment, ...]:
    """The ``[env.NAME]`` tables in promotion order: ``[environments] order`` if given, else
    the order of the tables."""
    tables = data.get("env", {})
    if not isinstance(tables, dict):
        raise context.fail("env", f"expected a table [env], got {show(tables)}")
    defined: dict[str, Environment] = {}
    for name, body in tables.items():
        at = At(f"env.{name}", context)
        if not ENV_NAME_RE.fullmatch(name):
            raise at.fail("expected an environment name of lowercase letters, digits and '-',"
                          f" starting with a letter, got {show(name)}")
        defined[name] = read_section(Environment, body, at, name=name)
    order = read_section(EnvironmentsSection, data.get("environments", {}),
                         At("environments", context)).order
    if order is None:
        return tuple(defined.values())
    missing = [n for n in defined if n not in order]
    extra = [n for n in order if n not in defined]
    if missing or extra:
        problems = [f"missing {checks.quoted(missing)}"] if missing else []
        if extra:
            problems.append(f"{checks.quoted(extra)} not defined (add [env.{extra[0]}])")
        raise context.fail("environments.order", "expected exactly the defined environments"
                           f" ({', '.join(defined) or 'none'}); {'; '.join(problems)}")
    return tuple(defined[n] for n in order)


def _check_across(app: AppSection, jvm: JvmSection, environments: tuple[Environment, ...],
                  context: Context) -> None:
    """The keys that depend on another section: the training run's environment must be
    defined, and it must be able to tell when the app is up."""
    names = [e.name for e in environments]
    if jvm.train.env is not None and jvm.train.env not in names:
        raise context.fail("jvm.train.env", f"no environment {show(jvm.train.env)} (defined: "
                           f"{', '.join(names) or 'none'}; add [env.{jvm.train.env}])")
    problem = checks.aot_problem(app.port, jvm.train.seconds) if jvm.aot else None
    if problem:
        raise context.fail("jvm.aot", problem)
