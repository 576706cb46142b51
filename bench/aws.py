#!/usr/bin/env python3
"""AWS publish benchmark: the EBS direct APIs path against moto_server on 127.0.0.1.

Why: imagebuilder/targets/aws/ebs.py promises that (1) only the blocks holding data are sent, so a
2 GiB disk with little data costs about its data, not 2 GiB as with a whole-disk uploader (S3 +
ImportSnapshot, or a dd-style upload); (2) many blocks are in flight at once; (3) memory is
bounded by the blocks in flight, whatever the disk's size.

Method: a moto_server is started on loopback. Each case runs in a fresh child process (this
script with ``--child``) that publishes one disk with :func:`publish_disk` and reports the upload
statistics, the time of the whole publish (snapshot, register, tag) and its peak resident
memory (``ru_maxrss``) next to its resident memory just before the upload, and writes its
section of docs/benchmarks.md. Cases:

- ``hello``: the raw disk of a stored image (``--ref``, e.g. hello:1.0.0 from examples/hello,
  in ``$IMAGEBUILDER_HOME``); without ``--ref`` a synthetic 35 MiB disk of random data stands in
  for it (about the size of examples/hello's disk);
- ``sparse-2g``: a 2 GiB sparse file holding 64 MiB of random data in 32 runs of 2 MiB.

moto_server's speed, not AWS's, bounds the throughput: the numbers compare bytes and requests
and show the memory bound; they are not AWS upload times.

    .venv/bin/python bench/aws.py [--ref NAME:VERSION] [--workers N] [--runs N]

Needs boto3 and moto[server] (pip install -e '.[test]') and about 100 MiB in /var/tmp.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from benchdoc import write_section  # noqa: E402

from support.machine import cpus, load  # noqa: E402
from support.measure import median  # noqa: E402
from support.servers import aws_env, child_env, moto_executable, moto_server  # noqa: E402

MiB, GiB = 1 << 20, 1 << 30


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def child(disk_path: str, ref: str | None, workers: int) -> None:
    """Publish one disk; print a JSON line of statistics."""
    from imagebuilder.disk.model import Disk
    from imagebuilder.targets.aws import publish as aws
    if ref:
        from imagebuilder.formats.export import BootSource, bootable, disk_digest
        from imagebuilder.store.home import Home
        home = Home()
        image = home.store.resolve(ref)
        disk = bootable(home.cache, BootSource.of_image(home.store, image))
        digest = disk_digest(disk)
    else:
        disk = Disk.from_file(disk_path)
        digest = f"sha256:{hashlib.sha256(os.urandom(16)).hexdigest()}"
    before = _rss_mib()
    started = time.monotonic()
    from imagebuilder.store.layout import Image
    image = Image(ref="bench:1", digest=digest, manifest={}, config={}, size=0)
    result = aws.publish_disk(aws.PublishRequest(image, "us-east-1", workers=workers), disk,
                              digest)
    seconds = time.monotonic() - started
    assert result.upload is not None
    print(json.dumps({
        "disk_size": disk.size, "data_size": disk.data_size(),
        "blocks_sent": result.upload.blocks_sent, "blocks_skipped": result.upload.blocks_skipped,
        "bytes_sent": result.upload.bytes_sent, "requests": result.upload.requests,
        "upload_seconds": result.upload.seconds, "publish_seconds": seconds,
        "rss_before_mib": before,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def _sparse(path: Path, size: int, runs: int, run: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        step = size // runs
        for i in range(runs):
            f.seek(i * step + 12345 * (i % 3))  # unaligned starts: partial blocks too
            f.write(os.urandom(run))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", help="a stored image to publish (default: synthetic 35 MiB)")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md",
                        help="the Markdown file whose aws section to rewrite")
    parser.add_argument("--child", nargs=2, metavar=("DISK", "REF"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1] or None, args.workers)
        return 0
    moto = moto_executable()
    if moto is None:
        print("moto_server not found: pip install 'moto[server]'", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="bench-aws-", dir="/var/tmp"))
    try:
        hello = tmp / "hello.raw"
        if not args.ref:
            hello.write_bytes(os.urandom(35 * MiB))
        sparse = tmp / "sparse.raw"
        _sparse(sparse, 2 * GiB, 32, 2 * MiB)
        cases = [("hello" if args.ref else "synthetic 35 MiB", str(hello), args.ref or ""),
                 ("sparse 2 GiB", str(sparse), "")]
        measured = [(label, _runs(moto, path, ref, args.workers, args.runs))
                    for label, path, ref in cases]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = section(measured, args)
    print(text)
    write_section(args.out, "aws", text)
    return 0


def _runs(moto: str, path: str, ref: str, workers: int, runs: int) -> list[dict[str, Any]]:
    results = []
    for _ in range(runs):
        # A fresh moto_server per run: publishing is idempotent, a second publish of the same
        # disk into the same account would reuse the first AMI.
        with moto_server(moto) as url:
            out = subprocess.run(
                [sys.executable, __file__, "--workers", str(workers), "--child", path, ref],
                env=child_env(aws_env(url)), check=True, capture_output=True, text=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return results


def section(measured: list[tuple[str, list[dict[str, Any]]]], args: argparse.Namespace) -> str:
    """The aws section of docs/benchmarks.md: a table, and the claims computed from it."""
    rows, notes = [], []
    for label, results in measured:
        r = results[0]
        up = median(x["upload_seconds"] for x in results)
        whole = median(x["publish_seconds"] for x in results)
        growth = max(x["peak_rss_mib"] - x["rss_before_mib"] for x in results)
        rows.append(
            f"| {label} | {r['disk_size'] / MiB:.0f} MiB | {r['data_size'] / MiB:.1f} MiB "
            f"| {r['blocks_sent']} ({r['blocks_skipped']} zero skipped) "
            f"| {r['bytes_sent'] / MiB:.1f} MiB vs {r['disk_size'] / MiB:.0f} MiB "
            f"({r['bytes_sent'] / r['disk_size']:.1%}) | {r['requests']} "
            f"| {up:.2f} s ({r['bytes_sent'] / MiB / up:.0f} MiB/s) | {whole:.2f} s "
            f"| {max(x['peak_rss_mib'] for x in results):.0f} MiB (+{growth:.0f}) |")
        notes.append(f"{label}: a whole-disk uploader sends {r['disk_size'] / MiB:.0f} MiB, "
                     f"{r['disk_size'] / r['bytes_sent']:.1f}x the {r['bytes_sent'] / MiB:.1f} "
                     f"MiB sent here; memory grew by {growth:.0f} MiB over the start")
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    source = f"`--ref {args.ref}`, its real raw disk" if args.ref else "a synthetic disk"
    return "\n".join([
        "## AWS publish through the EBS direct APIs (`bench/aws.py`)",
        "",
        f"Run on {when} against `moto_server` on 127.0.0.1 ({cpus()}, "
        f"load average {load():.1f} at the end: the machine is "
        f"shared), {args.workers} blocks of 512 KiB in flight, median of {args.runs} "
        f"runs, a fresh moto_server per run (publishing is idempotent). The first disk is "
        f"{source}. moto's speed, not AWS's, bounds the throughput: the numbers that carry "
        "over are bytes, requests and memory.",
        "",
        "| disk | size | data | blocks sent | bytes sent vs whole-disk upload | EBS requests "
        "| upload | publish | peak RSS (over start) |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "- Requests: one PutSnapshotBlock per 512 KiB block holding data, plus StartSnapshot "
        "and CompleteSnapshot; all-zero blocks are never sent for unencrypted snapshots.",
        *(f"- {n}." for n in notes),
    ])


if __name__ == "__main__":
    sys.exit(main())
