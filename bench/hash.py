#!/usr/bin/env python3
"""Hashing benchmark: ``imagebuilder hash --algo xxh3`` against ``xxhsum -H3``, side by side.

Why: the hashing core (imagebuilder/hashing/core.py) promises to read a file once and to skip the
holes of sparse files; this measures that promise against the reference xxHash tool on two files:

1. a 1 GiB dense file of random bytes, in the page cache: our throughput must be at least 0.8x
   that of ``xxhsum -H3`` (XXH3-64, its fastest mode);
2. a 16 GiB sparse file holding 256 MiB of data in 1 MiB pieces, one every 64 MiB and not
   aligned to our 1 MiB leaves (it occupies 256 MiB on disk): we must be at least 20x faster.

Each command is a whole process, timed from spawn to exit (so interpreter start-up counts): one
untimed run to warm the page cache with what it reads, then --runs timed runs; ours first, then
the peer's (as hyperfine does), because the peer's warm state is 16 GiB of cached holes whose
memory pressure would otherwise land on our runs. The table shows medians, and the load average
since the machine may be shared. While ``imagebuilder hash --help`` fails (the command is not
wired into the CLI yet) our side runs ``python -c`` calling
:func:`imagebuilder.hashing.core.hash_paths`; the table says which.
An informational column gives the in-process time of :func:`imagebuilder.hashing.core.digest_file`.

Results replace the part of docs/benchmarks.md between ``<!-- hash:start -->`` and
``<!-- hash:end -->`` (the section is appended, or the file created, if missing).

Run from the repository with the project's virtualenv (about a minute)::

    .venv/bin/python bench/hash.py [--runs N] [--dir DIR] [--out docs/benchmarks.md] [--keep]
                                   [--strict]

Needs ``xxhsum`` (Debian package xxhash) and about 1.3 GiB of free space in --dir (default
/var/tmp). The files are removed at the end, also on errors, unless --keep. Exit status: 0 when
every measurement was taken (add --strict to exit 3 when a target is missed), 1 when one failed
(the document is then left untouched), 2 on bad arguments.
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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchdoc import write_section  # noqa: E402

from imagebuilder.hashing.core import digest_file  # noqa: E402
from support.machine import load  # noqa: E402
from support.measure import (  # noqa: E402
    MeasureError,
    installed_python_env,
    logger,
    median,
    run_timed,
)

MIB = 1 << 20
GIB = 1 << 30
DENSE_SIZE = 1 * GIB
SPARSE_SIZE = 16 * GIB
SPARSE_PIECES = 256
PIECE = 1 * MIB
PIECE_SKEW = 12345  # pieces start this far into their 64 MiB stride: holes at odd offsets
TARGET_DENSE = 0.8  # our throughput / xxhsum's, at least
TARGET_SPARSE = 20.0  # xxhsum's time / ours, at least
PY_HASH = (
    "import sys\n"
    "from imagebuilder.hashing.core import hash_paths\n"
    "for p, h, _ in hash_paths(sys.argv[1:], 'xxh3'):\n"
    "    print(h, p)\n"
)


BenchError = MeasureError
log = logger("hash")


def run(argv: Sequence[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run ``argv``; (wall seconds, stdout). Raises MeasureError on failure."""
    ran = run_timed(argv, env=env, cwd=REPO, rss=False)
    return ran.seconds, ran.stdout


def find_cli() -> Path | None:
    """The imagebuilder CLI if it has a working ``hash`` command, else None."""
    for candidate in (REPO / ".venv/bin/imagebuilder", shutil.which("imagebuilder")):
        if candidate and Path(candidate).is_file():
            proc = subprocess.run(
                [str(candidate), "hash", "--help"], capture_output=True, check=False, cwd=REPO
            )
            return Path(candidate) if proc.returncode == 0 else None
    return None


def make_files(workdir: Path) -> tuple[Path, Path]:
    dense, sparse = workdir / "dense-1g.bin", workdir / "sparse-16g.img"
    log(f"writing {dense} (1 GiB random)")
    with open(dense, "wb") as f:
        for _ in range(DENSE_SIZE // (16 * MIB)):
            f.write(os.urandom(16 * MIB))
    log(f"writing {sparse} (16 GiB apparent, {SPARSE_PIECES} x 1 MiB of data)")
    stride = SPARSE_SIZE // SPARSE_PIECES
    fd = os.open(sparse, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, SPARSE_SIZE)
        for i in range(SPARSE_PIECES):
            os.pwrite(fd, os.urandom(PIECE), i * stride + PIECE_SKEW)
    finally:
        os.close(fd)
    used = os.stat(sparse).st_blocks * 512
    if used > 2 * SPARSE_PIECES * PIECE:
        raise BenchError(f"{workdir} does not keep holes ({used} bytes allocated): use --dir")
    return dense, sparse


@dataclass
class Result:
    name: str
    apparent: int
    data: int
    ours: list[float]
    peer: list[float]
    in_process: float
    digest: str

    @property
    def ours_s(self) -> float:
        return median(self.ours)

    @property
    def peer_s(self) -> float:
        return median(self.peer)


def measure(path: Path, ours: list[str], runs: int, env: dict[str, str]) -> Result:
    peer = ["xxhsum", "-H3", str(path)]
    ours = [*ours, str(path)]
    expected = digest_file(path, ("xxh3",))
    _, out = run(ours, env)  # warm-up, and the check that it prints the right digest
    if expected.xxh3 not in out:
        raise BenchError(f"{' '.join(ours)} printed {out.strip()!r}, expected {expected.xxh3}")
    t_ours = [run(ours, env)[0] for _ in range(runs)]
    log(f"{path.name}: ours {fmt(t_ours)} s")
    inproc = []
    for _ in range(runs):
        start = time.perf_counter()
        digest_file(path, ("xxh3",))
        inproc.append(time.perf_counter() - start)
    run(peer)  # warm-up: for the sparse file, this caches its 16 GiB of holes
    t_peer = [run(peer)[0] for _ in range(runs)]
    log(f"{path.name}: xxhsum -H3 {fmt(t_peer)} s")
    drop_cache(path)  # give the memory back before the next measurement
    return Result(
        path.name,
        expected.size,
        expected.data_bytes,
        t_ours,
        t_peer,
        median(inproc),
        expected.xxh3,
    )


def drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def gib_s(size: int, seconds: float) -> str:
    return f"{size / GIB / seconds:.1f} GiB/s"


def section(
    dense: Result, sparse: Result, ours_label: str, runs: int, load0: float, load1: float
) -> tuple[str, bool]:
    dense_ratio = dense.peer_s / dense.ours_s  # throughput ratio = inverse time ratio
    sparse_ratio = sparse.peer_s / sparse.ours_s
    ok_dense, ok_sparse = dense_ratio >= TARGET_DENSE, sparse_ratio >= TARGET_SPARSE
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    peer_version = subprocess.run(
        ["xxhsum", "--version"], capture_output=True, text=True, check=False
    )
    version = (peer_version.stdout + peer_version.stderr).strip().splitlines()[0]
    lines = [
        "## Hashing: `imagebuilder hash --algo xxh3` vs `xxhsum -H3`",
        "",
        f"Run by `bench/hash.py` on {dt.date.today().isoformat()}: {os.cpu_count()} CPUs "
        f"({cpu}), load average {load0:.1f} before and {load1:.1f} after, Python "
        f"{platform.python_version()}, {version}. Files in the page cache; "
        f"whole processes timed from spawn to exit (ours with its bytecode cache), one untimed "
        f"warm-up then {runs} timed runs of each command, ours first; medians. "
        f"Ours: `{ours_label}`. In-process: `digest_file` alone, without interpreter start-up.",
        "",
        "| file | apparent / data | ours | xxhsum -H3 | in-process | ratio | target | pass |",
        "|---|---|---|---|---|---|---|---|",
        f"| dense random | 1 GiB / 1 GiB | {dense.ours_s:.3f} s "
        f"({gib_s(dense.apparent, dense.ours_s)}) | {dense.peer_s:.3f} s "
        f"({gib_s(dense.apparent, dense.peer_s)}) | {dense.in_process:.3f} s | "
        f"{dense_ratio:.2f}x throughput | >= {TARGET_DENSE}x | {'yes' if ok_dense else 'NO'} |",
        f"| sparse | 16 GiB / {sparse.data / MIB:.0f} MiB | {sparse.ours_s:.3f} s | "
        f"{sparse.peer_s:.3f} s | {sparse.in_process:.3f} s | {sparse_ratio:.1f}x faster | "
        f">= {TARGET_SPARSE:.0f}x | {'yes' if ok_sparse else 'NO'} |",
        "",
        f"Runs (s), ours / xxhsum: dense {fmt(dense.ours)} / {fmt(dense.peer)}; "
        f"sparse {fmt(sparse.ours)} / {fmt(sparse.peer)}. The sparse file's data is "
        f"{SPARSE_PIECES} pieces of 1 MiB, one per 64 MiB, starting {PIECE_SKEW} bytes in "
        '(holes at odd offsets); "data" is what SEEK_DATA reports (filesystem blocks). '
        "`xxh3` is the block-tree XXH3-128 of imagebuilder/hashing/core.py (holes skipped in O(1) "
        "per 1 MiB leaf, leaves hashed on up to 4 threads); `xxhsum -H3` is XXH3-64, reading "
        "every byte on one thread.",
    ]
    return "\n".join(lines) + "\n", ok_dense and ok_sparse


def fmt(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)




def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path("/var/tmp"),
        help="where to create the test files (needs holes and ~1.3 GiB)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--keep", action="store_true", help="keep the test files")
    parser.add_argument("--strict", action="store_true", help="exit 3 when a target is missed")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if not shutil.which("xxhsum"):
        print("ERROR: xxhsum not found (apt-get install xxhash)", file=sys.stderr)
        return 1
    if shutil.disk_usage(args.dir).free < DENSE_SIZE + SPARSE_PIECES * PIECE * 2 + GIB // 4:
        print(f"ERROR: not enough free space in {args.dir}", file=sys.stderr)
        return 1
    cli = find_cli()
    if cli is not None:
        ours, label = [str(cli), "hash", "--algo", "xxh3"], "imagebuilder hash --algo xxh3 FILE"
    else:
        ours, label = [sys.executable, "-c", PY_HASH], "python -c '...hash_paths([FILE], \"xxh3\")'"
    log(f"ours: {label}")
    workdir = Path(tempfile.mkdtemp(prefix="imagebuilder-hash-bench-", dir=args.dir))
    # As installed Python runs: with its bytecode cache (PYTHONDONTWRITEBYTECODE in a dev shell
    # would recompile our modules on every start), kept in the work dir, not in the repository.
    env = installed_python_env(workdir)
    load_before = load()
    try:
        dense_path, sparse_path = make_files(workdir)
        dense = measure(dense_path, ours, args.runs, env)
        sparse = measure(sparse_path, ours, args.runs, env)
    except BenchError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    text, ok = section(dense, sparse, label, args.runs, load_before, load())
    print(text)
    write_section(args.out, "hash", text)
    log(f"wrote {args.out}")
    return 3 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
