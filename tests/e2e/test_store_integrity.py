"""End to end, no boot: a damaged blob in the local store is never pushed to a real registry
(Debian's docker-registry on 127.0.0.1), whether sent in one PUT or in chunks; a pull replaces a
damaged local blob so that ``imagebuilder check`` passes again; and a flipped byte in the real
jvm layer of examples/hello stops export, flash and serve."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from imagebuilder.store.layout import TITLE_ANNOTATION as TITLE
from imagebuilder.store.layout import Store
from support.registry import Registry, available

from .conftest import Built, Cli, docker_cli, free_port, one_line_error, synthetic_image

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not available(), reason="needs docker-registry (setup.sh)")]


def _flip(path: Path, offset: int = 1000) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("chunk_mib", ["64", "1"])
def test_a_damaged_blob_is_never_pushed(registry: Registry, tmp_path: Path,
                                        chunk_mib: str) -> None:
    r = docker_cli(tmp_path / "home", tmp_path / "docker")
    store = synthetic_image(r.home, "dmg:1.0.0", [3 << 20], seed=chunk_mib.encode())
    image = store.resolve("dmg:1.0.0")
    layer = image.layers[-1]
    _flip(store.blob_path(layer.digest), (3 << 20) - 10)
    repo = f"dmg{chunk_mib}"
    one_line_error(r("push", "dmg:1.0.0", f"{registry.host}/{repo}", "--insecure",
                      "--chunk-size", chunk_mib, check=False),
                    1, f"blob {layer.digest[:19]} in the image store is damaged")
    assert registry.manifest_digest(repo, "1.0.0") is None
    assert not registry.has_blob(repo, layer.digest)


def test_pull_replaces_a_damaged_local_blob(registry: Registry, tmp_path: Path) -> None:
    r = docker_cli(tmp_path / "home", tmp_path / "docker")
    store = synthetic_image(r.home, "fix:1.0.0", [200_000], seed=b"fix")
    image = store.resolve("fix:1.0.0")
    r("push", "fix:1.0.0", f"{registry.host}/fix", "--insecure")
    _flip(store.blob_path(image.layers[-1].digest))
    damaged = r("check", "--json", check=False)
    assert damaged.returncode == 1
    assert [p["images"] for p in json.loads(damaged.stdout)["problems"]] == [["fix:1.0.0"]]
    pulled = r.json("pull", f"{registry.host}/fix:1.0.0", "--insecure")
    assert isinstance(pulled, dict) and pulled["blobs_received"] == 1
    assert json.loads(r("check", "--json").stdout)["ok"] is True


def test_a_flipped_byte_in_the_real_jvm_layer(cli: Cli, hello: Built, tmp_path: Path) -> None:
    """The issue's reproduction on examples/hello (a copy of its store, an empty cache): every
    command that would read the damaged layer stops with one line and writes nothing; check
    names the layer and the image."""
    home = tmp_path / "home"
    shutil.copytree(cli.home / "store", home / "store")
    r = Cli(home)
    image = Store(home / "store").resolve(hello.ref)
    jvm = next(d for d in image.layers if (d.annotations or {}).get(TITLE) == "jvm")
    assert json.loads(r("check", "--json").stdout)["ok"] is True
    _flip(Store(home / "store").blob_path(jvm.digest), jvm.size // 2)

    damaged = r("check", check=False)
    assert damaged.returncode == 1
    assert f"DAMAGED blob {jvm.digest[:19]}: the jvm layer of {hello.ref} is damaged" in \
        damaged.stdout
    out = tmp_path / "out"
    out.mkdir()
    for argv in (["export", hello.ref, "--format", "raw", "-o", str(out / "x.raw")],
                 ["export", hello.ref, "--format", "kernel-initrd", "-o", str(out / "ki")],
                 ["export", hello.ref, "--format", "iso", "-o", str(out / "x.iso")],
                 ["flash", hello.ref, str(out / "disk.img")],
                 ["serve", hello.ref, "--listen", f"127.0.0.1:{free_port()}"]):
        one_line_error(r(*argv, check=False), 1, f"blob {jvm.digest[:19]} in the image store "
                                                  "is damaged")
    assert [p.name for p in out.iterdir()] == []
