"""Fault injection for tests/e2e/test_faults.py: kill a command at a seeded moment, put a
misbehaving proxy in front of a real server, fill a real disk, and count what was survived.

- :func:`run_killed` starts the real command line in its own session and SIGKILLs the whole
  group after a delay (none of its cleanup runs, as when the machine loses power).
- :class:`FaultProxy` forwards TCP on loopback to a real server (docker-registry, moto_server),
  optionally throttled so a kill lands mid-transfer, and on the connections a seeded plan names
  it answers ``500`` instead of forwarding, or drops the connection after N bytes.
- :func:`tmpfs` mounts a size-limited tmpfs (real ENOSPC; needs root).
- :class:`FaultLog` appends one JSON line per injected fault to ``$IMAGEBUILDER_FAULTS_LOG``
  (bench/faults.py reads it to report the counts).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SEED = int(os.environ.get("IMAGEBUILDER_FAULT_SEED", "20261130"))
"""The seed of every random choice (kill moments, faulty connections, byte counts)."""


def run_killed(argv: list[str], env: dict[str, str], delay: float,
               cwd: Path | None = None) -> bool:
    """Run ``argv``; SIGKILL its process group after ``delay`` s. Whether it was killed (False:
    it had already finished)."""
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        proc.wait(delay)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        return True


def timed(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> float:
    """Run ``argv`` to completion (it must succeed); its duration in seconds, from which the
    kill moments are drawn (never asserted on)."""
    started = time.monotonic()
    result = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr
    return time.monotonic() - started


@dataclass
class FaultLog:
    """What was injected and whether the invariants held afterwards."""

    path: Path | None = field(default_factory=lambda: (
        Path(os.environ["IMAGEBUILDER_FAULTS_LOG"])
        if os.environ.get("IMAGEBUILDER_FAULTS_LOG") else None))

    def record(self, kind: str, command: str, detail: str, injected: bool,
               survived: bool) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"kind": kind, "command": command, "detail": detail,
                                "injected": injected, "survived": survived}) + "\n")

    @contextmanager
    def fault(self, kind: str, command: str, detail: str,
              injected: bool = True) -> Iterator[None]:
        """Record one fault (``injected``: False when the command finished before it could
        strike): survived if the block, the checks after the fault, raises nothing."""
        try:
            yield
        except BaseException:
            self.record(kind, command, detail, injected, False)
            raise
        self.record(kind, command, detail, injected, True)


@dataclass
class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of ``upstream`` (a port); see the module docstring."""

    upstream: int
    rate: float | None = None
    """Bytes per second each direction of each connection may carry (None: unlimited)."""
    plan: dict[int, tuple[str, int]] = field(default_factory=dict)
    """Connection number -> ("500", 0) or ("drop", bytes forwarded before the drop)."""
    connections: int = 0
    faults: int = 0
    """Faults that struck: 500s sent, connections dropped before their end."""

    def __post_init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self, plan: dict[int, tuple[str, int]] | None = None,
              rate: float | None = None) -> None:
        with self.lock:
            self.plan, self.rate, self.connections, self.faults = dict(plan or {}), rate, 0, 0

    def close(self) -> None:
        self.server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            with self.lock:
                number = self.connections
                self.connections += 1
                action = self.plan.get(number, ("pass", 0))
            threading.Thread(target=self._serve, args=(client, action), daemon=True).start()

    def _struck(self) -> None:
        with self.lock:
            self.faults += 1

    def _serve(self, client: socket.socket, action: tuple[str, int]) -> None:
        if action[0] == "500":
            with client:
                client.settimeout(10)
                try:
                    head = b""
                    while b"\r\n\r\n" not in head:
                        chunk = client.recv(65536)
                        if not chunk:
                            return
                        head += chunk
                    client.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0"
                                   b"\r\nConnection: close\r\n\r\n")
                    self._struck()
                except OSError:
                    pass
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream), timeout=30)
        except OSError:
            client.close()
            return
        budget = [action[1] if action[0] == "drop" else -1]
        done = threading.Event()

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while not done.is_set():
                    data = src.recv(65536)
                    if not data:
                        break
                    if budget[0] >= 0:
                        if len(data) >= budget[0]:
                            dst.sendall(data[:budget[0]])
                            self._struck()
                            break
                        budget[0] -= len(data)
                    dst.sendall(data)
                    if self.rate:
                        time.sleep(len(data) / self.rate)
            except OSError:
                pass
            finally:
                done.set()
                for s in (client, upstream):
                    with suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)

        other = threading.Thread(target=pump, args=(upstream, client), daemon=True)
        other.start()
        pump(client, upstream)
        other.join(60)
        client.close()
        upstream.close()


@contextmanager
def tmpfs(path: Path, size: int) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes mounted on ``path`` (skips unless root may mount one)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("a size-limited tmpfs needs root (ENOSPC is injected for real)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
