"""AOT class data from a training run: the app, run once at build time, leaves an archive of the
classes it loaded that the JVM maps at the next start instead of parsing and linking them again.

The app runs exactly as the guest would run it: the image's own root (its layers unpacked into a
scratch directory), its own runtime and command line from app.conf, at the guest's paths, with
the guest's variables (PATH, HOME, LANG, JAVA_HOME, PORT and the training environment's). It
runs chrooted, as PID 1's child in private user, mount, network and PID namespaces, so no root
is needed and the only network is loopback; when it answers its healthcheck (or after a fixed
time), it gets SIGTERM and the JVM writes the archive as it exits:

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
import os
import signal
import subprocess
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .apps.shape import GUEST_DIR, File, Shape
from .errors import HostError, UserError
from .layers.templates import source as template_source
from .proc import require

#: Where the archive lives in the image (and in the training root).
ARCHIVE_DIR = "opt/aot"
#: The training script (templates/train.sh) and the app's output, inside the training root.
WORK_DIR = ".imagebuilder"
#: Seconds the JVM gets, after SIGTERM, to write its archive (JDK 25 assembles the AOT cache in a
#: second JVM then).
STOP_SECONDS = 300
#: Lines of the app's output quoted by a failed training run.
TAIL_LINES = 20
#: The runtime's own CDS archive, which a dynamic archive (JDK 17 and 21) extends.
BASE_ARCHIVE = "opt/java/lib/server/classes.jsa"
#: The guest's PATH, as the init sets it.
GUEST_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

# Mounts the training root needs, made by the host's sh inside the namespaces, then the chroot.
_OUTER = """set -e
root=$1
shift
mkdir -p "$root/proc" "$root/dev" "$root/tmp"
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount -t tmpfs -o nosuid,mode=0755 tmpfs "$root/dev"
for node in null zero full random urandom tty; do
    : > "$root/dev/$node"
    mount --bind "/dev/$node" "$root/dev/$node"
done
mkdir "$root/dev/shm"
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs "$root/dev/shm"
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs "$root/tmp"
exec chroot "$root" /bin/sh "/$WORK/train.sh" "$@"
"""


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
                zf.writestr(info, f.data if f.data is not None else
                            f.source.read_bytes())  # type: ignore[union-attr]
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
    ended by itself), ``log`` its whole output."""

    state: str
    seconds: float
    status: int | None
    total: float
    log: str

    def tail(self, lines: int = TAIL_LINES) -> str:
        kept = [line for line in self.log.splitlines() if line.strip()][-lines:]
        return " | ".join(kept) or "no output"


def check_host() -> None:
    """unshare and chroot are there and this kernel lets an unprivileged user make namespaces."""
    require("unshare", "util-linux")
    require("chroot", "coreutils")
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "--net", "true"],
                           capture_output=True, check=False)
    if probe.returncode != 0:
        raise HostError("the AOT training run needs user namespaces, which this host refuses ("
                        + probe.stderr.decode(errors="replace").strip() + "): allow them "
                        "(sysctl kernel.unprivileged_userns_clone=1 or "
                        "user.max_user_namespaces) or build without [jvm] aot")


def run_app(root: Path, argv: Sequence[str], env: Mapping[str, str], *, url: str | None,
            seconds: int, timeout: int) -> Outcome:
    """Run ``argv`` in the image root ``root`` (unpacked, writable, owned by this user) in
    private namespaces until ``url`` (on loopback) answers, or for ``seconds`` when there is no
    url, at most ``timeout`` seconds; then stop it with SIGTERM and wait for it to exit."""
    check_host()
    work = root / WORK_DIR
    work.mkdir(exist_ok=True)
    (work / "train.sh").write_bytes(template_source("train.sh"))
    log = work / "app.log"
    command = ["env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv]
    outer = _OUTER.replace("$WORK", WORK_DIR)
    cmd = ["unshare", "--user", "--map-root-user", "--mount", "--net", "--pid", "--fork",
           "--kill-child", "--", "sh", "-c", outer, "sh", str(root), str(timeout), url or "",
           str(seconds), f"/{WORK_DIR}/app.log", "--", *command]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, env={"PATH": GUEST_PATH})
    try:
        out, err = proc.communicate(timeout=timeout + STOP_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    total = time.monotonic() - start
    text = log.read_text(errors="replace") if log.exists() else ""
    said = {line.split()[0]: line.split()[1:] for line in
            out.decode(errors="replace").splitlines() if line.strip()}
    state = next((s for s in ("ready", "exited", "timeout") if s in said), None)
    if state is None:
        raise HostError("the training run did not start: "
                        + (err.decode(errors="replace").strip() or f"exit {proc.returncode}"))
    status: int | None = None
    if state == "exited":
        status = int(said["exited"][0])
    elif "stopped" in said:
        status = int(said["stopped"][0])
    first = int(said[state][-1]) / 100
    return Outcome(state, first, status, total, text)


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
    archive = root / archive_path(version)
    archive.parent.mkdir(parents=True, exist_ok=True)
    outcome = run_app(root, with_flags(argv, train_flags(version)), env, url=url,
                      seconds=seconds, timeout=timeout)
    what = f"{url} to answer" if url else f"{seconds} s of training"
    if outcome.state == "exited":
        raise TrainingError(
            f"training run for [jvm] aot: the app exited with status {outcome.status} after "
            f"{outcome.seconds:.1f} s, before {what}; its last lines: {outcome.tail()}")
    if outcome.state == "timeout":
        raise TrainingError(
            f"training run for [jvm] aot: waited {outcome.seconds:.1f} s for {what} (the limit, "
            f"[jvm] train timeout = {timeout}); the app's last lines: {outcome.tail()}")
    if not archive.is_file() or archive.stat().st_size == 0:
        raise TrainingError(
            f"training run for [jvm] aot: the app answered after {outcome.seconds:.1f} s but the "
            f"JVM wrote no archive when stopped (status {outcome.status}); its last lines: "
            f"{outcome.tail()}")
    return archive, outcome
