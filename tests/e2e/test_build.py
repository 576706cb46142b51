"""End to end: examples/hello built from the real Debian archive, no boot."""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import zstandard

from .conftest import Built, Cli, cpio_listing, free_port, layers_of

pytestmark = [pytest.mark.e2e, pytest.mark.network]


def test_build_writes_lock_and_stores_image(cli: Cli, hello: Built) -> None:
    assert hello.ref == "hello:1.0.0"
    assert hello.digest.startswith("sha256:")
    lock = (hello.app / "imagebuilder.lock").read_text()
    for package in ("linux-image-amd64", "busybox-static", "openjdk-21-jdk-headless",
                    "libc6"):
        assert f'name = "{package}"' in lock
    images = cli.json("images")
    assert (hello.ref, hello.digest) in [(i["ref"], i["digest"]) for i in images]
    layers = layers_of(cli, hello.ref)
    assert list(layers) == ["vmlinuz", "base", "jvm", "app"]
    # The size target: kernel + initrd <= 40 MB for examples/hello.
    assert sum(int(layer["size"]) for layer in layers.values()) <= 40 * 1000 * 1000


def test_layers_hold_what_they_should(cli: Cli, hello: Built) -> None:
    layers = layers_of(cli, hello.ref)
    base = cpio_listing(cli, str(layers["base"]["digest"]))
    assert "init" in base and "usr/bin/busybox" in base and "dev/console" in base
    assert any(p.endswith(("/virtio_net.ko", "/virtio_net.ko.xz")) for p in base)
    assert any(p.endswith("/modules.alias") for p in base)
    assert not any(p.endswith(("getty", "login", "telnetd")) for p in base)
    jvm = cpio_listing(cli, str(layers["jvm"]["digest"]))
    assert "opt/java/bin/java" in jvm and "opt/java/lib/server/classes.jsa" in jvm
    assert "usr/lib/x86_64-linux-gnu/libc.so.6" in jvm
    app = cpio_listing(cli, str(layers["app"]["digest"]))
    assert "app/hello.jar" in app and "etc/imagebuilder/app.conf" in app


def test_inspect_sizes_says_what_each_layer_carries(cli: Cli, hello: Built) -> None:
    report = cli.json("inspect", hello.ref, "--sizes")
    assert isinstance(report, dict)
    layers = {layer["title"]: layer for layer in report["layers"]}
    assert list(layers) == ["vmlinuz", "base", "jvm", "app"]
    stored = {title: int(layer["size"]) for title, layer in layers_of(cli, hello.ref).items()}
    assert {title: layer["stored"] for title, layer in layers.items()} == stored
    jvm = layers["jvm"]
    largest = [f["path"] for f in jvm["largest"]]
    assert "/opt/java/lib/modules" in largest and "/opt/java/lib/server/libjvm.so" in largest
    assert jvm["dirs"][0]["path"] == "/opt/java/lib"
    # The counts are the archive's own: GNU cpio lists the same regular files and bytes.
    blob = cli.home / "store" / "blobs" / "sha256" / str(jvm["digest"]).removeprefix("sha256:")
    with blob.open("rb") as f:
        data = zstandard.ZstdDecompressor().stream_reader(f).read()
    listing = subprocess.run(["cpio", "-itv", "--quiet"], input=data, capture_output=True,
                             check=True).stdout.decode().splitlines()
    sizes = [int(line.split()[4]) for line in listing if line.startswith("-")]
    assert (jvm["files"], jvm["unpacked"]) == (len(sizes), sum(sizes))
    assert layers["app"]["largest"][0]["path"] == "/app/hello.jar"
    text = cli("inspect", hello.ref, "--sizes").stdout
    assert "jvm: " in text and "/opt/java/lib/server/libjvm.so" in text


def test_same_inputs_same_digest_all_cached(cli: Cli, hello: Built) -> None:
    out = cli.json("build", str(hello.app))
    assert out["digest"] == hello.digest
    assert all(stage["cached"] for stage in out["stages"])


def test_app_only_change_rebuilds_only_the_app_layer(cli: Cli, hello: Built,
                                                     tmp_path: Path) -> None:
    app = tmp_path / "hello"
    shutil.copytree(hello.app, app)
    with zipfile.ZipFile(app / "hello.jar", "a") as jar:
        jar.writestr("hello/extra.txt", "a new resource\n")
    out = cli.json("build", str(app), "--version", "1.0.1")
    rebuilt = {s["name"] for s in out["stages"] if not s["cached"]}
    # The app layer, the disk whose ESP carries the layers, and the SBOMs (the app's jars and
    # the documents, which name the new digest).
    assert rebuilt == {"app", "disk", "sbom-jars", "sbom"}
    v1, v2 = layers_of(cli, "hello:1.0.0"), layers_of(cli, "hello:1.0.1")
    for name in ("vmlinuz", "base", "jvm"):
        assert v1[name]["digest"] == v2[name]["digest"]
    assert v1["app"]["digest"] != v2["app"]["digest"]
    cli("rm", "hello:1.0.1")
    refs = [i["ref"] for i in cli.json("images")]
    assert "hello:1.0.1" not in refs and "hello:1.0.0" in refs


def test_reproducible_and_offline_from_lock_and_warm_packages(cli: Cli, hello: Built,
                                                              tmp_path: Path) -> None:
    """A fresh store and stage cache, the lock file and the downloaded packages only: the same
    digest and byte-identical raw and qcow2 disks, and no network (the mirror is a closed
    port)."""
    other = Cli(tmp_path / "home")
    shutil.copytree(cli.home / "cache" / "archive" / "debs", other.home / "cache" / "archive" /
                    "debs")
    closed = f"http://127.0.0.1:{free_port()}/debian"
    disks = tmp_path / "disks"
    disks.mkdir()
    out = other.json("build", str(hello.app), "--mirror", closed, "--format", "raw",
                     "--format", "qcow2", "--output-dir", str(disks))
    assert out["digest"] == hello.digest
    assert not any(stage["cached"] for stage in out["stages"])
    for fmt in ("raw", "qcow2"):
        first = tmp_path / f"first.{fmt}"
        cli("export", hello.ref, "--format", fmt, "-o", str(first))
        assert (disks / f"hello-1.0.0.{fmt}").read_bytes() == first.read_bytes(), f"{fmt} differs"


def test_app_packages_become_a_layer(cli: Cli, hello: Built, tmp_path: Path) -> None:
    app = tmp_path / "fonts"
    shutil.copytree(hello.app, app)
    (app / "imagebuilder.lock").unlink()
    toml = (app / "imagebuilder.toml").read_text().replace(
        'healthcheck = "/health"', 'healthcheck = "/health"\npackages = ["fonts-dejavu-core"]')
    (app / "imagebuilder.toml").write_text(toml.replace('name = "hello"', 'name = "fonts"'))
    out = cli.json("build", str(app))
    layers = layers_of(cli, out["ref"])
    assert list(layers) == ["vmlinuz", "base", "jvm", "packages", "app"]
    listing = cpio_listing(cli, str(layers["packages"]["digest"]))
    assert "usr/share/fonts/truetype/dejavu/DejaVuSans.ttf" in listing
    assert "var/lib/dpkg/status.d/fonts-dejavu-core" in listing  # for scanners (sbom/dpkg.py)
    lock = (app / "imagebuilder.lock").read_text()
    assert 'packages = ["fonts-dejavu-core"' in lock
    cli("rm", out["ref"])


def test_json_is_machine_readable(cli: Cli, hello: Built) -> None:
    info = cli.json("inspect", hello.ref)
    assert info["config"]["app"] == {"jar": "hello.jar", "port": 8080, "healthcheck": "/health",
                                     "shape": "jar", "main": "hello.Main", "classes": 1}
    assert info["config"]["jvm"]["modules"] == ["java.base", "jdk.crypto.ec", "jdk.httpserver"]
    json.dumps(info)


def test_a_build_that_cannot_write_its_sboms_leaves_no_image(
        cli: Cli, hello: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every image has its SBOMs: an image stored before its SBOMs failed (review D, F12) was
    left under its name, without them."""
    from imagebuilder.build import plan, sboms
    from imagebuilder.config.parse import load
    from imagebuilder.store.home import Home

    app = tmp_path / "hello"
    shutil.copytree(hello.app, app)
    toml = app / "imagebuilder.toml"
    toml.write_text(toml.read_text().replace('version = "1.0.0"', 'version = "9.9.9"'))

    def broken(*_args: object) -> None:
        raise RuntimeError("the SBOM writer failed")
    monkeypatch.setattr(sboms, "attach", broken)
    with pytest.raises(RuntimeError):
        plan.build(load(app), Home(cli.home))
    refs = [i["ref"] for i in cli.json("images")]
    assert "hello:9.9.9" not in refs and "hello:1.0.0" in refs
    assert json.loads(cli("check", "--json").stdout)["ok"] is True
