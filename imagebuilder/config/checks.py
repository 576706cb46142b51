"""The checks of imagebuilder.toml's values, one small function per kind of value.

Each takes the value as written and where it is (:class:`~.settings.At`) and returns what the
spec holds, or raises the one-line error that names the file, the key and what was expected::

    hello/imagebuilder.toml: app.port: expected an integer 1-65535, got "80a"

:mod:`.spec` names one of these beside each key; the command line's ``--name``, ``--version``
and ``--mirror`` go through the same ones.
"""

from __future__ import annotations

import difflib
import re
import stat
import urllib.parse
from pathlib import Path
from typing import TypeGuard

from ..resources import data_dir
from . import envlimits
from . import network as network_mod
from .settings import At, absolute, show

#: An image name becomes (part of) an OCI reference.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
#: An image version becomes an OCI tag.
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
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
#: How long a training run may wait for its app, in seconds.
MAX_TRAIN_TIMEOUT = 3600


def is_int(value: object) -> TypeGuard[int]:
    """An integer in TOML (``true`` is a bool to TOML, not 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def quote_hint(value: object) -> str:
    """`` (quote it: "1.0")`` for a number written where a string was meant."""
    return f' (quote it: "{value}")' if isinstance(value, (int, float)) else ""


# --- [image] ---------------------------------------------------------------------------------


def name(value: object, at: At) -> str:
    if not (isinstance(value, str) and NAME_RE.fullmatch(value)):
        raise at.fail("expected lowercase letters, digits, '.', '_' or '-', starting with a"
                      f" letter or digit (it becomes an OCI reference), got {show(value)}")
    return value


def version(value: object, at: At) -> str:
    if not (isinstance(value, str) and VERSION_RE.fullmatch(value)):
        raise at.fail("expected at most 128 letters, digits, '.', '_' or '-', not starting with"
                      " '.', '-' or '_' (it becomes an OCI tag; '_' marks imagebuilder's own), "
                      f"got {show(value)}{quote_hint(value)}")
    return value


# --- [app] -----------------------------------------------------------------------------------


def app_path(value: object, at: At) -> Path:
    """Taken from the config's directory; it must exist unless the command only reads the
    environments."""
    if not isinstance(value, str) or not value or "\0" in value:
        raise at.fail(f"expected a path to the application, got {show(value)}")
    path = absolute(at.context.root / value)
    if at.context.check_app:
        if not path.exists():
            raise at.fail(f"file not found: {path}")
        kind = file_kind(path)
        if kind not in ("a file", "a directory"):
            raise at.fail(f"{path} is {kind}, not a jar, a war or an app directory")
    return path


def class_name(value: object, at: At) -> str:
    if not (isinstance(value, str) and CLASS_NAME_RE.fullmatch(value)):
        raise at.fail(f'expected a class name like "com.example.Main", got {show(value)}')
    return value


def port(value: object, at: At) -> int:
    if not (is_int(value) and 1 <= value <= 65535):
        raise at.fail(f"expected an integer 1-65535, got {show(value)}")
    return value


def healthcheck(value: object, at: At) -> str:
    if not (isinstance(value, str) and value.startswith("/")
            and not any(c.isspace() or ord(c) < 32 for c in value)):
        raise at.fail(f'expected an HTTP path starting with "/", got {show(value)}')
    return value


def strings(value: object, at: At) -> tuple[str, ...]:
    """A list of one-line strings."""
    if not isinstance(value, list):
        raise at.fail(f"expected a list of strings, got {show(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise at.fail(f"expected a string, got {show(item)}", f"{at.key}[{i}]")
        if "\0" in item or "\n" in item:
            raise at.fail("expected a one-line string without NUL characters", f"{at.key}[{i}]")
    return tuple(value)


def _matching(value: object, at: At, pattern: re.Pattern[str], expected: str) -> tuple[str, ...]:
    """A list of strings each matching ``pattern``; ``expected`` says what an item should be."""
    items = strings(value, at)
    for i, item in enumerate(items):
        if not pattern.fullmatch(item):
            raise at.fail(f"expected {expected}, got {show(item)}", f"{at.key}[{i}]")
    return items


def packages(value: object, at: At) -> tuple[str, ...]:
    return _matching(value, at, PACKAGE_RE, "a Debian package name")


# --- [jvm] -----------------------------------------------------------------------------------


def jvm_version(value: object, at: At) -> int:
    if not (is_int(value) and value in JVM_VERSIONS):
        raise at.fail(f"expected 17, 21 or 25, got {show(value)}")
    return value


def boolean(value: object, at: At) -> bool:
    if not isinstance(value, bool):
        raise at.fail(f"expected true or false, got {show(value)}")
    return value


def jdk_modules(value: object, at: At) -> tuple[str, ...]:
    return _matching(value, at, MODULE_NAME_RE, 'a JDK module name like "java.sql"')


def runtime(value: object, at: At) -> str:
    if value not in JVM_RUNTIMES:
        raise at.fail('expected "minimal" (the modules the app uses) or "full" (the whole JDK),'
                      f" got {show(value)}")
    assert isinstance(value, str)
    return value


def train_env(value: object, at: At) -> str:
    """The environment's existence is checked once all are read."""
    if not (isinstance(value, str) and ENV_NAME_RE.fullmatch(value)):
        raise at.fail(f"expected the name of an [env.NAME] table, got {show(value)}")
    return value


def train_timeout(value: object, at: At) -> int:
    if not (is_int(value) and 1 <= value <= MAX_TRAIN_TIMEOUT):
        raise at.fail(f"expected seconds, 1-{MAX_TRAIN_TIMEOUT}, got {show(value)}")
    return value


def train_seconds(value: object, at: At) -> int:
    timeout = at.before["timeout"]
    if not (is_int(value) and 1 <= value <= timeout):
        raise at.fail(f"expected seconds, 1 to the timeout ({timeout}), got {show(value)}")
    return value


def aot_problem(port: int | None, train_seconds: int | None) -> str | None:
    """Why a training run could not tell when to stop (None if it can): it waits for the
    healthcheck on the app's port, or for a number of seconds."""
    if port is None and train_seconds is None:
        return ("the training run waits for the healthcheck on [app] port, which is not set: set"
                " [app] port, or [jvm] train = { seconds = N } to train for N s")
    return None


# --- [system] --------------------------------------------------------------------------------


def suite(value: object, at: At) -> str:
    if not (isinstance(value, str) and SUITE_RE.fullmatch(value)):
        raise at.fail(f'expected a Debian suite like "trixie", got {show(value)}')
    return value


def kernel(value: object, at: At) -> str:
    if not (isinstance(value, str) and KERNEL_RE.fullmatch(value)):
        raise at.fail(f'expected a kernel manifest name like "debian", got {show(value)}')
    return value


def memory(value: object, at: At) -> int:
    if not (is_int(value) and value >= MIN_MEMORY_MIB):
        raise at.fail(f"expected an integer number of MiB >= {MIN_MEMORY_MIB}, got {show(value)}")
    return value


def mirror(value: object, at: At) -> str:
    """An http(s) URL, without its trailing slash."""
    if isinstance(value, str) and not any(c.isspace() for c in value):
        parts = urllib.parse.urlsplit(value)
        if parts.scheme in ("http", "https") and parts.hostname:
            return value.rstrip("/")
    raise at.fail(f"expected an http:// or https:// URL, got {show(value)}")


def hardware(value: object, at: At) -> tuple[str, ...]:
    """Driver sets shipped in kernels/hardware/, each once."""
    sets = strings(value, at)
    known = driver_sets()
    for i, set_name in enumerate(sets):
        if set_name not in known:
            close = difflib.get_close_matches(set_name, known, n=3, cutoff=0.4)
            hint = "closest: " + ", ".join(close) if close else "known: " + ", ".join(known)
            raise at.fail(f"kernel '{at.before['kernel']}' has no driver set {show(set_name)}"
                          f" ({hint})", f"{at.key}[{i}]")
    return tuple(dict.fromkeys(sets))


def kernel_modules(value: object, at: At) -> tuple[str, ...]:
    return _matching(value, at, MODULE_RE, 'a kernel module name like "igb"')


def driver_sets() -> list[str]:
    """The driver sets shipped in ``kernels/hardware/``, sorted."""
    folder = data_dir("kernels") / "hardware"
    return sorted(p.name[: -len(".toml")] for p in folder.glob("*.toml"))


# --- [env.NAME] and [environments] -----------------------------------------------------------


def env_vars(value: object, at: At) -> dict[str, str]:
    """An environment's variables: each one line, all within what a guest can pass on."""
    if not isinstance(value, dict):
        raise at.fail(f'expected a table like {{ KEY = "value" }}, got {show(value)}')
    for var, text in value.items():
        problem = check_env_var(var, text)
        if problem:
            raise at.fail(problem, f"{at.key}.{var}")
    problem = envlimits.env_problem(at.before["name"], value)
    if problem:
        raise at.fail(problem)
    return dict(value)


def env_network(value: object, at: At) -> tuple[network_mod.StaticNetwork, ...]:
    """Static network settings; their lines count towards the environment's size."""
    settings = network_mod.parse(value, at.key, at.context.fail)
    lines = network_mod.env_vars(settings)
    problem = envlimits.env_problem(at.before["name"], {**at.before["vars"], **lines})
    if problem:
        raise at.fail(f"with its {network_mod.VAR_PREFIX}n lines, {problem}")
    return settings


def signed_by(value: object, at: At) -> tuple[Path, ...]:
    """Public key files taken from the config's directory, each holding a key that can check
    an image's signature; at least one (without the key, any image may enter)."""
    items = strings(value, at)
    if not items:
        raise at.fail('expected public key files like ["keys/release.pub"]; leave signed_by out'
                      " if the environment takes unsigned images")
    paths = []
    for i, item in enumerate(items):
        path = absolute(at.context.root / item)
        problem = key_problem(path)
        if problem:
            raise at.fail(problem, f"{at.key}[{i}]")
        paths.append(path)
    return tuple(dict.fromkeys(paths))


def key_problem(path: Path) -> str | None:
    """What is wrong with public key file ``path`` (None if nothing), checked when the config is
    read by the reader that verifies later (:func:`imagebuilder.keyfiles.load_public_key`).
    Nothing of the file is quoted: a private key given by mistake stays out of the message."""
    kind = file_kind(path)
    if kind != "a file":
        return f"{path}: " + ("file not found" if kind == "missing"
                              else f"{kind}, not a public key file")
    from ..keyfiles import KeyFileError, load_public_key  # cryptography: only when keys are named

    try:
        load_public_key(path)
    except KeyFileError as e:
        return str(e)
    return None


def order(value: object, at: At) -> tuple[str, ...]:
    """Environment names, each once (that they are the defined ones is checked after)."""
    names = strings(value, at)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise at.fail(f"lists {quoted(dupes)} more than once")
    return names


def check_env_var(var: str, value: object) -> str | None:
    """What is wrong with an environment variable (None if nothing): the name must be a shell
    identifier outside the reserved IMAGEBUILDER_ prefix, the value a one-line string."""
    if not VAR_NAME_RE.fullmatch(var):
        return ("expected a variable name of letters, digits and '_', not starting with a digit,"
                f" got {show(var)}")
    if var.startswith(RESERVED_VAR_PREFIX):
        return f"names starting with {RESERVED_VAR_PREFIX} are reserved for imagebuilder"
    if not isinstance(value, str):
        return f"expected a string, got {show(value)}{quote_hint(value)}"
    if "\n" in value or "\r" in value:
        return "expected a one-line string, got a value containing a newline"
    if "\0" in value:
        return "expected a string without NUL characters"
    return envlimits.var_problem(var, value)


def quoted(names: list[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)


def file_kind(path: Path) -> str:
    """What is at ``path``, as an error message names it: "a file", "a directory", "missing",
    "a FIFO (named pipe)", "a character device", "a block device" or "a socket"."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "missing"
    for test, kind in ((stat.S_ISREG, "a file"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "a special file"

