"""The seccomp filter of the training sandbox: the system calls that reach past the image's root.

An app in the sandbox has no capability, so the kernel already refuses it most of these; the
filter is the second wall, for the kernel's own bugs and for what an unprivileged process may
still do (make a user namespace of its own, trace a sibling, read another process's memory).
Each listed call fails with EPERM, ``clone`` only when asked for a new namespace and ``clone3``
always with ENOSYS (its flags sit in memory a classic BPF filter cannot read; libc then falls
back to ``clone``, which the JVM's threads use). A call of another architecture (i386 by
``int 0x80``) kills the process; the x32 numbers fail with EPERM.
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct

from ..errors import HostError

AUDIT_ARCH_X86_64 = 0xC000003E
X32_BIT = 0x40000000
SYSCALLS_X86_64 = {
    "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155,
    "chroot": 161, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
    "keyctl": 250, "add_key": 248, "request_key": 249, "bpf": 321, "perf_event_open": 298,
    "open_by_handle_at": 304, "name_to_handle_at": 303, "init_module": 175,
    "finit_module": 313, "delete_module": 176, "kexec_load": 246, "kexec_file_load": 320,
    "reboot": 169, "swapon": 167, "swapoff": 168, "open_tree": 428, "move_mount": 429,
    "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
    "io_uring_setup": 425,
}
CLONE = 56
CLONE3 = 435
#: CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET (clone's low byte is the
#: exit signal, so CLONE_NEWTIME cannot be asked of it).
CLONE_NEW_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | \
    0x20000000 | 0x40000000

_LD_ABS = 0x20    # BPF_LD | BPF_W | BPF_ABS
_JEQ = 0x15       # BPF_JMP | BPF_JEQ | BPF_K
_JGE = 0x35       # BPF_JMP | BPF_JGE | BPF_K
_JSET = 0x45      # BPF_JMP | BPF_JSET | BPF_K
_RET = 0x06       # BPF_RET | BPF_K
_ALLOW = 0x7FFF0000
_ERRNO = 0x00050000
_KILL_PROCESS = 0x80000000
# Offsets in struct seccomp_data: nr, arch, args[0] (its low half: little-endian).
_NR, _ARCH, _ARG0 = 0, 4, 16


def _program() -> list[tuple[int, int, int, int]]:
    """The filter as (code, jt, jf, k); jumps count instructions after the next one."""
    denied = sorted(SYSCALLS_X86_64.values())
    body: list[tuple[int, int, int, int]] = []
    # Tail, in order: [clone check: ld, jset, allow], eperm, enosys, kill.
    n = len(denied)
    # Instruction indexes: 0 ld arch, 1 jeq arch, 2 ld nr, 3 jge x32, 4 jeq clone3,
    # 5 jeq clone, 6..6+n-1 denied, 6+n allow, 7+n ld arg0, 8+n jset, 9+n allow,
    # 10+n eperm, 11+n enosys, 12+n kill.
    eperm, enosys, kill, clone_check = 10 + n, 11 + n, 12 + n, 7 + n

    def to(here: int, target: int) -> int:
        return target - here - 1

    body.append((_LD_ABS, 0, 0, _ARCH))
    body.append((_JEQ, 0, to(1, kill), AUDIT_ARCH_X86_64))
    body.append((_LD_ABS, 0, 0, _NR))
    body.append((_JGE, to(3, eperm), 0, X32_BIT))
    body.append((_JEQ, to(4, enosys), 0, CLONE3))
    body.append((_JEQ, to(5, clone_check), 0, CLONE))
    for i, nr in enumerate(denied):
        body.append((_JEQ, to(6 + i, eperm), 0, nr))
    body.append((_RET, 0, 0, _ALLOW))
    body.append((_LD_ABS, 0, 0, _ARG0))
    body.append((_JSET, to(8 + n, eperm), 0, CLONE_NEW_FLAGS))
    body.append((_RET, 0, 0, _ALLOW))
    body.append((_RET, 0, 0, _ERRNO | errno.EPERM))
    body.append((_RET, 0, 0, _ERRNO | errno.ENOSYS))
    body.append((_RET, 0, 0, _KILL_PROCESS))
    assert len(body) == kill + 1 and all(jt < 256 and jf < 256 for _, jt, jf, _ in body)
    return body


def check_arch() -> None:
    """The filter knows x86_64's system call numbers only."""
    if platform.machine() != "x86_64":
        raise HostError(f"the AOT training sandbox knows x86_64 only, not {platform.machine()}: "
                        "build without [jvm] aot on this machine")


class _Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


def install(libc: ctypes.CDLL) -> None:
    """Install the filter on this thread (no_new_privs must be set already); inherited by its
    children and kept across execve."""
    code = b"".join(struct.pack("=HBBI", *insn) for insn in _program())
    buffer = ctypes.create_string_buffer(code, len(code))
    prog = _Fprog(len(code) // 8, ctypes.addressof(buffer))
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")
