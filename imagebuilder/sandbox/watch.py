"""The training run's watcher, inside the sandbox as the app's user with no privileges left:
starts the app with exactly its environment (execve's, never an argv), waits until its
healthcheck answers 2xx (or a fixed time), stops it with SIGTERM and gives it a grace to write
its archive, then SIGKILL. Reports on stdout, one JSON object a line: ``{"ready": SECONDS}``, then
``{"end": "stopped" | "exited" | "timeout", "status": N, "seconds": S, "stop": S, "killed": B}``.

It runs after pivot_root in a root without Python's library, so it imports nothing lazily.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

_POLL = 0.1
_OK = re.compile(rb"HTTP/1\.[01] 2\d\d ")


@dataclass(frozen=True)
class Plan:
    """What to run and how to stop it (paths inside the sandbox's root)."""

    argv: Sequence[str]
    env: Mapping[str, str]
    cwd: str
    log: str
    port: int | None
    path: str
    seconds: float
    timeout: float
    grace: float
    limit: float
    progress: str


def _say(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def _start(plan: Plan) -> int:
    log = os.open(plan.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                  0o644)
    null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            os.setpgid(0, 0)
            os.dup2(null, 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            try:
                os.chdir(plan.cwd)
            except OSError:
                os.chdir("/")
            os.execvpe(plan.argv[0], list(plan.argv), dict(plan.env))
        except OSError as exc:
            os.write(2, f"{plan.argv[0]}: {exc.strerror}\n".encode())
        os._exit(127)
    os.close(log)
    os.close(null)
    return pid


def _status(wait_status: int) -> int:
    """As a shell's $? says it: the exit code, or 128 + the signal."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.WEXITSTATUS(wait_status)


def _answers(port: int, path: str) -> bool:
    request = f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(("127.0.0.1", port))
            s.sendall(request.encode())
            head = s.recv(64)
    except OSError:
        return False
    return _OK.match(head) is not None


def _progress(directory: str) -> tuple[tuple[str, int, int], ...]:
    """What the JVM has written so far where its archive goes."""
    try:
        with os.scandir(directory) as entries:
            return tuple(sorted((e.name, e.stat(follow_symlinks=False).st_size,
                                 e.stat(follow_symlinks=False).st_mtime_ns) for e in entries))
    except OSError:
        return ()


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _stop(pid: int, plan: Plan) -> tuple[int, bool]:
    """SIGTERM, then SIGKILL once nothing changed in ``plan.progress`` for ``plan.grace``
    seconds, or ``plan.limit`` seconds after SIGTERM; the status and whether it was killed."""
    os.kill(pid, signal.SIGTERM)
    start = last = time.monotonic()
    seen = _progress(plan.progress)
    while True:
        done, wait_status = os.waitpid(pid, os.WNOHANG)
        if done:
            return _status(wait_status), False
        now = time.monotonic()
        current = _progress(plan.progress)
        if current != seen:
            seen, last = current, now
        if now - last >= plan.grace or now - start >= plan.limit:
            _kill(pid)
            return _status(os.waitpid(pid, 0)[1]), True
        time.sleep(_POLL)


def run(plan: Plan) -> int:
    start = time.monotonic()
    pid = _start(plan)
    while True:
        done, wait_status = os.waitpid(pid, os.WNOHANG)
        elapsed = time.monotonic() - start
        if done:
            _say(end="exited", status=_status(wait_status), seconds=elapsed)
            return 0
        if (plan.port is not None and _answers(plan.port, plan.path)) or \
                (plan.port is None and elapsed >= plan.seconds):
            break
        if elapsed >= plan.timeout:
            _kill(pid)
            os.waitpid(pid, 0)
            _say(end="timeout", seconds=elapsed)
            return 0
        time.sleep(_POLL)
    ready = time.monotonic() - start
    _say(ready=ready)
    status, killed = _stop(pid, plan)
    _say(end="stopped", status=status, seconds=ready, stop=time.monotonic() - start - ready,
         killed=killed)
    return 0
