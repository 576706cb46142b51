"""Someone at a guest's keyboard, played through QEMU's monitor: holds Shift through the boot
loader and types a changed kernel command line, as a person at a server's console would.

A held key is what a keyboard sends while it is down: its make code, repeated (typematic), then
one break code. QMP's ``input-send-event`` (the command behind HMP's ``sendkey``) sends them on
the emulated PS/2 keyboard; typing uses ``sendkey``. syslinux looks at the BIOS's shift flags
once, when it starts: right Shift, Alt, Ctrl, Caps Lock or Scroll Lock (not left Shift) make it
show its ``boot:`` prompt despite ``PROMPT 0``, unless ``NOESCAPE 1`` is set. A line typed there
(``linux rdinit=/bin/sh``) boots a root shell on the console instead of the init.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

#: What a person would type at the boot: prompt: the label with options giving a root shell.
ATTACK = "linux rdinit=/bin/sh"
_QCODES = {" ": "spc", "=": "equal", "/": "slash", "\n": "ret"}


class Monitor:
    """A QMP connection to a running QEMU."""

    def __init__(self, path: Path, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(10)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.reader = self.sock.makefile("rb")
        self.reader.readline()  # greeting
        self.execute("qmp_capabilities")

    def execute(self, command: str, **arguments: object) -> object:
        message: dict[str, object] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self.sock.sendall(json.dumps(message).encode() + b"\n")
        while True:
            reply = json.loads(self.reader.readline() or b'{"error": "closed"}')
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise RuntimeError(f"QMP {command}: {reply['error']}")

    def key(self, qcode: str, down: bool) -> None:
        event = {"type": "key", "data": {"down": down, "key": {"type": "qcode", "data": qcode}}}
        self.execute("input-send-event", events=[event])

    def sendkey(self, keys: str, hold_ms: int = 100) -> None:
        self.execute("human-monitor-command", **{"command-line": f"sendkey {keys} {hold_ms}"})

    def type(self, text: str) -> None:
        for char in text:
            self.sendkey(_QCODES.get(char, char))

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def attack_boot_loader(monitor: Monitor, console: Path, *, booted: bytes,
                       hold_seconds: float = 60) -> bool:
    """Hold right Shift from now until ``booted`` appears on ``console`` (the guest's serial
    log) or ``hold_seconds`` pass, then type :data:`ATTACK` and Enter, twice. True if the guest
    booted while Shift was held (the boot loader did not stop for it)."""
    deadline = time.monotonic() + hold_seconds
    went_on = False
    while time.monotonic() < deadline:
        if booted in (console.read_bytes() if console.exists() else b""):
            went_on = True
            break
        monitor.key("shift_r", down=True)  # repeated while held, as a keyboard does
        time.sleep(0.2)
    monitor.key("shift_r", down=False)
    for _ in range(2):
        monitor.type(ATTACK + "\n")
        time.sleep(4)  # 21 keys of 100 ms, and syslinux's answer
    return went_on
