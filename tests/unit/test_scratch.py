"""Scratch left by a command killed with SIGKILL (build sysroots, cache and store temporaries,
half-written exports) is removed by the next command working in the same place, or by ``gc``;
scratch of a live command is never touched. Real processes, really killed."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagebuilder.cli import main
from imagebuilder.formats import atomic_output
from imagebuilder.scratch import remove_stale, scratch_dir
from imagebuilder.store.cache import Cache
from imagebuilder.store.layout import KERNEL_MEDIA_TYPE, Store

CHILD = """
import os, sys, time
from pathlib import Path
from imagebuilder.store.cache import Cache
from imagebuilder.formats import atomic_output
from imagebuilder.scratch import scratch_dir
from imagebuilder.store.layout import Store
home = Path(sys.argv[1])
with scratch_dir(home / "tmp") as scratch:
    (scratch / "sysroot").mkdir()
    (scratch / "sysroot" / "big").write_bytes(b"x" * 100000)
    store = Store(home / "store")
    with store.staging() as staging:
        (staging / "blob").write_bytes(b"half a blob")
        cache = Cache(home / "cache")
        def produce(dest):
            dest.write_bytes(b"half an output")
            with atomic_output(home / "out" / "disk.raw") as fd:
                os.write(fd, b"half a disk")
                print("ready", flush=True)
                time.sleep(300)
        cache.store("ab" * 16, produce)
"""


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _start(home: Path, children: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    (home / "out").mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(CHILD), str(home)],
                            stdout=subprocess.PIPE, text=True)
    children.append(proc)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def _entries(home: Path) -> dict[str, list[str]]:
    return {d: sorted(os.listdir(home / d)) for d in ("tmp", "store/.tmp", "cache/tmp", "out")}


def test_a_live_commands_scratch_is_kept(tmp_path: Path, children: list[subprocess.Popen[str]]
                                         ) -> None:
    _start(tmp_path, children)
    before = _entries(tmp_path)
    assert all(before.values()), before
    Cache(tmp_path / "cache").store("cd" * 16, lambda dest: dest.write_bytes(b"other"))
    Store(tmp_path / "store").put_image(
        "x:1", {}, [Store(tmp_path / "store").add_blob_bytes(b"k", KERNEL_MEDIA_TYPE)])
    with scratch_dir(tmp_path / "tmp"):
        pass
    with atomic_output(tmp_path / "out" / "disk.raw") as fd:
        os.write(fd, b"a whole disk")
    after = _entries(tmp_path)
    assert set(before["tmp"]) <= set(after["tmp"])
    assert set(before["store/.tmp"]) <= set(after["store/.tmp"])
    assert set(before["cache/tmp"]) <= set(after["cache/tmp"])
    assert set(before["out"]) | {"disk.raw"} == set(after["out"])


def test_the_next_command_removes_a_killed_commands_scratch(
        tmp_path: Path, children: list[subprocess.Popen[str]]) -> None:
    proc = _start(tmp_path, children)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = _entries(tmp_path)
    assert [n for n in left["out"] if n.endswith(".tmp")]
    assert any(n.endswith(".owner") for n in left["cache/tmp"])

    Cache(tmp_path / "cache").store("cd" * 16, lambda dest: dest.write_bytes(b"other"))
    store = Store(tmp_path / "store")
    store.put_image("x:1", {}, [store.add_blob_bytes(b"k", KERNEL_MEDIA_TYPE)])
    with scratch_dir(tmp_path / "tmp"):
        pass
    with atomic_output(tmp_path / "out" / "disk.raw") as fd:
        os.write(fd, b"a whole disk")
    after = _entries(tmp_path)
    mine = {d: [n for n in names if n.startswith(f"{os.getpid()}-")
                or n.startswith(f"imagebuilder-{os.getpid()}-")] for d, names in after.items()}
    assert {d: sorted(set(names) - set(mine[d])) for d, names in after.items()} == {
        "tmp": [], "store/.tmp": [], "cache/tmp": [], "out": ["disk.raw"]}
    assert (tmp_path / "out" / "disk.raw").read_bytes() == b"a whole disk"


def test_gc_removes_a_killed_commands_scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              children: list[subprocess.Popen[str]],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("IMAGEBUILDER_HOME", str(home))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "systmp"))
    (tmp_path / "systmp").mkdir()
    proc = _start(home, children)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    capsys.readouterr()
    assert main(["check", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["stale_scratch"] >= 4
    assert main(["gc", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["scratch_removed"] >= 4
    assert os.listdir(home / "store" / ".tmp") == []
    assert os.listdir(home / "cache" / "tmp") == []
    assert remove_stale(home / "tmp") != []  # not gc's: the child's own scratch parent
    assert main(["check", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stale_scratch"] == 0


def test_check_does_not_count_a_live_commands_scratch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, children: list[subprocess.Popen[str]],
        capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("IMAGEBUILDER_HOME", str(home))
    _start(home, children)
    capsys.readouterr()
    assert main(["check", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stale_scratch"] == 0


def _deep_tree(top: Path, levels: int) -> None:
    """``levels`` nested directories under ``top``, a file and a link at the bottom, made with
    directory fds (a path that long is past PATH_MAX)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(levels):
        os.mkdir("d", dir_fd=fd)
        deeper = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = deeper
    os.close(os.open("f", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))
    os.symlink("/etc", "link", dir_fd=fd)
    os.chmod(fd, 0)  # an app's own chmod 0 on the bottom directory
    os.close(fd)


def test_a_tree_thousands_of_levels_deep_is_removed(tmp_path: Path) -> None:
    """An AOT training app can leave a tree deeper than Python's recursion limit in its root:
    the scratch directory still goes (shutil.rmtree raised RecursionError), for the build that
    made it and as a stale one of a dead build. The link is removed, never followed."""
    with scratch_dir(tmp_path) as scratch:
        _deep_tree(scratch, 1200)
    assert not scratch.exists()
    assert Path("/etc/hostname").exists() or Path("/etc").is_dir()

    stale = tmp_path / "stale"
    stale.mkdir()
    code = textwrap.dedent(f"""
        import os, sys
        from imagebuilder.scratch import scratch_dir
        with scratch_dir({str(stale)!r}) as s:
            print(s, flush=True)
            os.kill(os.getpid(), 9)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    left = Path(out.stdout.strip())
    _deep_tree(left, 1200)
    assert remove_stale(stale, "imagebuilder-")
    assert not left.exists()


def _leftovers(home: Path, digest: str) -> list[Path]:
    """Temporary files as a ``run`` killed while it wrote its initrd, kernel and disk leaves
    them (its flock gone with it)."""
    hexdigest = digest.removeprefix("sha256:")
    paths = [home / "cache" / "initrd" / f".{hexdigest}.cpio.0123456789ab.tmp",
             home / "cache" / "initrd" / f".{hexdigest}.initrd.23456789abcd.tmp",
             home / "cache" / "kernel" / f".{hexdigest}.vmlinux.456789abcdef.tmp",
             home / "cache" / "disks" / f".{hexdigest}.raw.6789abcdef01.tmp"]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half an initrd")
    return paths


@pytest.mark.parametrize("command", [["run", "hello:1.0.0"], ["gc"]])
def test_the_next_command_removes_a_killed_runs_temporary_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str],
        capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("IMAGEBUILDER_HOME", str(home))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "no-qemu"))  # run stops once it needs QEMU
    store = Store(home / "store")
    digest = store.put_image("hello:1.0.0", {"name": "hello", "version": "1.0.0"}, [
        store.add_blob_bytes(b"not a kernel", KERNEL_MEDIA_TYPE),
        store.add_blob_bytes(b"a layer", KERNEL_MEDIA_TYPE)])
    left = _leftovers(home, digest)
    live = home / "cache" / "initrd" / ".other.initrd.0123456789ab.tmp"
    with open(live, "wb") as held:  # a run writing now: kept
        fcntl.flock(held, fcntl.LOCK_EX)
        assert main(command) == (1 if command[0] == "run" else 0)  # run: no QEMU here
        assert [path for path in left if path.exists()] == []
        assert live.exists()
    assert "Traceback" not in capsys.readouterr().err
