"""End to end: AOT class data from a training run of WireMock 3.13.2 (JDK 21, dynamic AppCDS).

One build with ``[jvm] aot`` trains WireMock in its own root on the host; the aot layer comes
after the app layer and a warm rebuild reuses it without training again. One boot under TCG shows
the console line saying the JVM mapped the archive, and WireMock serving a stub made through its
admin API (the only WireMock boot: test_apps.py builds the same image without the AOT layer). A
mismatched archive (the app's jar changed under it) is run on the host, in the image's root and
namespaces: no boot. A training run whose app exits fails the build with exit 2 and leaves no
image: no boot either.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import zipfile
from pathlib import Path

import pytest

from imagebuilder.errors import HostError
from imagebuilder.layers import aot
from imagebuilder.layers.cpioread import extract_layer
from imagebuilder.resources import data_dir
from imagebuilder.store.layout import INITRD_LAYER_MEDIA_TYPE, Store
from support.java_apps import project

from .conftest import Booted, Cli, cpio_listing, layer_digests, serves_a_stub, wiremock_jar

pytestmark = [pytest.mark.e2e, pytest.mark.network]

REF = "wiremock-aot:1.0.0"
TRAIN = """
args = ["--port", "8080"]
healthcheck = "/__admin/mappings"

[jvm]
aot = true
train = { env = "test" }

[env.test]
vars = { WIREMOCK_TRAINING = "yes" }
"""
IN_USE = "imagebuilder: AOT class data /opt/aot/app.jsa in use"


@pytest.fixture(scope="module")
def trained(cli: Cli, tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[Path, list[dict[str, object]]]:
    try:
        aot.check_host()
    except HostError as exc:
        pytest.skip(str(exc))
    jar = wiremock_jar()
    root = project(tmp_path_factory.mktemp("aot") / "wiremock", "wiremock-aot", str(jar), TRAIN)
    out = cli.json("build", str(root))
    assert isinstance(out, dict)
    return root, out["stages"]


def test_the_archive_is_a_layer_of_its_own_reused_by_a_warm_rebuild(
        cli: Cli, trained: tuple[Path, list[dict[str, object]]]) -> None:
    root, stages = trained
    assert [s["cached"] for s in stages if s["name"] == "aot"] == [False]
    layers = layer_digests(cli, REF)
    assert list(layers)[-2:] == ["app", "aot"]
    listing = cpio_listing(cli, layers["aot"])
    assert "opt/aot/app.jsa" in listing and "etc/imagebuilder/app.conf" in listing
    again = cli.json("build", str(root))
    assert isinstance(again, dict)
    assert [s["cached"] for s in again["stages"] if s["name"] == "aot"] == [True]
    assert layer_digests(cli, REF) == layers


def test_the_guest_maps_the_archive(cli: Cli, trained: tuple[Path, object]) -> None:
    with Booted(cli, REF) as vm:
        serves_a_stub(vm)
        console = vm.console()
    assert IN_USE in console.splitlines(), console[-3000:]
    assert "rejected the AOT class data" not in console


def _unpack(cli: Cli, ref: str, dest: Path) -> list[str]:
    """The image's root in ``dest``; the app's command line from its app.conf."""
    store = Store(cli.home / "store")
    for layer in store.resolve(ref).manifest["layers"]:
        if layer["mediaType"] == INITRD_LAYER_MEDIA_TYPE:
            extract_layer(store.blob_path(layer["digest"]), dest)
    conf = (dest / "etc/imagebuilder/app.conf").read_text()
    return shlex.split(conf.partition("\nset -- ")[2])


def test_a_mismatched_archive_is_named_on_the_console_and_the_app_starts_anyway(
        cli: Cli, trained: tuple[Path, object], tmp_path: Path) -> None:
    root = tmp_path / "root"
    argv = _unpack(cli, REF, root)
    assert "-XX:SharedArchiveFile=/opt/aot/app.jsa" in argv
    # A jar of another size than the one trained: CDS refuses the archive.
    with zipfile.ZipFile(root / "app/wiremock-standalone-3.13.2.jar", "a") as zf:
        zf.writestr("changed.txt", "not the jar the archive was made from")
    outcome = aot.run_app(root, argv, aot.guest_env(8080, {}, None),
                          url="http://127.0.0.1:8080/__admin/mappings", seconds=0, timeout=120)
    assert outcome.state == "ready", outcome.tail()
    console = subprocess.run(
        [str(root / "bin/busybox"), "awk", "-v", "map=/dev/null", "-v", "aot=/opt/aot/app.jsa",
         "-f", str(data_dir("templates") / "jdkhint.awk")], input=outcome.log,
        capture_output=True, text=True, check=True).stdout.splitlines()
    verdicts = [line for line in console if line.startswith("imagebuilder:")]
    assert verdicts == ["imagebuilder: the JVM rejected the AOT class data /opt/aot/app.jsa (This "
                        "file is not the one used while building the shared archive file: "
                        "/app/wiremock-standalone-3.13.2.jar): the app runs without it and starts "
                        "slower; rebuild the image"], console[:20]


def test_a_failing_training_run_fails_the_build_and_leaves_no_image(
        cli: Cli, trained: tuple[Path, object], tmp_path: Path) -> None:
    jar = wiremock_jar()
    root = project(tmp_path / "bad", "wiremock-bad", str(jar),
                   TRAIN.replace('"--port", "8080"', '"--port", "eighty"'))
    before = sorted(p.name for p in (cli.home / "store/blobs/sha256").iterdir())
    result = cli("build", str(root), check=False)
    assert result.returncode == 2, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("ERROR: training run for [jvm] aot: the app exited with status 1 "
                            "after "), error
    assert "before http://127.0.0.1:8080/__admin/mappings to answer; its last lines: " in error
    assert "NumberFormatException" in error
    images = json.loads(cli("images", "--json").stdout)
    assert "wiremock-bad:1.0.0" not in [i["ref"] for i in images]
    # The layers before it were stored in the cache, never in the image store.
    assert sorted(p.name for p in (cli.home / "store/blobs/sha256").iterdir()) == before
    assert not list((cli.home / "cache" / "tmp").iterdir())
