"""Where a boot's time went, read from the guest's serial console.

The init prints one line per boot phase, ``imagebuilder: [UPTIME] phase NAME``, with the guest's
uptime in seconds (from /proc/uptime, so it counts from the kernel's start, not QEMU's): ``kernel``
when the init starts, then ``drivers``, ``network``, ``environment`` and ``app`` as each phase
ends (``app``: the moment the app is executed). `run --wait` adds the host's own clock: when the
app first answered HTTP, counted from QEMU's start (firmware included).
"""

from __future__ import annotations

import re

PHASES = ("kernel", "drivers", "network", "environment", "app")
_PHASE_RE = re.compile(r"^imagebuilder: \[(\d+(?:\.\d+)?)\] phase ([a-z]+)\r?$", re.MULTILINE)


def parse_phases(console: str) -> dict[str, float]:
    """The known phases found in ``console`` with their guest uptimes, in boot order.

    A phase's first line wins (a later boot on the same console does not move it); lines of other
    shapes and unknown phase names are ignored, so the app's own output cannot add phases.
    """
    found: dict[str, float] = {}
    for match in _PHASE_RE.finditer(console):
        name = match[2]
        if name in PHASES and name not in found:
            found[name] = float(match[1])
    return {name: found[name] for name in PHASES if name in found}


def describe(phases: dict[str, float]) -> str:
    """``kernel 3.21 s, drivers 3.50 s, ...`` (guest uptime at the end of each phase)."""
    return ", ".join(f"{name} {seconds:.2f} s" for name, seconds in phases.items())
