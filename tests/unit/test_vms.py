"""``ps`` and ``stop`` signal only a process proven to be the VM: a stale ``qemu.pid`` naming
some other live process is never signalled, and VM ids are safe names, so an image name with
``/`` cannot make ``ps`` remove another VM's run directory. Real processes, no QEMU."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imagebuilder.cli import main
from imagebuilder.targets.qemu import run as qemu
from imagebuilder.targets.qemu import vms


@pytest.fixture
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("IMAGEBUILDER_HOME", str(tmp_path / "home"))
    path = tmp_path / "home" / "run"
    path.mkdir(parents=True)
    return path


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


def _sleeper(procs: list[subprocess.Popen[bytes]], *args: str) -> subprocess.Popen[bytes]:
    """A live process; ``args`` end up on its command line (as QEMU's -pidfile would)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", *args])
    procs.append(proc)
    return proc


def _run_dir(runs: Path, vm_id: str, pid: int) -> Path:
    d = runs / vm_id
    d.mkdir(parents=True)
    (d / "qemu.pid").write_text(f"{pid}\n")
    (d / "image").write_text("hello:1.0.0 sha256:x\n")
    return d


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_stale_pid_file_naming_another_process_is_never_signalled(
        runs: Path, procs: Any, capsys: pytest.CaptureFixture[str]) -> None:
    innocent = _sleeper(procs)
    d = _run_dir(runs, "hello-0123abcd", innocent.pid)
    assert _cli(capsys, "stop", "hello-0123abcd")[0] == 2
    assert innocent.poll() is None
    d.mkdir(parents=True, exist_ok=True)
    (d / "qemu.pid").write_text(f"{innocent.pid}\n")
    qemu.stop_vm(vms.Vm("hello-0123abcd", d), timeout=1)
    assert innocent.poll() is None  # still alive: not signalled
    assert not d.exists()
    _run_dir(runs, "hello-4567abcd", innocent.pid)
    assert _cli(capsys, "ps", "--json") == (0, "[]\n", "")
    assert innocent.poll() is None


def test_stop_signals_the_process_that_is_the_vm(runs: Path, procs: Any,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    d = runs / "hello-89abcdef"
    vm = _sleeper(procs, "-pidfile", str(d / "qemu.pid"))
    _run_dir(runs, "hello-89abcdef", vm.pid)
    code, out, _ = _cli(capsys, "ps", "--json")
    assert (code, out) == (0, f'[{{"id": "hello-89abcdef", "pid": {vm.pid}}}]\n')
    # no QMP socket: the power button cannot be pressed, so SIGTERM through the pidfd
    assert _cli(capsys, "stop", "hello-89abcdef") == (0, "stopped hello-89abcdef\n", "")
    assert vm.wait(10) == -signal.SIGTERM
    assert not d.exists()


def test_vm_ids_are_safe_names_and_ps_touches_nothing_else(
        runs: Path, procs: Any, capsys: pytest.CaptureFixture[str]) -> None:
    vm_id = vms.new_vm_id("team/hello")
    assert vm_id.startswith("team-hello-") and "/" not in vm_id
    assert vms.new_vm_id("../..").startswith("vm-")
    # what an older version made of team/hello: run/team/hello-XXXXXXXX, a live VM in it
    nested = runs / "team" / "hello-00000000"
    vm = _sleeper(procs, "-pidfile", str(nested / "qemu.pid"))
    _run_dir(runs / "team", "hello-00000000", vm.pid)
    other = runs / "keep"
    other.mkdir()
    assert _cli(capsys, "ps", "--json") == (0, "[]\n", "")
    assert nested.exists() and other.exists()
    assert vm.poll() is None
    code, _, err = _cli(capsys, "stop", "team/hello-00000000")
    assert code == 2 and err.startswith("ERROR: no running VM 'team/hello-00000000'")
    code, _, _ = _cli(capsys, "stop", "../team")
    assert code == 2 and nested.exists() and vm.poll() is None


def test_the_vm_is_recognised_however_its_pid_file_path_was_spelt(
        runs: Path, procs: Any, tmp_path: Path) -> None:
    d = runs / "hello-0badcafe"
    d.mkdir()
    # started from the run directory with a relative path, then looked at through a symlink
    vm = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)",
                           "-pidfile", "qemu.pid"], cwd=d)
    procs.append(vm)
    (d / "qemu.pid").write_text(f"{vm.pid}\n")
    link = tmp_path / "link"
    link.symlink_to(runs)
    assert [v.id for v in vms.running(link)] == ["hello-0badcafe"]
    assert [v.id for v in vms.running(runs)] == ["hello-0badcafe"]
    assert vm.poll() is None
