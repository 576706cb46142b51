"""Shared fixtures of the end-to-end tests: one image store and one build of examples/hello for
the whole session, since real builds fetch from the Debian archive and boots under TCG are slow.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import shutil
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ..servers import free_port as free_port  # the e2e tests import it from here

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "hello"


INSTALLED = Path(sys.executable).parent / "imagebuilder"
"""The console script `pip install` made: what a person runs (scripts/setup.sh installs it)."""


@dataclass
class Cli:
    """Runs the installed `imagebuilder` command line in a child process with its own home."""

    home: Path
    extra: dict[str, str] = field(default_factory=dict)
    """Variables added to the child's environment (e.g. AWS_ENDPOINT_URL)."""

    def env(self) -> dict[str, str]:
        return {**os.environ, "IMAGEBUILDER_HOME": str(self.home), **self.extra}

    def argv(self, args: Sequence[str]) -> list[str]:
        if INSTALLED.exists():
            return [str(INSTALLED), *args]
        return [sys.executable, "-m", "imagebuilder.cli", *args]

    def __call__(self, *args: str, cwd: Path | None = None, check: bool = True,
                 timeout: float = 900, tty: bool = False) -> subprocess.CompletedProcess[str]:
        """Run ``imagebuilder ARGS``; with ``tty`` its stderr is a terminal, as when a person
        runs it, so progress bars draw (their output is in ``stderr``)."""
        if tty:
            result = run_with_tty_stderr(self.argv(args), cwd, self.env(), timeout)
        else:
            result = subprocess.run(self.argv(args), cwd=cwd, env=self.env(), text=True,
                                    capture_output=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"imagebuilder {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def json(self, *args: str, cwd: Path | None = None) -> object:
        return json.loads(self(*args, "--json", cwd=cwd).stdout)


def run_with_tty_stderr(argv: list[str], cwd: Path | None, env: dict[str, str],
                        timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with stdout piped and stderr on a pseudo-terminal (drained as it fills)."""
    main, side = pty.openpty()
    fcntl.ioctl(side, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # 120 columns
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(main, 65536)
            except OSError:  # EIO: the child closed its side
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=side,
                              stdin=subprocess.DEVNULL, timeout=timeout)
    finally:
        os.close(side)
        reader.join(10)
        os.close(main)
    stderr = b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")
    return subprocess.CompletedProcess(argv, proc.returncode, proc.stdout.decode(), stderr)


def compile_example(dest: Path) -> Path:
    """A copy of examples/hello in ``dest`` with hello.jar compiled; the app directory."""
    if shutil.which("javac") is None:
        pytest.skip("javac is needed to compile examples/hello (scripts/setup.sh installs it)")
    app = dest / "hello"
    shutil.copytree(EXAMPLE, app, ignore=shutil.ignore_patterns("hello.jar", "imagebuilder.lock"))
    subprocess.run(["sh", str(app / "build.sh")], check=True, capture_output=True)
    return app


@pytest.fixture(scope="session")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    return Cli(tmp_path_factory.mktemp("home"))


@dataclass
class Built:
    app: Path
    ref: str
    digest: str
    stages: list[dict[str, object]]


@pytest.fixture(scope="session")
def hello(cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> Built:
    """examples/hello built once (cold: packages resolved and fetched from the mirror)."""
    app = compile_example(tmp_path_factory.mktemp("app"))
    out = cli.json("build", str(app))
    assert isinstance(out, dict)
    return Built(app, out["ref"], out["digest"], out["stages"])


@pytest.fixture
def vms(cli: Cli) -> Iterator[list[str]]:
    """VM ids started by a test with `run --wait`; stopped afterwards whatever happens."""
    started: list[str] = []
    yield started
    for vm_id in started:
        cli("stop", vm_id, check=False)
