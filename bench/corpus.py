#!/usr/bin/env python3
"""Corpus benchmark (issue 17): every app of support/corpus.py built, booted under TCG and run on
the host as its documentation says, and their answers compared.

Why: the rule is that an app that serves when started with ``java`` as its documentation says
serves in the image, with ``run``'s defaults, and behaves the same. The suite boots three of the
corpus (tests/e2e/test_corpus.py); this boots them all, one at a time, and records per app:

* build time: a whole ``imagebuilder build`` process into one IMAGEBUILDER_HOME shared by the
  corpus (the first build also fetches and makes the kernel, the base and the JDK: see its note);
* image size: kernel + layers, as stored;
* time to first answer in the image: ``run --accel tcg --wait``'s seconds from starting QEMU to
  the healthcheck's first 2xx (run's defaults: the JVM's own JIT tiers since 55bfd68);
* time to first answer on the host: from starting the documented command (Debian's JDK 17) to
  the healthcheck's first 2xx; the compared requests are sent from a non-loopback address of
  the host, as the image's come from QEMU's gateway (10.0.2.2), so an app's own policy for
  remote clients judges both alike (the examples war answers 403 on both sides; booted in the
  foreground, since its healthcheck never answers 2xx to the gateway: see
  :func:`in_image_foreground`);
* whether the answers matched (status, content type, normalised body); what differed otherwise.

Results replace the part of docs/benchmarks.md between ``<!-- corpus:start -->`` and
``<!-- corpus:end -->``.

    .venv/bin/python bench/corpus.py [--apps corpus-h2 ...] [--out docs/benchmarks.md]

Needs what tests/e2e/test_corpus.py needs (npm, apt-get, scripts/setup.sh's packages) and about
4 GiB in /var/tmp.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchdoc import write_section  # noqa: E402

from imagebuilder.store.layout import Store  # noqa: E402
from support.cli import Cli  # noqa: E402
from support.corpus import (  # noqa: E402
    CORPUS,
    Answer,
    CorpusApp,
    ask,
    differences,
    exchange,
    on_host,
    project,
)
from support.inputs import inputs_dir  # noqa: E402
from support.machine import cpu_model, load  # noqa: E402
from support.servers import free_port  # noqa: E402

MiB = 1 << 20


@dataclass
class Row:
    app: CorpusApp
    build: str = "-"
    size: str = "-"
    image: str = "-"
    host: str = "-"
    matched: str = "-"
    notes: list[str] = field(default_factory=list)

    def cells(self) -> tuple[str, ...]:
        return (self.app.name.removeprefix("corpus-"), self.app.shape, self.app.source,
                self.build, self.size, self.image, self.host, self.matched)


def imagebuilder(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return Cli(home)(*args, check=False, timeout=1800)


def last_line(text: str) -> str:
    """The end of the last line: where `run`'s error puts the console's last lines (the cause)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][-400:] if lines else "(no output)"


def build(row: Row, home: Path, root: Path) -> bool:
    start = time.monotonic()
    result = imagebuilder(home, "build", str(root), "--json")
    row.build = f"{time.monotonic() - start:.1f}"
    if result.returncode != 0:
        row.build += " (failed)"
        row.notes.append(f"build exited {result.returncode}: {last_line(result.stderr)}")
        return False
    warnings = [line for line in result.stderr.splitlines() if "warning" in line.lower()]
    row.notes += [f"build: {w.strip()[:300]}" for w in warnings[:3]]
    image = Store(home / "store").resolve(f"{row.app.name}:1.0.0")
    row.size = f"{image.size / MiB:.1f}"
    return True


def in_image(row: Row, home: Path) -> list[Answer] | None:
    if not row.app.remote:
        return in_image_foreground(row, home)
    port = free_port()
    result = imagebuilder(home, "run", f"{row.app.name}:1.0.0", "--accel", "tcg", "-p",
                          f"127.0.0.1:{port}:{row.app.port}", "--wait", "--timeout", "600",
                          "--json")
    if result.returncode != 0:
        row.image = "no answer"
        row.notes.append(f"run: {last_line(result.stderr)}")
        return None
    out = json.loads(result.stdout)
    row.image = f"{out['seconds']:.1f}"
    try:
        return exchange(row.app, f"http://127.0.0.1:{port}")
    finally:
        imagebuilder(home, "stop", out["id"])


def in_image_foreground(row: Row, home: Path, timeout: float = 600) -> list[Answer] | None:
    """For an app that denies remote clients (its healthcheck never answers 2xx to QEMU's
    gateway, so ``--wait`` cannot tell it is up): ``run`` in the foreground, the requests sent
    once the first one gets any HTTP answer, then Ctrl-C (SIGINT) stops the VM."""
    port = free_port()
    cli = Cli(home)
    with open(home / f"run-{row.app.name}.log", "wb") as log:
        proc = subprocess.Popen(cli.argv(["run", f"{row.app.name}:1.0.0", "--accel", "tcg", "-p",
                                          f"127.0.0.1:{port}:{row.app.port}"]), env=cli.env(),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    base, start = f"http://127.0.0.1:{port}", time.monotonic()
    try:
        while time.monotonic() - start < timeout and proc.poll() is None:
            try:
                ask(base, row.app.requests[0], timeout=10)
            except OSError:
                time.sleep(0.5)
                continue
            row.image = f"{time.monotonic() - start:.1f} (any answer)"
            return exchange(row.app, base)
        row.image = "no answer"
        row.notes.append(f"run (foreground): no HTTP answer; exit {proc.poll()}")
        return None
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def on_the_host(row: Row, cache: Path, root: Path, work: Path) -> list[Answer] | None:
    try:
        with on_host(row.app, cache, root, work) as run:
            row.host = f"{run.seconds:.1f}"
            return exchange(row.app, run.url(), run.source)
    except RuntimeError as exc:
        row.host = "no answer"
        row.notes.append(f"host: {exc}")
        return None


def prepare(app: CorpusApp, cache: Path, home: Path, work: Path) -> tuple[Row, bool]:
    """The app's row with its build measured; whether it built."""
    row = Row(app)
    return row, build(row, home, project(app, cache, work / "projects" / app.name))


def measure(row: Row, built: bool, cache: Path, home: Path, work: Path) -> Row:
    """The host run and the boot (one at a time), and whether their answers matched."""
    app = row.app
    host = on_the_host(row, cache, work / "projects" / app.name, work)
    if not built:
        row.matched = "no (build failed)"
        return row
    image = in_image(row, home)
    if host is None or image is None:
        row.matched = "no (no answer)"
        return row
    diff = differences(host, image, app)
    row.matched = "yes" if not diff else f"no ({len(diff)} of {len(app.requests)} differ)"
    row.notes += diff
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", nargs="*", help="names of support/corpus.py's apps (all)")
    parser.add_argument("--out", type=Path, default=REPO / "docs/benchmarks.md")
    args = parser.parse_args()
    apps = [a for a in CORPUS if not args.apps or a.name in args.apps]
    cache = inputs_dir("corpus")
    work = Path(tempfile.mkdtemp(prefix="bench-corpus-", dir="/var/tmp"))
    rows = []
    try:
        built = [prepare(app, cache, work / "home", work) for app in apps]  # builds first
        for row, ok in built:
            rows.append(measure(row, ok, cache, work / "home", work))
            print(" | ".join(rows[-1].cells()), *rows[-1].notes, sep="\n  ", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_at_end = load()
    section = "\n".join([
        "## Corpus: published Java server apps, host and image (`bench/corpus.py`)",
        "",
        f"Measured {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} CPUs "
        f"({cpu_model()}), {platform.platform()}, Python {platform.python_version()}; load "
        f"average at the end {load_at_end:.1f} (the machine was shared with other jobs: times are "
        "upper bounds). One app at a time; one IMAGEBUILDER_HOME for all builds, so the first "
        "build also made the kernel, the base and the JDK. Image: trixie, JDK 21, booted with "
        "`run --accel tcg` (run's defaults); host: Debian's JDK 17, the documented command. "
        "Answers compared: status, content type, body (normalised as support/corpus.py lists).",
        "",
        "| app | shape | source | build (s) | image (MiB) | first answer, image TCG (s) "
        "| first answer, host (s) | answers match |",
        "|---|---|---|---|---|---|---|---|",
        *(f"| {' | '.join(r.cells())} |" for r in rows),
        "",
        *(f"- {r.app.name.removeprefix('corpus-')}: {n}" for r in rows for n in r.notes),
    ])
    write_section(args.out, "corpus", section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
