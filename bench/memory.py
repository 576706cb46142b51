#!/usr/bin/env python3
"""Guest memory by root: examples/hello and WireMock with the root in RAM and on the disk.

Two roots: ``--boot microvm`` boots the kernel and every layer as an initramfs (the root is
unpacked into RAM and stays there, as for netboot, the ISO and kernel-initrd); ``--boot bios``
boots the image's disk, whose layers are EROFS partitions stacked by overlayfs (the page cache
holds only what the app reads). For each app and root:

- the memory in use once the app listens on its port (MemTotal - MemAvailable, which the init
  prints from /proc/meminfo on the console), in a 1024 MiB guest;
- the smallest guest memory that serves HTTP, found by bisection (8 MiB steps; one boot per
  step, so a size near the edge may pass or fail from one run to the next), with `run`'s
  refusal of less than the image's modelled need (imagebuilder.targets.qemu.memory) switched off,
  so the model can be checked against it; the model's figure is shown beside it.

And what the disk gains: the raw disk's data and size with the EROFS partitions, against the
same disk with every layer in the ESP instead (the layout before EROFS roots). The image (its
OCI layers in the store and in registries) does not change: the EROFS images are derived from
the layers when a disk is made.

Run from the repository with the project's virtualenv (needs npm, or WireMock's jar already in
the inputs cache the tests fill: support/inputs.py)::

    .venv/bin/python bench/memory.py [--home DIR] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchdoc import write_section

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from imagebuilder.disk.bootable import BootFiles, disk_from_esp, write_esp  # noqa: E402
from imagebuilder.errors import ImageBuilderError  # noqa: E402
from imagebuilder.formats.export import BootSource, bootable  # noqa: E402
from imagebuilder.store.cache import Cache  # noqa: E402
from imagebuilder.store.layout import Store  # noqa: E402
from imagebuilder.targets.qemu import memory as memory_mod  # noqa: E402
from imagebuilder.targets.qemu import run as qemu  # noqa: E402
from support.cli import Cli  # noqa: E402
from support.java_apps import fetch_wiremock  # noqa: E402
from support.machine import cpu_model, load  # noqa: E402
from support.servers import free_port  # noqa: E402

EXAMPLE = REPO / "examples" / "hello"
ROOTS = {"microvm": "RAM (initramfs)", "bios": "disk (EROFS)"}
LISTENING = re.compile(rb"memory with the app listening on port \d+: MemTotal (\d+) MiB, "
                       rb"MemAvailable (\d+) MiB, in use (\d+) MiB")
STEP = 8
MiB = 1 << 20


def _build_apps(home: Path, work: Path) -> dict[str, tuple[str, str]]:
    """Build hello and WireMock in ``home``: {ref: (name, healthcheck)}."""
    hello = work / "hello"
    shutil.copytree(EXAMPLE, hello, ignore=shutil.ignore_patterns("hello.jar", "*.lock"))
    subprocess.run(["sh", str(hello / "build.sh")], check=True, capture_output=True)
    wm = work / "wiremock"
    wm.mkdir()
    shutil.copyfile(fetch_wiremock(), wm / "wiremock.jar")
    (wm / "imagebuilder.toml").write_text(
        '[image]\nname = "wiremock"\nversion = "1"\n\n[app]\npath = "wiremock.jar"\n'
        'port = 8080\nargs = ["--port", "8080"]\nhealthcheck = "/__admin/mappings"\n')
    refs = {}
    for root, health in ((hello, "/health"), (wm, "/__admin/mappings")):
        ref = Cli(home).json("build", str(root), timeout=3600)["ref"]
        refs[ref] = (root.name, health)
    return refs


def _boot(home: Path, ref: str, health: str, boot: str, mib: int) -> dict[str, int] | None:
    """Boot ``ref`` with ``mib`` MiB by ``boot``; its memory once listening, or None if the app
    never answered. `run`'s own refusal of too little memory is off, to find the real edge."""
    store = Store(home / "store")
    image = store.resolve(ref)
    spec = qemu.RunSpec(image, None, {}, [qemu.PortForward("127.0.0.1", free_port(), 8080)],
                        "tcg", mib, boot=boot)
    try:
        vm, _ = qemu.run_background(spec, store, home / "run", health, 300)
    except ImageBuilderError as exc:
        print(f"  {ref} {boot} {mib} MiB: no answer ({str(exc)[-300:]})", file=sys.stderr)
        return None
    try:
        console = vm.dir / "console.log"
        for _ in range(100):
            match = LISTENING.search(console.read_bytes())
            if match:
                total, available, used = (int(g) for g in match.groups())
                print(f"  {ref} {boot} {mib} MiB: serves, {used} MiB in use", file=sys.stderr)
                return {"total": total, "available": available, "used": used}
            time.sleep(0.2)
        print(f"  {ref} {boot} {mib} MiB: serves (no memory line)", file=sys.stderr)
        return {}
    finally:
        qemu.stop_vm(vm)


def _smallest(home: Path, ref: str, health: str, boot: str, lo: int, hi: int) -> int:
    """The smallest size in (lo, hi] (a multiple of STEP) that serves; hi is known to."""
    while hi - lo > STEP:
        mid = (lo + hi) // 2 // STEP * STEP
        if _boot(home, ref, health, boot, mid) is not None:
            hi = mid
        else:
            lo = mid
    return hi


def _disk_sizes(home: Path, ref: str, tmp: Path) -> tuple[int, int, int, int]:
    """(data bytes, size) of the raw disk with EROFS partitions and with every layer in the
    ESP (the layout before)."""
    store = Store(home / "store")
    source = BootSource.of_image(store, store.resolve(ref))
    now = bootable(Cache(home / "cache"), source)
    files = BootFiles.from_host()
    esp = tmp / f"{ref.replace(':', '-')}-all-layers-esp.img"
    write_esp(esp, source, boot_files=files)
    before = disk_from_esp(esp, source, boot_files=files)

    def data(disk: object) -> int:
        return sum(e.length for e in disk.extents)  # type: ignore[attr-defined]
    return data(now), now.size, data(before), before.size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = parser.parse_args()
    real_check = memory_mod.check
    memory_mod.check = lambda *a, **k: None  # find the real edge; the model is shown beside
    rows = ["| app | root | in use, app listening (1024 MiB guest) | smallest --memory serving "
            "HTTP | the model's minimum |", "|---|---|---|---|---|"]
    disk_rows = ["| app | raw disk data (size) with EROFS partitions | every layer in the ESP "
                 "instead | change |", "|---|---|---|---|"]
    load_before = load()
    with tempfile.TemporaryDirectory(prefix="bench-memory-", dir="/var/tmp") as tmp:
        home = args.home or Path(tmp) / "home"
        refs = _build_apps(home, Path(tmp))
        for ref, (name, health) in refs.items():
            image = Store(home / "store").resolve(ref)
            needs = memory_mod.image_needs(Cache(home / "cache"), Store(home / "store"), image)
            for boot, root in ROOTS.items():
                full = _boot(home, ref, health, boot, 1024)
                used = f"{full['used']} MiB (MemTotal {full['total']})" if full else "failed"
                model = needs.for_boot(boot)
                smallest = "-"
                if full is not None:
                    if _boot(home, ref, health, boot, model) is not None:
                        # whether one step less would do
                        less = model - STEP
                        if _boot(home, ref, health, boot, less) is None:
                            smallest = f"{model} MiB"
                        else:
                            smallest = f"<= {less} MiB"
                    else:
                        smallest = f"{_smallest(home, ref, health, boot, model, 1024)} MiB"
                rows.append(f"| {name} | {root} | {used} | {smallest} | {model} MiB |")
                print(rows[-1], file=sys.stderr)
            erofs_data, erofs_size, esp_data, esp_size = _disk_sizes(home, ref, Path(tmp))
            disk_rows.append(
                f"| {name} | {erofs_data / MiB:.1f} MiB ({erofs_size // MiB} MiB) | "
                f"{esp_data / MiB:.1f} MiB ({esp_size // MiB} MiB) | "
                f"{(erofs_data - esp_data) / MiB:+.1f} MiB data |")
    memory_mod.check = real_check
    load_after = load()
    text = "\n".join([
        "## Memory: the root in RAM or on the disk (`bench/memory.py`)",
        "",
        f"examples/hello and WireMock 3.13.2 (JDK 21), `--accel tcg`, {qemu.TCG_CPUS} vCPU, on "
        f"{cpu_model()} with {os.cpu_count()} CPUs. RAM (initramfs) is `run --boot microvm`: "
        "every layer unpacked into RAM, as netboot, the ISO and kernel-initrd boot; disk (EROFS) "
        "is `run --boot bios`: the "
        "layers are EROFS partitions of the disk, mounted and stacked by overlayfs, as every "
        "exported disk format boots (the JVM's own tiers). In use is MemTotal - MemAvailable "
        "from the guest's /proc/meminfo once the app listens (the init prints it; the JVM sizes "
        "its heap by the machine's memory, so this grows with it). The smallest memory serving "
        f"HTTP is found by bisection in {STEP} MiB steps, one boot per step (a size at the edge "
        "can pass or fail from run to run): the model's minimum (`imagebuilder inspect` shows "
        "it; `run` refuses less, switched off here) and one step below it, or, if the model's "
        "fails, a bisection up from it.",
        "",
        *rows,
        "",
        "What the disk carries: the ESP holds the kernel and the base layer only, and every "
        "layer is an EROFS partition (uncompressed, so the disk grows by about the unpacked "
        "root; the qcow2, vmdk and vhd exports store only the data). The image itself (its OCI "
        "layers, what `push` sends) is unchanged.",
        "",
        *disk_rows,
        "",
        f"Load average before: {load_before:.2f}, after: {load_after:.2f}.",
    ])
    write_section(args.out, "memory", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
