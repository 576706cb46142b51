"""VMs running in the background (``run --wait``), and signalling only the process that is one.

Each VM has a run directory ``run/<id>`` holding QEMU's pid file, its QMP socket and console log.
A pid file outlives its process: after a crash or a reboot the number may belong to anything
else, and signalling it would hit an innocent process. So a process counts as the VM only after
proof: a pidfd is opened on the pid (it then names that one process, whatever happens to the
number), and /proc/PID/cmdline, read after that, has ``-pidfile`` naming the VM's own pid file
(the same file, however its path was spelt), which only the QEMU started for this run directory
has on its command line. Signals go through the pidfd, so
even a process that exits and has its number reused meanwhile is never hit.

VM ids are ``NAME-XXXXXXXX`` made of safe characters only (an image name's ``/`` becomes ``-``),
so an id is one directory entry and nothing outside ``run/`` is ever listed or removed.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import secrets
import select
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ...errors import UserError

_ID_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,80}-[0-9a-f]{8}")


def new_vm_id(image_name: str) -> str:
    """A fresh VM id for an image: its name with every unsafe character replaced."""
    safe = re.sub(r"[^a-z0-9._-]+", "-", image_name.lower()).strip("-._")[:80] or "vm"
    return f"{safe}-{secrets.token_hex(4)}"


@dataclass
class Vm:
    """A VM started in the background by ``run --wait``."""

    id: str
    dir: Path

    @property
    def pid(self) -> int | None:
        try:
            return int((self.dir / "qemu.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    @contextlib.contextmanager
    def process(self) -> Iterator[int | None]:
        """A pidfd of this VM's QEMU, proven to be it (see the module docstring), or None if
        no such process runs."""
        fd = self._pidfd()
        try:
            yield fd
        finally:
            if fd is not None:
                os.close(fd)

    def _pidfd(self) -> int | None:
        pid = self.pid
        if pid is None or pid <= 0:
            return None
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return None
        if not _names_pid_file(pid, self.dir / "qemu.pid"):
            os.close(fd)
            return None
        return fd

    def alive(self) -> bool:
        with self.process() as fd:
            return fd is not None


def _argv(pid: int) -> list[bytes]:
    """The command line of process ``pid``; empty while it is still in exec (retried briefly)
    or once it is a zombie."""
    for _ in range(50):
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return []
        if raw:
            return raw.split(b"\0")
        time.sleep(0.01)
    return []


def _names_pid_file(pid: int, pid_file: Path) -> bool:
    """Whether process ``pid`` was started with ``-pidfile`` naming ``pid_file``: the same file
    (device and inode), however the path was spelt (relative to its working directory, through
    a symlink)."""
    argv = _argv(pid)
    try:
        want = os.stat(pid_file)
    except OSError:
        return False
    for flag, value in itertools.pairwise(argv):
        if flag != b"-pidfile":
            continue
        path = os.fsdecode(value)
        try:
            if not os.path.isabs(path):
                path = os.path.join(os.readlink(f"/proc/{pid}/cwd"), path)
            got = os.stat(path)
        except OSError:
            return False
        return (got.st_dev, got.st_ino) == (want.st_dev, want.st_ino)
    return False


def running(runs: Path) -> list[Vm]:
    """VMs started with ``run --wait`` that are still running; run directories whose VM is
    gone are removed (only entries that are VM ids: nothing else in ``runs`` is touched)."""
    if not runs.is_dir():
        return []
    vms = [Vm(d.name, d) for d in sorted(runs.iterdir())
           if _ID_RE.fullmatch(d.name) and d.is_dir() and not d.is_symlink()]
    for vm in vms:
        if not vm.alive():
            shutil.rmtree(vm.dir, ignore_errors=True)
    return [vm for vm in vms if vm.dir.exists()]


def find_vm(runs: Path, vm_id: str) -> Vm:
    if _ID_RE.fullmatch(vm_id):
        for vm in running(runs):
            if vm.id == vm_id:
                return vm
    known = ", ".join(vm.id for vm in running(runs)) or "none"
    raise UserError(f"no running VM '{vm_id}' (running: {known})")


def _exited(fd: int, timeout: float) -> bool:
    """Whether the process of pidfd ``fd`` exits within ``timeout`` seconds."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(0, int(timeout * 1000))))


def stop_vm(vm: Vm, powerdown: Callable[[Path], bool], timeout: float) -> None:
    """Press the power button (``powerdown(run_dir)``, False if the monitor did not answer),
    wait for QEMU to exit, kill it if it does not; signals only a process proven to be the VM.
    The run directory goes in any case."""
    with vm.process() as fd:
        if fd is not None:
            deadline = time.monotonic() + timeout
            if not powerdown(vm.dir):
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(fd, signal.SIGTERM)
            if not _exited(fd, deadline - time.monotonic()):
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                _exited(fd, 5)
    shutil.rmtree(vm.dir, ignore_errors=True)
