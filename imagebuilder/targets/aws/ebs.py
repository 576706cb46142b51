"""An EBS snapshot written straight from a disk through the EBS direct APIs.

StartSnapshot, PutSnapshotBlock for each 512 KiB block that holds data (with its SHA-256),
CompleteSnapshot with the linear aggregate checksum: no S3 bucket, no import task. Many blocks
are in flight at once, but the blocks read ahead are bounded, so memory is bounded by
``workers`` blocks whatever the disk's size.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from ...disk.model import Disk
from .api import aws_errors, with_retries
from .request import PublishRequest

BLOCK_SIZE = 512 * 1024
"""The EBS direct APIs' block: every PutSnapshotBlock carries exactly this many bytes."""
GIB = 1 << 30
SNAPSHOT_TIMEOUT_MINUTES = 60
"""An abandoned snapshot (a crash before cleanup) moves to the error state after this."""
_ZERO = bytes(BLOCK_SIZE)
_ZERO_SUM = hashlib.sha256(_ZERO).digest()


@dataclass
class UploadStats:
    """What one snapshot upload sent."""

    snapshot_id: str
    blocks_sent: int = 0
    blocks_skipped: int = 0
    bytes_sent: int = 0
    requests: int = 0
    retries: int = 0
    seconds: float = 0.0



def _blocks(disk: Disk, volume_bytes: int, encrypted: bool) -> Iterator[tuple[int, bytes]]:
    """``(index, data)`` of the blocks to write: those holding data, and for an encrypted
    snapshot every block of the volume (its unwritten blocks would not read as zeros)."""
    nxt = 0
    for off, data in disk.iter_blocks(BLOCK_SIZE):
        index = off // BLOCK_SIZE
        if encrypted:
            for gap in range(nxt, index):
                yield gap, _ZERO
        nxt = index + 1
        yield index, data
    if encrypted:
        for gap in range(nxt, volume_bytes // BLOCK_SIZE):
            yield gap, _ZERO


def upload_snapshot(ebs: Any, disk: Disk, request: PublishRequest, *, tags: list[dict[str, str]],
                    progress: Callable[[int], None] | None = None) -> UploadStats:
    """Upload ``disk`` to a new, completed EBS snapshot in the request's region (encrypted with
    its KMS key, if any); on failure nothing is left but the snapshot id in the raised error's
    ``snapshot_id`` (the caller deletes it)."""
    volume_gib = -(-disk.size // GIB)
    start: dict[str, Any] = {"VolumeSize": volume_gib, "Tags": tags,
                             "Description": request.description,
                             "ClientToken": str(uuid.uuid4()),
                             "Timeout": SNAPSHOT_TIMEOUT_MINUTES}
    if request.kms_key_id is not None:
        start.update(Encrypted=True, KmsKeyArn=request.kms_key_id)
    began = time.monotonic()
    with aws_errors(request.region, request.kms_key_id):
        snapshot_id = str(ebs.start_snapshot(**start)["SnapshotId"])
    stats = UploadStats(snapshot_id=snapshot_id, requests=1)
    try:
        _put_blocks(ebs, disk, request, stats, volume_gib * GIB, progress)
    except BaseException as e:
        e.snapshot_id = snapshot_id  # type: ignore[attr-defined]
        raise
    stats.seconds = time.monotonic() - began
    return stats


def _put_blocks(ebs: Any, disk: Disk, request: PublishRequest, stats: UploadStats,
                volume_bytes: int, progress: Callable[[int], None] | None) -> None:
    sums: dict[int, bytes] = {}
    lock = threading.Lock()
    workers = max(1, request.workers)
    encrypted = request.kms_key_id is not None
    snapshot_id = stats.snapshot_id

    def put(index: int, data: bytes) -> None:
        digest = _ZERO_SUM if data is _ZERO else hashlib.sha256(data).digest()
        checksum = base64.b64encode(digest).decode()
        with_retries(lambda: ebs.put_snapshot_block(
            SnapshotId=snapshot_id, BlockIndex=index, BlockData=data, DataLength=BLOCK_SIZE,
            Checksum=checksum, ChecksumAlgorithm="SHA256"), stats, lock)
        with lock:
            sums[index] = digest
            stats.blocks_sent += 1
            stats.bytes_sent += BLOCK_SIZE
        if progress is not None:
            progress(BLOCK_SIZE)

    pending: set[Future[None]] = set()
    with aws_errors(request.region, request.kms_key_id), ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="ebs-put") as pool:
        try:
            for index, data in _blocks(disk, volume_bytes, encrypted):
                if not encrypted and data.count(0) == BLOCK_SIZE:
                    stats.blocks_skipped += 1
                    continue
                while len(pending) >= 2 * workers:  # bounded read-ahead: bounded memory
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in done:
                        f.result()
                pending.add(pool.submit(put, index, data))
            for f in pending:
                f.result()
        except BaseException:
            for f in pending:
                f.cancel()
            raise
        aggregate = hashlib.sha256(b"".join(sums[i] for i in sorted(sums))).digest()
        with_retries(lambda: ebs.complete_snapshot(
            SnapshotId=snapshot_id, ChangedBlocksCount=len(sums),
            Checksum=base64.b64encode(aggregate).decode(), ChecksumAlgorithm="SHA256",
            ChecksumAggregationMethod="LINEAR"), stats, lock)
