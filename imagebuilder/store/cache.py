"""Content-addressed store of stage outputs.

A stage is a pure function of its inputs, so its output can be stored under the hash of those
inputs (and the stage's code version) and reused whenever the same key comes up again: a change
to the app re-runs only the stages downstream of it. Outputs are single files.

Layout under the cache root::

    stages/<key[:2]>/<key>        the output
    stages/<key[:2]>/<key>.xxh3   its XXH3-128, checked on every lookup
    tmp/                          outputs being produced (same filesystem, so rename is atomic),
                                  named by their process's owner token (imagebuilder.scratch)
    initrd/ kernel/ disks/        what ``run`` boots, by image digest (:data:`RUN_DIRS`): files
                                  committed beside their name (imagebuilder.fsutil)
    .lock                         fcntl lock serialising commits and deletions

An entry is committed by writing the sidecar and then renaming the fsynced output into place, so a
reader never sees an output without its hash, and an interrupted build leaves at most a file in
tmp/. Two builds producing the same key at once both succeed: the second rename replaces the first
with (for a deterministic stage) identical bytes. An entry whose bytes no longer match its hash is
deleted and reported as a miss, so it gets rebuilt; so is anything else than a regular file in
an entry's place (a symbolic link, a FIFO, a device), without being followed or opened.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..fsutil import NotRegularError, commit, dir_lock, fsync_dir, refuse_links, remove_stale_temps
from ..hashing.core import MultiHasher
from ..hashing.keys import key_of
from ..scratch import owned, remove_stale
from .blobs import digest_regular, read_regular

_KEY_RE = re.compile(r"^[0-9a-f]{8,128}$")
RUN_DIRS = ("initrd", "kernel", "disks")
"""The directories of the cache ``run`` fills (initrds, kernels, disks of an image)."""




class Cache:
    """The stage-output cache rooted at ``root`` (created on first use)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.stages_dir = self.root / "stages"
        self.tmp_dir = self.root / "tmp"

    # --- keys and paths ---------------------------------------------------------------------

    @staticmethod
    def stage_key(stage: str, version: int, inputs: Mapping[str, Any]) -> str:
        """The cache key of running ``stage`` (code ``version``) on ``inputs``.

        ``inputs`` holds values only (option values, file digests), never paths or timestamps;
        see :func:`imagebuilder.hashing.keys.key_of` for what it accepts.
        """
        return key_of("stage", stage, version, dict(inputs))

    def path_of(self, key: str) -> Path:
        """Where the output for ``key`` lives (whether or not it exists)."""
        if not _KEY_RE.fullmatch(key):
            raise ValueError(f"invalid cache key {key!r}")
        return self.stages_dir / key[:2] / key

    def _sidecar(self, key: str) -> Path:
        return self.path_of(key).with_name(key + ".xxh3")

    def _lock(self, exclusive: bool) -> contextlib.AbstractContextManager[None]:
        self.refuse_links()
        return dir_lock(self.root, exclusive)

    def refuse_links(self) -> None:
        """UserError if ``stages`` or ``tmp`` is a symbolic link: nothing that deletes or reads
        entries may be led out of the cache."""
        refuse_links((self.stages_dir, self.tmp_dir), "its cache")

    # --- lookup -----------------------------------------------------------------------------

    def _verified(self, key: str) -> bool | None:
        """True if the entry is intact, False if corrupt, None if absent."""
        path, sidecar = self.path_of(key), self._sidecar(key)
        if not os.path.lexists(path):
            return None
        try:  # a link, FIFO or device where an entry should be is damage, never opened
            expected = read_regular(sidecar).decode("ascii", "replace").strip()
            return digest_regular(path, ("xxh3",)).xxh3 == expected
        except (FileNotFoundError, NotRegularError):
            return False

    def lookup(self, key: str) -> Path | None:
        """The stored output for ``key``, verified against its recorded hash; None on a miss.

        A corrupt entry (bytes changed, hash missing) is deleted and counts as a miss.
        """
        with self._lock(exclusive=False):
            state = self._verified(key)
        if state is None:
            return None
        if state:
            return self.path_of(key)
        with self._lock(exclusive=True):
            if self._verified(key) is False:  # still corrupt: nobody repaired it meanwhile
                self._delete(key)
                return None
        return self.lookup(key)

    def _delete(self, key: str) -> None:
        self.path_of(key).unlink(missing_ok=True)
        self._sidecar(key).unlink(missing_ok=True)

    def invalidate(self, key: str) -> None:
        """Forget the entry for ``key`` if there is one."""
        with self._lock(exclusive=True):
            self._delete(key)

    # --- store ------------------------------------------------------------------------------

    def store(self, key: str, produce: Callable[[Path], None]) -> Path:
        """Run ``produce(tmp_path)``, which must create a single file there, and commit it.

        The file is hashed, fsynced and renamed into place atomically. If ``produce`` raises,
        whatever it left is removed and the exception propagates; nothing enters the cache.
        """
        final = self.path_of(key)
        self.remove_stale()
        with owned(self.tmp_dir) as token:
            tmp = self.tmp_dir / f"{token}.{key}.{secrets.token_hex(4)}"
            try:
                produce(tmp)
                if tmp.is_symlink() or not tmp.is_file():
                    raise RuntimeError(
                        f"stage producing {key} did not write a regular file at {tmp}")
                hasher = MultiHasher(("xxh3",))
                with open(tmp, "rb+") as f:
                    while chunk := f.read(1 << 20):
                        hasher.update(chunk)
                    os.fsync(f.fileno())
                digest = hasher.hexdigests()["xxh3"]
                final.parent.mkdir(parents=True, exist_ok=True)
                side_tmp = tmp.with_name(tmp.name + ".xxh3")
                with open(side_tmp, "w") as f:
                    f.write(digest + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                with self._lock(exclusive=True):  # both fsynced above: one directory sync
                    commit(side_tmp, self._sidecar(key), sync=False)
                    commit(tmp, final, sync=False)
                    fsync_dir(final.parent)
            except BaseException:
                for leftover in (tmp, tmp.with_name(tmp.name + ".xxh3")):
                    if leftover.is_dir() and not leftover.is_symlink():
                        shutil.rmtree(leftover, ignore_errors=True)
                    else:
                        leftover.unlink(missing_ok=True)
                raise
        return final

    def remove_stale(self) -> list[str]:
        """Remove what killed commands left in tmp/ (see :mod:`imagebuilder.scratch`) and the
        temporary files of killed writers in the run directories (:data:`RUN_DIRS`)."""
        self.refuse_links()
        removed = remove_stale(self.tmp_dir)
        for name in RUN_DIRS:
            removed += [f"{name}/{entry}" for entry in remove_stale_temps(self.root / name)]
        return removed

    def get_or_make(self, key: str, produce: Callable[[Path], None]) -> tuple[Path, bool]:
        """``(path, was_hit)``: the output for ``key``, produced and stored on a miss."""
        hit = self.lookup(key)
        if hit is not None:
            return hit, True
        return self.store(key, produce), False
