#!/usr/bin/env python3
"""Flash benchmark: ``imagebuilder flash`` against ``bmaptool copy`` and ``dd``.

Why: ``flash`` promises to write only the data of a disk image, verified, at least as fast as
bmaptool (the peer that does the same job) and in flat memory whatever the disk's size. Two
sparse raw images are built in --dir, each with its block map (written by
``imagebuilder.formats.bmap.write_raw_with_bmap``, which ``bmaptool copy`` finds beside the image):

1. "2 GiB": 384 MiB of data (random bytes and text, some explicit zero blocks) in 24 pieces
   separated by holes;
2. "16 GiB sparse": 256 MiB of random data in 16 pieces of 16 MiB, one per GiB.

Each command writes the image onto the same target, a regular file in --dir (removed before
every run, so every run starts from nothing and ends fsynced): ours is
``imagebuilder flash RAW TARGET`` (which uses RAW.bmap, checks each range's SHA-256 against it
as it reads the image, writes the mapped blocks with O_DIRECT, reads every block back with
O_DIRECT as it goes and compares XXH3-128s with what it read from the image, fsyncs); the peer is
``bmaptool copy RAW TARGET`` (which checks each range's SHA-256 as it reads the image and
fsyncs); the reference is ``dd if=RAW of=TARGET bs=4M conv=sparse,fsync`` (no map: it reads the
whole image, zeros included, and verifies nothing). Every command runs once untimed (the image
then sits in the page cache for all of them, and the result is compared with the image), then
--runs times in rotating order after an ``os.sync()``; medians. Peak resident memory comes from
``/usr/bin/time -v``; the target (< 150 MB) is checked on the 16 GiB disk.

Results replace the part of docs/benchmarks.md between ``<!-- flash:start -->`` and
``<!-- flash:end -->`` (appended if missing).

Run from the repository with the project's virtualenv (about two minutes on 2 cores)::

    .venv/bin/python bench/flash.py [--runs N] [--dir DIR] [--out docs/benchmarks.md] [--keep]

Needs bmaptool (bmap-tools), /usr/bin/time (time) and about 1 GiB free in --dir (default
/var/tmp). Exit status 0 when every measurement was taken, 3 when a target is missed with
--strict, 1 when a command failed (the document is then left untouched).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchdoc import write_section

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from support.cli import Cli  # noqa: E402
from support.machine import describe  # noqa: E402
from support.measure import installed_python_env, logger, median, run_timed  # noqa: E402

MIB = 1 << 20


@dataclass
class Run:
    seconds: float
    rss_kib: int


log = logger("flash")


def build_image(path: Path, size: int, pieces: int, piece: int) -> None:
    """A sparse raw image of ``size`` with ``pieces`` data pieces spread evenly, and its bmap."""
    from imagebuilder.disk.model import Disk
    from imagebuilder.formats.bmap import write_raw_with_bmap

    text = b"".join(p.read_bytes() for p in sorted((REPO / "imagebuilder").rglob("*.py")))
    src = path.with_suffix(".src")
    with open(src, "wb") as f:
        f.truncate(size)
        step = size // pieces
        for i in range(pieces):
            offset = i * step + (i * 12345) % MIB
            offset -= offset % 4096
            if i % 3 == 2:  # text, and a run of explicit zeros in the middle
                data = (text * (piece // len(text) + 1))[:piece]
                data = data[: piece // 2] + bytes(256 * 1024) + data[piece // 2 + 256 * 1024:]
            else:
                data = os.urandom(piece)
            f.seek(offset)
            f.write(data)
    write_raw_with_bmap(Disk.from_file(src), path)
    src.unlink()


def timed(argv: Sequence[str], tmp: Path) -> Run:
    """Wall time and peak RSS of ``argv`` (Python as installed, a home in ``tmp``)."""
    ran = run_timed(argv, env=installed_python_env(tmp, Cli(tmp / "home").env()), cwd=REPO)
    return Run(ran.seconds, ran.rss_kib)


def commands(raw: Path, target: Path) -> dict[str, list[str]]:
    ib = Cli(Path()).argv
    return {
        "imagebuilder flash": ib(["flash", str(raw), str(target)]),
        "flash --no-verify": ib(["flash", "--no-verify", str(raw), str(target)]),
        "bmaptool copy": ["bmaptool", "-q", "copy", str(raw), str(target)],
        "dd conv=sparse": ["dd", f"if={raw}", f"of={target}", "bs=4M", "conv=sparse,fsync",
                           "status=none"],
    }


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MIB):
            h.update(chunk)
    return h.hexdigest()


def read_back_seconds(target: Path) -> float:
    """Reading the target's data back from the device (O_DIRECT, 2 reads of 4 MiB in flight,
    no hashing): the least a read-back verify adds to a flash on this machine."""
    import mmap
    import threading

    from imagebuilder.hashing.sparse import data_extents

    fd = os.open(target, os.O_RDONLY | os.O_DIRECT)
    try:
        todo = [o for start, n in data_extents(fd) for o in range(start, start + n, 4 * MIB)]
        lock = threading.Lock()

        def work() -> None:
            buf = mmap.mmap(-1, 4 * MIB)
            while True:
                with lock:
                    if not todo:
                        return
                    o = todo.pop()
                os.preadv(fd, [buf], o)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=work) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - t0
    finally:
        os.close(fd)


def measure(raw: Path, runs: int, tmp: Path) -> dict[str, list[Run]]:
    target = raw.with_name("target.img")
    cmds = commands(raw, target)
    want = sha256(raw)
    results: dict[str, list[Run]] = {name: [] for name in cmds}
    for name, argv in cmds.items():  # warm-up, and check each result
        target.unlink(missing_ok=True)
        timed(argv, tmp)
        if sha256(target) != want:
            raise RuntimeError(f"{name} wrote a target that differs from {raw.name}")
    names = list(cmds)
    for i in range(runs):
        for name in names[i % len(names):] + names[: i % len(names)]:
            target.unlink(missing_ok=True)
            os.sync()
            results[name].append(timed(cmds[name], tmp))
        results.setdefault("read-back floor", []).append(Run(read_back_seconds(target), 0))
    target.unlink(missing_ok=True)
    return results


def med(runs: list[Run]) -> float:
    return median(r.seconds for r in runs)


def report(images: list[tuple[str, Path, int]], results: list[dict[str, list[Run]]],
           runs: int) -> tuple[str, bool]:
    lines = [
        "## Flash: `imagebuilder flash` vs `bmaptool copy` and `dd` (`bench/flash.py`)",
        "",
        f"Run on {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC: {describe()}; {versions()}. "
        f"Median of {runs} runs after one untimed warm-up (image in the page cache); target: a "
        "new regular file on the same file system, removed before each run; every command "
        "ends with an fsync. Both verify the image against its map (each range's SHA-256, as "
        "each reads it); ours also reads every written block back from the target with O_DIRECT "
        "as it goes and compares its XXH3-128 with the image's bytes, which bmaptool never does. "
        "`flash --no-verify` skips only that read-back. dd verifies nothing and reads the whole "
        "image, holes included. *read-back floor*: the time to read the written data back "
        "alone (O_DIRECT, 2 reads of 4 MiB in flight, no hashing), measured after each run of "
        "the last command; this virtual disk shares one bandwidth budget between reads and "
        "writes, so a read-back costs about this much on top of the writing.",
        "",
        "| image | apparent / mapped | imagebuilder flash | flash --no-verify | bmaptool copy "
        "| dd conv=sparse | ratio flash / bmaptool | ratio --no-verify / bmaptool "
        "| read-back floor | peak RSS flash / bmaptool | pass (ratio <= 1.0, RSS < 150 MB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ok = True
    for (label, _raw, mapped), res in zip(images, results, strict=True):
        ours, quick, peer, dd = (med(res[k]) for k in (
            "imagebuilder flash", "flash --no-verify", "bmaptool copy", "dd conv=sparse"))
        ratio, ratio_quick = ours / peer, quick / peer
        rss = max(r.rss_kib for k in ("imagebuilder flash", "flash --no-verify")
                  for r in res[k]) / 1024
        rss_peer = max(r.rss_kib for r in res["bmaptool copy"]) / 1024
        passed = ratio <= 1.0 and rss < 150
        ok &= passed
        size = label.split()[0]
        lines.append(f"| {label} | {size} GiB / {mapped / MIB:.0f} MiB | {ours:.2f} s "
                     f"| {quick:.2f} s | {peer:.2f} s | {dd:.2f} s | {ratio:.2f} "
                     f"| {ratio_quick:.2f} | {med(res['read-back floor']):.2f} s "
                     f"| {rss:.0f} MiB / {rss_peer:.0f} MiB "
                     f"| {'yes' if passed else 'NO'} |")
    lines.append("")
    for (label, _raw, _m), res in zip(images, results, strict=True):
        detail = "; ".join(f"{k} " + ", ".join(f"{r.seconds:.2f}" for r in v)
                           for k, v in res.items())
        lines.append(f"Runs (s), {label}: {detail}.")
        lines.append("")
    return "\n".join(lines), ok


def versions() -> str:
    r = subprocess.run(["bmaptool", "--version"], capture_output=True, text=True)
    bmaptool = (r.stdout or r.stderr).strip() or "bmaptool ?"
    return f"{bmaptool}, Python {sys.version.split()[0]}"




def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--strict", action="store_true")
    args = parser.parse_args(argv)
    for tool in ("bmaptool", "/usr/bin/time", "dd"):
        if shutil.which(tool) is None:
            print(f"ERROR: {tool} not found (apt-get install bmap-tools time)", file=sys.stderr)
            return 1
    work = Path(tempfile.mkdtemp(prefix="flash-bench-", dir=args.dir))
    try:
        specs = [("2 GiB", 2 << 30, 24, 16 * MIB), ("16 GiB sparse", 16 << 30, 16, 16 * MIB)]
        images: list[tuple[str, Path, int]] = []
        results = []
        for label, size, pieces, piece in specs:
            raw = work / f"{label.split()[0].lower()}.raw"
            log(f"building {label} image")
            build_image(raw, size, pieces, piece)
            from imagebuilder.formats.bmap import read_bmap

            mapped = read_bmap(raw.with_name(raw.name + ".bmap")).mapped_blocks * 4096
            images.append((label, raw, mapped))
            log(f"measuring {label}")
            results.append(measure(raw, args.runs, work))
            if not args.keep:
                raw.unlink()
        text, ok = report(images, results, args.runs)
    except RuntimeError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    write_section(args.out, "flash", text)
    print(text)
    return 3 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
