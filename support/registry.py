"""A real OCI registry for tests and benchmarks: Debian's docker-registry (distribution) on
127.0.0.1, with its own temporary storage directory and config file, optionally behind htpasswd
basic authentication."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

from support.servers import free_port

BINARY = "/usr/bin/docker-registry"


def _bcrypt(password: str) -> str:
    """A bcrypt hash for htpasswd, by glibc's crypt (the module is deprecated, still there)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))


@dataclass
class Registry:
    """A running docker-registry."""

    port: int
    storage: Path
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def manifest_digest(self, repo: str, tag: str) -> str | None:
        """The digest of ``repo:tag``'s OCI manifest, or None if the registry has no such tag."""
        request = urllib.request.Request(
            f"http://{self.host}/v2/{repo}/manifests/{tag}", method="HEAD",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return str(response.headers["Docker-Content-Digest"])
        except urllib.error.HTTPError as err:
            err.close()
            return None

    def has_blob(self, repo: str, digest: str) -> bool:
        request = urllib.request.Request(f"http://{self.host}/v2/{repo}/blobs/{digest}",
                                         method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=10):
                return True
        except urllib.error.HTTPError as err:
            err.close()
            return False

    def blob_data_path(self, digest: str) -> Path:
        hexd = digest.removeprefix("sha256:")
        return (self.storage / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data")


def available() -> bool:
    return Path(BINARY).exists()


def start_registry(workdir: Path, users: dict[str, str] | None = None) -> Registry:
    """Start docker-registry in ``workdir`` (storage/, config.yml, log); wait until it answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    storage = workdir / "storage"
    storage.mkdir(exist_ok=True)
    port = free_port()
    auth = ""
    if users:
        htpasswd = workdir / "htpasswd"
        htpasswd.write_text("".join(
            f"{user}:{_bcrypt(pw)}\n"
            for user, pw in users.items()))
        auth = f"auth:\n  htpasswd:\n    realm: test-realm\n    path: {htpasswd}\n"
    config = workdir / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        + auth)
    log = workdir / "registry.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([BINARY, "serve", str(config)], stdout=out,
                                stderr=subprocess.STDOUT)
    registry = Registry(port, storage, proc, log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited {proc.returncode}: {log.read_text()}")
        try:
            urllib.request.urlopen(f"http://{registry.host}/v2/", timeout=2).close()
            return registry
        except urllib.error.HTTPError as err:
            err.close()
            return registry  # 401 with auth: it answers
        except OSError:
            time.sleep(0.05)
    registry.stop()
    raise RuntimeError(f"docker-registry did not answer on {registry.host}: {log.read_text()}")


def skopeo() -> str | None:
    return shutil.which("skopeo")
