"""The sandbox the init runs in for real, under busybox sh, in a throw-away root: a directory
laid out like the base layer, the rendered /init and its parts, the host's static busybox as PID
1 of its own namespaces (tests/unit/test_init.py says why and what is a stub). test_init.py and
test_jdkhint.py boot it through the ``guest`` fixture (tests/unit/conftest.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from imagebuilder.layers.base import APPLETS, init_files
from imagebuilder.targets.qemu.run import EXIT_RE

BUSYBOX = shutil.which("busybox")
CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"

# The app: writes out its environment and its arguments, one a line, then exits 7.
APP_PROGRAM = ('BEGIN { for (k in ENVIRON) printf "%s=%s\\n", k, ENVIRON[k] > "/tmp/app.env";'
               ' for (i = 1; i < ARGC; i++) printf "%s\\n", ARGV[i] > "/tmp/app.args"; exit 7 }')
APP_CONF = f"""IMAGE_NAME=hello
IMAGE_VERSION=1.0.0
APP_PORT=8080
set -- /usr/bin/awk '{APP_PROGRAM}' 'one arg' '$HOME' 'x=y'
"""
STUBS = {
    # mount: records its arguments; refuses `-o remount,ro /` when /fail-ro exists, and the
    # overlay on /app (as a kernel without overlayfs does) when /fail-overlay exists.
    "usr/sbin/mount": '#!/bin/sh\necho "$*" >> /stub.log\n'
                      '[ "$*" = "-o remount,ro /" ] && [ -e /fail-ro ] && exit 1\n'
                      '[ "$1 $2" = "-t overlay" ] && [ -e /fail-overlay ] && {\n'
                      '    echo "mount: mounting overlay on /app failed: No such device" >&2\n'
                      '    exit 1\n}\nexit 0\n',
    "usr/sbin/poweroff": '#!/bin/sh\necho "poweroff $*" >> /stub.log\n'
                         'exec /usr/bin/busybox poweroff -f -n\n',
    **{f"usr/sbin/{name}": "#!/bin/sh\nexit 1\n"
       for name in ("modprobe", "ip", "udhcpc", "nc", "sync", "umount")},
}


# Own PID, mount, network, UTS and IPC namespaces: the init is PID 1 of its own namespace,
# where poweroff (reboot(2)) ends that namespace and nothing else.
SANDBOX = ["unshare", "--pid", "--fork", "--kill-child", "--mount", "--net", "--uts", "--ipc"]


def _why_not() -> str | None:
    """Why the sandbox cannot run here (None if it can)."""
    if BUSYBOX is None:
        return "busybox not installed (apt-get install busybox-static)"
    if os.geteuid() != 0:
        return "needs root (start-stop-daemon switches to the app's uid 1000)"
    if shutil.which("unshare") is None:
        return "unshare not installed (apt-get install util-linux)"
    result = subprocess.run([*SANDBOX, "true"], capture_output=True, check=False)
    if result.returncode != 0:
        return "namespaces are not allowed here (unshare --pid --mount --net failed)"
    return None


WHY_NOT = _why_not()
#: The mark of every test that runs the init in the sandbox.
needs_sandbox = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")


@dataclass
class Guest:
    root: Path

    def boot(self, env: bytes | None, *, fail_ro: bool = False) -> Booted:
        if env is not None:
            (self.root / "etc/imagebuilder/env").write_bytes(env)
        if fail_ro:
            (self.root / "fail-ro").write_bytes(b"")
        result = subprocess.run(
            [*SANDBOX, CHROOT, str(self.root), "/init"],
            capture_output=True, check=False, timeout=120, env={"PATH": os.environ["PATH"]})
        console = (self.root / "dev/console").read_text(errors="replace")
        return Booted(self.root, result.returncode, console + result.stderr.decode())


@dataclass
class Booted:
    root: Path
    returncode: int
    console: str

    def _lines(self, name: str) -> list[str] | None:
        path = self.root / "tmp" / name
        return path.read_text().splitlines() if path.exists() else None

    @property
    def app_env(self) -> dict[str, str] | None:
        lines = self._lines("app.env")
        return None if lines is None else dict(line.split("=", 1) for line in lines)

    @property
    def app_args(self) -> list[str] | None:
        return self._lines("app.args")

    @property
    def stub_log(self) -> list[str]:
        path = self.root / "stub.log"
        return path.read_text().splitlines() if path.exists() else []

    @property
    def exit_status(self) -> int | None:
        match = EXIT_RE.search(self.console.encode())
        return int(match[1]) if match else None


def make_guest(root: Path) -> Guest:
    """``root`` laid out like the base and app layers, with the real init and env.awk (the
    ``guest`` fixture of tests/unit/conftest.py)."""
    for d in ("usr/bin", "usr/sbin", "proc", "sys", "dev", "run", "tmp", "etc/imagebuilder",
              "app", "opt/java", "usr/share/imagebuilder"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin")):
        (root / link).symlink_to(target)
    assert BUSYBOX is not None
    shutil.copy(BUSYBOX, root / "usr/bin/busybox")
    for applet in APPLETS:
        (root / "usr/bin" / applet).symlink_to("busybox")
    for path, text in STUBS.items():
        (root / path).unlink(missing_ok=True)
        (root / path).write_text(text)
        (root / path).chmod(0o755)
    (root / "proc/uptime").write_text("12.34 5.67\n")
    (root / "dev/null").write_bytes(b"")
    (root / "dev/console").write_bytes(b"")
    for path, (data, mode) in init_files().items():
        (root / path).write_bytes(data)
        (root / path).chmod(mode)
    (root / "etc/imagebuilder/app.conf").write_text(APP_CONF)
    (root / "etc/passwd").write_text("root:x:0:0::/:/bin/false\napp:x:1000:1000::/app:/bin/false\n")
    (root / "etc/group").write_text("root:x:0:\napp:x:1000:\n")
    (root / "tmp").chmod(0o1777)
    return Guest(root)
