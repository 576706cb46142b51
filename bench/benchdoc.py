"""What every benchmark script shares: its section of docs/benchmarks.md, and the CPU's name.

Each script owns the part of the file between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``
and rewrites only that, so the file holds exactly what the scripts last printed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

INTRO = (
    "# Benchmarks\n\n"
    "Measured by the scripts in `bench/`; each script rewrites only its own section of this file\n"
    "(between its markers), so results here are always what a script printed, never edited by "
    "hand.\n"
)


def write_section(out: Path, name: str, text: str) -> None:
    """Replace section ``name`` of ``out`` with ``text`` (appended, or the file created, if
    missing); the file is replaced atomically."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{text.strip()}\n{end}"
    doc = out.read_text() if out.exists() else INTRO
    if start in doc and end in doc and doc.index(start) < doc.index(end):
        head, rest = doc.split(start, 1)
        doc = head + block + rest.split(end, 1)[1]
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{name}.tmp")
    tmp.write_text(doc)
    os.replace(tmp, out)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or "unknown"."""
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(),
                          re.MULTILINE)
    except OSError:
        return "unknown"
    return found[1].strip() if found else "unknown"
