"""End to end: real Java apps in every shape build, boot under QEMU (TCG) and serve.

WireMock 3.13.2, a Jetty server nobody here wrote, is fetched with ``npm pack`` (cached by
support/inputs.py, so reruns do not fetch it again). The shop app (support/java_apps.py: the
JDK's HTTP server and Debian's Jackson) is built as a Spring Boot jar, a thin jar with
``Class-Path: lib/...`` and an app directory with ``[app] main``. Three boots, one per shape of
the shop; WireMock's image boots in test_aot.py with its AOT layer. The own-code rebuild and the
bad-jar checks need no boot.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.java_apps import MAIN, ShopBuild, have_tools, make_jar, project

from .conftest import Booted, Cli, cpio_listing, http, layer_digests, wiremock_jar

pytestmark = [pytest.mark.e2e, pytest.mark.network]

@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> ShopBuild:
    if not have_tools():
        pytest.skip("needs javac, jar and Debian's libjackson2-databind-java")
    return ShopBuild(tmp_path_factory.mktemp("shop"))


@pytest.fixture(scope="module")
def spring(cli: Cli, shop: ShopBuild, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = project(tmp_path_factory.mktemp("spring"), "shop-boot", "shop.jar")
    shop.spring_boot(root / "shop.jar")
    cli("build", str(root))
    return root


def test_wiremock_builds_with_the_modules_its_classes_use(
        cli: Cli, tmp_path: Path) -> None:
    """Built here; booted by test_aot.py, whose image is this one plus its AOT layer (one
    WireMock boot for both: each takes a minute under TCG)."""
    jar = wiremock_jar()
    root = project(tmp_path / "wiremock", "wiremock", str(jar),
                   'args = ["--port", "8080"]\nhealthcheck = "/__admin/mappings"\n')
    cli("build", str(root))
    info = cli.json("inspect", "wiremock:1.0.0")
    assert isinstance(info, dict)
    config = info["config"]
    assert config["app"]["shape"] == "jar"
    # Jetty, Jackson and java.beans: what the classes use, found without a JVM.
    assert {"java.desktop", "java.naming", "java.sql", "java.management"} <= set(
        config["jvm"]["modules"])


def test_spring_boot_layout_serves_json_through_jackson(cli: Cli, spring: Path) -> None:
    layers = layer_digests(cli, "shop-boot:1.0.0")
    assert list(layers) == ["vmlinuz", "base", "jvm", "libs", "app"]
    libs = cpio_listing(cli, layers["libs"])
    assert "app/BOOT-INF/lib/jackson-databind.jar" in libs
    app = cpio_listing(cli, layers["app"])
    assert "app/BOOT-INF/classes/com/example/shop/App.class" in app
    assert "app/BOOT-INF/lib/greet-1.0-SNAPSHOT.jar" in app  # a -SNAPSHOT library is the app's
    assert not any("jackson" in p for p in app)
    with Booted(cli, "shop-boot:1.0.0") as vm:
        status, body = http(vm.url("/"))
    assert status == 200
    assert json.loads(body) == {"app": "shop", "version": "1",
                                "greeting": "hello from a library"}


def test_own_code_change_rebuilds_only_the_app_layer(cli: Cli, shop: ShopBuild,
                                                     spring: Path, tmp_path: Path) -> None:
    root = tmp_path / "v2"
    shutil.copytree(spring, root)
    shop.spring_boot(root / "shop.jar", shop.compile("2"))
    out = cli.json("build", str(root), "--version", "2.0.0")
    assert isinstance(out, dict)
    # the app layer, the disk, and the SBOMs: the app's jars and the documents (new digest)
    assert {s["name"] for s in out["stages"] if not s["cached"]} == {
        "app", "disk", "sbom-jars", "sbom"}
    v1, v2 = layer_digests(cli, "shop-boot:1.0.0"), layer_digests(cli, "shop-boot:2.0.0")
    assert {k for k in v1 if v1[k] != v2[k]} == {"app"}


def test_thin_jar_with_class_path_serves(cli: Cli, shop: ShopBuild, tmp_path: Path) -> None:
    root = project(tmp_path / "thin", "shop-thin", "shop.jar")
    shop.thin_jar(root)
    cli("build", str(root))
    assert "libs" in layer_digests(cli, "shop-thin:1.0.0")
    with Booted(cli, "shop-thin:1.0.0") as vm:
        assert json.loads(http(vm.url("/"))[1])["greeting"] == "hello from a library"


def test_app_directory_with_main_serves(cli: Cli, shop: ShopBuild, tmp_path: Path) -> None:
    root = project(tmp_path / "dir", "shop-dir", "dist", f'main = "{MAIN}"\n')
    shop.app_dir(root / "dist")
    cli("build", str(root))
    with Booted(cli, "shop-dir:1.0.0") as vm:
        assert json.loads(http(vm.url("/"))[1])["app"] == "shop"


@pytest.fixture
def snapshot(cli: Cli) -> Iterator[None]:
    """Asserts the store and the cache are as they were after the test."""
    def listing() -> list[str]:
        return sorted(str(p.relative_to(cli.home)) for p in cli.home.rglob("*")
                      if "run" not in p.relative_to(cli.home).parts[:1])
    before = listing()
    yield
    assert listing() == before


def test_bad_jars_fail_in_one_line_leaving_nothing(cli: Cli, shop: ShopBuild, spring: Path,
                                                   tmp_path: Path, snapshot: None) -> None:
    cases = {}
    truncated = project(tmp_path / "truncated", "bad", "shop.jar")
    data = (spring / "shop.jar").read_bytes()
    (truncated / "shop.jar").write_bytes(data[: len(data) // 3])
    cases[truncated] = "not a valid jar"
    escape = project(tmp_path / "escape" / "app", "bad", "shop.jar")
    shop.thin_jar(escape)
    make_jar(shop.app, escape / "shop.jar", {"Main-Class": MAIN, "Class-Path": "bogus:x.jar"})
    cases[escape] = "so the JVM cannot load it"
    nomain = project(tmp_path / "nomain", "bad", "shop.jar", f'main = "{MAIN}X"\n')
    shop.spring_boot(nomain / "shop.jar")
    cases[nomain] = f"main class {MAIN}X is not in the app's class path"
    for root, expected in cases.items():
        result = cli("build", str(root), check=False)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("ERROR: ") and expected in lines[0], lines
