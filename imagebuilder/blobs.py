"""Reading stored blobs with proof: every byte taken out of the store is checked against its digest.

A blob's name is its SHA-256, but a file can change after it was named: a bad disk sector, a
stray ``dd``, an interrupted copy by some other tool. A disk exported, flashed, served or pushed
from such a blob would carry bytes nobody built. So whatever reads a blob for those commands
reads it through here, and the check costs no extra read:

- a consumer that copies the bytes itself (kernel + initrd export, the initrd QEMU boots, a push)
  takes them from :func:`verified_chunks`, which hashes what it yields and raises at the end if
  the digest differs; its output is a temporary file, so nothing it wrote is kept;
- a consumer that hands the file to another program (``mcopy`` building the ESP, the ISO writer,
  ``sendfile`` when serving) first calls :func:`verify`, one read through the hashing core after
  which the program reads from the page cache.

A file verified once in a process is not hashed again unless it changed (inode, size or mtime).
Blobs coming in (a pull) are hashed as they are written, by :func:`receive`.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import DamagedError, IntegrityError
from .hashing import CHUNK_SIZE, MultiHasher, digest_file

REPAIR_HINT = ("run 'imagebuilder check' to see which images it affects, then rebuild them "
               "('imagebuilder build' in the app's directory) or pull them again")

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_verified: set[tuple[str, str, int, int, int]] = set()
_lock = threading.Lock()


def _identity(path: Path | str, digest: str, st: os.stat_result) -> tuple[str, str, int, int, int]:
    return (str(path), digest, st.st_ino, st.st_size, st.st_mtime_ns)


def missing(path: Path | str, digest: str) -> DamagedError:
    return DamagedError(f"blob {digest[:19]} is missing from the image store ({path}): "
                        f"{REPAIR_HINT}")


def mismatch(path: Path | str, digest: str, actual: str) -> DamagedError:
    return DamagedError(f"blob {digest[:19]} in the image store is damaged ({path} no longer "
                        f"matches its digest): {REPAIR_HINT}")


def verify(path: Path | str, digest: str) -> None:
    """Check the file at ``path`` against ``digest`` (``sha256:<hex>``); DamagedError if it is
    missing or differs."""
    try:
        ident = _identity(path, digest, os.stat(path))
    except FileNotFoundError:
        raise missing(path, digest) from None
    with _lock:
        if ident in _verified:
            return
    actual = digest_file(path, ("sha256",)).sha256
    if "sha256:" + actual != digest:
        raise mismatch(path, digest, actual)
    with _lock:
        _verified.add(ident)


def verified_chunks(path: Path | str, digest: str,
                    chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """The bytes of the file at ``path``, hashed as they go; after the last chunk, DamagedError
    if they were not ``digest``. The caller must discard what it made of them when that
    happens (write to a temporary name, rename only after the loop ends)."""
    hasher = MultiHasher(("sha256",))
    try:
        f = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        raise missing(path, digest) from None
    with f:
        ident = _identity(path, digest, os.fstat(f.fileno()))
        while chunk := f.read(chunk_size):
            hasher.update(chunk)
            yield chunk
    actual = hasher.hexdigests()["sha256"]
    if "sha256:" + actual != digest:
        raise mismatch(path, digest, actual)
    with _lock:
        _verified.add(ident)


def receive(staging: Path, digest: str, size: int, chunks: Iterable[bytes]) -> Path:
    """Write ``chunks`` (a blob arriving from a registry) to a file in ``staging`` while hashing;
    the file if it is blob ``digest`` of ``size`` bytes, else an IntegrityError (and the file is
    gone). Writing stops as soon as more than ``size`` bytes arrive."""
    if not _DIGEST.fullmatch(digest):
        raise IntegrityError(f"not a sha256 digest: {digest!r}")
    dest = staging / digest.removeprefix("sha256:")
    h = hashlib.sha256()
    written = 0
    try:
        with open(dest, "wb") as f:
            for chunk in chunks:
                written += len(chunk)
                if written > size:
                    raise IntegrityError(
                        f"blob {digest} is larger than the {size} bytes its manifest says; "
                        "discarded"
                    )
                h.update(chunk)
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        actual = "sha256:" + h.hexdigest()
        if actual != digest or written != size:
            raise IntegrityError(
                f"blob {digest} did not verify: got sha256 {actual}, {written} of {size} "
                "bytes; discarded"
            )
        os.chmod(dest, 0o644)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return dest
