"""A warm build imports only what it uses: the libraries of fetching (requests), keys
(cryptography), ISO images (pycdlib) and copyright parsing (python-debian) load when a build
or command needs them, not with the build's modules (issue 19: the app-only rebuild under a
second; they were a third of a second of it)."""

from __future__ import annotations

import subprocess
import sys

LAZY = ("requests", "cryptography", "pycdlib", "debian.copyright")


def test_the_build_modules_import_no_fetch_key_iso_or_copyright_library() -> None:
    code = ("import sys, imagebuilder.build.plan; "
            f"print(' '.join(m for m in {LAZY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout.split()
    assert out == []
