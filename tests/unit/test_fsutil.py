"""fsutil's commit: every file imagebuilder writes is renamed into place by one function, a failed
write leaves nothing, a full disk is one line, and what a killed writer left is removed by the
next one (or by a sweep of its directory) but never while its writer lives. Real files, a real
size-limited tmpfs, real processes really killed."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagebuilder import fsutil
from imagebuilder.errors import DamagedError, HostError
from imagebuilder.fsutil import (
    atomic_output,
    commit,
    disk_full,
    remove_stale_temps,
    write_atomic,
    write_error,
)

PACKAGE = Path(__file__).resolve().parents[2] / "imagebuilder"

WRITER = """
import os, sys, time
from imagebuilder.fsutil import atomic_output
with atomic_output(sys.argv[1]) as fd:
    os.write(fd, b"half a file")
    print("ready", flush=True)
    time.sleep(300)
"""


@pytest.fixture
def writers() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _writer(dest: Path, procs: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    """A process in the middle of writing ``dest``."""
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(WRITER), str(dest)],
                            stdout=subprocess.PIPE, text=True)
    procs.append(proc)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def _killed_writer(dest: Path, procs: list[subprocess.Popen[str]]) -> str:
    """The temporary file a writer of ``dest`` killed with SIGKILL left."""
    proc = _writer(dest, procs)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (left,) = [n for n in os.listdir(dest.parent) if n.endswith(".tmp")]
    return left


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (a real ENOSPC); skipped where mounting one is not allowed."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_commit_is_the_only_rename_in_the_package() -> None:
    renames = re.compile(r"\bos\.(replace|rename)\(")
    found = [f"{path.relative_to(PACKAGE)}:{n}"
             for path in sorted(PACKAGE.rglob("*.py"))
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if renames.search(line)]
    assert len(found) == 1 and found[0].startswith("fsutil.py:"), found


def test_a_write_replaces_the_destination_whole(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.write_bytes(b"old")
    write_atomic(dest, [b"new ", b"bytes"])
    assert dest.read_bytes() == b"new bytes"
    write_atomic(dest, b"private", mode=0o600)
    assert (dest.read_bytes(), dest.stat().st_mode & 0o777) == (b"private", 0o600)
    assert os.listdir(tmp_path) == ["out"]


def test_a_failed_write_leaves_the_destination_as_it_was_and_no_temporary(
        tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.write_bytes(b"old")

    def chunks() -> Iterator[bytes]:
        yield b"half"
        raise DamagedError("blob damaged")

    with pytest.raises(DamagedError):
        write_atomic(dest, chunks())
    with pytest.raises(RuntimeError), atomic_output(dest) as fd:
        os.write(fd, b"half")
        raise RuntimeError("the producer failed")
    assert dest.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out"]


def test_a_failed_rename_is_one_line(tmp_path: Path) -> None:
    tmp = tmp_path / "done"
    tmp.write_bytes(b"x")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_bytes(b"y")
    with pytest.raises(HostError) as exc:
        commit(tmp, tmp_path / "busy")
    assert str(exc.value) == f"cannot write {tmp_path / 'busy'}: Is a directory"


def test_disk_full_is_one_line_and_leaves_nothing(tiny_fs: Path) -> None:
    dest = tiny_fs / "big"
    with pytest.raises(HostError) as exc:
        write_atomic(dest, b"x" * (1 << 20))
    assert str(exc.value) == f"no space left on device writing {dest}"
    assert os.listdir(tiny_fs) == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_disk_full_is_mapped_in_one_place(code: int) -> None:
    full = disk_full(OSError(code, os.strerror(code)), "/x")
    assert isinstance(full, HostError) and str(full) == "no space left on device writing /x"
    assert str(write_error(OSError(code, os.strerror(code)), "/x")) == str(full)
    assert disk_full(OSError(errno.EIO, "I/O error"), "/x") is None


def test_the_next_writer_removes_what_a_killed_writer_left(
        tmp_path: Path, writers: list[subprocess.Popen[str]]) -> None:
    dest = tmp_path / "out"
    left = _killed_writer(dest, writers)
    assert left.startswith(".out.")
    write_atomic(dest, b"whole")
    assert os.listdir(tmp_path) == ["out"] and dest.read_bytes() == b"whole"


def test_a_live_writers_temporary_is_kept(
        tmp_path: Path, writers: list[subprocess.Popen[str]]) -> None:
    dest = tmp_path / "out"
    _writer(dest, writers)
    (live,) = os.listdir(tmp_path)
    write_atomic(dest, b"mine")
    assert remove_stale_temps(tmp_path) == []
    assert sorted(os.listdir(tmp_path)) == sorted([live, "out"])


def test_a_sweep_removes_killed_writers_temporaries_only(
        tmp_path: Path, writers: list[subprocess.Popen[str]]) -> None:
    killed = _killed_writer(tmp_path / "a", writers)
    _writer(tmp_path / "b", writers)
    live = next(n for n in os.listdir(tmp_path) if n.startswith(".b."))
    others = [".c.tmp", ".d.0123456789ab.part", "e.0123456789ab.tmp"]  # not commit temporaries
    for name in others:
        (tmp_path / name).write_bytes(b"")
    assert remove_stale_temps(tmp_path) == [killed]
    assert sorted(os.listdir(tmp_path)) == sorted([live, *others])


def test_a_private_file_is_never_readable_by_others_while_it_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hostile review F1: the temporary of write_private was made 0644, then narrowed; another
    user who opened it in between read the secrets written after."""
    modes: list[int] = []
    real = fsutil.fcntl.flock

    def flock(fd: int, op: int) -> None:
        modes.append(os.fstat(fd).st_mode & 0o777)
        real(fd, op)

    monkeypatch.setattr(fsutil.fcntl, "flock", flock)
    fsutil.write_private(tmp_path / "userdata.txt", b"SECRET=1\n")
    assert modes and all(mode & 0o077 == 0 for mode in modes), [oct(m) for m in modes]
    assert (tmp_path / "userdata.txt").stat().st_mode & 0o777 == 0o600


def test_a_sweep_between_a_writers_create_and_lock_does_not_fail_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hostile review F2: a sweep of stale temporaries that came between a writer's create and
    its lock took the live temporary; the writer then failed at the rename."""
    real = fsutil.fcntl.flock
    swept: list[str] = []

    def flock(fd: int, op: int) -> None:
        if op == fsutil.fcntl.LOCK_EX and not swept:  # the writer's blocking lock: sweep first
            swept.extend(fsutil.remove_stale_temps(tmp_path) or ["-"])
        real(fd, op)

    monkeypatch.setattr(fsutil.fcntl, "flock", flock)
    fsutil.write_atomic(tmp_path / "initrd.img", b"data")
    assert swept and swept != ["-"]  # the sweep did take the first temporary
    assert (tmp_path / "initrd.img").read_bytes() == b"data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["initrd.img"]
