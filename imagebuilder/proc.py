"""One wrapper for every subprocess imagebuilder runs.

argv lists only, quiet by default; on failure the command and the tail of its stderr become a
HostError, so a user sees what failed without a traceback.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence

from .errors import HostError


def require(tool: str, package: str) -> str:
    """Path of ``tool`` on PATH, or a HostError naming the Debian package that provides it."""
    path = shutil.which(tool)
    if path is None:
        raise HostError(f"{tool} not found: install it with 'apt-get install {package}'")
    return path


def run(
    argv: Sequence[str],
    *,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` capturing its output; raise HostError with the stderr tail if it fails."""
    try:
        result = subprocess.run(
            list(argv), cwd=cwd, env=None if env is None else dict(env), input=input,
            capture_output=True, check=False,
        )
    except FileNotFoundError:
        raise HostError(f"{argv[0]} not found") from None
    if check and result.returncode != 0:
        tail = result.stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise HostError(
            f"{' '.join(argv[:3])}... failed with exit code {result.returncode}: "
            + " | ".join(tail)
        )
    return result
