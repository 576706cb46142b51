"""AOT class data from a training run: the app, run once at build time, leaves an archive of the
classes it loaded that the JVM maps at the next start instead of parsing and linking them again.

The app runs exactly as the guest would run it: the image's own root (its layers unpacked into a
scratch directory), its own runtime and command line from app.conf, at the guest's paths, with
the guest's variables (PATH, HOME, LANG, JAVA_HOME, PORT and the training environment's). It is
code we did not write, so it runs in a sandbox (:mod:`.sandbox`): the image's app user with no
privileges, pivoted into that root in its own namespaces, loopback its only network; the archive
and the log are read back without following a link the app may have planted. When it answers
its healthcheck (or after a fixed time), it gets SIGTERM (SIGKILL after a grace) and the JVM
writes the archive as it exits:

* JDK 17 and 21: a dynamic AppCDS archive (``-XX:ArchiveClassesAtExit``), on top of the
  runtime's own CDS archive;
* JDK 25: the AOT cache of JEP 483/514/515 (``-XX:AOTCacheOutput``), which also holds linked
  classes and method profiles.

In the guest the same command line gets ``-XX:SharedArchiveFile`` / ``-XX:AOTCache`` with
``-Xshare:auto`` (an archive the JVM rejects is skipped, never fatal) and the JVM's info log of
class data sharing, which the init's output filter (templates/jdkhint.awk) turns into one
console line: the archive is in use, or why the JVM rejected it.
"""

from __future__ import annotations

import dataclasses
import io
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .. import sandbox
from ..apps.shape import GUEST_DIR, File, Shape
from ..errors import HostError, UserError
from ..sandbox import readback
from ..sandbox.watch import Plan
from ..text import printable
from .base import APP_UID

#: Where the archive lives in the image (and in the training root).
ARCHIVE_DIR = "opt/aot"
#: The app's output, inside the training root.
WORK_DIR = ".imagebuilder"
LOG = f"{WORK_DIR}/app.log"
#: Seconds the JVM gets, after SIGTERM, to write its archive before SIGKILL (the guest's init
#: gives an app 20 s too).
GRACE_SECONDS = 20
#: JDK 25 assembles the AOT cache in a second JVM after the first exits: SIGKILL only once
#: nothing in /opt/aot changed for this many seconds, and at most STOP_SECONDS after SIGTERM.
GRACE_SECONDS_25 = 60
STOP_SECONDS = 300
#: The largest archive taken from a training run.
ARCHIVE_CAP = 2 << 30
#: The end of the app's output read back (bytes), and the longest line kept of it.
LOG_CAP = 64 << 10
LINE_CAP = 400
#: Lines of the app's output quoted by a failed training run.
TAIL_LINES = 20
#: The runtime's own CDS archive, which a dynamic archive (JDK 17 and 21) extends.
BASE_ARCHIVE = "opt/java/lib/server/classes.jsa"
#: The guest's PATH, as the init sets it.
GUEST_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class TrainingError(UserError):
    """The training run failed: the app exited, never answered, or left no archive."""


def archive_path(version: int) -> str:
    """The archive's path in the image, without the leading slash."""
    return f"{ARCHIVE_DIR}/app.aot" if version >= 25 else f"{ARCHIVE_DIR}/app.jsa"


def train_flags(version: int) -> list[str]:
    """JVM options of the training run."""
    path = "/" + archive_path(version)
    if version >= 25:
        return [f"-XX:AOTCacheOutput={path}"]
    return [f"-XX:ArchiveClassesAtExit={path}"]


def run_flags(version: int) -> list[str]:
    """JVM options of the guest: use the archive if the JVM accepts it, and log why not."""
    path = "/" + archive_path(version)
    if version >= 25:  # where -XX:AOTCache may not be given with -Xshare: auto is its default
        return [f"-XX:AOTCache={path}", "-Xlog:aot=info,cds=info"]
    return [f"-XX:SharedArchiveFile={path}", "-Xshare:auto", "-Xlog:cds=info"]


def with_flags(argv: Sequence[str], flags: Sequence[str]) -> list[str]:
    """``argv`` (java first) with JVM ``flags`` right after the program."""
    return [argv[0], *flags, *argv[1:]]


def jarred(shape: Shape) -> Shape:
    """``shape`` with each directory of its own files on the ``-cp`` (a Spring Boot jar's
    BOOT-INF/classes) packed into a jar beside it: class data sharing refuses a class path
    holding a non-empty directory. The jar is deterministic (sorted, stored, fixed times)."""
    argv = list(shape.argv)
    if "-cp" not in argv:
        return shape
    at = argv.index("-cp") + 1
    entries = argv[at].split(":")
    files = list(shape.app)
    for i, entry in enumerate(entries):
        prefix = entry.removeprefix(f"{GUEST_DIR}/").rstrip("/") + "/"
        inside = sorted((f for f in files if f.dest.startswith(prefix)), key=lambda f: f.dest)
        if not entry.startswith(f"{GUEST_DIR}/") or entry.endswith((".jar", "*")) or not inside:
            continue
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
            for f in inside:
                info = zipfile.ZipInfo(f.dest.removeprefix(prefix), (1980, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                zf.writestr(info, f.contents())
        dest = prefix.rstrip("/") + ".jar"
        files = [f for f in files if not f.dest.startswith(prefix)] + [File(dest,
                                                                             data=out.getvalue())]
        entries[i] = f"{GUEST_DIR}/{dest}"
    argv[at] = ":".join(entries)
    return dataclasses.replace(shape, app=tuple(files), argv=tuple(argv))


def guest_env(port: int | None, variables: Mapping[str, str], env_name: str | None
              ) -> dict[str, str]:
    """The variables the init gives the app, for the training environment ``variables``."""
    env = {"PATH": GUEST_PATH}
    if env_name is not None:
        env["IMAGEBUILDER_ENV"] = env_name
    env.update(variables)
    env.update({"HOME": "/tmp", "LANG": "C.UTF-8", "JAVA_HOME": "/opt/java"})
    if port is not None:
        env["PORT"] = str(port)
    return env


@dataclass(frozen=True)
class Outcome:
    """How a run in the image's root went: ``state`` is ready (then stopped), exited or
    timeout; ``seconds`` until that state, ``status`` the app's exit status (None if it never
    ended by itself), ``log`` the end of its output, ``stop`` the seconds from SIGTERM to its
    end, ``killed`` whether the grace ran out."""

    state: str
    seconds: float
    status: int | None
    total: float
    log: str
    stop: float = 0.0
    killed: bool = False

    def tail(self, lines: int = TAIL_LINES) -> str:
        kept = [line for line in self.log.splitlines() if line.strip()][-lines:]
        return printable(" | ".join(kept), keep="\t") or "no output"


def training_code() -> bytes:
    """The code that runs a training run (the sandbox's), for the aot layer's cache key."""
    here = Path(sandbox.__file__).parent
    return b"".join(path.read_bytes() for path in sorted(here.glob("*.py")))


def check_host() -> None:
    """This kernel lets an unprivileged user make the sandbox's namespaces."""
    sandbox.check_host(APP_UID, APP_UID)


def grace(version: int) -> tuple[int, int]:
    """Seconds without progress, and seconds in all, the JVM gets after SIGTERM."""
    if version >= 25:
        return GRACE_SECONDS_25, STOP_SECONDS
    return GRACE_SECONDS, GRACE_SECONDS


def _plan(argv: Sequence[str], env: Mapping[str, str], url: str | None, seconds: int,
          timeout: int, stop: tuple[int, int]) -> Plan:
    port, path = _target(url) if url else (None, "/")
    return Plan(argv=list(argv), env=dict(env), cwd="/app", log=f"/{LOG}", port=port, path=path,
                seconds=seconds, timeout=timeout, grace=stop[0], limit=stop[1],
                progress=f"/{ARCHIVE_DIR}")


def _target(url: str) -> tuple[int, str]:
    """The port and the path (with its query) of a healthcheck URL on loopback."""
    parts = urlsplit(url)
    return parts.port or 80, (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _log(root: Path) -> str:
    """The end of the app's output, read back without following links."""
    try:
        return readback.tail(root, LOG, LOG_CAP, LINE_CAP)
    except FileNotFoundError:
        return ""
    except readback.Unsafe as exc:
        return f"(the app's output is unreadable: {exc})"


def run_app(root: Path, argv: Sequence[str], env: Mapping[str, str], *, url: str | None,
            seconds: int, timeout: int, stop: tuple[int, int] = (GRACE_SECONDS, GRACE_SECONDS)
            ) -> Outcome:
    """Run ``argv`` in the image root ``root`` (unpacked, writable, owned by this user) in the
    sandbox (:mod:`.sandbox`) until ``url`` (on loopback) answers, or for ``seconds`` when there
    is no url, at most ``timeout`` seconds; then stop it with SIGTERM, and SIGKILL after the
    grace ``stop`` (see :func:`grace`)."""
    check_host()
    # The only directories the app may write, with /tmp: its own (writable in the guest too, in
    # RAM), the archive's and the run's log's.
    for rel in (GUEST_DIR.strip("/"), WORK_DIR, ARCHIVE_DIR):
        sandbox.writable(root, rel)
    start = time.monotonic()
    done = sandbox.run(root, _plan(argv, env, url, seconds, timeout, stop), uid=APP_UID,
                       gid=APP_UID, seconds=timeout + stop[1] + 30)
    total = time.monotonic() - start
    ready = next((r for r in done.reports if "ready" in r), None)
    end = next((r for r in done.reports if "end" in r), None)
    if end is None:
        raise HostError("the training run did not start: "
                        + (done.stderr or f"exit {done.returncode}"))
    state = "ready" if ready is not None else str(end["end"])
    status = end.get("status")
    return Outcome(state, float(end["seconds"]),  # type: ignore[arg-type]
                   None if status is None else int(status),  # type: ignore[call-overload]
                   total, _log(root), float(end.get("stop", 0.0)),  # type: ignore[arg-type]
                   bool(end.get("killed")))


def train(root: Path, argv: Sequence[str], env: Mapping[str, str], version: int, *,
          url: str | None, seconds: int, timeout: int) -> tuple[Path, Outcome]:
    """Run the app's command line ``argv`` in ``root`` with the training options; the archive
    it wrote and how the run went. A run that fails, never answers or writes no archive raises
    TrainingError with the app's last lines and the time waited."""
    if version < 25 and not (root / BASE_ARCHIVE).is_file():
        raise TrainingError(f"[jvm] aot on JDK {version} needs the runtime's own class data "
                            f"archive (/{BASE_ARCHIVE}, which the jvm layer dumps), and this "
                            "image's runtime has none: rebuild the jvm layer or set [jvm] aot = "
                            "false")
    outcome = run_app(root, with_flags(argv, train_flags(version)), env, url=url,
                      seconds=seconds, timeout=timeout, stop=grace(version))
    what = f"{url} to answer" if url else f"{seconds} s of training"
    if outcome.state == "exited":
        raise TrainingError(
            f"training run for [jvm] aot: the app exited with status {outcome.status} after "
            f"{outcome.seconds:.1f} s, before {what}; its last lines: {outcome.tail()}")
    if outcome.state == "timeout":
        raise TrainingError(
            f"training run for [jvm] aot: waited {outcome.seconds:.1f} s for {what} (the limit, "
            f"[jvm] train timeout = {timeout}); the app's last lines: {outcome.tail()}")
    return _archive(root, version, outcome), outcome


def _archive(root: Path, version: int, outcome: Outcome) -> Path:
    """The archive the run left, copied out of ``root`` (beside it) without following links."""
    rel = archive_path(version)
    dest = root.with_name(f"{root.name}.{Path(rel).name}")
    dest.unlink(missing_ok=True)
    how = (f"killed {outcome.stop:.0f} s after SIGTERM" if outcome.killed
           else f"status {outcome.status}")
    try:
        size = readback.copy_out(root, rel, dest, ARCHIVE_CAP)
    except FileNotFoundError:
        size = 0
    except readback.Unsafe as exc:
        raise TrainingError(f"training run for [jvm] aot: the app left no usable archive ({exc})"
                            "; nothing was read from it") from None
    if size == 0:
        raise TrainingError(
            f"training run for [jvm] aot: the app answered after {outcome.seconds:.1f} s but the "
            f"JVM wrote no archive when stopped ({how}); its last lines: {outcome.tail()}")
    return dest
