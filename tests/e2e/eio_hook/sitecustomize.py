"""EIO injection for the fault suite, loaded only by the child processes it starts (it puts
this directory on PYTHONPATH with ``IB_FAULT_EIO`` set); nothing in imagebuilder knows of it.

Why Python-level: this machine has no device-mapper (dm-error, dm-flakey) and no FUSE tools, the
real ways to make a disk answer EIO. ENOSPC and EFBIG are injected for real (a size-limited
tmpfs, RLIMIT_FSIZE). Here ``IB_FAULT_EIO="PREFIX|read|N"`` (or ``write``) makes every read (or
write) of a file under PREFIX fail with EIO once N bytes have been read (written) there, at the
calls the kernel would fail: ``FileIO.readinto``/``write`` under ``open()``, and ``os.read``,
``os.pread``, ``os.preadv``, ``os.write``, ``os.pwrite``.
"""

from __future__ import annotations

import builtins
import errno
import io
import os

_SPEC = os.environ.get("IB_FAULT_EIO")

if _SPEC:
    _PREFIX, _OP, _AFTER = _SPEC.split("|")
    _LIMIT = int(_AFTER)
    _done = [0]

    def _count(nbytes: int) -> None:
        _done[0] += nbytes
        if _done[0] > _LIMIT:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    def _under(path: object) -> bool:
        try:
            return os.path.abspath(os.fsdecode(path)).startswith(_PREFIX)  # type: ignore[arg-type]
        except TypeError:
            return False

    def _fd_under(fd: int) -> bool:
        try:
            return os.readlink(f"/proc/self/fd/{fd}").startswith(_PREFIX)
        except OSError:
            return False

    class _FaultyFileIO(io.FileIO):
        def write(self, data):  # type: ignore[no-untyped-def, override]
            if _OP == "write":
                _count(memoryview(data).nbytes)
            return super().write(data)

        def readinto(self, buffer):  # type: ignore[no-untyped-def, override]
            n = super().readinto(buffer)
            if _OP == "read" and n:
                _count(n)
            return n

    _real_open = io.open

    def _open(file, mode="r", buffering=-1, encoding=None, errors=None,  # type: ignore[no-untyped-def]
              newline=None, closefd=True, opener=None):
        if isinstance(file, int) or not _under(file):
            return _real_open(file, mode, buffering, encoding, errors, newline, closefd, opener)
        raw = _FaultyFileIO(file, mode.replace("b", "").replace("t", ""), closefd=closefd,
                            opener=opener)
        if buffering == 0:
            return raw
        size = buffering if buffering > 1 else io.DEFAULT_BUFFER_SIZE
        if "+" in mode:
            buffered: io.BufferedIOBase = io.BufferedRandom(raw, size)
        elif "r" in mode:
            buffered = io.BufferedReader(raw, size)
        else:
            buffered = io.BufferedWriter(raw, size)
        if "b" in mode:
            return buffered
        return io.TextIOWrapper(buffered, encoding, errors, newline, line_buffering=buffering == 1)

    builtins.open = io.open = _open  # type: ignore[assignment]

    def _wrap(name: str, op: str, size_of):  # type: ignore[no-untyped-def]
        real = getattr(os, name)

        def call(fd, *args):  # type: ignore[no-untyped-def]
            if op == _OP and _fd_under(fd):
                if op == "write":
                    _count(size_of(args))
                    return real(fd, *args)
                n = real(fd, *args)
                _count(size_of(n))
                return n
            return real(fd, *args)

        setattr(os, name, call)

    _wrap("read", "read", len)
    _wrap("pread", "read", len)
    _wrap("preadv", "read", lambda n: n)
    _wrap("write", "write", lambda args: memoryview(args[0]).nbytes)
    _wrap("pwrite", "write", lambda args: memoryview(args[0]).nbytes)
