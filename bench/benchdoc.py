"""What every benchmark script shares about docs/benchmarks.md: its own section of the file,
and the commit it measured (the machine's facts, timing and medians are in support/, which the
tests share too).

Each script owns the part of the file between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``
and rewrites only that, so the file holds exactly what the scripts last printed.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

INTRO = (
    "# Benchmarks\n\n"
    "Measured by the scripts in `bench/`; each script rewrites only its own section of this file\n"
    "(between its markers), so results here are always what a script printed, never edited by "
    "hand.\n"
)


def write_section(out: Path, name: str, text: str) -> None:
    """Replace section ``name`` of ``out`` with ``text`` and a line naming the commit measured
    (appended, or the file created, if missing); the file is replaced atomically."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{text.strip()}\n\n{commit_line()}\n{end}"
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


def commit_line() -> str:
    """``Commit measured: abc1234`` (and whether the tree had uncommitted changes)."""
    repo = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(repo), *args], capture_output=True,
                                  text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "imagebuilder", "bench")
    return f"Commit measured: {commit}" + (" (with uncommitted changes)" if dirty else "") + "."
