"""The training run's sandbox (imagebuilder/sandbox/, through imagebuilder/layers/aot.py's entry
point) against an app that tries every way out: a static C program (sandbox_escape/escape.c,
compiled here with gcc -static) in a root of the host's busybox. And what the build reads back from
a root the app had its hands on: links planted for the archive and the log, a huge log; secrets
never on a command line; nothing of the sandbox outliving a killed builder.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from imagebuilder import sandbox
from imagebuilder.errors import HostError
from imagebuilder.layers import aot
from imagebuilder.layers.base import APP_UID
from tests.unit.sandbox_fixture import busybox_root

GCC = shutil.which("gcc")
ESCAPE_C = Path(__file__).with_name("sandbox_escape") / "escape.c"
SECRET = "host secret: root:$6$not-for-the-app"
LOG = ".imagebuilder/app.log"


def _busybox_root(root: Path) -> Path:
    return busybox_root(root, ("sh", "sleep", "cat", "ln", "rm", "head", "mkfifo", "echo",
                               "httpd", "yes"))


@pytest.fixture(scope="module")
def escape(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if GCC is None:
        pytest.skip("needs gcc and libc6-dev (a static libc)")
    out = tmp_path_factory.mktemp("escape") / "escape"
    subprocess.run([GCC, "-static", "-pthread", "-O1", "-o", str(out), str(ESCAPE_C)],
                   check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def escaped(escape: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """The escape program's report, by the first word of its lines, and the host's files."""
    base = tmp_path_factory.mktemp("sandbox")
    root = _busybox_root(base / "root")
    shutil.copy(escape, root / "escape")
    secret, marker = base / "secret", base / "marker"
    secret.write_text(SECRET)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        argv = ["/escape", str(secret), str(marker), str(listener.getsockname()[1])]
        outcome = aot.run_app(root, argv, {"PATH": aot.GUEST_PATH}, url=None, seconds=30,
                              timeout=30)
    assert (outcome.state, outcome.status) == ("exited", 0), outcome.log
    report: dict[str, list[str]] = {}
    for line in outcome.log.splitlines():
        word, _, rest = line.partition(" ")
        report.setdefault(word, []).append(rest)
    report["host"] = [secret.read_text(), str(marker.exists())]
    return report


ATTEMPTS = ["chroot", "proc1root", "procselfroot", "procpids", "direct", "mount", "bindmount",
            "unshare", "clonens", "ptrace1", "traceme", "proc1mem", "setuid0", "hostloopback",
            "outside", "setns", "umount2", "pivot_root", "process_vm_readv", "process_vm_writev",
            "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "open_by_handle_at",
            "name_to_handle_at", "init_module", "finit_module", "delete_module", "kexec_load",
            "kexec_file_load", "reboot", "swapon", "swapoff", "fsopen", "fsmount", "move_mount",
            "open_tree", "fsconfig", "fspick", "mount_setattr", "clone3", "raisenproc",
            "raisecore"]


@pytest.mark.parametrize("attempt", ATTEMPTS)
def test_every_way_out_is_blocked(escaped: dict[str, list[str]], attempt: str) -> None:
    assert [r.split()[0] for r in escaped[attempt]] == ["blocked"], escaped[attempt]


def test_the_app_may_not_take_every_pid_of_the_host(escaped: dict[str, list[str]]) -> None:
    """At most PROCESS_LIMIT processes (and threads) at once, a limit the app cannot raise."""
    from imagebuilder.sandbox.inside import PROCESS_LIMIT
    assert escaped["nproc"] == [f"{PROCESS_LIMIT} {PROCESS_LIMIT}"]


def test_the_host_files_are_untouched(escaped: dict[str, list[str]]) -> None:
    assert escaped["host"] == [SECRET, "False"]


def test_the_app_is_the_image_user_without_privileges(escaped: dict[str, list[str]]) -> None:
    status = {line.split(":")[0]: line.split(":")[1].split() for line in escaped["status"]}
    assert status["Uid"] == [str(APP_UID)] * 4
    assert status["Gid"] == [str(APP_UID)] * 4
    for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert status[caps] == ["0000000000000000"], caps
    assert status["NoNewPrivs"] == ["1"]
    assert status["Seccomp"] == ["2"]
    # Threads still work: glibc falls back from clone3 (ENOSYS) to clone, as the JVM's do.
    assert escaped["thread"] == ["ran"]


def test_no_host_mount_is_visible(escaped: dict[str, list[str]]) -> None:
    points = sorted(line.split()[4] for line in escaped["mountinfo"])
    assert points == sorted(
        ["/", "/proc", "/dev", "/dev/null", "/dev/zero", "/dev/full", "/dev/random",
         "/dev/urandom", "/dev/tty", "/dev/shm", "/tmp"])


def test_loopback_is_the_only_network(escaped: dict[str, list[str]]) -> None:
    assert [line.split(":")[0].strip() for line in escaped["netdev"]] == ["lo"]


def _app(root: Path, name: str, script: str) -> str:
    (root / "app" / name).write_text("#!/bin/sh\n" + script)
    (root / "app" / name).chmod(0o755)
    return f"/app/{name}"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return _busybox_root(tmp_path / "root")


def _train(root: Path, app: str, **kwargs: object) -> tuple[Path, aot.Outcome]:
    options = {"url": "http://127.0.0.1:8080/", "seconds": 0, "timeout": 30, **kwargs}
    env = aot.guest_env(8080, {}, None)
    return aot.train(root, [app], env, 21, **options)  # type: ignore[arg-type]


SERVE = "busybox httpd -f -p 127.0.0.1:$PORT -h /www &\n"


@pytest.mark.parametrize("plant", [f"ln -s {{secret}} {aot.archive_path(21)}",
                                   "rm -r opt/aot && ln -s {secret_dir} opt/aot",
                                   f"mkfifo {aot.archive_path(21)}"])
def test_an_archive_planted_as_a_link_is_never_read(root: Path, tmp_path: Path, plant: str
                                                    ) -> None:
    secret = tmp_path / "app.jsa"
    secret.write_text(SECRET)
    (root / "opt").chmod(0o777)  # as if the app could write all of its root
    command = plant.format(secret=secret, secret_dir=tmp_path)
    app = _app(root, "plant", f"trap 'cd / && {command}; exit 0' TERM\n{SERVE}"
                              "while :; do sleep 0.1; done\n")
    with pytest.raises(aot.TrainingError, match=r"^training run for \[jvm\] aot: the app left "
                       r"no usable archive \(/opt/aot/app.jsa is a symbolic link or not a "
                       r"regular file .*\); nothing was read from it$") as caught:
        _train(root, app)
    assert SECRET not in str(caught.value)
    assert not (tmp_path / "root.app.jsa").exists()


def test_a_log_planted_as_a_link_is_never_quoted(root: Path, tmp_path: Path) -> None:
    secret = tmp_path / "shadow"
    secret.write_text(SECRET + "\n")
    app = _app(root, "plant-log", f"rm /.imagebuilder/app.log\nln -s {secret} "
                                  "/.imagebuilder/app.log\nexit 3\n")
    with pytest.raises(aot.TrainingError, match=r"the app exited with status 3 .* its last lines: "
                       r"\(the app's output is unreadable: /.imagebuilder/app.log is a symbolic "
                       r"link or not a regular file") as caught:
        _train(root, app)
    assert SECRET not in str(caught.value)


def test_a_huge_log_is_read_capped(root: Path) -> None:
    # 4 MiB of output, then a line of 32 KiB: the error quotes 400 bytes of it.
    app = _app(root, "loud", "yes 'a line of noise' 2>/dev/null | head -c 4194304\n"
                             "head -c 32768 /dev/zero | busybox tr '\\0' x\necho\n"
                             "echo 'the last words'\nexit 1\n")
    os.symlink("busybox", root / "bin/tr")
    with pytest.raises(aot.TrainingError) as caught:
        _train(root, app)
    message = str(caught.value)
    assert message.endswith(f"its last lines: {'a line of noise | ' * 18}{'x' * 400} | the last "
                            "words"), message[-600:]


def test_the_app_writes_in_its_directory_as_in_the_guest(root: Path) -> None:
    """HSQLDB's documented start makes its database in the working directory: /app is writable
    in the training run as it is in the guest (a RAM overlay there), the image's files in it
    are not (with a root builder; an unprivileged builder owns the whole root)."""
    (root / "app/app.jar").write_text("the image's jar")
    app = _app(root, "writer", "echo locked > /app/test.lck || exit 4\n"
                               "echo changed >> /app/app.jar 2>/dev/null\n"
                               f"trap 'echo archive > /{aot.archive_path(21)}; exit 0' TERM\n"
                               f"{SERVE}while :; do sleep 0.1; done\n")
    _train(root, app)
    assert (root / "app/test.lck").read_text() == "locked\n"
    if os.geteuid() == 0:
        assert (root / "app/app.jar").read_text() == "the image's jar"


def test_escape_sequences_in_the_log_reach_no_terminal(root: Path) -> None:
    """A clipboard write (OSC 52) and a line rewritten into a fake success (CSI 2K, CR) are
    quoted as visible escapes, in the error and in the line the command line prints."""
    app = _app(root, "esc", "printf 'normal\\n\\033]52;c;ZWNobw==\\007\\033[2K\\r"
                            "build OK\\n'\nexit 1\n")
    with pytest.raises(aot.TrainingError) as caught:
        _train(root, app)
    message = str(caught.value)
    assert message.endswith(r"normal | \x1b]52;c;ZWNobw==\x07\x1b[2K | build OK"), message
    assert message.isprintable()


def test_an_app_ignoring_sigterm_is_killed_after_the_grace(root: Path) -> None:
    app = _app(root, "stubborn", f"trap '' TERM\n{SERVE}while :; do sleep 0.1; done\n")
    outcome = aot.run_app(root, [app], aot.guest_env(8080, {}, None),
                          url="http://127.0.0.1:8080/", seconds=0, timeout=30, stop=(1, 1))
    assert (outcome.state, outcome.killed) == ("ready", True)
    assert 1 <= outcome.stop < 5
    assert outcome.total < 15


def test_the_grace_lasts_while_the_archive_grows(root: Path) -> None:
    # Like JDK 25 assembling its AOT cache after SIGTERM: 2.5 s of writing, with a 1 s grace.
    app = _app(root, "slow-writer", "trap 'for i in 1 2 3 4 5; do echo $i >> /opt/aot/app.jsa; "
                                    "sleep 0.5; done; exit 0' TERM\n"
                                    f"{SERVE}while :; do sleep 0.1; done\n")
    (root / aot.ARCHIVE_DIR).mkdir(parents=True)
    outcome = aot.run_app(root, [app], aot.guest_env(8080, {}, None),
                          url="http://127.0.0.1:8080/", seconds=0, timeout=30, stop=(1, 60))
    assert (outcome.state, outcome.status, outcome.killed) == ("ready", 0, False)
    assert (root / "opt/aot/app.jsa").read_text() == "1\n2\n3\n4\n5\n"


def _cmdlines() -> dict[int, bytes]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found[int(entry.name)] = (entry / "cmdline").read_bytes()
            except OSError:
                continue
    return found


def _host_uid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert len(set(uids)) == 1, uids
    return int(uids[0])


def _wait_for(path: Path, text: str, seconds: float = 20) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} never said {text!r}")


def test_secrets_reach_the_app_but_no_command_line(root: Path) -> None:
    token = f"s3cret-{uuid.uuid4().hex}"
    app = _app(root, "secretive", '[ "$DB_PASSWORD" = "$1" ] || exit 9\n'
                                  'echo "started with $# args"\nsleep 1\n')
    log = root / LOG
    result: list[aot.Outcome] = []
    env = aot.guest_env(None, {"DB_PASSWORD": token}, "test")
    runner = threading.Thread(target=lambda: result.append(aot.run_app(
        root, ["/bin/sh", app, "-"], env, url=None, seconds=30, timeout=30)))
    # The app compares its argument with the secret: give it the secret's name, not its value.
    (root / "app/secretive").write_text((root / "app/secretive").read_text().replace(
        '"$1"', f'"{token}"'))
    runner.start()
    try:
        _wait_for(log, "started with 1 args")
        leaks = {pid: c for pid, c in _cmdlines().items() if token.encode() in c}
        apps = [pid for pid, c in _cmdlines().items() if c.startswith(b"/bin/sh\0/app/secretive")]
        uids = [_host_uid(pid) for pid in apps]
    finally:
        runner.join()
    assert leaks == {}
    # On the host the app is the builder, or nobody when the builder is root.
    assert apps and set(uids) == {os.geteuid() or 65534}, (apps, uids)
    assert result[0].state == "exited" and result[0].status == 0, result[0].log


def test_an_unprivileged_builder_maps_its_own_ids(root: Path, monkeypatch: pytest.MonkeyPatch
                                                  ) -> None:
    # What a builder that is not root does (root maps nobody instead, as the test above shows).
    monkeypatch.setattr(sandbox, "outer_ids", lambda: (os.geteuid(), os.getegid()))
    app = _app(root, "who", 'echo "uid $(id -u) gid $(id -g)"\n')
    outcome = aot.run_app(root, [app], {"PATH": aot.GUEST_PATH}, url=None, seconds=30, timeout=30)
    assert (outcome.state, outcome.status, outcome.log) == ("exited", 0, "uid 1000 gid 1000\n")


def test_the_host_name_is_the_images(root: Path) -> None:
    # As the guest's kernel has it (an app calling InetAddress.getLocalHost() resolves it in the
    # image's /etc/hosts), not the build machine's.
    (root / "etc").mkdir()
    (root / "etc/hostname").write_text("imagebuilder\n")
    app = _app(root, "name", "cat /proc/sys/kernel/hostname\n")
    outcome = aot.run_app(root, [app], {"PATH": aot.GUEST_PATH}, url=None, seconds=30, timeout=30)
    assert outcome.log == "imagebuilder\n"


BUILDER = """
import sys
from pathlib import Path
from imagebuilder import sandbox
from imagebuilder.layers import aot
aot.run_app(Path(sys.argv[1]), [sys.argv[2]], aot.guest_env(8080, {}, None),
            url="http://127.0.0.1:8080/never", seconds=0, timeout=120)
"""


def _alive(token: str) -> list[int]:
    return [pid for pid, c in _cmdlines().items() if token.encode() in c and pid != os.getpid()]


def test_nothing_outlives_a_killed_builder(tmp_path: Path) -> None:
    token = uuid.uuid4().hex
    root = _busybox_root(tmp_path / f"root-{token}")
    app = _app(root, f"daemon-{token}", "trap '' TERM\necho started\n"
                                        "(trap '' TERM; while :; do sleep 1; done) &\n"
                                        "while :; do sleep 1; done\n")
    builder = subprocess.Popen([sys.executable, "-c", BUILDER, str(root), app],
                               start_new_session=True)
    try:
        _wait_for(root / LOG, "started")
        # The sandbox (its root on the command line), its PID 1 and watcher, the app.
        assert len(_alive(token)) >= 4, _alive(token)
        builder.send_signal(signal.SIGKILL)
        builder.wait()
        end = time.monotonic() + 5
        while _alive(token) and time.monotonic() < end:
            time.sleep(0.05)
        assert _alive(token) == []
    finally:
        for pid in _alive(token):
            os.kill(pid, signal.SIGKILL)
        if builder.poll() is None:
            builder.kill()
            builder.wait()



def test_the_writable_directories_are_made_without_following_links(tmp_path: Path) -> None:
    """A root whose /opt is a link out of it: nothing is made or handed to the app outside."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    os.symlink(outside, root / "opt")
    with pytest.raises(HostError, match=r"the image's /opt/aot is not a directory of its own"):
        sandbox.writable(root, "opt/aot")
    assert list(outside.iterdir()) == []
    sandbox.writable(root, ".imagebuilder/deeper")
    assert (root / ".imagebuilder/deeper").is_dir()
