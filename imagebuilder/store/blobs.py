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

A file verified once in a process is not hashed again unless it changed (device, inode, size,
mtime or ctime); the store records what it hashed while adding a blob (:func:`record`), so a
build does not read its layers twice. Blobs coming in (a pull) are hashed as they are written,
by :func:`receive`.

Nothing that is not a regular file is ever opened as a blob or a cache entry
(:func:`open_regular`): a symbolic link (which could lead out of the store, to ``/dev/zero`` or
to someone's files), a FIFO (whose open or read would wait forever) or a device is damage,
reported as such.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import stat
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import DamagedError, IntegrityError, UserError
from ..fsutil import NotRegularError, open_regular
from ..hashing.core import CHUNK_SIZE, Digests, MultiHasher, digest_fd
from .oci import oci_digest

REPAIR_HINT = ("run 'imagebuilder check' to see which images it affects, then rebuild them "
               "('imagebuilder build' in the app's directory) or pull them again")

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_Identity = tuple[int, int, int, int, int]
_verified: dict[_Identity, str] = {}
_lock = threading.Lock()


def digest_regular(path: Path | str, algos: tuple[str, ...]) -> Digests:
    """The ``algos`` digests of the regular file at ``path`` (:func:`open_regular`)."""
    fd = open_regular(path)
    try:
        return digest_fd(fd, algos)
    finally:
        os.close(fd)


def read_regular(path: Path | str, limit: int = 1 << 16) -> bytes:
    """At most ``limit`` bytes of the regular file at ``path`` (:func:`open_regular`): for small
    files such as a cache entry's hash."""
    with os.fdopen(open_regular(path), "rb") as f:
        return f.read(limit)


def not_regular(path: Path | str, digest: str, kind: str) -> DamagedError:
    return DamagedError(f"blob {digest[:19]} in the image store is {kind}, not a file ({path}): "
                        f"{REPAIR_HINT}")


def _identity(st: os.stat_result) -> _Identity:
    """What changes when a file's bytes may have: any write moves mtime, any utime() ctime."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def record(path: Path | str, hashed: os.stat_result, digest: str) -> None:
    """Note that the file at ``path`` was just hashed to ``digest`` in this process (the store
    adding it as a blob; ``hashed`` its status then), so that :func:`verify` need not read it
    again while it stays unchanged. Nothing is noted if its size or mtime moved meanwhile; its
    ctime is taken from now, as a rename into the store moves it."""
    st = os.stat(path)
    if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) == (
            hashed.st_dev, hashed.st_ino, hashed.st_size, hashed.st_mtime_ns):
        with _lock:
            _verified[_identity(st)] = digest


def missing(path: Path | str, digest: str) -> DamagedError:
    return DamagedError(f"blob {digest[:19]} is missing from the image store ({path}): "
                        f"{REPAIR_HINT}")


def mismatch(path: Path | str, digest: str, actual: str) -> DamagedError:
    return DamagedError(f"blob {digest[:19]} in the image store is damaged ({path} no longer "
                        f"matches its digest): {REPAIR_HINT}")


def verify(path: Path | str, digest: str) -> None:
    """Check the file at ``path`` against ``digest`` (``sha256:<hex>``); DamagedError if it is
    missing or differs."""
    fd = _open_blob(path, digest)
    try:
        ident = _identity(os.fstat(fd))
        with _lock:
            if _verified.get(ident) == digest:
                return
        actual = digest_fd(fd, ("sha256",)).sha256
    finally:
        os.close(fd)
    if oci_digest(actual) != digest:
        raise mismatch(path, digest, actual)
    with _lock:
        _verified[ident] = digest


def _open_blob(path: Path | str, digest: str) -> int:
    try:
        return open_regular(path)
    except FileNotFoundError:
        raise missing(path, digest) from None
    except NotRegularError as e:
        raise not_regular(path, digest, e.kind) from None


def read_small(path: Path | str, digest: str) -> bytes:
    """The bytes of a small blob (a manifest, a config), checked against ``digest``."""
    with os.fdopen(_open_blob(path, digest), "rb") as f:
        data = f.read()
    actual = hashlib.sha256(data).hexdigest()
    if oci_digest(actual) != digest:
        raise mismatch(path, digest, actual)
    return data


def verified_chunks(path: Path | str, digest: str,
                    chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """The bytes of the file at ``path``, hashed as they go; after the last chunk, DamagedError
    if they were not ``digest``. The caller must discard what it made of them when that
    happens (write to a temporary name, rename only after the loop ends)."""
    hasher = MultiHasher(("sha256",))
    f = os.fdopen(_open_blob(path, digest), "rb")
    with f:
        ident = _identity(os.fstat(f.fileno()))
        while chunk := f.read(chunk_size):
            hasher.update(chunk)
            yield chunk
    actual = hasher.hexdigests()["sha256"]
    if oci_digest(actual) != digest:
        raise mismatch(path, digest, actual)
    with _lock:
        _verified[ident] = digest


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
        actual = oci_digest(h.hexdigest())
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


# --- deleting blobs, never through a link ---------------------------------------------------


def sweep(store_root: Path, keep: set[str], dry_run: bool) -> tuple[list[str], int]:
    """Delete the entries of ``store_root``/blobs/sha256 whose digest is not in ``keep``
    (directories stay; a link is removed as a link); the digests that went and the bytes they
    held. The directory is reached and walked through descriptors, never through a link."""
    fd = _open_blobs_dir(store_root)
    if fd is None:
        return [], 0
    removed, freed = [], 0
    try:
        for name in sorted(os.listdir(fd)):
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode) or oci_digest(name) in keep:
                continue
            removed.append(oci_digest(name))
            freed += st.st_size if stat.S_ISREG(st.st_mode) else 0
            if not dry_run:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=fd)
        if removed and not dry_run:
            os.fsync(fd)
    finally:
        os.close(fd)
    return removed, freed


def _open_blobs_dir(store_root: Path) -> int | None:
    """A descriptor of blobs/sha256, reached with O_NOFOLLOW (None if it does not exist)."""
    fd = -1
    try:
        fd = os.open(store_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        for part in ("blobs", "sha256"):
            sub = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=fd)
            os.close(fd)
            fd = sub
    except OSError as e:
        if fd >= 0:
            os.close(fd)
        if isinstance(e, FileNotFoundError):
            return None
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UserError(f"{store_root}/blobs/sha256 is not a directory of the store (a "
                            "symbolic link?): imagebuilder does not follow links out of its "
                            "store") from None
        raise
    return fd
