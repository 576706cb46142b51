"""Stock cosign for the interoperability tests: Debian trixie's ``cosign`` package, fetched and
verified the way the build fetches any package (the mirror of the host's apt configuration, the
signed InRelease, the .deb's SHA-256 from the index: :class:`imagebuilder.fetch.debian.Archive`),
unpacked once under the tests' inputs cache (:mod:`support.inputs`). Its binary is a static Go
program and runs on the Debian 12 hosts too.

A cosign run gets an environment of its own: no password prompt (``COSIGN_PASSWORD``), no
update check, its caches in a directory of the test, and nothing that could send it to the
public Sigstore services (the tests pass ``--tlog-upload=false`` / ``--insecure-ignore-tlog``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from support.inputs import inputs_dir

PACKAGE = "cosign"
SUITE = "trixie"


def debian_binary(package: str, binary: str, suite: str = SUITE) -> Path:
    """``binary`` (a path inside the package, e.g. ``usr/bin/cosign``) of Debian ``suite``'s
    ``package``, unpacked under the inputs cache, fetched and verified on first use."""
    from imagebuilder.fetch.deb import extract_deb
    from imagebuilder.fetch.debian import Archive
    from imagebuilder.fetch.sources import mirror_from_apt

    archive = Archive(mirror_from_apt(), suite, inputs_dir("debian"))
    pkg = next(p for p in archive.resolve([package], follow=lambda p: False)
               if p.name == package)
    root = inputs_dir(package) / pkg.sha256
    if not (root / binary).is_file():
        tmp = root.with_name(f".{root.name}.{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        extract_deb(archive.fetch(pkg), tmp)
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
    return root / binary


def cosign_binary() -> Path:
    """Debian trixie's cosign."""
    return debian_binary(PACKAGE, "usr/bin/cosign")


class Cosign:
    """cosign run in ``workdir`` with a password for its key files and caches of its own."""

    def __init__(self, workdir: Path, password: str = "test-password") -> None:
        self.binary = cosign_binary()
        self.workdir = workdir
        self.password = password
        workdir.mkdir(parents=True, exist_ok=True)

    def env(self) -> dict[str, str]:
        home = self.workdir / "home"
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
                "COSIGN_PASSWORD": self.password, "TUF_ROOT": str(home / "tuf"),
                "SIGSTORE_NO_CACHE": "true", "DOCKER_CONFIG": str(home / "docker"),
                "COSIGN_EXPERIMENTAL": "0"}

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(self.binary), *args], cwd=self.workdir, env=self.env(),
                                capture_output=True, text=True, timeout=120,
                                stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise AssertionError(f"cosign {' '.join(args)} exited {result.returncode}: "
                                 f"{result.stderr[-2000:]}")
        return result

    def generate_key_pair(self) -> tuple[Path, Path]:
        """(cosign.key, cosign.pub) made by ``cosign generate-key-pair`` in the workdir."""
        self("generate-key-pair")
        return self.workdir / "cosign.key", self.workdir / "cosign.pub"
