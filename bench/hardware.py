#!/usr/bin/env python3
"""What the generic kernel and the driver sets cost: image size and boot-to-HTTP under TCG.

Three builds of examples/hello in one throwaway IMAGEBUILDER_HOME (the jvm and app layers are
shared, so only the kernel and the base layer differ):

* ``cloud``: Debian's cloud kernel with only its manifest's modules (``kernel = "debian-cloud"``,
  ``hardware = []``), what every image was before driver sets;
* ``generic+virtual``: the generic kernel with the ``virtual`` set (the default);
* ``generic+virtual+metal``: both sets, with the firmware of the metal drivers.

For each: the stored size (kernel + initrd layers, compressed, as ``inspect`` counts it), the
kernel and base layer alone, the base layer decompressed (it lives in RAM), and the number of
modules and firmware files; then the median of --runs boots to HTTP with
``run --accel tcg --wait`` (its "seconds"), the variants interleaved so that load from other work
spreads over all of them. /proc/loadavg is read before and after: the section says when the
machine was busy.

    .venv/bin/python bench/hardware.py [--runs N] [--cache DIR] [--out docs/benchmarks.md]

``--cache`` is an existing ``cache/archive`` directory to copy .debs from (nothing is downloaded
then). Results replace the ``hardware`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import zstandard
from benchdoc import write_section

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from imagebuilder.store.home import Home  # noqa: E402
from support.cli import Cli  # noqa: E402
from support.machine import cpu_model, load  # noqa: E402
from support.measure import median  # noqa: E402
from support.servers import free_port  # noqa: E402

EXAMPLE = REPO / "examples" / "hello"
MB = 1_000_000
VARIANTS = {
    "cloud": 'kernel = "debian-cloud"\nhardware = []\n',
    "generic+virtual": 'kernel = "debian"\nhardware = ["virtual"]\n',
    "generic+virtual+metal": 'kernel = "debian"\nhardware = ["virtual", "metal"]\n',
}


def _app(work: Path, name: str, system: str) -> Path:
    app = work / name.replace("+", "-")
    shutil.copytree(EXAMPLE, app, ignore=shutil.ignore_patterns("imagebuilder.lock"))
    if not (app / "hello.jar").exists():
        subprocess.run(["sh", str(app / "build.sh")], check=True, capture_output=True)
    toml = app / "imagebuilder.toml"
    toml.write_text(toml.read_text().replace("[env.test]", f"[system]\n{system}\n[env.test]"))
    return app


def _sizes(home: Path, ref: str) -> dict[str, float]:
    store = Home(home).store
    image = store.resolve(ref)
    kernel, base = image.layers[0], image.layers[1]
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(
        store.blob_path(base.digest).read_bytes())
    names = _cpio_names(raw)
    return {"total": image.size / MB, "kernel": kernel.size / MB, "base": base.size / MB,
            "base_ram": len(raw) / MB,
            "modules": sum(n.endswith((".ko", ".ko.xz")) for n in names),
            "firmware": sum(n.startswith("usr/lib/firmware/") for n in names)}


def _cpio_names(data: bytes) -> list[str]:
    """The entry names of a newc cpio archive."""
    names, offset = [], 0
    while data[offset:offset + 6] == b"070701":
        size = int(data[offset + 54:offset + 62], 16)
        namesize = int(data[offset + 94:offset + 102], 16)
        name = data[offset + 110:offset + 110 + namesize - 1].decode()
        if name == "TRAILER!!!":
            break
        names.append(name)
        start = (offset + 110 + namesize + 3) & ~3
        offset = (start + size + 3) & ~3
    return names


def _boot(home: Path, ref: str) -> float:
    port = free_port()
    # The same boot path for every image (the disk, by BIOS, as other platforms boot it): `auto`
    # would take microvm only for the images whose kernel set has virtio_mmio.
    cli = Cli(home)
    out = cli.json("run", ref, "--accel", "tcg", "--boot", "bios", "--wait", "--timeout", "600",
                   "-p", f"{port}:8080", timeout=1800)
    cli("stop", out["id"])
    return float(out["seconds"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cache", type=Path, help="a cache/archive directory to copy .debs from")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-hardware-") as tmp:
        work = Path(tmp)
        home = work / "home"
        if args.cache:
            shutil.copytree(args.cache, home / "cache" / "archive", copy_function=os.link)
        refs, sizes = {}, {}
        for i, (name, system) in enumerate(VARIANTS.items()):
            app = _app(work, name, system)
            out = Cli(home).json("build", str(app), "--version", f"1.0.{i}", timeout=1800)
            refs[name] = out["ref"]
            sizes[name] = _sizes(home, out["ref"])
        load_before = load()
        boots: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for _ in range(args.runs):
            for name in VARIANTS:
                boots[name].append(_boot(home, refs[name]))
        load_after = load()
    text = _report(sizes, boots, load_before, load_after, args.runs)
    print(text)
    write_section(args.out, "hardware", text)
    return 0


def _report(sizes: dict[str, dict[str, float]], boots: dict[str, list[float]],
            load_before: float, load_after: float, runs: int) -> str:
    today = sizes["cloud"]
    base_boot = median(boots["cloud"])
    lines = [
        "## Kernels and driver sets",
        "",
        f"`bench/hardware.py`: examples/hello built three ways; boot to HTTP with"
        f" `run --accel tcg --boot bios --wait` (median of {runs}, variants interleaved)."
        f" CPU: {cpu_model()}.",
        "",
        "| image | stored size | vs cloud | kernel | base layer | base in RAM | modules |"
        " firmware files | boot to HTTP | vs cloud |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in sizes.items():
        boot = median(boots[name])
        lines.append(
            f"| {name} | {s['total']:.2f} MB | {s['total'] - today['total']:+.2f} MB |"
            f" {s['kernel']:.2f} MB | {s['base']:.2f} MB | {s['base_ram']:.2f} MB |"
            f" {int(s['modules'])} | {int(s['firmware'])} | {boot:.1f} s |"
            f" {(boot / base_boot - 1) * 100:+.0f}% |")
    lines += ["", "Boot runs (s): " + "; ".join(
        f"{name} {', '.join(f'{b:.1f}' for b in values)}" for name, values in boots.items())]
    # Only the load before counts as other work: the one after includes this script's own QEMU.
    lines += ["", f"Load average (1 min) before and after the boots: {load_before:.1f},"
                  f" {load_after:.1f} on {os.cpu_count()} CPUs"
                  + (": the machine was busy with other work, so the boot times are inflated"
                     " and only their ratios mean much." if load_before > 1.5 else ".")]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
