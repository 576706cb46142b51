"""Shared fixtures and helpers of the end-to-end tests: one image store and one build of
examples/hello for the whole session, since real builds fetch from the Debian archive and boots
under TCG are slow; a registry per module; what several modules read from a built image (its
layers, a layer's file list) and the VM a test boots. The command-line runner itself is
:class:`support.cli.Cli`, which the benchmarks use too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard

from imagebuilder.layers.cpioread import extract_layer
from imagebuilder.store.layout import INITRD_LAYER_MEDIA_TYPE, KERNEL_MEDIA_TYPE, Store
from support.cli import Cli as Cli  # the e2e tests import these two from here
from support.inputs import inputs_dir
from support.java_apps import WIREMOCK_JAR, fetch_wiremock
from support.registry import Registry, start_registry
from support.servers import free_port as free_port

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "hello"


def compile_example(dest: Path) -> Path:
    """A copy of examples/hello in ``dest`` with hello.jar compiled; the app directory."""
    if shutil.which("javac") is None:
        pytest.skip("javac is needed to compile examples/hello (scripts/setup.sh installs it)")
    app = dest / "hello"
    shutil.copytree(EXAMPLE, app, ignore=shutil.ignore_patterns("hello.jar", "imagebuilder.lock"))
    subprocess.run(["sh", str(app / "build.sh")], check=True, capture_output=True)
    return app


@pytest.fixture(scope="session")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    return Cli(tmp_path_factory.mktemp("home"))


@dataclass
class Built:
    app: Path
    ref: str
    digest: str
    stages: list[dict[str, object]]


@pytest.fixture(scope="session")
def hello(cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> Built:
    """examples/hello built once (cold: packages resolved and fetched from the mirror)."""
    app = compile_example(tmp_path_factory.mktemp("app"))
    out = cli.json("build", str(app))
    assert isinstance(out, dict)
    return Built(app, out["ref"], out["digest"], out["stages"])


@pytest.fixture
def vms(cli: Cli) -> Iterator[list[str]]:
    """VM ids started by a test with `run --wait`; stopped afterwards whatever happens."""
    started: list[str] = []
    yield started
    for vm_id in started:
        cli("stop", vm_id, check=False)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A docker-registry of the test module's own (support.registry)."""
    reg = start_registry(tmp_path_factory.mktemp("registry"))
    yield reg
    reg.stop()


def docker_cli(home: Path, docker: Path, **extra: str) -> Cli:
    """The command line with ``home`` and a Docker config directory ``docker`` of its own."""
    docker.mkdir(parents=True, exist_ok=True)
    return Cli(home, {"DOCKER_CONFIG": str(docker), **extra})


def one_line_error(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    """``result`` exited ``code`` with one ``ERROR:`` line holding ``text`` (and no traceback)."""
    assert result.returncode == code, result.stderr
    # A warning may come first (flash of an image without the metal drivers); one error line.
    lines = [line for line in result.stderr.strip().splitlines()
             if not line.startswith("WARNING: ")]
    assert len(lines) == 1 and lines[0].startswith("ERROR: ") and text in lines[0], lines


def synthetic_image(home: Path, ref: str, sizes: Sequence[int], seed: bytes = b"") -> Store:
    """An image ``ref`` stored in ``home`` without a build: a fake kernel and random layers of
    ``sizes`` bytes (what push and pull move, quickly)."""
    store = Store(home / "store")
    layers = [store.add_blob_bytes(b"kernel " + seed, KERNEL_MEDIA_TYPE)]
    layers += [store.add_blob_bytes(os.urandom(size), INITRD_LAYER_MEDIA_TYPE) for size in sizes]
    name, version = ref.split(":")
    store.put_image(ref, {"name": name, "version": version}, layers)
    return store


def layers_of(cli: Cli, ref: str) -> dict[str, dict[str, object]]:
    """The layers of image ``ref`` by title (``inspect --json``)."""
    info = cli.json("inspect", ref)
    assert isinstance(info, dict)
    return {layer["annotations"]["org.opencontainers.image.title"]: layer
            for layer in info["manifest"]["layers"]}


def image_root(cli: Cli, ref: str, dest: Path) -> Path:
    """``dest`` holding the root filesystem of image ``ref``: its initrd layers unpacked in
    order, as the kernel unpacks them (what a scanner of the image reads)."""
    for layer in layers_of(cli, ref).values():
        if layer["mediaType"] == INITRD_LAYER_MEDIA_TYPE:
            blob = str(layer["digest"]).removeprefix("sha256:")
            extract_layer(cli.home / "store" / "blobs" / "sha256" / blob, dest)
    return dest


def layer_digests(cli: Cli, ref: str) -> dict[str, str]:
    """The layer digests of image ``ref`` by title."""
    return {name: str(layer["digest"]) for name, layer in layers_of(cli, ref).items()}


def cpio_listing(cli: Cli, digest: str) -> list[str]:
    """The paths in the stored initrd layer ``digest``, as GNU cpio lists them."""
    blob = cli.home / "store" / "blobs" / "sha256" / digest.removeprefix("sha256:")
    with blob.open("rb") as f:
        data = zstandard.ZstdDecompressor().stream_reader(f).read()
    out = subprocess.run(["cpio", "-it", "--quiet"], input=data, capture_output=True, check=True)
    return out.stdout.decode().splitlines()


def wiremock_jar() -> Path:
    """WireMock 3.13.2's jar from the inputs cache (support.inputs; npm fetches it once)."""
    cache = inputs_dir("apps")
    if shutil.which("npm") is None and not (cache / WIREMOCK_JAR.rpartition("/")[2]).exists():
        pytest.skip("npm is needed to fetch WireMock (npm pack wiremock@3.13.2)")
    return fetch_wiremock(cache)


BOOT_TIMEOUT = "600"


def http(url: str, data: bytes | None = None) -> tuple[int, str]:
    """GET ``url`` (POST ``data`` as JSON if given): the status and the body."""
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, response.read().decode()


class Booted:
    """A VM started with `run --wait` on a free loopback port, stopped when the block ends."""

    def __init__(self, cli: Cli, ref: str) -> None:
        self.cli, self.ref, self.port = cli, ref, free_port()

    def __enter__(self) -> Booted:
        out = self.cli("run", self.ref, "--accel", "tcg", "--wait", "--timeout", BOOT_TIMEOUT,
                       "--json", "-p", f"127.0.0.1:{self.port}:8080", timeout=900)
        self.id = json.loads(out.stdout)["id"]
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def console(self) -> str:
        return (self.cli.home / "run" / self.id / "console.log").read_text(errors="replace")

    def __exit__(self, *exc: object) -> None:
        self.cli("stop", self.id, check=False)


WIREMOCK_STUB = {"request": {"method": "GET", "url": "/hello"},
                 "response": {"status": 200, "body": "stubbed by imagebuilder"}}


def serves_a_stub(vm: Booted) -> None:
    """WireMock in ``vm`` takes a stub through its admin API and serves it."""
    status, _ = http(vm.url("/__admin/mappings"), json.dumps(WIREMOCK_STUB).encode())
    assert status == 201
    assert http(vm.url("/hello")) == (200, "stubbed by imagebuilder")
    mappings = json.loads(http(vm.url("/__admin/mappings"))[1])
    assert [m["request"]["url"] for m in mappings["mappings"]] == ["/hello"]
