"""imagebuilder.toml -> a typed, validated, frozen spec.

Everything downstream (the plan, the layers, ``run``, ``promote``) takes a :class:`Config` and
never looks at TOML again, so this module is the one place where user input is checked. Every
mistake becomes a single-line :class:`~imagebuilder.errors.ConfigError` naming the file, the
dotted key and what was expected, e.g.::

    hello/imagebuilder.toml: app.port: expected an integer 1-65535, got "80a"

The same file holds the environments (names, promotion order, variables): they are read here
but never reach the image; ``configdrive`` injects them at boot.

Three ways in: :func:`load` (a toml file or the directory holding one), :func:`from_jar`
(zero-config, ``imagebuilder build APP.jar --name N --version V``) and :func:`with_overrides`
(the command line's ``--name``/``--version``/``--mirror`` win over the file).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import stat
import tomllib
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..resources import data_dir
from . import envlimits
from . import network as network_mod
from .spec import (
    CONFIG_NAME,
    LOCK_NAME,
    AppSection,
    Config,
    Environment,
    ImageSection,
    JvmSection,
    SystemSection,
    TrainSection,
    absolute,
)
from .spec import shown as shown_path

__all__ = [
    "CONFIG_NAME", "LOCK_NAME", "AppSection", "Config", "Environment", "ImageSection",
    "JvmSection", "SystemSection", "TrainSection", "check_env_var", "driver_sets", "file_kind",
    "from_jar", "load", "with_aot", "with_overrides",
]


#: An image name becomes (part of) an OCI reference.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
#: An image version becomes an OCI tag.
VERSION_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
ENV_NAME_RE = re.compile(r"^[a-z][a-z0-9-]*$")
VAR_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Variables with this prefix are set by imagebuilder itself (IMAGEBUILDER_ENV, ...).
RESERVED_VAR_PREFIX = "IMAGEBUILDER_"
#: Debian policy 5.6.1: lowercase alphanumerics, '+', '-', '.', at least two characters.
PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
SUITE_RE = re.compile(r"^[a-z][a-z0-9.-]*$")
KERNEL_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
MODULE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
#: 21 and 25 on trixie; 17 is what bookworm has.
JVM_VERSIONS = (17, 21, 25)
#: A Java class name in dotted form ([app] main) and a JDK module name ([jvm] modules).
CLASS_NAME_RE = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*(\.[A-Za-z_$][A-Za-z0-9_$]*)*$")
MODULE_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")
JVM_RUNTIMES = ("minimal", "full")
MIN_MEMORY_MIB = 128

_NAME_EXPECTED = (
    "expected lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
    " (it becomes an OCI reference)"
)
_VERSION_EXPECTED = (
    "expected at most 128 letters, digits, '.', '_' or '-', not starting with '.' or '-'"
    " (it becomes an OCI tag)"
)

# The schema: every table and the keys it may hold. "env" holds one table per environment.
_KEYS: dict[str, tuple[str, ...]] = {
    "": ("image", "app", "jvm", "system", "environments", "env"),
    "image": ("name", "version"),
    "app": ("path", "main", "args", "port", "healthcheck", "packages"),
    "jvm": ("version", "args", "fonts", "modules", "runtime", "aot", "train"),
    "jvm.train": ("env", "timeout", "seconds"),
    "system": ("suite", "kernel", "hardware", "modules", "memory", "mirror"),
    "environments": ("order",),
    "env.*": ("vars", "network"),
}


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
    except UnicodeDecodeError:
        raise ConfigError(f"{shown}: invalid TOML: the file is not UTF-8 text") from None
    except OSError as e:
        raise ConfigError(f"{shown}: cannot read: {e.strerror}") from None
    path = path.absolute()
    return _parse(data, file=path, shown=shown, check_app=check_app)


def file_kind(path: Path) -> str:
    """What is at ``path``, as an error message names it: "a file", "a directory", "missing",
    "a FIFO (named pipe)", "a character device", "a block device" or "a socket"."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "missing"
    for test, name in ((stat.S_ISREG, "a file"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"


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
    _check_name("--name", name)
    _check_version("--version", version)
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
        image = dataclasses.replace(image, name=_check_name("--name", name))
    if version is not None:
        image = dataclasses.replace(image, version=_check_version("--version", version))
    system = cfg.system
    if mirror is not None:
        system = dataclasses.replace(system, mirror=_check_mirror("--mirror", mirror))
    return dataclasses.replace(cfg, image=image, system=system)


def with_aot(cfg: Config, aot: bool | None) -> Config:
    """``cfg`` with the command line's ``--aot``/``--no-aot`` applied (None: as the file says)."""
    if aot is None or aot == cfg.jvm.aot:
        return cfg
    if aot and cfg.app.port is None and cfg.jvm.train.seconds is None:
        raise ConfigError("--aot: the training run waits for the healthcheck on [app] port, which"
                          " is not set: set [app] port, or [jvm] train = { seconds = N } to train"
                          " for N s")
    return dataclasses.replace(cfg, jvm=dataclasses.replace(cfg.jvm, aot=aot))


def check_env_var(name: str, value: object) -> str | None:
    """What is wrong with an environment variable (None if nothing): the name must be a shell
    identifier outside the reserved IMAGEBUILDER_ prefix, the value a one-line string."""
    if not VAR_NAME_RE.fullmatch(name):
        return (
            "expected a variable name of letters, digits and '_', not starting with a digit,"
            f" got {_show(name)}"
        )
    if name.startswith(RESERVED_VAR_PREFIX):
        return f"names starting with {RESERVED_VAR_PREFIX} are reserved for imagebuilder"
    if not isinstance(value, str):
        hint = f' (quote it: "{value}")' if isinstance(value, (int, float)) else ""
        return f"expected a string, got {_show(value)}{hint}"
    if "\n" in value or "\r" in value:
        return "expected a one-line string, got a value containing a newline"
    if "\0" in value:
        return "expected a string without NUL characters"
    return envlimits.var_problem(name, value)


# ---------------------------------------------------------------------------------------------
# the parser


def _parse(data: dict[str, Any], *, file: Path, shown: str, check_app: bool = True) -> Config:
    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(f"{shown}: {key}: {message}")

    _check_unknown(data, "", shown)

    def table(key: str) -> dict[str, Any]:
        value = data.get(key, {})
        if not isinstance(value, dict):
            raise fail(key, f"expected a table [{key}], got {_show(value)}")
        _check_unknown(value, key, shown)
        return value

    def required(tbl: dict[str, Any], section: str, key: str, example: str) -> Any:
        if key not in tbl:
            raise fail(
                f"{section}.{key}",
                f"required key is missing: add {key} = {example} under [{section}]",
            )
        return tbl[key]

    root = file.parent

    # [image]
    image_t = table("image")
    name = required(image_t, "image", "name", '"hello"')
    version = required(image_t, "image", "version", '"1.0.0"')
    image = ImageSection(
        name=_check_name("image.name", name, fail),
        version=_check_version("image.version", version, fail),
    )

    # [app]
    app_t = table("app")
    raw_path = required(app_t, "app", "path", '"target/app.jar"')
    if not isinstance(raw_path, str) or not raw_path or "\0" in raw_path:
        raise fail("app.path", f"expected a path to the application, got {_show(raw_path)}")
    app_path = absolute(root / raw_path)
    if check_app and not app_path.exists():
        raise fail("app.path", f"file not found: {app_path}")
    if check_app and file_kind(app_path) not in ("a file", "a directory"):
        raise fail("app.path", f"{app_path} is {file_kind(app_path)}, not a jar, a war or an "
                               "app directory")
    main = app_t.get("main")
    if main is not None and not (isinstance(main, str) and CLASS_NAME_RE.fullmatch(main)):
        raise fail("app.main", f'expected a class name like "com.example.Main", got {_show(main)}')
    port = app_t.get("port")
    if port is not None and not (_is_int(port) and 1 <= port <= 65535):
        raise fail("app.port", f"expected an integer 1-65535, got {_show(port)}")
    healthcheck = app_t.get("healthcheck", "/")
    if (
        not isinstance(healthcheck, str)
        or not healthcheck.startswith("/")
        or any(c.isspace() or ord(c) < 32 for c in healthcheck)
    ):
        raise fail(
            "app.healthcheck",
            f'expected an HTTP path starting with "/", got {_show(healthcheck)}',
        )
    packages = _strings(app_t, "app", "packages", fail)
    for i, pkg in enumerate(packages):
        if not PACKAGE_RE.fullmatch(pkg):
            raise fail(f"app.packages[{i}]", f"expected a Debian package name, got {_show(pkg)}")
    app = AppSection(
        path=app_path,
        args=_strings(app_t, "app", "args", fail),
        port=port,
        healthcheck=healthcheck,
        packages=packages,
        main=main,
    )

    # [jvm]
    jvm_t = table("jvm")
    jvm_version = jvm_t.get("version", 21)
    if not (_is_int(jvm_version) and jvm_version in JVM_VERSIONS):
        raise fail("jvm.version", f"expected 17, 21 or 25, got {_show(jvm_version)}")
    fonts = jvm_t.get("fonts", True)
    if not isinstance(fonts, bool):
        raise fail("jvm.fonts", f"expected true or false, got {_show(fonts)}")
    modules = _strings(jvm_t, "jvm", "modules", fail)
    for i, module in enumerate(modules):
        if not MODULE_NAME_RE.fullmatch(module):
            raise fail(f"jvm.modules[{i}]", f'expected a JDK module name like "java.sql", got'
                       f" {_show(module)}")
    runtime = jvm_t.get("runtime", "minimal")
    if runtime not in JVM_RUNTIMES:
        raise fail("jvm.runtime", 'expected "minimal" (the modules the app uses) or "full"'
                   f" (the whole JDK), got {_show(runtime)}")
    aot = jvm_t.get("aot", False)
    if not isinstance(aot, bool):
        raise fail("jvm.aot", f"expected true or false, got {_show(aot)}")
    train = _train(jvm_t.get("train", {}), shown, fail)
    jvm = JvmSection(version=jvm_version, args=_strings(jvm_t, "jvm", "args", fail),
                     fonts=fonts, modules=modules, runtime=runtime, aot=aot, train=train)

    # [system]
    system_t = table("system")
    suite = system_t.get("suite", "trixie")
    if not (isinstance(suite, str) and SUITE_RE.fullmatch(suite)):
        raise fail("system.suite", f'expected a Debian suite like "trixie", got {_show(suite)}')
    kernel = system_t.get("kernel", "debian")
    if not (isinstance(kernel, str) and KERNEL_RE.fullmatch(kernel)):
        raise fail(
            "system.kernel", f'expected a kernel manifest name like "debian", got'
            f" {_show(kernel)}",
        )
    hardware = _strings(system_t, "system", "hardware", fail) if "hardware" in system_t \
        else SystemSection.hardware
    known_sets = driver_sets()
    for i, name in enumerate(hardware):
        if name not in known_sets:
            close = difflib.get_close_matches(name, known_sets, n=3, cutoff=0.4)
            hint = "closest: " + ", ".join(close) if close else "known: " + ", ".join(known_sets)
            raise fail(f"system.hardware[{i}]",
                       f"kernel '{kernel}' has no driver set {_show(name)} ({hint})")
    modules = _strings(system_t, "system", "modules", fail)
    for i, module in enumerate(modules):
        if not MODULE_RE.match(module):
            raise fail(f"system.modules[{i}]",
                       f'expected a kernel module name like "igb", got {_show(module)}')
    memory = system_t.get("memory", 1024)
    if not (_is_int(memory) and memory >= MIN_MEMORY_MIB):
        raise fail(
            "system.memory", f"expected an integer number of MiB >= {MIN_MEMORY_MIB}, got"
            f" {_show(memory)}",
        )
    mirror = system_t.get("mirror")
    if mirror is not None:
        mirror = _check_mirror("system.mirror", mirror, fail)
    system = SystemSection(suite=suite, kernel=kernel, hardware=tuple(dict.fromkeys(hardware)),
                           modules=modules, memory=memory, mirror=mirror)

    # [env.*] and [environments]
    env_t = table("env")
    environments: dict[str, Environment] = {}
    for env_name, body in env_t.items():
        key = f"env.{env_name}"
        if not ENV_NAME_RE.fullmatch(env_name):
            raise fail(
                key,
                "expected an environment name of lowercase letters, digits and '-', starting"
                f" with a letter, got {_show(env_name)}",
            )
        if not isinstance(body, dict):
            raise fail(key, f"expected a table [{key}], got {_show(body)}")
        _check_unknown(body, key, shown)
        env_vars = body.get("vars", {})
        if not isinstance(env_vars, dict):
            raise fail(
                f"{key}.vars", f'expected a table like {{ KEY = "value" }}, got {_show(env_vars)}'
            )
        for var, value in env_vars.items():
            problem = check_env_var(var, value)
            if problem:
                raise fail(f"{key}.vars.{var}", problem)
        problem = envlimits.env_problem(env_name, env_vars)
        if problem:
            raise fail(f"{key}.vars", problem)
        settings: tuple[network_mod.StaticNetwork, ...] = ()
        if "network" in body:
            settings = network_mod.parse(body["network"], f"{key}.network", fail)
            lines = network_mod.env_vars(settings)
            problem = envlimits.env_problem(env_name, {**env_vars, **lines})
            if problem:
                raise fail(f"{key}.network", f"with its {network_mod.VAR_PREFIX}n lines, {problem}")
        environments[env_name] = Environment(name=env_name, vars=dict(env_vars),
                                             network=settings)

    order_t = table("environments")
    if "order" in order_t:
        order = _strings(order_t, "environments", "order", fail)
        dupes = sorted({n for n in order if order.count(n) > 1})
        if dupes:
            raise fail("environments.order", f"lists {_names(dupes)} more than once")
        missing = [n for n in environments if n not in order]
        extra = [n for n in order if n not in environments]
        if missing or extra:
            problems = []
            if missing:
                problems.append(f"missing {_names(missing)}")
            if extra:
                problems.append(f"{_names(extra)} not defined (add [env.{extra[0]}])")
            raise fail(
                "environments.order",
                f"expected exactly the defined environments ({', '.join(environments) or 'none'})"
                f"; {'; '.join(problems)}",
            )
        ordered = tuple(environments[n] for n in order)
    else:
        ordered = tuple(environments.values())
    if train.env is not None and train.env not in environments:
        raise fail("jvm.train.env", f"no environment {_show(train.env)} (defined: "
                   f"{', '.join(environments) or 'none'}; add [env.{train.env}])")
    if aot and port is None and train.seconds is None:
        raise fail("jvm.aot", "the training run waits for the healthcheck on [app] port, which is"
                   " not set: set [app] port, or [jvm] train = { seconds = N } to train for N s")

    return Config(
        path=file,
        root=root,
        image=image,
        app=app,
        jvm=jvm,
        system=system,
        environments=ordered,
    )


# ---------------------------------------------------------------------------------------------
# helpers


def driver_sets() -> list[str]:
    """The driver sets shipped in ``kernels/hardware/``, sorted."""
    folder = data_dir("kernels") / "hardware"
    return sorted(p.name[: -len(".toml")] for p in folder.glob("*.toml"))


def _default_fail(key: str, message: str) -> ConfigError:
    return ConfigError(f"{key}: {message}")


def _check_name(key: str, value: object, fail: Any = _default_fail) -> str:
    if not (isinstance(value, str) and NAME_RE.fullmatch(value)):
        raise fail(key, f"{_NAME_EXPECTED}, got {_show(value)}")
    return value


def _check_version(key: str, value: object, fail: Any = _default_fail) -> str:
    if not (isinstance(value, str) and VERSION_RE.fullmatch(value)):
        hint = f' (quote it: "{value}")' if isinstance(value, (int, float)) else ""
        raise fail(key, f"{_VERSION_EXPECTED}, got {_show(value)}{hint}")
    return value


def _check_mirror(key: str, value: object, fail: Any = _default_fail) -> str:
    ok = False
    if isinstance(value, str) and not any(c.isspace() for c in value):
        parts = urllib.parse.urlsplit(value)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    if not ok:
        raise fail(key, f"expected an http:// or https:// URL, got {_show(value)}")
    assert isinstance(value, str)
    return value.rstrip("/")


def _check_unknown(tbl: Mapping[str, Any], prefix: str, shown: str) -> None:
    if prefix == "env":
        return  # its keys are environment names, checked one by one
    allowed = _KEYS["env.*" if prefix.startswith("env.") else prefix]
    for key in tbl:
        if key in allowed:
            continue
        dotted = f"{prefix}.{key}" if prefix else key
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(allowed)}"
        raise ConfigError(f"{shown}: unknown key '{dotted}' ({hint})")


def _train(value: object, shown: str, fail: Any) -> TrainSection:
    """``[jvm] train``, checked (its environment's existence is checked by the caller)."""
    if not isinstance(value, dict):
        raise fail("jvm.train", 'expected a table like { env = "test", timeout = 120 }, got '
                   f"{_show(value)}")
    _check_unknown(value, "jvm.train", shown)
    env = value.get("env")
    if env is not None and not (isinstance(env, str) and ENV_NAME_RE.fullmatch(env)):
        raise fail("jvm.train.env", f"expected the name of an [env.NAME] table, got {_show(env)}")
    timeout = value.get("timeout", TrainSection.timeout)
    if not (_is_int(timeout) and 1 <= timeout <= 3600):
        raise fail("jvm.train.timeout", f"expected seconds, 1-3600, got {_show(timeout)}")
    seconds = value.get("seconds")
    if seconds is not None and not (_is_int(seconds) and 1 <= seconds <= timeout):
        raise fail("jvm.train.seconds", f"expected seconds, 1 to the timeout ({timeout}), got "
                   f"{_show(seconds)}")
    return TrainSection(env=env, timeout=timeout, seconds=seconds)


def _strings(tbl: Mapping[str, Any], section: str, key: str, fail: Any) -> tuple[str, ...]:
    value = tbl.get(key, [])
    dotted = f"{section}.{key}"
    if not isinstance(value, list):
        raise fail(dotted, f"expected a list of strings, got {_show(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise fail(f"{dotted}[{i}]", f"expected a string, got {_show(item)}")
        if "\0" in item or "\n" in item:
            raise fail(f"{dotted}[{i}]", "expected a one-line string without NUL characters")
    return tuple(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _names(names: list[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)


def _show(value: object) -> str:
    """A value as the user wrote it in TOML (roughly), for "got ..." in messages."""
    if isinstance(value, dict):
        return "a table"
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."
