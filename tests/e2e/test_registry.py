"""End to end: push, promote and pull examples/hello through a real registry (Debian's
docker-registry on 127.0.0.1), check it with skopeo, boot the pulled image once, resume an
interrupted push, and the bad inputs (unknown ref, registry down, 401, corrupt blob, retag,
unknown environment) give one line, the right exit code and an unchanged store.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from imagebuilder.registry.promote import environments_of, history
from imagebuilder.store.layout import Store
from support.registry import Registry, available, start_registry

from .conftest import Built, Cli, docker_cli, free_port, one_line_error, synthetic_image

pytestmark = [pytest.mark.e2e, pytest.mark.network,
              pytest.mark.skipif(not available(), reason="needs docker-registry (setup.sh)")]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def test_push_promote_update_pull_and_boot(cli: Cli, hello: Built, registry: Registry,
                                           tmp_path: Path, vms: list[str]) -> None:
    r = docker_cli(cli.home, tmp_path / "docker")
    repo = f"{registry.host}/hello"
    store = Store(cli.home / "store")
    image = store.resolve(hello.ref)
    blobs = [*image.layers, image.manifest["config"]]
    total = sum(b.size if hasattr(b, "size") else b["size"] for b in blobs)

    pushed = r.json("push", hello.ref, repo, "--insecure")
    assert isinstance(pushed, dict)
    assert (pushed["digest"], pushed["bytes_sent"], pushed["blobs_sent"]) == (
        hello.digest, total, len(blobs))
    assert registry.manifest_digest("hello", "1.0.0") == hello.digest

    # skopeo reads what we pushed: the raw manifest, and a copy into a directory layout.
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                          f"docker://{repo}:1.0.0"], capture_output=True, check=True).stdout
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == hello.digest
    subprocess.run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{repo}:1.0.0",
                    f"dir:{tmp_path / 'dir'}"], capture_output=True, check=True)
    copied = tmp_path / "dir"
    assert "sha256:" + hashlib.sha256((copied / "manifest.json").read_bytes()).hexdigest() == \
        hello.digest
    for layer in image.layers:
        assert (copied / layer.digest.removeprefix("sha256:")).stat().st_size == layer.size

    # Promotion: prod before test is refused; test then prod moves tags, uploads no blob.
    skipped = r("promote", hello.ref, "--env", "prod", "--registry", repo, "--insecure",
                cwd=hello.app, check=False)
    one_line_error(skipped, 2, "has not been promoted to 'test'")
    assert registry.manifest_digest("hello", "prod") is None
    for env in ("test", "prod"):
        out = r.json("promote", hello.ref, "--env", env, "--registry", repo, "--insecure",
                     cwd=hello.app)
        assert isinstance(out, dict) and out["digest"] == hello.digest
        assert registry.manifest_digest("hello", env) == hello.digest
    assert environments_of(store, "hello", hello.digest, ("test", "prod")) == ["test", "prod"]
    assert [(p.environment, p.digest) for p in history(store, "hello")][-2:] == [
        ("test", hello.digest), ("prod", hello.digest)]
    assert registry.manifest_digest("hello", "_promotions") is not None
    unknown = r("promote", hello.ref, "--env", "staging", "--config", str(hello.app),
                check=False)
    one_line_error(unknown, 2, "unknown environment 'staging'")

    # v2 with only the app changed: only the app layer and the config are uploaded.
    app2 = tmp_path / "hello2"
    shutil.copytree(hello.app, app2)
    with zipfile.ZipFile(app2 / "hello.jar", "a") as jar:
        jar.writestr("hello/extra.txt", "a new resource\n")
    built = cli.json("build", str(app2), "--version", "2.0.0")
    assert isinstance(built, dict)
    v2 = store.resolve("hello:2.0.0")
    app_layer, config = v2.layers[-1], v2.manifest["config"]
    pushed2 = r.json("push", "hello:2.0.0", repo, "--insecure")
    assert isinstance(pushed2, dict)
    assert pushed2["bytes_sent"] == app_layer.size + config["size"]
    assert (pushed2["blobs_sent"], pushed2["blobs_skipped"]) == (2, len(v2.layers) - 1)
    retag = r("push", "hello:2.0.0", f"{repo}:1.0.0", "--insecure", check=False)
    one_line_error(retag, 2, "already names another image")
    assert registry.manifest_digest("hello", "1.0.0") == hello.digest

    # Pull prod into an empty store and boot it (the one boot of this module).
    other = docker_cli(tmp_path / "home2", tmp_path / "docker")
    pulled = other.json("pull", f"{repo}:prod", "--insecure")
    assert isinstance(pulled, dict)
    assert (pulled["ref"], pulled["digest"], pulled["bytes_received"]) == (
        hello.ref, hello.digest, total)
    port = free_port()
    started = json.loads(other("run", hello.ref, "--accel", "tcg", "--wait", "--json",
                               "-p", f"127.0.0.1:{port}:8080").stdout)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            assert response.read().decode().startswith("hello from imagebuilder")
    finally:
        other("stop", started["id"], check=False)


def test_interrupted_push_resumes_with_what_is_missing(registry: Registry,
                                                       tmp_path: Path) -> None:
    r = docker_cli(tmp_path / "home", tmp_path / "docker")
    store = synthetic_image(r.home, "big:1.0.0", [48 << 20, 48 << 20, 48 << 20, 48 << 20])
    image = store.resolve("big:1.0.0")
    blobs = [*image.layers]
    links = registry.storage / "docker/registry/v2/repositories/big/_layers/sha256"
    proc = subprocess.Popen(r.argv(["push", "big:1.0.0", f"{registry.host}/big", "--insecure",
                                    "--json"]), env=r.env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (links.exists() and any(links.iterdir())):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(signal.SIGSTOP)
        assert registry.manifest_digest("big", "1.0.0") is None  # no tag without its blobs
        proc.kill()
    finally:
        proc.kill()
        proc.wait()
    present = [b for b in blobs if registry.has_blob("big", b.digest)]
    assert 1 <= len(present) < len(blobs)
    config = image.manifest["config"]
    config_there = registry.has_blob("big", config["digest"])
    missing = sum(b.size for b in blobs if b not in present) + (0 if config_there else
                                                                config["size"])
    out = r.json("push", "big:1.0.0", f"{registry.host}/big", "--insecure")
    assert isinstance(out, dict)
    assert out["bytes_sent"] == missing and out["blobs_skipped"] >= len(present)
    assert registry.manifest_digest("big", "1.0.0") == image.digest
    assert all(registry.has_blob("big", b.digest) for b in blobs)


def test_bad_inputs_leave_the_store_unchanged(registry: Registry, tmp_path: Path) -> None:
    r = docker_cli(tmp_path / "home", tmp_path / "docker")
    store = synthetic_image(r.home, "small:1.0.0", [200_000], seed=b"bad")
    image = store.resolve("small:1.0.0")
    one_line_error(r("push", "nope:1.0.0", f"{registry.host}/small", "--insecure",
                      check=False), 2, "no image 'nope:1.0.0'")
    down = f"127.0.0.1:{free_port()}/small"
    one_line_error(r("push", "small:1.0.0", down, "--insecure", check=False), 1,
                    "is it running")
    one_line_error(r("push", "small:1.0.0", "example.com/small", "--insecure", check=False),
                    2, "only allowed for a registry on loopback")
    r("push", "small:1.0.0", f"{registry.host}/small", "--insecure")

    # A corrupted blob in the registry's storage: the pull fails, the store is as it was.
    other = docker_cli(tmp_path / "home2", tmp_path / "docker")
    synthetic_image(other.home, "keep:1.0.0", [1000])
    before = _snapshot(other.home / "store")
    data = registry.blob_data_path(image.layers[-1].digest)
    corrupt = bytearray(data.read_bytes())
    corrupt[100] ^= 0xFF
    data.write_bytes(bytes(corrupt))
    one_line_error(other("pull", f"{registry.host}/small:1.0.0", "--insecure", check=False),
                    1, "did not verify")
    assert _snapshot(other.home / "store") == before
    one_line_error(other("pull", f"{registry.host}/small:9.9", "--insecure", check=False),
                    2, "not found")
    assert _snapshot(other.home / "store") == before


def test_basic_auth_from_docker_config_and_credential_helper(tmp_path: Path) -> None:
    reg = start_registry(tmp_path / "registry", users={"alice": "wonderland"})
    try:
        r = docker_cli(tmp_path / "home", tmp_path / "docker")
        synthetic_image(r.home, "sec:1.0.0", [1000])
        target = f"{reg.host}/sec"
        one_line_error(r("push", "sec:1.0.0", target, "--insecure", check=False), 2,
                        "refused anonymous access")
        config = tmp_path / "docker" / "config.json"
        config.write_text(json.dumps({"auths": {reg.host: {
            "auth": base64.b64encode(b"alice:wrong").decode()}}}))
        one_line_error(r("push", "sec:1.0.0", target, "--insecure", check=False), 2,
                        "refused the credentials")
        bindir = tmp_path / "bin"
        bindir.mkdir()
        helper = bindir / "docker-credential-test"
        helper.write_text("#!/bin/sh\ncat >/dev/null\n"
                          "echo '{\"Username\":\"alice\",\"Secret\":\"wonderland\"}'\n")
        helper.chmod(helper.stat().st_mode | stat.S_IEXEC)
        config.write_text(json.dumps({"credHelpers": {reg.host: "test"}}))
        r.extra["PATH"] = f"{bindir}:{os.environ['PATH']}"
        out = r.json("push", "sec:1.0.0", target, "--insecure")
        assert isinstance(out, dict) and out["blobs_sent"] == 3
        pulled = docker_cli(tmp_path / "home2", tmp_path / "docker", PATH=r.extra["PATH"])
        assert isinstance(pulled.json("pull", f"{target}:1.0.0", "--insecure"), dict)
    finally:
        reg.stop()
