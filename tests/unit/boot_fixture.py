"""The payload that boot tests start under QEMU TCG: a real Debian kernel and three tiny initrd
layers whose init prints a marker naming every layer it found, then powers off. The bootable
disk (test_bootable.py) and the hybrid ISO (test_iso.py) boot it; tests/unit/conftest.py makes
the kernel and the payload once per session (fixtures ``boot_kernel`` and ``payload``).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from imagebuilder.disk.bootable import BootFiles
from imagebuilder.errors import HostError
from imagebuilder.layers.cpio import Tree, write_layer

CMDLINE = "console=ttyS0 panic=-1 ib.check=cmdline-ok"
MARKER = "IB-BOOT-OK"
#: What the payload's init prints when every layer is there, unpacked in order.
EXPECTED = f"{MARKER} layers=base,jvm,app, top=app cmdline=ib.check=cmdline-ok"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
BOOT_TIMEOUT = 240

INIT = """#!/bin/busybox sh
bb=/bin/busybox
say() { echo "$*" > /dev/console; }
seen=
for n in 01 02 03; do
    [ -f /layers/$n ] || { say "IB-BOOT-FAIL layer $n missing"; $bb poweroff -f; }
    seen="$seen$($bb cat /layers/$n),"
done
$bb mount -t proc proc /proc
check=
for word in $($bb cat /proc/cmdline); do
    case "$word" in ib.check=*) check=$word ;; esac
done
say "IB-BOOT-OK layers=$seen top=$($bb cat /layers/top) cmdline=$check"
$bb poweroff -f
"""


def boot_files() -> BootFiles:
    try:
        return BootFiles.from_host()
    except HostError as exc:
        pytest.skip(str(exc))


def make_payload(dest: Path) -> list[tuple[str, Path]]:
    """Three zstd cpio layers: base (busybox, /init), jvm, app; each adds /layers/NN and
    overwrites /layers/top, so the init can tell that all were unpacked, in order."""
    dest.mkdir(parents=True, exist_ok=True)
    layers = []
    for n, name in enumerate(("base", "jvm", "app"), 1):
        tree = Tree()
        if name == "base":
            tree.add_file("bin/busybox", source=Path("/bin/busybox"), mode=0o755)
            tree.add_file("init", data=INIT.encode(), mode=0o755)
            tree.add_dir("proc")
            tree.add_dir("dev")
            tree.add_node("dev/console", "char", 5, 1)
        tree.add_file(f"layers/{n:02d}", data=name.encode())
        tree.add_file("layers/top", data=name.encode())
        path = dest / f"{name}.cpio.zst"
        write_layer(tree, path, mtime=0, level=3)
        layers.append((name, path))
    return layers


@functools.cache
def fetched_kernel(cache: Path) -> Path:
    from imagebuilder.fetch.deb import extract_deb
    from imagebuilder.fetch.debian import Archive
    from imagebuilder.fetch.sources import mirror_from_apt

    archive = Archive(mirror_from_apt(), "trixie", cache / "debian")
    packages = archive.resolve(["linux-image-cloud-amd64"],
                               follow=lambda p: p.name.startswith("linux-image-"))
    image = next(p for p in packages if p.name.startswith("linux-image-")
                 and p.name != "linux-image-cloud-amd64")
    root = cache / "kernel" / image.sha256
    kernels = sorted((root / "boot").glob("vmlinuz-*")) if root.is_dir() else []
    if not kernels:
        tmp = root.with_name(f".{root.name}.{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        extract_deb(archive.fetch(image), tmp)
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
        kernels = sorted((root / "boot").glob("vmlinuz-*"))
    return kernels[0]


def qemu_boot(tmp: Path, *drive: str, uefi: bool = False) -> str:
    """Boot a VM under TCG with ``drive`` options; its serial console output."""
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        pytest.skip("qemu-system-x86_64 missing (apt-get install qemu-system-x86)")
    argv = [qemu, "-accel", "tcg", "-machine", "pc", "-m", "256", "-nodefaults",
            "-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio", *drive]
    if uefi:
        if not (OVMF_CODE.is_file() and OVMF_VARS.is_file()):
            pytest.skip("OVMF missing (apt-get install ovmf)")
        vars_copy = tmp / "OVMF_VARS.fd"
        shutil.copyfile(OVMF_VARS, vars_copy)
        argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}"]
    try:
        result = subprocess.run(argv, capture_output=True, timeout=BOOT_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace")
        raise AssertionError(f"no power-off within {BOOT_TIMEOUT} s; console:\n{out[-3000:]}"
                             ) from None
    return (result.stdout + result.stderr).decode(errors="replace")


def assert_booted(console: str) -> None:
    assert EXPECTED in console, console[-3000:]
