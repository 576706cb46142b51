"""Loopback servers that tests and benchmarks start: a free port, waiting until one answers,
and moto_server (the one stand-in the project accepts, for AWS) with the environment that points
boto3 at it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MOTO_REGION = "us-east-1"


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str,
                  seconds: float = 60) -> None:
    """Return once something accepts connections on ``port``; RuntimeError if ``proc`` exits
    or nothing answers in ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not answer on 127.0.0.1:{port} in {seconds:.0f} s")


def moto_executable() -> str | None:
    """moto_server next to this interpreter (the project's .venv), else on PATH."""
    here = Path(sys.executable).parent / "moto_server"
    return str(here) if here.exists() else shutil.which("moto_server")


def aws_env(url: str) -> dict[str, str]:
    """The environment variables that point boto3 (in this process or a child) at ``url``."""
    return {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": MOTO_REGION}


@contextmanager
def moto_server(exe: str) -> Iterator[str]:
    """A fresh moto_server on a free loopback port; yields its URL, stops it afterwards."""
    port = free_port()
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc, "moto_server")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment plus ``extra``, without AWS_PROFILE (which would win)."""
    env = {**os.environ, **extra}
    env.pop("AWS_PROFILE", None)
    return env


def assert_snapshot_holds(ebs: object, snapshot_id: str, raw: Path) -> int:
    """Read EBS snapshot ``snapshot_id`` back through the EBS direct APIs (``ebs``: a boto3
    client on moto_server): every block it holds equals the raw disk's block and every block it
    does not hold is zeros in the disk. The number of blocks held."""
    size = 512 * 1024
    blocks: dict[int, str] = {}
    kwargs: dict[str, str] = {}
    while True:
        page = ebs.list_snapshot_blocks(SnapshotId=snapshot_id, **kwargs)  # type: ignore[attr-defined]
        blocks.update((b["BlockIndex"], b["BlockToken"]) for b in page["Blocks"])
        if not page.get("NextToken"):
            break
        kwargs = {"NextToken": page["NextToken"]}
    with open(raw, "rb") as f:
        index = 0
        while chunk := f.read(size):
            if index in blocks:
                got = ebs.get_snapshot_block(  # type: ignore[attr-defined]
                    SnapshotId=snapshot_id, BlockIndex=index,
                    BlockToken=blocks[index])["BlockData"].read()
                assert got == chunk.ljust(size, b"\0"), f"block {index} differs"
            else:
                assert chunk.count(0) == len(chunk), f"block {index} holds data but was not sent"
            index += 1
    return len(blocks)
