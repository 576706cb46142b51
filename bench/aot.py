#!/usr/bin/env python3
"""AOT class data benchmark: boot-to-HTTP under TCG of WireMock and the Spring Boot-layout shop
app, with and without ``[jvm] aot``, on JDK 21 and 25 (issue 13, item 2; target: with <= 0.6x
without).

Why: on the host, most of a Java server's start is the JVM loading, verifying and linking
classes; under emulation every one of those instructions is slower still. A training run at
build time (imagebuilder/layers/aot.py) leaves an archive the guest maps instead. Measured:

* ``run --accel tcg --wait --json`` (the default boot path) of each image, --runs times,
  interleaved (app x JDK x with/without), each VM stopped before the next: the host's time from
  QEMU's start to the app's first HTTP answer and the init's boot phases (guest uptime at the
  end of kernel, drivers, network, environment, and when the app is executed); "JVM" is the
  first HTTP answer minus the app phase, the part the archive can change;
* the build's training run (the app's start to its answer inside the namespaces, and the
  whole aot stage: unpacking the root, training, writing the layer) and the aot layer's size;
* that every aot boot's console says the archive was in use.

WireMock 3.13.2 comes from ``npm pack`` (support/java_apps.fetch_wiremock, into the inputs
cache the tests share), the shop app is compiled by support/java_apps.ShopBuild (javac and
Debian's Jackson). Results replace the section
between ``<!-- aot:start -->`` and ``<!-- aot:end -->`` of docs/benchmarks.md.

    .venv/bin/python bench/aot.py [--runs N] [--jdks 21,25] [--home DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchdoc import write_section  # noqa: E402

from support.cli import Cli  # noqa: E402
from support.java_apps import ShopBuild, fetch_wiremock, project  # noqa: E402
from support.machine import cpu_model, load  # noqa: E402
from support.measure import median  # noqa: E402
from support.servers import free_port  # noqa: E402

PHASES = ("kernel", "drivers", "network", "environment", "app")
IN_USE = "imagebuilder: AOT class data /opt/aot/"
TRAINED = re.compile(r"aot: trained in ([\d.]+) s \(the app answered after ([\d.]+) s\), "
                     r"([\d.]+) MiB of class data")
MiB = 1 << 20


def _build(home: Path, root: Path, jdk: int, aot: bool) -> dict[str, Any]:
    """Build ``root`` on JDK ``jdk`` as NAME:{plain,aot}-JDK; the training figures and the aot
    layer's size."""
    toml = root / "imagebuilder.toml"
    text = toml.read_text().split("\n[jvm]\n")[0]
    # A training environment of its own per bench run: the aot stage trains again (and is timed)
    # while every other stage comes from the cache.
    toml.write_text(f"{text}\n[jvm]\nversion = {jdk}\ntrain = {{ env = \"bench\" }}\n\n"
                    f"[env.bench]\nvars = {{ BENCH_RUN = \"{time.time_ns()}\" }}\n")
    result = Cli(home)("build", str(root), "--version", f"{'aot' if aot else 'plain'}-{jdk}",
                  "--aot" if aot else "--no-aot", timeout=1800)
    ref = result.stdout.split()[0]
    info: dict[str, Any] = {"ref": ref}
    found = TRAINED.search(result.stderr)
    stage = re.search(r"aot: built in ([\d.]+) s", result.stderr)
    if found and stage:
        info.update(train=float(found[1]), answered=float(found[2]), archive=float(found[3]),
                    stage=float(stage[1]))
    inspect = Cli(home).json("inspect", ref)
    for layer in inspect["manifest"]["layers"]:
        if layer["annotations"]["org.opencontainers.image.title"] == "aot":
            info["layer"] = layer["size"] / MiB
    return info


def _boot(home: Path, ref: str) -> dict[str, Any] | None:
    port = free_port()
    result = Cli(home)("run", ref, "--accel", "tcg", "--wait", "--json", "--timeout", "600",
                       "-p", f"127.0.0.1:{port}:8080", check=False, timeout=900)
    if result.returncode != 0:
        print(f"{ref}: failed: {result.stderr.strip()}", file=sys.stderr)
        return None
    out: dict[str, Any] = json.loads(result.stdout)
    console = Path(out["console"]).read_text(errors="replace")
    out["in_use"] = any(line.startswith(IN_USE) for line in console.splitlines())
    Cli(home)("stop", str(out["id"]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jdks", default="21,25")
    parser.add_argument("--home", type=Path)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-aot-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        home = args.home or work / "home"
        wiremock = project(work / "wiremock", "wiremock", str(fetch_wiremock()),
                            'args = ["--port", "8080"]\nhealthcheck = "/__admin/mappings"\n')
        shop = project(work / "shop", "shop-boot", "shop.jar", "")
        ShopBuild(work / "shop-src").spring_boot(shop / "shop.jar")
        apps = {"WireMock 3.13.2": wiremock, "shop (Spring Boot layout)": shop}
        jdks = [int(v) for v in args.jdks.split(",")]
        builds = {(app, jdk, aot): _build(home, root, jdk, aot)
                  for app, root in apps.items() for jdk in jdks for aot in (False, True)}
        load_before = load()
        runs: dict[tuple[str, int, bool], list[dict[str, Any]]] = {key: [] for key in builds}
        failed = dict.fromkeys(builds, 0)
        for _ in range(args.runs):
            for key, info in builds.items():  # interleaved: load changes hit every image alike
                out = _boot(home, info["ref"])
                if out is None:
                    failed[key] += 1
                else:
                    runs[key].append(out)
                    print(f"{info['ref']}: {out['seconds']:.2f} s", file=sys.stderr)
        load_after = load()
    rows = ["| app | JDK | aot | run --wait to HTTP (host) | " + " | ".join(PHASES)
            + " | JVM (HTTP - app) | archive in use |",
            "|---|---|---|---|" + "---|" * len(PHASES) + "---|---|"]
    ratios = []
    for app in apps:
        for jdk in jdks:
            medians = {}
            for aot in (False, True):
                done = runs[(app, jdk, aot)]
                seconds = [float(r["seconds"]) for r in done]
                jvm = [float(r["seconds"]) - float(r["phases"]["app"]) for r in done
                       if "app" in r["phases"]]
                medians[aot] = (median(seconds), median(jvm))
                cells = [f"{median([float(r['phases'][p]) for r in done if p in r['phases']]):.2f}"
                         for p in PHASES]
                fails = failed[(app, jdk, aot)]
                note = f"; {fails} failed" if fails else ""
                used = f"{sum(r['in_use'] for r in done)}/{len(done)}" if aot else "-"
                rows.append(f"| {app} | {jdk} | {'yes' if aot else 'no'} | {medians[aot][0]:.2f} s"
                            " (" + ", ".join(f"{s:.1f}" for s in seconds) + f"{note}) | "
                            + " | ".join(cells) + f" | {medians[aot][1]:.2f} s | {used} |")
            ratio = medians[True][0] / medians[False][0]
            ratios.append(f"{app} on JDK {jdk}: {ratio:.2f}x boot-to-HTTP ("
                          f"{'meets' if ratio <= 0.6 else 'misses'} the <= 0.6x target), "
                          f"{medians[True][1] / medians[False][1]:.2f}x the JVM's part")
    train_rows = ["| app | JDK | training run: app answered after | whole training run | aot stage "
                  "(unpack, train, write) | archive | aot layer (zstd) |",
                  "|---|---|---|---|---|---|---|"]
    for (app, jdk, aot), info in builds.items():
        if not aot:
            continue
        train_rows.append(f"| {app} | {jdk} | {info['answered']:.1f} s | {info['train']:.1f} s | "
                          f"{info['stage']:.1f} s | {info['archive']:.1f} MiB | "
                          f"{info['layer']:.1f} MiB |")
    text = "\n".join([
        "## AOT class data: boot-to-HTTP under TCG with and without a training run",
        "",
        "JDK 21: a dynamic AppCDS archive; JDK 25: the AOT cache (JEP 483/514/515). "
        "`run --accel tcg --wait --json` on the default boot path (microvm: one vCPU and the "
        "JVM's own tiers, `run`'s defaults), 1024 "
        f"MiB, medians of {args.runs} runs per image, interleaved, on {cpu_model()} with "
        f"{os.cpu_count()} CPUs. The host column is the time from QEMU's start to the app's"
        " first HTTP answer (all runs in brackets); the phase columns are the guest's uptime at "
        "the end of each boot phase, as the init prints them; JVM is the first answer minus the "
        "app phase (host and guest clocks, so approximate). \"Archive in use\" counts the boots "
        "whose console said so.",
        "",
        *rows,
        "",
        "Ratios with/without aot (medians): " + "; ".join(ratios) + ".",
        "",
        "The training run at build time (on the host, in the image's root and namespaces):",
        "",
        *train_rows,
        "",
        f"Load average before: {load_before:.2f}, after: {load_after:.2f}"
        + (" (a shared, loaded machine: absolute times are inflated, compare the rows with "
           "each other)" if max(load_before, load_after) > 1.5 else "") + ".",
    ])
    write_section(args.out, "aot", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
