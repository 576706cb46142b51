#!/usr/bin/env python3
"""Disk-format benchmark: our qcow2, vmdk and vhd writers against ``qemu-img convert``.

Why: the format writers (imagebuilder/formats/) promise to serialise a disk model without ever
expanding its zeros and in flat memory; this measures them against QEMU's converter, which does
the same job from a raw image. Two raw images are built in --dir, sparse (holes for the zeros):

1. "1 GiB": a 1 GiB disk with about 300 MB of data: 16 MiB of random bytes, ELF binaries and
   shared libraries from the host (/usr/lib, /usr/bin), text (Python sources, docs, headers),
   and 16 MiB of explicit zeros written as data, in pieces separated by holes;
2. "16 GiB sparse": 256 MiB of the same kinds of data in 16 pieces of 16 MiB, one per GiB, at
   unaligned offsets.

For each image and format, our side is a whole process, timed from spawn to exit (so interpreter
start-up counts): ``python -c`` building a Disk with ``Disk.from_file(raw)`` and calling the
writer (it also reports the time of that call alone). The peer is ``qemu-img convert -f raw -O
qcow2``, ``-O vmdk -o subformat=streamOptimized`` and ``-O vpc -o subformat=fixed,force_size=on``
(force_size: keep the exact size, as Azure needs; our VHD rounds to a whole MiB, which 1 GiB and
16 GiB already are). Both are also timed durable: ours with ``sync=True`` (``export --sync``: the
output fsynced before it is renamed into place) against qemu-img followed by ``sync FILE``.
Each runs once untimed (warming the
page cache, checking our output with ``qemu-img compare`` against the raw), then --runs times in
rotating order, each after an ``os.sync()`` so that no command pays for the previous one's dirty
pages; the table shows medians. Every command runs under ``/usr/bin/time -v`` for its peak
resident memory and CPU time; the memory target (< 150 MB) is checked on the 16 GiB image.
Informational rows give our vmdk at other zlib levels (--vmdk-levels; qemu-img and our default
use zlib's default, 6).

Note: by default both leave the output to the kernel's write-back (qemu-img convert's output
cache mode defaults to ``unsafe``: no flush; ours writes a temporary file and renames it, so an
interrupted export leaves nothing, but does not fsync unless ``--sync``). The target ratio is
between the defaults; the durable pair is the second comparison. A third reference, the
durable-write floor, is measured in this process: the data of qemu-img's output copied into a
new file by the kernel and fsynced, nothing else; no writer that fsyncs can beat it. Python
runs with its bytecode cache, as an installed package does (the cache goes
to the work directory; PYTHONDONTWRITEBYTECODE is removed from the commands' environment).

Results replace the part of docs/benchmarks.md between ``<!-- formats:start -->`` and
``<!-- formats:end -->`` (the section is appended, or the file created, if missing).

Run from the repository with the project's virtualenv (a few minutes on 2 cores)::

    .venv/bin/python bench/formats.py [--runs N] [--dir DIR] [--out docs/benchmarks.md]
                                      [--keep] [--strict]

Needs qemu-img (qemu-utils), /usr/bin/time (Debian package time) and about 2 GiB free in --dir
(default /var/tmp). Files are removed at the end, also on errors, unless --keep. Exit status: 0
when every measurement was taken (add --strict to exit 3 when a target is missed), 1 when one
failed (the document is then left untouched), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchdoc import write_section

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from support.machine import cpu_model  # noqa: E402
from support.measure import installed_python_env, logger, median, run_timed  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
RSS_TARGET_MB = 150
FORMATS = ("qcow2", "vmdk", "vhd")
QEMU_ARGS = {
    "qcow2": ["-O", "qcow2"],
    "vmdk": ["-O", "vmdk", "-o", "subformat=streamOptimized"],
    "vhd": ["-O", "vpc", "-o", "subformat=fixed,force_size=on"],
}
OURS = (
    "import sys, time; from pathlib import Path; "
    "from imagebuilder.disk import Disk; from imagebuilder.formats import writer_for; "
    "kw = {'sync': sys.argv[4] == 'sync'}; "
    "kw.update({'level': int(sys.argv[5])} if len(sys.argv) > 5 else {}); "
    "w = writer_for(sys.argv[3]); t = time.perf_counter(); "
    "w(Disk.from_file(sys.argv[1]), Path(sys.argv[2]), **kw); "
    "print('call-seconds', time.perf_counter() - t)"
)
TEXT_SUFFIXES = {".py", ".txt", ".html", ".h", ".c", ".md", ".rst", ".json", ".xml", ".pm", ".sh"}


log = logger("formats")


# --- test data ------------------------------------------------------------------------------


class Corpus:
    """Bytes taken in order from a sorted list of host files (cycled if it runs out)."""

    def __init__(self, files: list[Path], fallback_seed: int) -> None:
        self.files = files
        self._iter = self._chunks()
        self._buf = b""
        self._rnd = random.Random(fallback_seed)

    def _chunks(self) -> Iterator[bytes]:
        while True:
            got = False
            for p in self.files:
                try:
                    data = p.read_bytes()
                except OSError:
                    continue
                if data:
                    got = True
                    yield data
            if not got:
                return

    def take(self, n: int) -> bytes:
        parts = [self._buf]
        have = len(self._buf)
        while have < n:
            data = next(self._iter, None)
            if data is None:  # no host files: synthetic, somewhat compressible bytes
                words = [self._rnd.randbytes(self._rnd.randrange(2, 9)).hex() for _ in range(256)]
                data = " ".join(self._rnd.choice(words) for _ in range(65536)).encode()
            parts.append(data)
            have += len(data)
        joined = b"".join(parts)
        self._buf = joined[n:]
        return joined[:n]


def elf_files() -> list[Path]:
    out = []
    for d in (Path("/usr/lib/x86_64-linux-gnu"), Path("/usr/bin"), Path("/usr/lib")):
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            try:
                if p.is_file() and not p.is_symlink() and p.stat().st_size > 4096:
                    with open(p, "rb") as f:
                        if f.read(4) == b"\x7fELF":
                            out.append(p)
            except OSError:
                continue
    return out


def text_files() -> list[Path]:
    out = []
    for d in (
        Path("/usr/lib/python3"),
        Path(f"/usr/lib/python3.{sys.version_info[1]}"),
        Path("/usr/share/doc"),
        Path("/usr/include"),
        Path("/usr/share/perl5"),
    ):
        if d.is_dir():
            out += sorted(
                p
                for p in d.rglob("*")
                if p.suffix in TEXT_SUFFIXES and p.is_file() and not p.is_symlink()
            )
    return out


@dataclass
class Image:
    name: str
    path: Path
    size: int
    data: int = 0
    pieces: list[tuple[int, int, str]] = field(default_factory=list)


def write_piece(fd: int, offset: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def build_images(dir_: Path) -> tuple[Image, Image, str]:
    """The 1 GiB and 16 GiB sparse raw images, and a description of their data."""
    elf, text = elf_files(), text_files()
    rnd = random.Random(20260101)
    corpora = {
        "ELF": Corpus(elf, 1),
        "text": Corpus(text, 2),
    }

    def piece(kind: str, n: int) -> bytes:
        if kind == "random":
            return rnd.randbytes(n)
        if kind == "zeros":
            return bytes(n)
        return corpora[kind].take(n)

    small = Image("1 GiB", dir_ / "disk-1g.raw", GiB)
    plan = [("random", 16 * MiB)]
    plan += [("ELF", 20 * MiB)] * 8 + [("zeros", 16 * MiB)] + [("text", 10 * MiB)] * 9
    pos = MiB
    for kind, n in plan:
        small.pieces.append((pos, n, kind))
        pos += n + 8 * MiB + 4096 + 7  # a hole, and unaligned starts
    assert pos < small.size
    big = Image("16 GiB sparse", dir_ / "disk-16g.raw", 16 * GiB)
    kinds = ["ELF", "text", "random", "ELF"] * 4
    for i, kind in enumerate(kinds):
        big.pieces.append((i * GiB + 12_345, 16 * MiB, kind))
    for img in (small, big):
        fd = os.open(img.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, img.size)
            for off, n, kind in img.pieces:
                write_piece(fd, off, piece(kind, n))
                img.data += n
        finally:
            os.close(fd)
    desc = (
        f"data from {len(elf)} host ELF files, {len(text)} host text files, "
        "seeded random bytes and explicit zeros"
    )
    return small, big, desc


# --- measuring ------------------------------------------------------------------------------


@dataclass
class Run:
    seconds: float
    rss_kb: int
    cpu: float
    call: float | None = None


def timed(argv: Sequence[str | os.PathLike[str]], tmp: Path) -> Run:
    """Run ``argv`` under /usr/bin/time -v, Python as installed (with its bytecode cache in
    ``tmp``): wall time from spawn to exit, peak RSS, CPU time, and the writer call's own time
    when ours printed it."""
    ran = run_timed(argv, env=installed_python_env(tmp), cwd=REPO)
    call = re.search(r"call-seconds ([\d.e-]+)", ran.stdout)
    return Run(ran.seconds, ran.rss_kib, ran.cpu, float(call.group(1)) if call else None)


def durable_copy(src: Path, dst: Path) -> float:
    """Seconds to write ``src``'s data to a new file ``dst`` and fsync it: a floor for any writer.

    Only the data extents (SEEK_DATA/SEEK_HOLE) are copied: their blocks reserved (fallocate),
    then read and written 1 MiB at a time, with a write-back hint (sync_file_range) every 8 MiB
    so that the device works while the rest is copied; then fsync. No format work, no zero
    detection, no interpreter start-up: what writing these bytes durably costs on this machine.
    """
    from imagebuilder.formats import start_writeback
    from imagebuilder.hashing.sparse import data_extents

    step = 8 * MiB
    buf = memoryview(bytearray(MiB))
    t0 = time.perf_counter()
    fd_in = os.open(src, os.O_RDONLY)
    fd_out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.ftruncate(fd_out, os.fstat(fd_in).st_size)
        for start, length in data_extents(fd_in):
            os.posix_fallocate(fd_out, start, length)
            pos, end = start, start + length
            while pos < end:
                stop = min(end, pos + step)
                for at in range(pos, stop, MiB):
                    n = os.preadv(fd_in, [buf[: min(MiB, stop - at)]], at)
                    if n <= 0:
                        raise OSError(f"{src} shrank while being copied")
                    os.pwrite(fd_out, buf[:n], at)
                start_writeback(fd_out, pos, stop - pos)
                pos = stop
        os.fsync(fd_out)
    finally:
        os.close(fd_in)
        os.close(fd_out)
    return time.perf_counter() - t0


def ours_argv(
    raw: Path, out: Path, fmt: str, level: int | None = None, sync: bool = False
) -> list[str]:
    argv = [sys.executable, "-c", OURS, str(raw), str(out), fmt, "sync" if sync else "-"]
    return argv + ([str(level)] if level is not None else [])


def qemu_argv(raw: Path, out: Path, fmt: str, sync: bool = False) -> list[str]:
    argv = ["qemu-img", "convert", "-f", "raw", *QEMU_ARGS[fmt], str(raw), str(out)]
    if sync:  # the same durability as ours: the output fsynced before the command returns
        return ["sh", "-c", '"$@" && sync -- "$0"', str(out), *argv]
    return argv


def compare(raw: Path, out: Path, fmt: str) -> None:
    if fmt == "vhd":
        argv = [
            "qemu-img",
            "compare",
            "--image-opts",
            f"driver=raw,file.filename={raw}",
            f"driver=vpc,force_size_calc=current_size,file.filename={out}",
        ]
    else:
        argv = ["qemu-img", "compare", "-f", "raw", "-F", fmt, str(raw), str(out)]
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"our {fmt} differs from the raw image: {r.stdout}{r.stderr}")


@dataclass
class Row:
    image: str
    fmt: str
    ours: list[Run]
    peer: list[Run]
    peer_sync: list[Run]
    ours_sync: list[Run]
    ours_size: int
    peer_size: int
    informational: bool = False
    floor: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return wall(self.ours) / wall(self.peer)

    @property
    def ratio_sync(self) -> float:
        return wall(self.ours_sync) / wall(self.peer_sync)


def wall(runs: list[Run]) -> float:
    return median([r.seconds for r in runs])


def cpu(runs: list[Run]) -> float:
    return median([r.cpu for r in runs])


def measure(img: Image, fmt: str, runs: int, tmp: Path, level: int | None = None) -> Row:
    ours_out, peer_out = tmp / f"ours.{fmt}", tmp / f"peer.{fmt}"
    label = fmt if level is None else f"{fmt} (zlib level {level})"
    log(f"{img.name}: {label}: warm-up and check")
    timed(ours_argv(img.path, ours_out, fmt, level), tmp)
    compare(img.path, ours_out, fmt)
    timed(qemu_argv(img.path, peer_out, fmt), tmp)
    sizes = (ours_out.stat().st_size, peer_out.stat().st_size)
    row = Row(img.name, label, [], [], [], [], *sizes, informational=level is not None)
    floor_src, floor_out = tmp / f"floor-src.{fmt}", tmp / f"floor.{fmt}"
    peer_out.rename(floor_src)  # qemu-img's output, for the durable-write floor
    sides = [
        (row.ours, lambda: ours_argv(img.path, ours_out, fmt, level)),
        (row.peer, lambda: qemu_argv(img.path, peer_out, fmt)),
        (row.ours_sync, lambda: ours_argv(img.path, ours_out, fmt, level, sync=True)),
        (row.peer_sync, lambda: qemu_argv(img.path, peer_out, fmt, sync=True)),
    ]
    for i in range(runs):
        k = i % len(sides)
        for results, argv in sides[k:] + sides[:k]:  # rotate who goes first
            for out in (ours_out, peer_out):
                out.unlink(missing_ok=True)
            os.sync()  # start every command with no dirty pages of the previous one
            results.append(timed(argv(), tmp))
        if level is None:
            for out in (ours_out, peer_out, floor_out):
                out.unlink(missing_ok=True)
            os.sync()
            row.floor.append(durable_copy(floor_src, floor_out))
        log(
            f"  run {i + 1}: ours {row.ours[-1].seconds:.2f} s, qemu-img "
            f"{row.peer[-1].seconds:.2f} s, ours --sync {row.ours_sync[-1].seconds:.2f} s, "
            f"qemu-img + sync {row.peer_sync[-1].seconds:.2f} s"
            + (f", durable-write floor {row.floor[-1]:.2f} s" if row.floor else "")
        )
    for out in (ours_out, peer_out, floor_src, floor_out):
        out.unlink(missing_ok=True)
    return row


# --- report ---------------------------------------------------------------------------------


def fmt_size(n: int) -> str:
    return f"{n / MiB:.1f} MiB" if n < GiB else f"{n / GiB:.2f} GiB"


def fmt_s(seconds: float) -> str:
    return f"{seconds:.2f} s"


def report(
    rows: list[Row], images: list[Image], desc: str, runs: int, startup: float
) -> tuple[str, bool]:
    ok = True
    lines = [
        "## Disk formats: export vs `qemu-img convert`",
        "",
        f"Measured {dt.date.today().isoformat()} by `bench/formats.py` on {machine()}; "
        f"{versions()}. Medians of {runs} runs, each a whole process (interpreter start-up "
        "included); ours reads the raw image through `Disk.from_file` (SEEK_DATA/SEEK_HOLE). "
        f"CPU pressure while measuring: {cpu_pressure()} (other work on the machine; "
        "times on a busy machine vary run to run).",
        "",
        "Images: "
        + "; ".join(
            f"{i.name}: {fmt_size(i.size)} virtual, {i.data / 1e6:.0f} MB of data "
            f"in {len(i.pieces)} pieces"
            for i in images
        )
        + f" ({desc}).",
        "",
        "| image | format | ours | qemu-img convert | ratio (target <= 1.0) "
        "| ours --sync | qemu-img + sync | ratio | ours: write call | durable-write floor "
        "| CPU time ours / qemu-img | our file | qemu-img's file |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        passed = r.ratio <= 1.0
        if not r.informational:
            ok &= passed
        mark = "informational" if r.informational else ("pass" if passed else "**miss**")
        call = median([x.call for x in r.ours if x.call is not None])
        lines.append(
            f"| {r.image} | {r.fmt} | {fmt_s(wall(r.ours))} | {fmt_s(wall(r.peer))} "
            f"| {r.ratio:.2f} {mark} | {fmt_s(wall(r.ours_sync))} | {fmt_s(wall(r.peer_sync))} "
            f"| {r.ratio_sync:.2f} "
            f"| {fmt_s(call)} | {fmt_s(median(r.floor)) if r.floor else '-'} "
            f"| {fmt_s(cpu(r.ours))} / {fmt_s(cpu(r.peer))} "
            f"| {fmt_size(r.ours_size)} | {fmt_size(r.peer_size)} |"
        )
    lines += [
        "",
        "Peak resident memory on the 16 GiB sparse image "
        "(`/usr/bin/time -v`, largest of the runs):",
        "",
        "| format | ours | qemu-img convert | target | pass |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if r.image != "16 GiB sparse":
            continue
        ours_mb = max(x.rss_kb for x in r.ours) / 1024
        peer_mb = max(x.rss_kb for x in r.peer) / 1024
        passed = ours_mb < RSS_TARGET_MB
        ok &= passed
        lines.append(
            f"| {r.fmt} | {ours_mb:.0f} MB | {peer_mb:.0f} MB | < {RSS_TARGET_MB} MB "
            f"| {'yes' if passed else 'no'} |"
        )
    lines += [
        "",
        "Columns: *ours* and *qemu-img convert* are whole commands with their defaults: neither "
        "waits for the disk (qemu-img's output cache mode is `unsafe`; ours writes a temporary "
        "file and renames it into place, so an interrupted export leaves nothing behind). "
        "*ours --sync* fsyncs the output before the rename (and the directory after), *qemu-img "
        "+ sync* adds `sync FILE` to qemu-img: the same durability on both sides. *write call* "
        "is the time inside our process of `Disk.from_file` + the writer (no interpreter "
        f"start-up; Python's own start-up, `python -c pass` here, takes {fmt_s(startup)}). "
        "*durable-write floor* is, in the benchmark's process, the time to copy the data of "
        "qemu-img's output into a new file and fsync it, blocks reserved first (fallocate) "
        "and write-back started every 8 MiB (sync_file_range): no format "
        "work, no zero detection, no start-up; what writing these bytes durably costs on this "
        "machine at best. CPU time is user + system of the whole command. Python runs as "
        "installed, with its bytecode cache (kept in the work directory and filled by the "
        "warm-up run; PYTHONDONTWRITEBYTECODE is dropped from the environment).",
        "",
        "Notes: our vmdk compresses 64 KiB grains with zlib level 6 "
        f"(as qemu-img) on {os.cpu_count()} threads, in guest order so the output is the same "
        "with any number of threads; qemu-img compresses on one thread. Our vhd is the fixed "
        "kind rounded to a whole MiB (both images already are); qemu-img runs with "
        "`force_size=on` to keep the exact size. All outputs are checked with "
        "`qemu-img compare` against the raw image before timing. Our qcow2, vhd and raw "
        "writers test each 64 KiB cluster for zeros in place, in read-only mappings of the "
        "source, reserve the output's blocks before writing them (fallocate: ext4 then skips "
        "delayed allocation, a third of a plain write's cost) and copy the runs of non-zero "
        "clusters through a 1 MiB buffer (faster here than copy_file_range, which ext4 serves "
        "with a page-cache splice); with --sync they start write-back every 8 MiB so that the "
        "final fsync has little left to wait for.",
    ]
    return "\n".join(lines), ok


def cpu_pressure() -> str:
    """The kernel's CPU pressure (share of time some task waited for a CPU), last 5 minutes."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return "unknown"
    m = re.search(r"avg300=([\d.]+)", line)
    return f"{m.group(1)}% (PSI some, avg300)" if m else "unknown"


def machine() -> str:
    return f"{cpu_model()}, {os.cpu_count()} CPUs, Linux {platform.release()}"


def versions() -> str:
    r = subprocess.run(["qemu-img", "--version"], capture_output=True, text=True)
    qemu = r.stdout.splitlines()[0] if r.stdout else "qemu-img ?"
    return f"{qemu}, Python {sys.version.split()[0]}, zlib {zlib.ZLIB_RUNTIME_VERSION}"




def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path("/var/tmp"),
        help="where to create the images (needs holes and ~2 GiB)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--keep", action="store_true", help="keep the images")
    parser.add_argument(
        "--vmdk-levels",
        type=lambda v: [int(x) for x in v.split(",") if x],
        default=[1, 4],
        help="zlib levels for informational vmdk rows on the 1 GiB image (default 1,4)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 3 when a target is missed")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    for tool in ("qemu-img", "/usr/bin/time"):
        if not shutil.which(tool):
            log(f"{tool} is missing (install qemu-utils / time)")
            return 1
    if not args.dir.is_dir():
        parser.error(f"--dir {args.dir} does not exist")
    tmp = Path(tempfile.mkdtemp(prefix="ib-bench-formats-", dir=args.dir))
    try:
        log(f"building the raw images in {tmp}")
        small, big, desc = build_images(tmp)
        rows = [measure(img, fmt, args.runs, tmp) for img in (small, big) for fmt in FORMATS]
        rows += [measure(small, "vmdk", args.runs, tmp, level=lv) for lv in args.vmdk_levels]
        startup = median(
            [timed([sys.executable, "-c", "pass"], tmp).seconds for _ in range(max(5, args.runs))]
        )
        text, ok = report(rows, [small, big], desc, args.runs, startup)
    except (RuntimeError, OSError) as e:
        log(f"measurement failed: {e}")
        return 1
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    write_section(args.out, "formats", text)
    print(text)
    log(f"wrote {args.out}")
    return 3 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
