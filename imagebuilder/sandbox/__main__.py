"""The sandbox's process (started by :func:`imagebuilder.sandbox.run`, its spec as JSON on
stdin): new namespaces, then their PID 1, which builds the root's mounts, pivots into it, drops
every privilege and starts the watcher (:mod:`.watch`), reaps, and exits with it. Each process
dies with its parent, so a killed builder takes the whole sandbox with it."""

from __future__ import annotations

import json
import os
import sys

from . import inside, seccomp, watch


def _pid1(spec: dict[str, object], root_fd: int, last_cap: int, parent_alive: int) -> int:
    inside.die_with_parent(parent_alive)
    inside.mount_proc(root_fd)
    inside.pivot(root_fd)
    os.close(root_fd)
    inside.drop_privileges(last_cap)
    plan = watch.Plan(**spec["plan"])  # type: ignore[arg-type]
    watcher = os.fork()
    if watcher == 0:
        inside.die_with_parent()
        os._exit(watch.run(plan))
    while True:  # PID 1 reaps every orphan, and ends (taking the namespace) with the watcher
        pid, status = os.wait()
        if pid == watcher:
            return os.waitstatus_to_exitcode(status) & 0xFF


def _sandbox(spec: dict[str, object]) -> int:
    inside.die_with_parent()
    if os.getppid() != spec["parent"]:
        return 1
    seccomp.check_arch()
    last_cap = inside.last_cap()
    uid, gid = int(spec["uid"]), int(spec["gid"])  # type: ignore[call-overload]
    outer_uid, outer_gid = int(spec["outer_uid"]), int(spec["outer_gid"])  # type: ignore[call-overload]
    privileged = inside.enter_namespaces(uid, gid, outer_uid, outer_gid)
    if spec.get("probe"):
        return 0
    root_fd = inside.bind_root(str(spec["root"]))
    inside.loopback_up()
    inside.set_hostname(str(spec["hostname"]))
    if privileged:
        inside.become(uid, gid)
    inside.furnish(root_fd)
    inside.die_with_parent()  # again: new credentials clear it
    if os.getppid() != spec["parent"]:
        return 1
    alive_r, alive_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(alive_w)
        try:
            code = _pid1(spec, root_fd, last_cap, alive_r)
        except Exception as exc:
            sys.stderr.write(f"sandbox: {exc}\n")
            code = 1
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(code)
    os.close(alive_r)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) & 0xFF


def main() -> int:
    spec = json.loads(sys.stdin.buffer.read())
    try:
        return _sandbox(spec)
    except Exception as exc:
        sys.stderr.write(f"sandbox: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
