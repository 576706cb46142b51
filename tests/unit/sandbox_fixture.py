"""A tiny image root for the AOT training run's tests (test_aot.py, test_sandbox.py): the
host's static busybox as /bin, a page to serve, and the runtime's CDS archive a JDK 17/21
training run needs beside it; skipped where busybox or user namespaces are missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pytest

from imagebuilder.errors import HostError
from imagebuilder.layers import aot

BUSYBOX = shutil.which("busybox")


def busybox_root(root: Path, applets: Iterable[str] | None = None) -> Path:
    """``root`` made: /bin/busybox with ``applets`` linked to it (all of them when None),
    /www/index.html, an empty /app and the runtime's CDS archive."""
    if BUSYBOX is None:
        pytest.skip("needs busybox (busybox-static)")
    try:
        aot.check_host()
    except HostError as exc:
        pytest.skip(str(exc))
    (root / "bin").mkdir(parents=True)
    shutil.copy(BUSYBOX, root / "bin/busybox")
    if applets is None:
        applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True,
                                 check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            os.symlink("busybox", root / "bin" / applet)
    (root / "app").mkdir()
    (root / "www").mkdir()
    (root / "www/index.html").write_text("up\n")
    (root / aot.BASE_ARCHIVE).parent.mkdir(parents=True)
    (root / aot.BASE_ARCHIVE).write_bytes(b"the runtime's own CDS archive")
    return root
