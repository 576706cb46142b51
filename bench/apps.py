#!/usr/bin/env python3
"""Real apps benchmark: WireMock 3.13.2 and a Spring Boot-layout app, built, rebuilt and pushed.

Why: issue 10 promises that real apps build fast and that a new app version costs only its own
classes. Measured for WireMock (a shaded executable jar: its own code and its libraries are one
jar) and for the shop app of support/java_apps.py packed as a Spring Boot jar (BOOT-INF/classes
and BOOT-INF/lib with Debian's Jackson):

* cold build with the Debian packages already downloaded (a fresh IMAGEBUILDER_HOME whose
  download cache is hard-linked from a first build): every stage built;
* warm rebuild after a change to the app's own classes (target <= 1 s): for the shop a
  recompiled App class, for WireMock one class added to the jar; whole ``imagebuilder build``
  processes, interpreter start-up included; median of ``--runs``;
* image size (kernel + layers) next to the jar's size, and the app layer's size;
* bytes sent pushing the new version to Debian's docker-registry on 127.0.0.1 after the old
  one (target <= 1.1x the app layer);
* module detection: imagebuilder's (open the app, read every loadable class, map the packages
  through the jmods; in process, median of ``--runs``) against ``jdeps --print-module-deps`` on
  the same classes (median of 3), both with the host's JDK 17 and its jmods.

Results replace the part of docs/benchmarks.md between ``<!-- apps:start -->`` and
``<!-- apps:end -->``.

    .venv/bin/python bench/apps.py [--runs N] [--out docs/benchmarks.md]

Needs javac, jdeps, npm (or WireMock already in the inputs cache: support/inputs.py),
docker-registry, Debian's libjackson2-databind-java and about 3 GiB in /var/tmp.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchdoc import write_section  # noqa: E402

from imagebuilder.apps import modules  # noqa: E402
from imagebuilder.apps.archive import Budget  # noqa: E402
from imagebuilder.apps.detect import detect  # noqa: E402
from imagebuilder.apps.scan import scan  # noqa: E402
from imagebuilder.store.layout import Store  # noqa: E402
from support.cli import Cli  # noqa: E402
from support.corpus import HOST_JDK  # noqa: E402
from support.java_apps import JACKSON, ShopBuild, fetch_wiremock, project  # noqa: E402
from support.machine import cpu_model, load  # noqa: E402
from support.measure import Timing, median, seconds_list, stopwatch  # noqa: E402
from support.registry import start_registry  # noqa: E402

MiB = 1 << 20


def cli(home: Path, *args: str) -> tuple[Timing, Any]:
    """One whole `imagebuilder ... --json` process: its wall and CPU time (the CPU time of a
    child, unlike wall time, is not inflated by other jobs on a shared machine) and output."""
    with stopwatch() as timing:
        out = Cli(home).json(*args, cwd=REPO, timeout=3600)
    return timing, out


def fresh_home(work: Path, seed: Path, name: str) -> Path:
    """A new IMAGEBUILDER_HOME whose download cache is the seed's (hard links)."""
    home = work / name
    (home / "cache").mkdir(parents=True)
    subprocess.run(["cp", "-al", str(seed / "cache" / "archive"), str(home / "cache")],
                   check=True)
    return home


class App:
    """One benchmarked app: how to make version N of it, and the classes jdeps reads."""

    def __init__(self, name: str, root: Path, jar: Path) -> None:
        self.name, self.root, self.jar = name, root, jar

    def change(self, n: int) -> None:
        raise NotImplementedError

    def jdeps_args(self) -> list[str]:
        return [str(self.jar)]


class WireMock(App):
    def change(self, n: int) -> None:
        # One more class of its own: a copy of a small class under a new name.
        with zipfile.ZipFile(self.jar, "a") as zf:
            zf.writestr(f"wiremock/BenchChange{n}.class", zf.read("wiremock/Run.class"))


class Shop(App):
    def __init__(self, name: str, root: Path, jar: Path, build: ShopBuild) -> None:
        super().__init__(name, root, jar)
        self.build = build

    def change(self, n: int) -> None:
        self.build.spring_boot(self.jar, self.build.compile(str(n)))

    def jdeps_args(self) -> list[str]:
        return ["-cp", ":".join(map(str, JACKSON)), str(self.build.app),
                *map(str, JACKSON)]


def detection(app: App, runs: int) -> tuple[float, float, list[str], list[str]]:
    """(ours, jdeps) seconds, medians, and the modules each found."""
    index = modules.read_jmods(HOST_JDK / "jmods")
    ours_times, found = [], []
    for _ in range(runs):
        start = time.monotonic()
        budget = Budget()
        shape = detect(app.jar, None, budget)
        found = modules.needed(scan(shape, 17, budget, app.jar), index)
        ours_times.append(time.monotonic() - start)
    jdeps_times, theirs = [], []
    for _ in range(3):
        start = time.monotonic()
        out = subprocess.run([str(HOST_JDK / "bin/jdeps"), "--print-module-deps",
                              "--ignore-missing-deps", "--multi-release", "17",
                              *app.jdeps_args()], capture_output=True, text=True, check=True)
        jdeps_times.append(time.monotonic() - start)
        theirs = out.stdout.strip().split(",")
    return median(ours_times), median(jdeps_times), found, theirs


def measure(app: App, work: Path, seed: Path, runs: int) -> tuple[list[tuple[str, ...]],
                                                                   list[str]]:
    rows: list[tuple[str, ...]] = []
    notes: list[str] = []
    home = fresh_home(work, seed, f"home-{app.name}")
    cold, out = cli(home, "build", str(app.root))
    built = [s["name"] for s in out["stages"] if not s["cached"]]
    rows.append((f"{app.name}: cold build, packages downloaded", f"{cold.seconds:.1f} s",
                 "", f"stages built: {', '.join(built)}"))
    warm, cpu, stage_times = [], [], {}
    for n in range(2, runs + 2):
        app.change(n)
        timing, out = cli(home, "build", str(app.root), "--version", str(n))
        rebuilt = {s["name"] for s in out["stages"] if not s["cached"]}
        if rebuilt != {"app", "disk"}:
            notes.append(f"{app.name} v{n} rebuilt {sorted(rebuilt)}, not only app and disk")
        warm.append(timing.seconds)
        cpu.append(timing.cpu)
        stage_times = {s["name"]: s["seconds"] for s in out["stages"] if not s["cached"]}
    warm_median = median(warm)
    rows.append((f"{app.name}: rebuild after an own-code change", f"{warm_median:.2f} s "
                 f"(CPU {median(cpu):.2f} s)", "<= 1 s",
                 "pass" if warm_median <= 1.0 else "**miss**"))
    notes.append(f"{app.name} rebuild runs (s): {seconds_list(warm)}; CPU "
                 f"(user + system, s): {seconds_list(cpu)}; stages of the last:"
                 f" {', '.join(f'{k} {v:.2f} s' for k, v in stage_times.items())}")
    store = Store(home / "store")
    last = store.resolve(f"{app.name}:{runs + 1}")
    sizes = {(d.annotations or {}).get("org.opencontainers.image.title", "?"): d.size
             for d in last.layers}
    rows.append((f"{app.name}: image (kernel + layers) / jar", f"{last.size / MiB:.1f} MiB / "
                 f"{app.jar.stat().st_size / MiB:.1f} MiB", "",
                 ", ".join(f"{k} {v / MiB:.1f} MiB" for k, v in sizes.items())))
    reg = start_registry(work / f"reg-{app.name}")
    try:
        cli(home, "push", f"{app.name}:{runs}", f"{reg.host}/{app.name}", "--insecure")
        _, sent = cli(home, "push", f"{app.name}:{runs + 1}", f"{reg.host}/{app.name}",
                      "--insecure")
    finally:
        reg.stop()
    ratio = int(sent["bytes_sent"]) / sizes["app"]
    rows.append((f"{app.name}: bytes pushed after an own-code change / app layer",
                 f"{sent['bytes_sent']} B / {sizes['app']} B = {ratio:.3f}", "<= 1.1",
                 "pass" if ratio <= 1.1 else "**miss**"))
    notes.append(f"{app.name}: the push of the new version sent {sent['blobs_sent']} blobs, the "
                 f"app layer ({sizes['app']} B) and the image config "
                 f"({last.manifest['config']['size']} B), and skipped {sent['blobs_skipped']}")
    ours, theirs, ours_found, jdeps_found = detection(app, runs)
    rows.append((f"{app.name}: module detection (no memo), ours vs jdeps", f"{ours:.2f} s vs "
                 f"{theirs:.2f} s = {ours / theirs:.2f}", "", ""))
    missing = sorted(set(jdeps_found) - set(ours_found))
    notes.append(f"{app.name} modules: ours {', '.join(ours_found)}; jdeps "
                 f"{', '.join(jdeps_found)}" + (f"; jdeps-only: {missing}" if missing else
                                                 " (jdeps' are a subset of ours)"))
    return rows, notes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "docs/benchmarks.md")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-apps-", dir="/var/tmp"))
    rows: list[tuple[str, ...]] = []
    notes: list[str] = []
    try:
        wm_root = project(work / "wiremock", "wiremock", "wiremock.jar",
                          'args = ["--port", "8080"]\n', version="1")
        shutil.copyfile(fetch_wiremock(), wm_root / "wiremock.jar")
        shop_root = project(work / "shop", "shop", "shop.jar", version="1")
        build = ShopBuild(work / "shop-src")
        build.spring_boot(shop_root / "shop.jar")
        apps = [WireMock("wiremock", wm_root, wm_root / "wiremock.jar"),
                Shop("shop", shop_root, shop_root / "shop.jar", build)]
        seed = work / "seed"
        for app in apps:  # downloads every package both apps need, once
            cli(seed, "build", str(app.root))
        for app in apps:
            r, n = measure(app, work, seed, args.runs)
            rows += r
            notes += n
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_at_end = load()
    section = "\n".join([
        "## Real apps: WireMock and a Spring Boot-layout app (`bench/apps.py`)",
        "",
        f"Measured {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} CPUs "
        f"({cpu_model()}), {platform.platform()}, Python {platform.python_version()}; load "
        f"average at the end {load_at_end:.1f} (the machine was shared with other jobs: times are "
        f"upper bounds). Whole `imagebuilder` processes; {args.runs} rebuilds, medians.",
        "",
        "| metric | result | target | pass / detail |",
        "|---|---|---|---|",
        *(f"| {' | '.join(r)} |" for r in rows),
        "",
        *(f"- {n}" for n in notes),
    ])
    write_section(args.out, "apps", section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
