"""What the sandbox's processes do to themselves, through libc (Python 3.11 has no os.unshare):
enter new namespaces, map the builder's uid to the image's app user, build the root's mounts,
pivot into it, and give up every privilege before the app runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import resource
import signal
import socket
import struct

from . import seccomp

libc = ctypes.CDLL(None, use_errno=True)

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NAMESPACES = (CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC
              | CLONE_NEWUTS | CLONE_NEWCGROUP)

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MNT_DETACH = 2
SYS_PIVOT_ROOT = 155  # x86_64 (seccomp.check_arch refuses others first)

PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_KEEPCAPS, PR_CAPBSET_DROP = 1, 4, 8, 24
PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 38, 47, 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

#: Processes and threads the app may have at once (RLIMIT_NPROC, counted per user namespace):
#: a JVM serving its training requests needs a few hundred; without a limit the app could take
#: every PID of the host until the build's deadline.
PROCESS_LIMIT = 4096

#: Host device nodes the app gets, bind-mounted on a /dev of its own.
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def prctl(option: int, arg: int = 0) -> None:
    _check(libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), f"prctl({option})")


def die_with_parent(parent_alive: int | None = None) -> None:
    """SIGKILL when the parent dies; exit now if it already has (``parent_alive``: the read end
    of a pipe whose only writer is the parent, for a parent in another PID namespace)."""
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent_alive is not None:
        os.set_blocking(parent_alive, False)
        try:
            gone = os.read(parent_alive, 1) == b""
        except BlockingIOError:
            gone = False
        if gone:
            os._exit(1)


def enter_namespaces(uid: int, gid: int, outer_uid: int, outer_gid: int) -> bool:
    """New user, mount, network, PID, IPC, UTS and cgroup namespaces, the host's ``outer_uid``
    and ``outer_gid`` being ``uid`` and ``gid`` in them. An unprivileged builder can map only its
    own ids, and writes the maps itself; root maps other ids, through a helper left outside (a
    process in the new namespace cannot). Whether the ids need :func:`become` (root's case)."""
    if (outer_uid, outer_gid) == (os.geteuid(), os.getegid()):
        _check(libc.unshare(NAMESPACES), "unshare")
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {outer_uid} 1"),
                           ("gid_map", f"{gid} {outer_gid} 1")):
            _write(f"/proc/self/{name}", text)
        return False
    entered_r, entered_w = os.pipe()
    helper = os.fork()
    if helper == 0:
        os.close(entered_w)
        code = 1
        with contextlib.suppress(BaseException):
            if os.read(entered_r, 1) == b"y":
                parent = os.getppid()
                _write(f"/proc/{parent}/uid_map", f"{uid} {outer_uid} 1")
                _write(f"/proc/{parent}/gid_map", f"{gid} {outer_gid} 1")
                code = 0
        os._exit(code)
    os.close(entered_r)
    entered = libc.unshare(NAMESPACES) == 0
    err = ctypes.get_errno()
    os.write(entered_w, b"y" if entered else b"n")
    os.close(entered_w)
    mapped = os.waitstatus_to_exitcode(os.waitpid(helper, 0)[1]) == 0
    if not entered:
        raise OSError(err, f"unshare: {os.strerror(err)}")
    if not mapped:
        raise OSError(errno.EPERM, "writing the user namespace's uid and gid maps failed")
    return True


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(text)


def become(uid: int, gid: int) -> None:
    """Take the mapped ``uid``, ``gid`` and no supplementary group (root's keep its own until
    then), keeping this namespace's capabilities for the setup."""
    prctl(PR_SET_KEEPCAPS, 1)
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(libc.capget(ctypes.byref(header), data), "capget")
    for half in data:
        half.effective = half.permitted
    _check(libc.capset(ctypes.byref(header), data), "capset")


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    _check(libc.mount(source and source.encode(), target.encode(), fstype and fstype.encode(),
                      ctypes.c_ulong(flags), data and data.encode()), f"mount {target}")


def _at(dir_fd: int, name: str, *, create: bool) -> int:
    """An O_PATH fd of the directory ``name`` in ``dir_fd``, no link followed; made if missing."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o755, dir_fd=dir_fd)
    return os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                   dir_fd=dir_fd)


def _fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def _mount_at(root_fd: int, name: str, fstype: str, flags: int, data: str | None) -> None:
    fd = _at(root_fd, name, create=True)
    try:
        _mount(fstype, _fd_path(fd), fstype, flags, data)
    finally:
        os.close(fd)


def _devices(root_fd: int) -> None:
    """A tmpfs on /dev with the host's harmless nodes bound onto empty files, and /dev/shm."""
    _mount_at(root_fd, "dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k")
    dev = _at(root_fd, "dev", create=False)  # the tmpfs now, not the directory under it
    try:
        for node in DEVICES:
            os.close(os.open(node, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666,
                             dir_fd=dev))
            _mount(f"/dev/{node}", f"{_fd_path(dev)}/{node}", None, MS_BIND)
        _mount_at(dev, "shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    finally:
        os.close(dev)


def _keep_locked_flags(path: str) -> int:
    """The flags of the mount under ``path`` a remount must keep (the kernel locks them)."""
    keep = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME
    flags = os.statvfs(path).f_flag & keep
    return flags | (MS_RELATIME if os.statvfs(path).f_flag & 4096 else 0)


def bind_root(root: str) -> int:
    """Bind ``root`` on itself (nosuid, nodev) in this mount namespace, whose mounts stop
    propagating; its fd. Run with the builder's own ids (root's may reach a root-only scratch
    directory), then :func:`furnish` with the mapped ones (an unmapped owner cannot make files)."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount(root, root, None, MS_BIND)
    _mount(None, root, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV
           | _keep_locked_flags(root))
    return os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def furnish(root_fd: int) -> None:
    """/dev, /dev/shm and /tmp in the root. Its /proc needs the PID namespace's PID 1
    (:func:`mount_proc`)."""
    _devices(root_fd)
    _mount_at(root_fd, "tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")


def mount_proc(root_fd: int) -> None:
    """A /proc of this PID namespace (the caller's) in the root."""
    _mount_at(root_fd, "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)


def set_hostname(name: str) -> None:
    """The UTS namespace's host name (the guest's kernel takes /etc/hostname's)."""
    raw = name.encode()
    _check(libc.sethostname(raw, len(raw)), "sethostname")


def loopback_up() -> None:
    """Bring up lo, the network namespace's only interface."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, siocgifflags, request))[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH14x", b"lo", flags | iff_up))


def pivot(root_fd: int) -> None:
    """Make the root this namespace's /, the old one unmounted (detached) and out of reach."""
    os.fchdir(root_fd)
    _check(libc.syscall(SYS_PIVOT_ROOT, b".", b"."), "pivot_root")
    _check(libc.umount2(b".", MNT_DETACH), "umount old root")
    os.chdir("/")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def drop_privileges(last_cap: int) -> None:
    """No capability in any set (bounding, ambient, effective, permitted, inheritable), not
    dumpable, no core files, at most :data:`PROCESS_LIMIT` processes, no_new_privs, and the
    seccomp filter: for this process and all it starts."""
    prctl(PR_SET_DUMPABLE, 0)
    resource.setrlimit(resource.RLIMIT_NPROC, (PROCESS_LIMIT, PROCESS_LIMIT))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    for cap in range(last_cap + 1):
        prctl(PR_CAPBSET_DROP, cap)
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(libc.capset(ctypes.byref(header), data), "capset")
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    seccomp.install(libc)


def last_cap() -> int:
    with open("/proc/sys/kernel/cap_last_cap", encoding="ascii") as f:
        return int(f.read())
