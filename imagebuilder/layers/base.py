"""The base layer: the skeleton of the root filesystem, busybox, the init and the drivers.

It holds nothing that depends on the application, so it is shared by every image built with the
same kernel, busybox and init, and a new app version never rebuilds it. The root uses Debian's
merged-/usr layout (``/bin``, ``/sbin``, ``/lib``, ``/lib64`` are symlinks into ``/usr``) so the
jvm layer's Debian libraries land where their loader expects them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..config import envlimits
from ..config import network as network_config
from ..errors import HostError
from ..resources import render
from . import kernel as kernel_mod
from .cpio import Tree

#: The unprivileged account the app runs as.
APP_UID = 1000
APP_USER = "app"
#: Seconds the app gets to exit after SIGTERM before the init kills it.
STOP_TIMEOUT = 20
#: The least MemAvailable (MiB) the init starts the app (a JVM) in; less and it says so. The
#: memory model (targets/qemu/memory.py) counts it in every machine's size.
APP_FLOOR_MIB = 32
#: Where the init's parts and helpers lie in the image.
SHARE = "usr/share/imagebuilder"
#: The init's parts (templates/init/), one job each, sourced by /init in this order.
INIT_PARTS = ("log.sh", "drivers.sh", "config.sh", "network.sh", "root.sh",
              "memory.sh", "jit.sh", "app.sh")

MERGED_USR = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}
#: busybox applets the init and its helpers use. No getty, login, telnetd or httpd: nothing
#: that could offer a shell to the network or the console.
APPLETS = (
    "awk", "cat", "chown", "echo", "env", "head", "ip", "kill", "ls", "mkdir", "mkfifo", "modprobe",
    "mount", "nc", "poweroff", "printf", "readlink", "sh", "sleep", "start-stop-daemon",
    "setpriv", "switch_root", "sync", "tee", "udhcpc", "umount", "uname",
)


class _UsrPrefix:
    """A FileSink that places ``lib/...`` paths under ``usr/lib/...`` (merged /usr)."""

    def __init__(self, tree: Tree) -> None:
        self.tree = tree

    def add_file(self, path: str, *, data: bytes | None = None, source: Path | None = None,
                 mode: int = 0o644) -> None:
        self.tree.add_file(f"usr/{path}", data=data, source=source, mode=mode)


def skeleton(tree: Tree) -> None:
    """Directories, merged-/usr symlinks, accounts and the console node."""
    for name, target in MERGED_USR.items():
        tree.add_symlink(name, target)
    for directory in ("usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "proc", "sys", "dev", "run",
                      "etc", "app", "opt", "root", "var"):
        tree.add_dir(directory)
    tree.add_dir("tmp", mode=0o1777)
    tree.add_dir("home/app", uid=APP_UID, gid=APP_UID)
    tree.add_symlink("var/tmp", "../tmp")
    tree.add_node("dev/console", "char", 5, 1, mode=0o600)
    tree.add_node("dev/null", "char", 1, 3, mode=0o666)
    tree.add_file("etc/passwd", data=(
        "root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"{APP_USER}:x:{APP_UID}:{APP_UID}:app:/home/app:/usr/sbin/nologin\n").encode())
    tree.add_file("etc/group", data=f"root:x:0:\n{APP_USER}:x:{APP_UID}:\n".encode())
    tree.add_file("etc/hostname", data=b"imagebuilder\n")
    tree.add_file("etc/hosts", data=b"127.0.0.1\tlocalhost\n127.0.1.1\timagebuilder\n"
                                        b"::1\tlocalhost\n")
    tree.add_file("etc/nsswitch.conf", data=b"passwd: files\ngroup: files\nhosts: files dns\n")
    # SCSI hosts scan their disks before their driver's modprobe returns, so the init's next
    # driver round sees the disks; modprobe applies this to scsi_mod when a driver pulls it in.
    tree.add_file("etc/modprobe.d/imagebuilder.conf", data=b"options scsi_mod scan=sync\n")
    tree.add_symlink("etc/resolv.conf", "../run/resolv.conf")
    tree.add_symlink("etc/mtab", "../proc/self/mounts")


def busybox(tree: Tree, sysroot: Path) -> None:
    """The static busybox binary and the applet links the init uses."""
    binary = sysroot / "usr/bin/busybox"
    if not binary.is_file():
        binary = sysroot / "bin/busybox"
    if not binary.is_file():
        raise HostError(f"busybox not found in the busybox-static package unpacked at {sysroot}")
    tree.add_file("usr/bin/busybox", source=binary, mode=0o755)
    for applet in APPLETS:
        tree.add_symlink(f"usr/bin/{applet}", "busybox")


def add_records(tree: Tree, records: Mapping[str, bytes]) -> None:
    """The files ``records`` (path -> bytes), read-only for all, into ``tree``."""
    for path, data in sorted(records.items()):
        tree.add_file(path, data=data, mode=0o644)


def env_filter() -> str:
    """The init's environment filter (templates/env.awk) with the limits of
    :mod:`imagebuilder.config.envlimits`."""
    return render("env.awk", var_max=envlimits.VAR_MAX, total_max=envlimits.TOTAL_MAX)


def init_files() -> dict[str, tuple[bytes, int]]:
    """The init, its parts and its helpers, rendered, by their path in the image, with their
    mode: all the base layer carries of ``templates/``, and so what its cache key hashes. The
    constants Python owns are rendered into them."""
    context = {"share": f"/{SHARE}", "parts": INIT_PARTS, "stop_timeout": STOP_TIMEOUT,
               "app_floor": APP_FLOOR_MIB, "app_user": APP_USER,
               "net_prefix": network_config.VAR_PREFIX}
    files = {"init": (render("init.sh.j2", **context), 0o755)}
    for part in INIT_PARTS:
        files[f"{SHARE}/{part}"] = (render(f"init/{part}", **context), 0o644)
    files[f"{SHARE}/layers.sh"] = (render("layers.sh"), 0o644)
    files[f"{SHARE}/udhcpc.script"] = (render("udhcpc.script"), 0o755)
    files[f"{SHARE}/env.awk"] = (env_filter(), 0o644)
    files[f"{SHARE}/jdkhint.awk"] = (render("jdkhint.awk"), 0o644)
    return {path: (text.encode(), mode) for path, (text, mode) in files.items()}


def build_tree(busybox_root: Path, modules: kernel_mod.ModuleTree,
               closure: list[kernel_mod.Module], firmware: dict[str, Path] | None = None,
               records: Mapping[str, bytes] | None = None) -> Tree:
    """The whole base layer as a Tree: ``closure`` is the modules to ship (dependencies
    included), ``firmware`` the files for /lib/firmware by name, ``records`` what tells
    scanners about the layer's packages (dpkg status stanzas and /etc/os-release, by path:
    :mod:`imagebuilder.sbom.dpkg`)."""
    tree = Tree()
    add_records(tree, records or {})
    skeleton(tree)
    busybox(tree, busybox_root)
    for path, (data, mode) in init_files().items():
        tree.add_file(path, data=data, mode=mode)
    kernel_mod.write_modules(closure, modules.kver, _UsrPrefix(tree),
                             builtin=modules.builtin_paths)
    for name, source in sorted((firmware or {}).items()):
        tree.add_file(f"usr/lib/firmware/{name}", source=source, mode=0o644)
    return tree
