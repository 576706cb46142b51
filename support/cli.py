"""The ``imagebuilder`` command line run as a person runs it: the installed console script in a
child process, with an ``IMAGEBUILDER_HOME`` of its own. The end-to-end tests and the benchmarks
drive the tool through this one runner."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INSTALLED = Path(sys.executable).parent / "imagebuilder"
"""The console script `pip install` made: what a person runs (scripts/setup.sh installs it)."""


class CliFailed(AssertionError):
    """An ``imagebuilder`` command that had to succeed exited non-zero (an assertion in a test,
    a failed measurement in a benchmark)."""


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
            raise CliFailed(f"imagebuilder {' '.join(args)} exited {result.returncode}:\n"
                            f"{result.stdout}\n{result.stderr}")
        return result

    def json(self, *args: str, cwd: Path | None = None, timeout: float = 900) -> Any:
        """``imagebuilder ARGS --json``, its output parsed."""
        return json.loads(self(*args, "--json", cwd=cwd, timeout=timeout).stdout)


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
