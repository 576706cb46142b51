#!/usr/bin/env python3
"""Fault-injection counts: runs tests/e2e/test_faults.py and reports what it injected and what
the store, the cache and the reruns survived, in docs/benchmarks.md (section ``faults``).

Why here: the suite is the proof that interruptions, full and failing disks and failing servers
never leave a store that a later command trusts wrongly; the counts say how much was tried. The
test module logs one JSON line per fault (``$IMAGEBUILDER_FAULTS_LOG``): its kind, the command it
struck, where, whether it struck (a kill can come after the command finished; a dropped
connection can be shorter than the cut) and whether every check after it passed.

    .venv/bin/python bench/faults.py [--seed N]
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchdoc import write_section

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from support.machine import cpus  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", default=os.environ.get("IMAGEBUILDER_FAULT_SEED", "20261130"))
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
        log = Path(tmp) / "faults.jsonl"
        env = {**os.environ, "IMAGEBUILDER_FAULTS_LOG": str(log),
               "IMAGEBUILDER_FAULT_SEED": str(args.seed)}
        started = time.monotonic()
        run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                              "-m", "faults", "tests/e2e/test_faults.py"], cwd=REPO, env=env,
                             capture_output=True, text=True)
        seconds = time.monotonic() - started
        records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() \
            else []
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else "no output"
    text = section(records, args.seed, summary, seconds)
    print(text)
    if run.returncode != 0:
        print(run.stdout[-4000:], run.stderr[-2000:], file=sys.stderr)
    write_section(args.out, "faults", text)
    return run.returncode


def section(records: list[dict[str, object]], seed: str, summary: str, seconds: float) -> str:
    rows: dict[tuple[str, str], collections.Counter[str]] = collections.defaultdict(
        collections.Counter)
    for r in records:
        count = rows[(str(r["kind"]), str(r["command"]))]
        count["tried"] += 1
        count["struck"] += bool(r["injected"])
        count["survived"] += bool(r["injected"]) and bool(r["survived"])
        count["failed"] += not r["survived"]
    struck = sum(c["struck"] for c in rows.values())
    survived = sum(c["survived"] for c in rows.values())
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## Fault injection (`tests/e2e/test_faults.py`, counted by `bench/faults.py`)",
        "",
        f"Run on {when}, {cpus()}, seed {seed}; the whole module "
        f"took {seconds:.0f} s on the shared machine (pytest: {summary}). After every fault: "
        "`imagebuilder check` finds no damage in the store and the stage cache, an output is "
        "whole or absent, a failed command printed one `ERROR:` line (no traceback), and the "
        "command run again without the fault succeeds with the expected digests. *struck*: "
        "the fault happened (a kill after the command had finished, or a cut longer than the "
        "connection, did not strike; the checks still ran).",
        "",
        "| fault | command | tried | struck | survived | failed a check |",
        "|---|---|---|---|---|---|",
        *(f"| {kind} | {command} | {c['tried']} | {c['struck']} | {c['survived']} "
          f"| {c['failed']} |" for (kind, command), c in sorted(rows.items())),
        f"| **all** | | {len(records)} | {struck} | {survived} "
        f"| {sum(c['failed'] for c in rows.values())} |",
        "",
        "- SIGKILL: the process group at a seeded moment of a timed clean run; push, pull and "
        "publish through a loopback proxy throttled to 16 MiB/s so the moment falls "
        "mid-transfer; build with the kernel, base, app and disk stages to redo.",
        "- ENOSPC: a size-limited tmpfs (store of a pull, cache of a build, an export's "
        "output), grown before the rerun. EFBIG: RLIMIT_FSIZE. EIO: Python-level, at a seeded "
        "byte count of the reads or writes under the store or the cache (this machine has no "
        "device-mapper or FUSE tools to fail a disk for real).",
        "- HTTP 500 and dropped connections: a loopback proxy in front of the real "
        "docker-registry and moto_server, on one seeded connection per run.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
