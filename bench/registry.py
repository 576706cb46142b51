#!/usr/bin/env python3
"""Registry benchmark: push and pull against Debian's docker-registry on 127.0.0.1.

Why: images travel through registries, and three promises of imagebuilder/registry/transfer.py are
measurable: (1) an app-only change uploads about the app layer, nothing more (target: bytes sent
<= 1.1x the app layer); (2) push and pull of examples/hello are as fast as ``skopeo copy`` of the
same OCI layout to and from the same registry (target: time ratio <= 1.0, medians); (3) blobs
stream, so peak resident memory stays under 150 MB pushing and pulling a 1 GiB layer.

Method: examples/hello is compiled and built into a throwaway IMAGEBUILDER_HOME (a real build
from the Debian archive), then rebuilt as 2.0.0 with one resource added to the jar. Each timed
run gets a fresh registry (new storage directory), so neither tool can skip or mount blobs it
pushed before; ours runs as a whole process (the installed ``imagebuilder`` command,
interpreter start-up included), skopeo as ``skopeo copy oci:STORE:hello:1.0.0
docker://HOST/hello:1.0.0 --dest-tls-verify=false`` and back to an empty ``oci:`` directory.
Runs alternate between the tools. Peak RSS is ``/usr/bin/time -v``'s maximum resident set.

Results replace the part of docs/benchmarks.md between ``<!-- registry:start -->`` and
``<!-- registry:end -->`` (appended if missing).

    .venv/bin/python bench/registry.py [--runs N] [--out docs/benchmarks.md] [--strict]

Needs docker-registry, skopeo, a JDK (javac, jar), /usr/bin/time and about 3 GiB in /var/tmp.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchdoc import write_section  # noqa: E402

from imagebuilder.store.layout import INITRD_LAYER_MEDIA_TYPE, KERNEL_MEDIA_TYPE, Store  # noqa: E402
from support.cli import Cli  # noqa: E402
from support.measure import median, run_timed, seconds_list  # noqa: E402
from support.registry import start_registry  # noqa: E402

MiB, GiB = 1 << 20, 1 << 30


def ours(home: Path, *args: str) -> list[str]:
    return Cli(home).argv(args)


def env_of(home: Path | None) -> dict[str, str]:
    """The environment of a measured command: ``home`` as IMAGEBUILDER_HOME (if any) and an
    empty Docker config of its own beside it."""
    docker = {"DOCKER_CONFIG": str(home or "/nonexistent") + "-docker"}
    return Cli(home, docker).env() if home is not None else {**os.environ, **docker}


def run(argv: list[str], home: Path | None = None) -> tuple[float, str]:
    ran = run_timed(argv, env=env_of(home), cwd=REPO, rss=False)
    return ran.seconds, ran.stdout


def timed_rss(argv: list[str], home: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of ``argv``."""
    ran = run_timed(argv, env=env_of(home), cwd=REPO)
    return ran.seconds, ran.rss_kib / 1024


def build_hello(work: Path, home: Path) -> None:
    app = work / "hello"
    shutil.copytree(REPO / "examples/hello", app,
                    ignore=shutil.ignore_patterns("hello.jar", "imagebuilder.lock"))
    subprocess.run(["sh", str(app / "build.sh")], check=True, capture_output=True)
    run(ours(home, "build", str(app), "--json"), home)
    with zipfile.ZipFile(app / "hello.jar", "a") as jar:
        jar.writestr("hello/extra.txt", "a new resource\n")
    run(ours(home, "build", str(app), "--version", "2.0.0", "--json"), home)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "docs/benchmarks.md")
    parser.add_argument("--strict", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-registry-", dir="/var/tmp"))
    rows: list[tuple[str, str, str, str]] = []
    notes: list[str] = []
    try:
        home = work / "home"
        build_hello(work, home)
        store = Store(home / "store")
        v2 = store.resolve("hello:2.0.0")

        # (1) app-only change
        reg = start_registry(work / "reg-delta")
        try:
            run(ours(home, "push", "hello:1.0.0", f"{reg.host}/hello", "--insecure", "--json"),
                home)
            _, out = run(ours(home, "push", "hello:2.0.0", f"{reg.host}/hello", "--insecure",
                              "--json"), home)
        finally:
            reg.stop()
        sent = json.loads(out)
        app = v2.layers[-1].size
        ratio = sent["bytes_sent"] / app
        rows.append(("push of v2 after an app-only change: bytes sent / app layer",
                     f"{sent['bytes_sent']} B / {app} B = {ratio:.3f}", "<= 1.1",
                     "pass" if ratio <= 1.1 else "**miss**"))
        notes.append(f"v2 push sent {sent['blobs_sent']} blobs (the app layer and the image "
                     f"config, {v2.manifest['config']['size']} B), skipped "
                     f"{sent['blobs_skipped']}; plus the manifest "
                     f"({len(store.read_blob(v2.digest))} B, not counted as a blob).")

        # (2) hello push/pull vs skopeo, a fresh registry per run
        times: dict[str, list[float]] = {k: [] for k in ("push", "skopeo push", "pull",
                                                          "skopeo pull")}
        for i in range(args.runs + 1):
            reg = start_registry(work / f"reg-{i}")
            try:
                shutil.rmtree(home / "cache" / "registry", ignore_errors=True)
                pairs = [("push", ours(home, "push", "hello:1.0.0", f"{reg.host}/a/hello",
                                       "--insecure", "--json")),
                         ("skopeo push", ["skopeo", "copy", "-q", "--dest-tls-verify=false",
                                          f"oci:{home / 'store'}:hello:1.0.0",
                                          f"docker://{reg.host}/b/hello:1.0.0"])]
                for name, argv in (pairs if i % 2 else pairs[::-1]):
                    seconds, _ = run(argv, home)
                    if i:
                        times[name].append(seconds)
                pull_home = work / f"pull-{i}"
                pairs = [("pull", ours(pull_home, "pull", f"{reg.host}/a/hello:1.0.0",
                                       "--insecure", "--json")),
                         ("skopeo pull", ["skopeo", "copy", "-q", "--src-tls-verify=false",
                                          f"docker://{reg.host}/b/hello:1.0.0",
                                          f"oci:{work / f'sk-{i}'}:hello:1.0.0"])]
                for name, argv in (pairs if i % 2 else pairs[::-1]):
                    seconds, _ = run(argv, pull_home if name == "pull" else None)
                    if i:
                        times[name].append(seconds)
                shutil.rmtree(pull_home, ignore_errors=True)
                shutil.rmtree(work / f"sk-{i}", ignore_errors=True)
            finally:
                reg.stop()
                shutil.rmtree(work / f"reg-{i}", ignore_errors=True)
        image = store.resolve("hello:1.0.0")
        size = image.size + image.manifest["config"]["size"]
        for op in ("push", "pull"):
            a, b = median(times[op]), median(times[f"skopeo {op}"])
            rows.append((f"{op} examples/hello ({size / MiB:.1f} MiB) vs skopeo copy: time",
                         f"{a:.3f} s vs {b:.3f} s = {a / b:.2f}", "<= 1.0",
                         "pass" if a / b <= 1.0 else "**miss**"))
            notes.append(f"{op} runs (s), ours / skopeo: {seconds_list(times[op], 3)} / "
                         f"{seconds_list(times[f'skopeo {op}'], 3)}")

        # (3) 1 GiB layer: peak RSS
        big_home = work / "big"
        big = Store(big_home / "store")
        layer_file = work / "layer.bin"
        with open(layer_file, "wb") as f:
            for _ in range(GiB // (16 * MiB)):
                f.write(os.urandom(16 * MiB))
        layers = [big.add_blob_bytes(b"kernel", KERNEL_MEDIA_TYPE),
                  big.add_blob_file(layer_file, INITRD_LAYER_MEDIA_TYPE)]
        layer_file.unlink()
        big.put_image("big:1.0.0", {"name": "big", "version": "1.0.0"}, layers)
        reg = start_registry(work / "reg-big")
        try:
            push_s, push_rss = timed_rss(ours(big_home, "push", "big:1.0.0",
                                              f"{reg.host}/big", "--insecure", "--json"),
                                         big_home)
            pull_s, pull_rss = timed_rss(ours(work / "big2", "pull",
                                              f"{reg.host}/big:1.0.0", "--insecure", "--json"),
                                         work / "big2")
            sk_push, _ = run(["skopeo", "copy", "-q", "--dest-tls-verify=false",
                              f"oci:{big_home / 'store'}:big:1.0.0",
                              f"docker://{reg.host}/bigsk:1.0.0"])
            sk_pull, _ = run(["skopeo", "copy", "-q", "--src-tls-verify=false",
                              f"docker://{reg.host}/bigsk:1.0.0", f"oci:{work / 'bigsk'}:big"])
        finally:
            reg.stop()
        for op, seconds, rss in (("push", push_s, push_rss), ("pull", pull_s, pull_rss)):
            rows.append((f"peak RSS, {op} of a 1 GiB random layer ({seconds:.1f} s)",
                         f"{rss:.0f} MiB", "< 150 MB", "pass" if rss * MiB < 150e6 else
                         "**miss**"))
        notes.append(f"1 GiB random layer, one run each (informational): push {push_s:.2f} s "
                     f"vs skopeo {sk_push:.2f} s ({push_s / sk_push:.2f}); pull {pull_s:.2f} s "
                     f"vs skopeo {sk_pull:.2f} s ({pull_s / sk_pull:.2f}).")
        fixed = median(
            run([sys.executable, "-c",
                 "import imagebuilder.cli, imagebuilder.registry.transfer, tqdm"])[0]
            for _ in range(5))
        bare = median(run([sys.executable, "-c", "pass"])[0] for _ in range(5))
        notes.append(f"Fixed cost before the first byte moves: starting Python and importing "
                     f"the command line, requests and tqdm takes {fixed:.3f} s (Python alone "
                     f"{bare:.3f} s), against skopeo's whole pull of examples/hello in "
                     f"{median(times['skopeo pull']):.3f} s.")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    skopeo_version = subprocess.run(["skopeo", "--version"], capture_output=True,
                                    text=True).stdout.strip()
    registry_version = subprocess.run(["/usr/bin/docker-registry", "--version"],
                                      capture_output=True, text=True).stdout.strip()
    section = "\n".join([
        "## Registries: push and pull vs `skopeo copy` (`bench/registry.py`)",
        "",
        f"Measured {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} CPUs, "
        f"{platform.platform()}; {registry_version} on 127.0.0.1 (plain HTTP), "
        f"{skopeo_version}, Python {platform.python_version()}. Whole processes, interpreter "
        f"start-up included; {args.runs} timed runs after one warm-up, tools alternating, "
        "each run against a fresh registry; medians.",
        "",
        "| metric | result | target | pass |",
        "|---|---|---|---|",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows),
        "",
        *(f"- {n}" for n in notes),
    ])
    write_section(args.out, "registry", section)
    print(section)
    missed = any(r[3] != "pass" for r in rows)
    return 3 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
