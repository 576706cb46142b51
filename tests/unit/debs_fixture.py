"""Real Debian packages for the SBOM and dpkg tests, and small ones built on the spot.

``real_debs`` fetches packages of trixie (signed index, verified .debs) into the inputs cache
(support/inputs.py: fetched once per machine); ``build_deb`` makes a ``.deb`` with dpkg-deb
from a control file and a few files, for what no archive package shows on its own (a doc
directory linking to another package's, a copyright file that is not DEP-5).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import asdict
from pathlib import Path

import pytest

from imagebuilder.errors import FetchError
from imagebuilder.fetch.lock import LockEntry
from imagebuilder.fsutil import write_atomic
from support.inputs import inputs_dir

SUITE = "trixie"
#: The packages whose copyright files the license tests read.
LICENSE_PACKAGES = ("busybox-static", "libc6", "openjdk-21-jre-headless", "zlib1g")


@functools.cache
def real_debs(names: tuple[str, ...], suite: str = SUITE) -> dict[str, tuple[LockEntry, Path]]:
    """name -> (its lock entry, its verified .deb), for the packages ``names`` of ``suite``.

    The entries are pinned in the inputs cache like a build's lock (reading the suite's index
    takes 3 s): resolved again only when a pinned package is neither cached nor on the mirror.
    """
    from imagebuilder.fetch.debian import Archive, fetch_locked
    from imagebuilder.fetch.sources import mirror_from_apt

    cache = inputs_dir("debian")
    pins_path = cache / f"pins-{suite}.json"
    pins = json.loads(pins_path.read_text()) if pins_path.is_file() else {}
    if all(name in pins for name in names):
        try:
            entries = [LockEntry(**pins[name]) for name in names]
            return {e.name: (e, fetch_locked(cache, mirror_from_apt, e)) for e in entries}
        except FetchError:
            pass  # gone from the mirror: resolve again
    archive = Archive(mirror_from_apt(), suite, cache)
    index = archive.packages()
    found = {name: (index[name].lock_entry(), archive.fetch(index[name])) for name in names}
    pins.update({name: asdict(entry) for name, (entry, _) in found.items()})
    write_atomic(pins_path, json.dumps(pins, indent=1, sort_keys=True).encode())
    return found


def build_deb(dest: Path, control: str, files: dict[str, bytes | str]) -> tuple[LockEntry, Path]:
    """A .deb built by dpkg-deb from ``control`` (its fields) and ``files`` (path -> bytes, or
    ``str``: a symlink to that target), with the md5sums dh_md5sums would write; its lock
    entry."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is needed to build test packages (apt-get install dpkg)")
    fields = dict(line.split(": ", 1) for line in control.strip().splitlines())
    root = dest / f"{fields['Package']}-root"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(control.strip() + "\n")
    sums = []
    for path, content in sorted(files.items()):
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            os.symlink(content, target)
        else:
            target.write_bytes(content)
            sums.append(f"{hashlib.md5(content).hexdigest()}  {path}\n")
    (root / "DEBIAN/md5sums").write_text("".join(sums))
    deb = dest / f"{fields['Package']}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(root), str(deb)],
                   check=True, capture_output=True)
    data = deb.read_bytes()
    entry = LockEntry(fields["Package"], fields["Version"], f"pool/{deb.name}",
                      hashlib.sha256(data).hexdigest(), len(data))
    return entry, deb
