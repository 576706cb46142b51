"""A sandbox for running an image's app on the build machine (the AOT training run).

The app is code imagebuilder did not write, so it runs as if hostile. ``python -m
imagebuilder.sandbox`` (see :mod:`.__main__`) puts it in new user, mount, network, PID, IPC, UTS
and cgroup namespaces, the builder's uid mapped to the image's app user (no root needed, and no
uid 0 inside); its PID 1 pivots into the image's root (the old root detached, so no host mount
is visible), mounts that namespace's own /proc, a /dev tmpfs with six harmless host nodes, and
tmpfs /dev/shm and /tmp; loopback is the only network. Before the app runs, every capability is
dropped (bounding and ambient sets too), no_new_privs is set and a seccomp filter (:mod:`.seccomp`)
refuses the calls that reach past the root. The app's environment goes from the builder to it
through a pipe and execve, never an argv. Each process of the chain dies with its parent, and
all of the PID namespace dies with its PID 1, so nothing outlives a killed build.

What it does not do: limit memory, CPU or disk (the app can fill its root and /tmp), nor keep
the app from loopback services of its own; it shares the host's kernel, so a kernel bug reachable
through the allowed calls is a way out.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import HostError
from . import readback
from .seccomp import check_arch
from .watch import Plan

#: The host's uid and gid of a sandbox started by root: root's own would put the app's processes,
#: though without a capability, within reach of every root-owned file if it ever got out.
NOBODY = 65534
#: Bytes of the sandbox's stdout (its reports) and stderr kept; the rest is read and dropped.
OUTPUT_CAP = 64 << 10


@dataclass(frozen=True)
class Finished:
    """How the sandbox ended: the watcher's reports (JSON lines), its stderr, its exit code."""

    reports: list[dict[str, object]]
    stderr: str
    returncode: int


def _command(root: Path) -> list[str]:
    # -I: no PYTHON* variable, user site or current directory decides what runs.
    return [sys.executable, "-I", "-m", "imagebuilder.sandbox", str(root)]


def _start(root: Path, spec: dict[str, object]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(_command(root), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, env={})
    assert proc.stdin is not None
    try:
        proc.stdin.write(json.dumps({**spec, "parent": os.getpid()}).encode())
        proc.stdin.close()
    except BrokenPipeError:
        pass
    return proc


def _collect(proc: subprocess.Popen[bytes], deadline: float) -> tuple[bytes, bytes]:
    """stdout and stderr, each capped, until both end or ``deadline`` (then SIGKILL)."""
    kept = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    with selectors.DefaultSelector() as sel:
        for stream in kept:
            sel.register(stream, selectors.EVENT_READ)  # type: ignore[arg-type]
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                break
            for key, _ in sel.select(timeout=left):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buffer = kept[key.fileobj]  # type: ignore[index]
                buffer += chunk[:max(0, OUTPUT_CAP - len(buffer))]
    proc.wait()
    for stream in kept:
        stream.close()  # type: ignore[union-attr]
    return bytes(kept[proc.stdout]), bytes(kept[proc.stderr])


def outer_ids() -> tuple[int, int]:
    """The host's uid and gid of the sandbox's app user: the builder's, or nobody's for root."""
    if os.geteuid() == 0:
        return NOBODY, NOBODY
    return os.geteuid(), os.getegid()


def writable(root: Path, rel: str) -> None:
    """Make the directory ``rel`` of ``root`` writable by the sandbox's app user (the rest of
    the root is the builder's; with an unprivileged builder, it is all the app's)."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    fd = os.open(root, flags)
    try:
        for part in Path(rel).parts:  # each component made and entered without following links
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
            try:
                deeper = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                raise HostError(f"the image's /{rel} is not a directory of its own (/{part}: "
                                f"{exc.strerror}): the training run cannot write there") from None
            os.close(fd)
            fd = deeper
        os.fchown(fd, *outer_ids())
    finally:
        os.close(fd)


def hostname(root: Path) -> str:
    """The root's /etc/hostname (its first line, if a plain host name), as the guest's kernel
    takes it; else localhost."""
    try:
        name = readback.tail(root, "etc/hostname", 256, 64).partition("\n")[0].strip()
    except (OSError, readback.Unsafe):
        return "localhost"
    return name if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]{0,62}", name) else "localhost"


def run(root: Path, plan: Plan, *, uid: int, gid: int, seconds: float) -> Finished:
    """Run ``plan`` in ``root`` (unpacked, owned by this user) with ``uid``/``gid`` inside; at
    most ``seconds`` in all, then everything in the sandbox is killed."""
    for mount_point in ("proc", "dev", "tmp"):  # made here: the app user may not write the root
        with contextlib.suppress(FileExistsError):
            os.mkdir(root / mount_point, 0o755)
    outer_uid, outer_gid = outer_ids()
    proc = _start(root, {"root": str(root), "uid": uid, "gid": gid, "outer_uid": outer_uid,
                         "outer_gid": outer_gid, "hostname": hostname(root),
                         "plan": asdict(plan)})
    try:
        out, err = _collect(proc, time.monotonic() + seconds)
    except BaseException:  # an interrupted build takes its sandbox with it
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    reports = []
    for line in out.decode(errors="replace").splitlines():
        try:
            report = json.loads(line)
        except ValueError:
            continue
        if isinstance(report, dict):
            reports.append(report)
    return Finished(reports, err.decode(errors="replace").strip(), proc.returncode)


def check_host(uid: int, gid: int) -> None:
    """This kernel lets an unprivileged user make the sandbox's namespaces, on x86_64."""
    check_arch()
    outer_uid, outer_gid = outer_ids()
    proc = _start(Path("/"), {"probe": True, "uid": uid, "gid": gid, "outer_uid": outer_uid,
                              "outer_gid": outer_gid})
    _out, err = _collect(proc, time.monotonic() + 30)
    if proc.returncode != 0:
        raise HostError("the AOT training run needs user namespaces, which this host refuses ("
                        + (err.decode(errors="replace").strip() or f"exit {proc.returncode}")
                        + "): allow them (sysctl kernel.unprivileged_userns_clone=1 or "
                        "user.max_user_namespaces) or build without [jvm] aot")
