#!/usr/bin/env python3
"""AWS publish benchmark: the EBS direct APIs path against moto_server on 127.0.0.1.

Why: imagebuilder/targets/aws.py promises that (1) only the blocks holding data are sent, so a
2 GiB disk with little data costs about its data, not 2 GiB as with a whole-disk uploader (S3 +
ImportSnapshot, or a dd-style upload); (2) many blocks are in flight at once; (3) memory is
bounded by the blocks in flight, whatever the disk's size.

Method: a moto_server is started on loopback. Each case runs in a fresh child process (this
script with ``--child``) that publishes one disk with :func:`publish_disk` and reports the upload
statistics, the time of the whole publish (snapshot, register, tag) and its peak resident
memory (``ru_maxrss``) next to its resident memory just before the upload. Cases:

- ``hello``: the raw disk of a stored image (``--ref``, e.g. hello:1.0.0 from examples/hello,
  in ``$IMAGEBUILDER_HOME``); without ``--ref`` a synthetic 35 MiB disk of random data stands in
  for it (about the size of examples/hello's disk);
- ``sparse-2g``: a 2 GiB sparse file holding 64 MiB of random data in 32 runs of 2 MiB.

moto_server's speed, not AWS's, bounds the throughput: the numbers compare bytes and requests
and show the memory bound; they are not AWS upload times. Prints a Markdown table.

    .venv/bin/python bench/aws.py [--ref NAME:VERSION] [--workers N] [--runs N]

Needs boto3 and moto[server] (pip install -e '.[test]') and about 100 MiB in /var/tmp.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

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
    from imagebuilder.targets import aws
    if ref:
        from imagebuilder.export import BootSource, bootable, disk_digest
        from imagebuilder.home import Home
        home = Home()
        image = home.store.resolve(ref)
        disk = bootable(home.cache, BootSource.of_image(home.store, image))
        digest = disk_digest(disk)
    else:
        disk = Disk.from_file(disk_path)
        digest = f"sha256:{hashlib.sha256(os.urandom(16)).hexdigest()}"
    before = _rss_mib()
    started = time.monotonic()
    result = aws.publish_disk(disk, name="bench", version="1", image_digest=digest,
                              disk_digest=digest, region="us-east-1", workers=workers)
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    parser.add_argument("--child", nargs=2, metavar=("DISK", "REF"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1] or None, args.workers)
        return 0
    moto = shutil.which("moto_server", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
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
        rows = []
        for label, path, ref in cases:
            results: list[dict[str, Any]] = []
            for _ in range(args.runs):
                # A fresh moto_server per run: publishing is idempotent, a second publish of
                # the same disk into the same account would reuse the first AMI.
                with _moto(moto) as env:
                    out = subprocess.run(
                        [sys.executable, __file__, "--workers", str(args.workers), "--child",
                         path, ref], env=env, check=True, capture_output=True, text=True)
                results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = results[0]
            up = statistics.median(x["upload_seconds"] for x in results)
            whole = statistics.median(x["publish_seconds"] for x in results)
            rows.append(
                f"| {label} | {r['disk_size'] / MiB:.0f} MiB | {r['data_size'] / MiB:.1f} MiB "
                f"| {r['blocks_sent']} ({r['blocks_skipped']} zero skipped) "
                f"| {r['bytes_sent'] / MiB:.1f} MiB vs {r['disk_size'] / MiB:.0f} MiB "
                f"({r['bytes_sent'] / r['disk_size']:.1%}) | {r['requests']} "
                f"| {up:.2f} s ({r['bytes_sent'] / MiB / up:.0f} MiB/s) | {whole:.2f} s "
                f"| {max(x['peak_rss_mib'] for x in results):.0f} MiB "
                f"(+{max(x['peak_rss_mib'] - x['rss_before_mib'] for x in results):.0f}) |")
        print(f"AWS publish against moto_server, {args.workers} blocks in flight, median of "
              f"{args.runs} runs\n")
        print("| disk | size | data | blocks sent | bytes sent vs whole-disk upload "
              "| EBS requests | upload | publish | peak RSS (over start) |")
        print("|---|---|---|---|---|---|---|---|---|")
        print("\n".join(rows))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


@contextlib.contextmanager
def _moto(moto: str) -> Iterator[dict[str, str]]:
    """A moto_server on a free loopback port; the environment that points boto3 at it."""
    port = _free_port()
    server = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
           "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1"}
    env.pop("AWS_PROFILE", None)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield env
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    sys.exit(main())
