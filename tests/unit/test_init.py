"""The init (templates/init.sh.j2 and its parts, templates/init/) run for real, under busybox
sh, in a throw-away root.

A QEMU boot costs minutes under TCG, so the init's handling of the environment is checked here:
the real rendered /init, its parts and helpers (all the base layer carries of templates/), run
by the host's static busybox as PID 1 of its own namespaces, chrooted into a directory laid out
like the base layer. Only what needs a real kernel and real devices is a stub: mount (which can
be told to refuse the read-only remount), the drivers and the network; poweroff records that it
ran before the real one ends the init's PID namespace. The sandbox needs root (start-stop-daemon
switches to the app's uid 1000). The app is busybox awk writing out exactly the environment it
was given, then exiting 7. The boot in tests/e2e/test_guest.py does the same in a real guest.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from imagebuilder.config.envlimits import TOTAL_MAX, VAR_MAX
from imagebuilder.layers.base import APPLETS, init_files
from imagebuilder.store.layout import Store
from imagebuilder.targets.qemu.memory import APP_FLOOR_MIB
from imagebuilder.targets.qemu.run import RunSpec, qemu_argv
from tests.unit.guest_fixture import (
    BUSYBOX,
    CHROOT,
    SANDBOX,
    Booted,
    Guest,
    needs_sandbox,
)
from tests.unit.qemu_fixture import fake_image as _image
from tests.unit.qemu_fixture import needs_qemu

needs_java = pytest.mark.skipif(shutil.which("javac") is None or shutil.which("java") is None,
                                reason="javac/java not installed (openjdk-17-jdk-headless)")
pytestmark = needs_sandbox


BASE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8",
            "JAVA_HOME": "/opt/java", "PORT": "8080"}

HOSTILE = (
    b"Content-Type: multipart/mixed; boundary=\"==BOUNDARY==\"\n"
    b"MIME-Version: 1.0\n"
    b"\n"
    b"--==BOUNDARY==\n"
    b"#cloud-config\n"
    b"runcmd:\n"
    b"  - [ sh, -c, 'echo pwned > /tmp/pwned' ]\n"
    b"export FOO=bar\n"
    b"1BAD=x\n"
    b"FOO-BAR=x\n"
    b"=nothing\n"
    b"IMAGEBUILDER_ENV=prod\n"
    b"GREETING=hello, $USER `id` $(id) \"quoted\" 'single'\r\n"
    b"IFS=x\n"
    b"PS4=+ \n"
    b"status=0\n"
    b"app_pid=1\n"
    b"program=/bin/sh\n"
    b"config=/dev/null\n"
    b"A==b=c\n"
    b"HOME=/root\n"
    b"LAST=no newline at the end"
)


def test_hostile_environment_never_stops_the_init(guest: Guest) -> None:
    booted = guest.boot(HOSTILE)
    assert booted.exit_status == 7, booted.console
    assert booted.app_env == {
        **BASE_ENV,
        "IMAGEBUILDER_ENV": "prod",
        "GREETING": "hello, $USER `id` $(id) \"quoted\" 'single'",
        "IFS": "x", "PS4": "+ ", "status": "0", "app_pid": "1", "program": "/bin/sh",
        "config": "/dev/null", "A": "=b=c", "LAST": "no newline at the end",
    }
    assert booted.app_args == ["one arg", "$HOME", "x=y"]
    skipped = re.findall(r"environment line (\d+) skipped: (.*)", booted.console)
    assert [int(n) for n, _ in skipped] == [1, 2, 4, 6, 7, 8, 9, 10, 11]
    assert {why for _, why in skipped} == {"not NAME=VALUE with NAME a shell variable name"}
    assert "environment prod from an initrd layer" in booted.console
    # No line of the file is ever echoed: it may hold a secret.
    assert "boundary" not in booted.console and "pwned" not in booted.console
    assert not (guest.root / "tmp/pwned").exists()
    assert booted.stub_log[-1] == "poweroff -f"
    assert "-o remount,ro /" in booted.stub_log


def test_ten_thousand_variables_all_reach_the_app(guest: Guest) -> None:
    """The app's argv is built in one pass: appending the lines one by one took time quadratic
    in their number (10,000: 9.4 s to 26 s; in one pass 0.4 s to 0.8 s, the whole sandboxed
    boot). The bound is loose, as test_aot's: it fails the quadratic way even on a quiet host."""
    env = {f"V{i}": f"{i} ${{x}} *" for i in range(10_000)}  # 178 KB: under TOTAL_MAX
    start = time.monotonic()
    booted = guest.boot("".join(f"{k}={v}\n" for k, v in env.items()).encode())
    seconds = time.monotonic() - start
    assert booted.exit_status == 7, booted.console
    assert seconds < 5, f"the init took {seconds:.1f} s to start an app with 10,000 variables"
    assert booted.app_env == {**BASE_ENV, **env}
    assert booted.app_args == ["one arg", "$HOME", "x=y"]


def test_app_environment_file_is_root_only(guest: Guest) -> None:
    booted = guest.boot(b"SECRET=s3cr3t\n")
    assert booted.exit_status == 7
    assert (guest.root / "run/imagebuilder").stat().st_mode & 0o777 == 0o700
    assert (guest.root / "run/imagebuilder/app.env").stat().st_mode & 0o777 == 0o600


def test_too_long_lines_are_skipped_and_the_rest_kept(guest: Guest) -> None:
    big = "B=" + "x" * (VAR_MAX - 1)  # one byte over
    # Enough lines that just fit to go over the total: the ones past it are skipped.
    count = TOTAL_MAX // (VAR_MAX + 1) + 1
    fits = [f"F{i}=" + "y" * (VAR_MAX - len(f"F{i}=")) for i in range(count)]
    lines = ["IMAGEBUILDER_ENV=test", big, *fits]
    booted = guest.boot(("\n".join(lines) + "\n").encode())
    assert booted.exit_status == 7, booted.console
    assert f"environment line 2 skipped: longer than {VAR_MAX} bytes" in booted.console
    assert booted.app_env is not None
    kept = [k for k in booted.app_env if k.startswith("F")]
    assert kept and len(kept) < count
    assert f"skipped: the environment would exceed {TOTAL_MAX} bytes" in booted.console
    assert "B" not in booted.app_env


def test_no_environment_gives_the_app_only_the_inits_variables(guest: Guest) -> None:
    booted = guest.boot(None)
    assert booted.exit_status == 7, booted.console
    assert booted.app_env == BASE_ENV
    assert "no environment config found" in booted.console


def test_a_root_that_stays_writable_powers_off_without_starting_the_app(guest: Guest) -> None:
    booted = guest.boot(b"IMAGEBUILDER_ENV=test\n", fail_ro=True)
    assert ("FATAL: cannot make the root filesystem read-only: not starting the app;"
            " powering off") in booted.console
    assert booted.app_env is None and booted.exit_status is None
    assert booted.stub_log[-1] == "poweroff -f"
    assert not (guest.root / "tmp/app.args").exists()


# -- a writable /app -------------------------------------------------------------------------------
# The app runs in /app, which is writable (an overlay on a tmpfs) while the root stays read-only.
# Here the mounts are real: the chroot's root is a bind mount of its own, which the init's
# `remount,ro /` makes read-only for real (a bind remount: the host's file system is untouched);
# /dev, /run and /tmp are bind mounts of their own, writable, as the guest's tmpfs are.

REAL_MOUNT = """#!/bin/sh
echo "$*" >> /run/stub.log
for target; do :; done
case "$*" in
    "-o remount,ro /") exec /usr/bin/busybox mount -o remount,bind,ro / / ;;
esac
case "$target" in
    /app | /run/imagebuilder/app-rw) exec /usr/bin/busybox mount "$@" ;;
esac
exit 0
"""
# The app does what HSQLDB's and ZooKeeper's default start does (a lock file in its working
# directory), then tries the image's own file in /app and the root, and exits 7.
WRITER_CONF = """IMAGE_NAME=writer
IMAGE_VERSION=1.0.0
APP_PORT=
set -- /usr/bin/sh -c 'echo lock > test.lck && cat test.lck > /tmp/wrote-cwd
{ echo x >> /app/app.jar; } 2> /tmp/jar.err
{ echo x > /etc/new; } 2> /tmp/root.err
exit 7'
"""


def _boot_with_real_mounts(guest: Guest) -> Booted:
    root = guest.root
    (root / "usr/sbin/mount").write_text(REAL_MOUNT)
    (root / "usr/sbin/poweroff").write_text(
        '#!/bin/sh\necho "poweroff $*" >> /run/stub.log\nexec /usr/bin/busybox poweroff -f -n\n')
    (root / "etc/imagebuilder/app.conf").write_text(WRITER_CONF)
    (root / "app/app.jar").write_text("the image's jar\n")
    binds = "\n".join(f"mount --bind {root / d} {root / d}" for d in ("", "dev", "run", "tmp"))
    script = f"set -e\n{binds}\nexec {CHROOT} {root} /init\n"
    result = subprocess.run([*SANDBOX, "sh", "-c", script], capture_output=True, check=False,
                            timeout=120, env={"PATH": os.environ["PATH"]})
    console = (root / "dev/console").read_text(errors="replace")
    return Booted(root, result.returncode, console + result.stderr.decode())


def test_the_app_writes_in_its_directory_in_ram_on_a_read_only_root(guest: Guest) -> None:
    booted = _boot_with_real_mounts(guest)
    root = guest.root
    assert booted.exit_status == 7, booted.console
    assert "/app is writable, in RAM: its writes vanish at power-off" in booted.console
    assert (root / "tmp/wrote-cwd").read_text() == "lock\n", booted.console
    # The root stays read-only, and the image's files in /app keep their owner (root).
    assert "Read-only file system" in (root / "tmp/root.err").read_text()
    assert "Permission denied" in (root / "tmp/jar.err").read_text()
    assert not (root / "etc/new").exists()
    # The writes went to RAM, never to the image.
    assert not (root / "app/test.lck").exists()
    assert (root / "app/app.jar").read_text() == "the image's jar\n"
    log = (root / "run/stub.log").read_text().splitlines()
    mounts = [line for line in log if line.startswith(("-o remount", "-t overlay"))]
    assert mounts == ["-o remount,ro /",
                      "-t overlay -o nosuid,nodev,lowerdir=/app,upperdir=/run/imagebuilder/app-rw"
                      "/upper,workdir=/run/imagebuilder/app-rw/work overlay /app"]


def test_without_the_overlay_the_app_starts_on_a_read_only_app_directory(guest: Guest) -> None:
    (guest.root / "fail-overlay").write_bytes(b"")
    booted = guest.boot(b"IMAGEBUILDER_ENV=test\n")
    assert ("/app stays read-only (the app cannot write its working directory): no RAM overlay"
            " on it: mount: mounting overlay on /app failed: No such device") in booted.console
    assert "/app is writable" not in booted.console
    assert booted.exit_status == 7 and booted.app_env is not None
    assert booted.stub_log[-1] == "poweroff -f"


MEMINFO = "MemTotal:       {total} kB\nMemFree:        1000 kB\nMemAvailable:   {avail} kB\n"


def test_a_machine_short_of_memory_says_so_and_does_not_start_the_app(guest: Guest) -> None:
    (guest.root / "proc/meminfo").write_text(MEMINFO.format(total=60000, avail=30000))
    booted = guest.boot(b"IMAGEBUILDER_ENV=test\n")
    assert "memory: MemTotal 58 MiB, MemAvailable 29 MiB, in use 29 MiB" in booted.console
    assert (f"FATAL: not enough memory: 29 MiB available, the app needs at least "
            f"{APP_FLOOR_MIB} MiB to start: give the machine more memory; powering off"
            ) in booted.console
    assert booted.app_env is None and booted.stub_log[-1] == "poweroff -f"


def test_enough_memory_starts_the_app(guest: Guest) -> None:
    (guest.root / "proc/meminfo").write_text(MEMINFO.format(total=200000,
                                                            avail=(APP_FLOOR_MIB + 1) * 1024))
    booted = guest.boot(b"IMAGEBUILDER_ENV=test\n")
    assert f"MemAvailable {APP_FLOOR_MIB + 1} MiB" in booted.console
    assert "FATAL" not in booted.console and booted.exit_status == 7


def test_an_initramfs_cut_short_names_the_lack_of_memory(guest: Guest) -> None:
    """The kernel stopped unpacking the layers: no app.conf, and no disk layers to mount."""
    (guest.root / "etc/imagebuilder/app.conf").unlink()
    (guest.root / "proc/cmdline").write_text("console=ttyS0 quiet\n")
    (guest.root / "proc/meminfo").write_text(MEMINFO.format(total=102400, avail=4000))
    booted = guest.boot(None)
    lines = [line for line in booted.console.splitlines() if "imagebuilder:" in line]
    assert lines[-1].endswith(
        "FATAL: not enough memory: the root filesystem did not fit in this machine's 100 MiB "
        "(it is unpacked into RAM): give the machine more memory ('imagebuilder inspect' shows "
        "what the image needs); powering off")
    assert len(lines) == 1  # before anything else: no drivers, no network, no app
    assert booted.stub_log[-1] == "poweroff -f"


def test_a_disk_boot_mounts_its_layers_by_partition_name_and_switches_to_them(
        guest: Guest) -> None:
    """The base layer alone (no app.conf): layers.sh finds each layer's partition by its
    PARTNAME, mounts it as EROFS, stacks them (the top layer first in lowerdir) and
    switch_roots; the partitions are found whatever the order of the disks."""
    root = guest.root
    (root / "etc/imagebuilder/app.conf").unlink()
    (root / "proc/cmdline").write_text(
        "console=ttyS0 imagebuilder.layers=base:aaaa,jvm:bbbb,app:cccc\n")
    for i, (dev, part) in enumerate((("vda4", "ib-cccc"), ("vda2", "ib-aaaa"), ("sdb1", "x"),
                                     ("vda3", "ib-bbbb"))):
        (root / "sys/class/block" / dev).mkdir(parents=True)
        (root / "sys/class/block" / dev / "uevent").write_text(
            f"MAJOR=254\nMINOR={i}\nDEVNAME={dev}\nDEVTYPE=partition\nPARTN=1\n"
            f"PARTNAME={part}\n")
        os.mknod(root / "dev" / dev, 0o600 | stat.S_IFBLK, os.makedev(254, i))
    (root / "newroot").mkdir()
    (root / "newroot/init").write_text("#!/bin/sh\n")
    (root / "newroot/init").chmod(0o755)
    (root / "usr/sbin/switch_root").write_text(
        '#!/bin/sh\necho "switch_root $*" >> /stub.log\nexec /usr/bin/busybox poweroff -f -n\n')
    (root / "usr/sbin/switch_root").chmod(0o755)
    booted = guest.boot(None)
    log = booted.stub_log
    assert [line for line in log if "erofs" in line or "overlay" in line] == [
        "-t erofs -o ro /dev/vda2 /layers/base",
        "-t erofs -o ro /dev/vda3 /layers/jvm",
        "-t erofs -o ro /dev/vda4 /layers/app",
        "-t overlay -o ro,lowerdir=/layers/app:/layers/jvm:/layers/base overlay /newroot",
    ]
    assert log[-1] == "switch_root /newroot /init"
    assert ("root: EROFS layers base=vda2 jvm=vda3 app=vda4 mounted and stacked read-only "
            "(overlayfs); switching to it") in booted.console
    assert booted.app_env is None


def test_what_the_init_runs_by_path_is_in_the_base_layer() -> None:
    # The programs the init runs by absolute path are applets of the base layer, and the files
    # it sources or reads from its own folder are files the base layer carries.
    files = init_files()
    text = "\n".join(data.decode() for data, _ in files.values())
    for name in re.findall(r"/usr/bin/([a-z-]+)", text):
        assert name in APPLETS
    used = set(re.findall(r"/(usr/share/imagebuilder/[a-z]+\.[a-z]+)", text))
    assert {"usr/share/imagebuilder/env.awk", "usr/share/imagebuilder/app.sh"} <= used
    assert used <= set(files)


# -- network cards --------------------------------------------------------------------------------
# The sandbox's network namespace gets real veth cards named like a guest's (eth0, ...), so the
# init's busybox ip and udhcpc act on real links; their sysfs files (address, carrier) are laid
# out by hand in the chroot. A peer may run busybox udhcpd, a real DHCP server.


def _network_guest(guest: Guest, cards: list[tuple[str, str, str]], dhcp: set[str]) -> list[str]:
    """Set up ``cards`` (name, MAC, carrier) and return the shell lines that create them."""
    (guest.root / "usr/sbin/udhcpc").unlink()  # the real one (busybox), not the sandbox's stub
    lines = []
    for i, (name, mac, carrier) in enumerate(cards):
        card = guest.root / "sys/class/net" / name
        card.mkdir(parents=True)
        (card / "address").write_text(f"{mac}\n")
        (card / "carrier").write_text(f"{carrier}\n")
        peer = f"peer{i}"
        lines += [f"ip link add {name} type veth peer name {peer}",
                  f"ip link set {name} address {mac}", f"ip link set {peer} up"]
        if name in dhcp:
            conf = guest.root.parent / f"udhcpd-{name}.conf"
            conf.write_text(f"start 10.9.{i}.100\nend 10.9.{i}.110\ninterface {peer}\n"
                            f"lease_file {guest.root.parent}/leases-{name}\n"
                            f"option subnet 255.255.255.0\noption router 10.9.{i}.1\npidfile"
                            f" {guest.root.parent}/udhcpd-{name}.pid\n")
            lines += [f"ip addr add 10.9.{i}.1/24 dev {peer}", f"{BUSYBOX} udhcpd -S {conf}"]
    return lines


def _boot_with_cards(guest: Guest, env: bytes, setup: list[str]) -> Booted:
    (guest.root / "etc/imagebuilder/env").write_bytes(env)
    script = "set -e\n" + "\n".join(setup) + f"\nexec {CHROOT} {guest.root} /init\n"
    result = subprocess.run([*SANDBOX, "sh", "-c", script], capture_output=True, check=False,
                            timeout=120, env={"PATH": os.environ["PATH"]})
    console = (guest.root / "dev/console").read_text(errors="replace")
    return Booted(guest.root, result.returncode, console + result.stderr.decode())


needs_veth = pytest.mark.skipif(
    shutil.which("ip") is None
    or subprocess.run(["unshare", "--net", "ip", "link", "add", "v0", "type", "veth", "peer",
                       "name", "v1"], capture_output=True, check=False).returncode != 0,
    reason="needs iproute2 and veth")


@needs_veth
def test_static_settings_by_mac_and_for_any_card(guest: Guest) -> None:
    setup = _network_guest(guest, [("eth0", "52:54:00:12:34:56", "1"),
                                   ("eth1", "52:54:00:12:34:57", "1")], dhcp=set())
    booted = _boot_with_cards(guest, (
        b"GREETING=hi\n"
        b"IMAGEBUILDER_NET_1=mac=52:54:00:12:34:57 address=192.168.7.5/24\n"
        b"IMAGEBUILDER_NET_2=mac=any address=10.0.0.5/24 gateway=10.0.0.1 dns=10.0.0.2,10.0.0.3\n"
        b"IMAGEBUILDER_NET_3=mac=any address=10.0.0.6/24; reboot\n"), setup)
    assert booted.exit_status == 7, booted.console
    assert ("network eth0: driver none, mac 52:54:00:12:34:56, link up,"
            " address 10.0.0.5/24 (static)") in booted.console
    assert ("network eth1: driver none, mac 52:54:00:12:34:57, link up,"
            " address 192.168.7.5/24 (static)") in booted.console
    assert (guest.root / "run/resolv.conf").read_text() == (
        "nameserver 10.0.0.2\nnameserver 10.0.0.3\n")
    assert booted.app_env is not None and booted.app_env["GREETING"] == "hi"


@needs_veth
def test_cards_without_settings_get_dhcp_at_once(guest: Guest) -> None:
    setup = _network_guest(guest, [("eth0", "52:54:00:12:34:56", "1"),
                                   ("eth1", "52:54:00:12:34:57", "1"),
                                   ("eth2", "52:54:00:12:34:58", "1"),
                                   ("eth3", "52:54:00:12:34:59", "0")], dhcp={"eth0", "eth2"})
    booted = _boot_with_cards(
        guest, b"IMAGEBUILDER_NET_1=mac=52:54:00:12:34:57 address=192.168.7.5/24\n", setup)
    assert booted.exit_status == 7, booted.console
    # Two real DHCP servers answered, each on its own card; eth1 is static; eth3 has no link.
    assert re.search(r"network eth0: driver none, mac 52:54:00:12:34:56, link up, address"
                     r" 10\.9\.0\.1\d\d/24\n", booted.console), booted.console
    assert re.search(r"network eth2: driver none, mac 52:54:00:12:34:58, link up, address"
                     r" 10\.9\.2\.1\d\d/24\n", booted.console), booted.console
    assert "address 192.168.7.5/24 (static)" in booted.console
    assert "network eth3: driver none, mac 52:54:00:12:34:59, link down, address none" in \
        booted.console


def test_no_card_names_the_controllers_without_a_driver(guest: Guest) -> None:
    for address, klass, vendor, device in (("0000:00:03.0", "0x020000", "0x8086", "0x10d3"),
                                           ("0000:00:1f.0", "0x060100", "0x8086", "0x2918")):
        pci = guest.root / "sys/bus/pci/devices" / address
        pci.mkdir(parents=True)
        for name, value in (("class", klass), ("vendor", vendor), ("device", device)):
            (pci / name).write_text(f"{value}\n")
    booted = guest.boot(None)
    assert booted.exit_status == 7, booted.console
    assert ("no network card has a driver: PCI network controllers without one: 0000:00:03.0"
            " [8086:10d3]; add its module to [system] modules (or hardware = [\"virtual\","
            " \"metal\"]) in imagebuilder.toml") in booted.console


JAVA_STUB = '#!/bin/sh\nprintf "%s\\n" "$@" > /tmp/app.args\nexit 7\n'


@pytest.mark.parametrize("cmdline, expected", [
    ("console=ttyS0 imagebuilder.jit=c1", ["-XX:TieredStopAtLevel=1", "-Xss1m", "Main"]),
    ("console=ttyS0", ["-Xss1m", "Main"]),
    ("console=ttyS0 imagebuilder.jit=c1x", ["-Xss1m", "Main"]),
])
def test_an_emulated_run_asks_the_jvm_for_c1_only(guest: Guest, cmdline: str,
                                                   expected: list[str]) -> None:
    java = guest.root / "opt/java/bin/java"
    java.parent.mkdir(parents=True)
    java.write_text(JAVA_STUB)
    java.chmod(0o755)
    (guest.root / "etc/imagebuilder/app.conf").write_text(
        "IMAGE_NAME=hello\nIMAGE_VERSION=1.0.0\nAPP_PORT=8080\n"
        "set -- /opt/java/bin/java -Xss1m Main\n")
    (guest.root / "proc/cmdline").write_text(cmdline + "\n")
    booted = guest.boot(b"IMAGEBUILDER_ENV=test\n")
    assert booted.exit_status == 7, booted.console
    assert booted.app_args == expected
    assert ("the JVM compiles with C1 only" in booted.console) == (len(expected) == 3)


def test_c1_only_leaves_a_command_other_than_java_alone(guest: Guest) -> None:
    (guest.root / "proc/cmdline").write_text("console=ttyS0 imagebuilder.jit=c1\n")
    booted = guest.boot(b"IMAGEBUILDER_ENV=test\n")
    assert booted.app_args == ["one arg", "$HOME", "x=y"]
    assert "C1 only" not in booted.console


def _java_args(guest: Guest, cmdline: str, command: str = "Main",
               env: bytes = b"IMAGEBUILDER_ENV=test\n") -> tuple[list[str], str]:
    """What the init hands java (app.conf runs ``java COMMAND``) and the console."""
    java = guest.root / "opt/java/bin/java"
    java.parent.mkdir(parents=True, exist_ok=True)
    java.write_text(JAVA_STUB)
    java.chmod(0o755)
    (guest.root / "etc/imagebuilder/app.conf").write_text(
        "IMAGE_NAME=hello\nIMAGE_VERSION=1.0.0\nAPP_PORT=8080\n"
        f"set -- /opt/java/bin/java {command}\n")
    (guest.root / "proc/cmdline").write_text(cmdline + "\n")
    booted = guest.boot(env)
    assert booted.exit_status == 7, booted.console
    assert booted.app_args is not None
    return booted.app_args, booted.console


C1 = "console=ttyS0 imagebuilder.jit=c1"


@pytest.mark.parametrize("command, env, flags", [
    ("Main", b"", ["-XX:TieredStopAtLevel=1", "-Xss16m"]),
    ("-jar app.jar -Xss1m", b"", ["-XX:TieredStopAtLevel=1", "-Xss16m"]),  # the app's argument
    ("-cp -Xss1m Main", b"", ["-XX:TieredStopAtLevel=1", "-Xss16m"]),  # a class path
    ("-XX:ThreadStackSize=2048 Main", b"", ["-XX:TieredStopAtLevel=1"]),
    ("-cp /app/lib -Xss512k -jar app.jar", b"", ["-XX:TieredStopAtLevel=1"]),
    ("@jvm.args Main", b"", ["-XX:TieredStopAtLevel=1"]),
    ("Main", b"JAVA_TOOL_OPTIONS=-Xmx1g -Xss2m\n", ["-XX:TieredStopAtLevel=1"]),
    ("Main", b"JDK_JAVA_OPTIONS=-XX:ThreadStackSize=4096\n", ["-XX:TieredStopAtLevel=1"]),
    ("Main", b"OTHER=-Xss2m\n", ["-XX:TieredStopAtLevel=1", "-Xss16m"]),
])
def test_c1_only_gets_large_stacks_unless_the_app_sets_its_own(
        guest: Guest, command: str, env: bytes, flags: list[str]) -> None:
    (guest.root / "app/jvm.args").write_text("-Xmx256m\n-Xss2m\n")
    args, console = _java_args(guest, C1, command, b"IMAGEBUILDER_ENV=test\n" + env)
    assert args == [*flags, *command.split()]
    stack = ("16 MiB thread stacks (-Xss16m: C1's frames are larger than C2's)"
             if "-Xss16m" in flags else "its own thread stack size")
    assert (f"imagebuilder.jit=c1: the JVM compiles with C1 only (-XX:TieredStopAtLevel=1), with"
            f" {stack}, in this run") in console


# -- the JVM's semantics under `run` ------------------------------------------------------------
# C1's frames are larger than C2's, so a deep recursion that production (C2) runs can overflow
# under C1 only. tests/unit/recursion/Depths.java measures how deep several kinds of recursion
# get; it runs on the host's JDK with the options the init hands java, and without them. Both
# runs take -Xbatch (compilation in the foreground) so that the compiled frames, not the timing
# of background compilation, decide the depths.

DEPTH_KINDS = ("plain", "lambda", "descent", "wide", "build", "chain")


@pytest.fixture(scope="module")
def depths_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("depths")
    source = Path(__file__).parent / "recursion" / "Depths.java"
    subprocess.run(["javac", "-d", str(out), str(source)], check=True)
    return out


def _depths(classes: Path, flags: list[str], where: str) -> dict[str, int]:
    """Each kind's depth with the JVM options ``flags``, on the main thread or a new one."""
    result = subprocess.run(["java", "-Xbatch", *flags, "-cp", str(classes), "Depths", where,
                             *DEPTH_KINDS], capture_output=True, text=True, check=True,
                            timeout=300)
    return {kind: int(depth) for kind, depth in (line.split() for line in
                                                 result.stdout.splitlines())}


def _assert_as_deep(classes: Path, flags: list[str]) -> None:
    for where in ("main", "thread"):
        default, ours = _depths(classes, [], where), _depths(classes, flags, where)
        shallower = {k: (ours[k], default[k]) for k in DEPTH_KINDS if ours[k] < default[k]}
        assert not shallower, f"{where}: {flags} reach (depth, default's): {shallower}"


def _run_cmdline(tmp_path: Path, jit: str) -> str:
    """The kernel command line of `run --jit JIT` on a direct boot under TCG."""
    store = Store(tmp_path / "store")
    spec = RunSpec(_image(store), None, {}, [])
    if jit != "default":
        spec.jit = jit
    argv = qemu_argv(spec, store, tmp_path / "initrd", tmp_path, "tcg", "stdio")
    return argv[argv.index("-append") + 1]


@needs_java
@needs_qemu
@pytest.mark.parametrize("jit", ["default", "c1"])
def test_run_keeps_the_depth_production_reaches(guest: Guest, tmp_path: Path,
                                                depths_classes: Path, jit: str) -> None:
    """`run` (its defaults, and --jit c1) gives the JVM options with which every kind of
    recursion gets at least as deep as with the JVM's defaults."""
    args, _ = _java_args(guest, _run_cmdline(tmp_path, jit))
    assert args[-1] == "Main"
    flags = args[:-1]
    _assert_as_deep(depths_classes, flags)
    assert (flags == []) == (jit == "default")
