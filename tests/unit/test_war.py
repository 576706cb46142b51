"""The war shape: real wars compiled against Debian's Jakarta and Java EE servlet API jars."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

from imagebuilder.apps import war as war_shape
from imagebuilder.apps.archive import Budget
from imagebuilder.apps.detect import detect
from imagebuilder.build.packages import roots
from imagebuilder.config.parse import load
from imagebuilder.errors import UserError
from imagebuilder.layers.hardware import select
from imagebuilder.layers.kernel import load_manifest
from support.wars import build_war


@pytest.fixture(scope="module")
def wars(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("wars")
    return {api: build_war(work / f"{api}.war", api) for api in ("jakarta", "javax")}


def _tomcat_root(root: Path) -> Path:
    home = root / "usr/share/tomcat10"
    (home / "bin").mkdir(parents=True)
    (home / "lib").mkdir()
    java = root / "usr/share/java"
    java.mkdir(parents=True)
    for name in ("bootstrap.jar", "tomcat-juli.jar"):
        with zipfile.ZipFile(home / "bin" / name, "w") as jar:
            jar.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\r\n\r\n")
    with zipfile.ZipFile(java / "tomcat10-catalina.jar", "w") as jar:
        jar.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\r\n\r\n")
    (home / "lib/catalina.jar").symlink_to("../../java/tomcat10-catalina.jar")
    return root


def test_a_jakarta_war_runs_on_catalina_bootstrap(wars: dict[str, Path], tmp_path: Path) -> None:
    shape = detect(wars["jakarta"], None, Budget())
    assert shape.kind == "war" and shape.main == war_shape.BOOTSTRAP
    assert [f.dest for f in shape.app] == ["webapps/ROOT.war"] and shape.libs == ()
    assert shape.argv[-2:] == (war_shape.BOOTSTRAP, "start")
    assert "-Dcatalina.base=/app/tomcat" in shape.argv
    assert shape.classpath[0].prefix == "WEB-INF/classes/"

    full = war_shape.with_tomcat(shape, _tomcat_root(tmp_path / "root"), 8080)
    conf = {f.dest: f.data for f in full.app if f.data is not None}
    server = ET.fromstring(conf["tomcat/conf/server.xml"] or b"")
    assert server.get("port") == "-1"
    connector = server.find("Service/Connector")
    assert connector is not None and connector.get("port") == "8080"
    host = server.find("Service/Engine/Host")
    assert host is not None and host.get("appBase") == "/app/webapps"
    assert host.get("unpackWARs") == "false" and host.get("workDir", "").startswith("/tmp/")
    web = ET.fromstring(conf["tomcat/conf/web.xml"] or b"")
    ns = "{https://jakarta.ee/xml/ns/jakartaee}"
    # Tomcat's own conf/web.xml sets both; without them its error pages were ISO-8859-1 in the
    # image and UTF-8 on the host (the corpus's examples war).
    assert [web.findtext(f"{ns}{k}-character-encoding") for k in ("request", "response")] == [
        "UTF-8", "UTF-8"]
    labels = [s.label for s in full.classpath]
    assert any(label.endswith("bin/bootstrap.jar") for label in labels)
    assert any(label.endswith("lib/catalina.jar") for label in labels)


def test_a_war_needs_a_port(wars: dict[str, Path], tmp_path: Path) -> None:
    shape = detect(wars["jakarta"], None, Budget())
    with pytest.raises(UserError, match=r"app.port: a war is served by Tomcat on \[app\] port"):
        war_shape.with_tomcat(shape, _tomcat_root(tmp_path / "root"), None)


def test_a_javax_servlet_war_is_refused(wars: dict[str, Path]) -> None:
    with pytest.raises(UserError) as caught:
        detect(wars["javax"], None, Budget())
    message = str(caught.value)
    assert "javax.war!/WEB-INF/classes/com/example/web/Hello.class uses javax.servlet" in message
    assert "Tomcat 10, which runs Jakarta Servlet" in message and "\n" not in message


def test_main_on_a_war_is_refused(wars: dict[str, Path]) -> None:
    with pytest.raises(UserError, match=r"app.main: jakarta.war is a war.*remove \[app\] main"):
        detect(wars["jakarta"], "com.example.web.Hello", Budget())


@pytest.mark.parametrize(("api", "toml_extra", "expected"), [
    ("javax", "", "uses javax.servlet"),
    ("jakarta", 'main = "com.example.web.Hello"\n', "app.main: app.war is a war"),
])
def test_build_refuses_with_one_line_and_exit_2(wars: dict[str, Path], tmp_path: Path, api: str,
                                                toml_extra: str, expected: str) -> None:
    (tmp_path / "app.war").write_bytes(wars[api].read_bytes())
    (tmp_path / "imagebuilder.toml").write_text(
        '[image]\nname = "web"\nversion = "1"\n\n[app]\npath = "app.war"\nport = 8080\n'
        + toml_extra)
    result = subprocess.run([sys.executable, "-m", "imagebuilder.cli", "build", str(tmp_path)],
                            capture_output=True, text=True, env={"IMAGEBUILDER_HOME": str(
                                tmp_path / "home"), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: ") and expected in lines[0]
    assert not (tmp_path / "home" / "store").exists() or not any(
        (tmp_path / "home" / "store").rglob("*.json"))


def test_a_war_brings_tomcats_packages(wars: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "app.war").write_bytes(wars["jakarta"].read_bytes())
    (tmp_path / "imagebuilder.toml").write_text(
        '[image]\nname = "web"\nversion = "1"\n\n[app]\npath = "app.war"\nport = 8080\n')
    parts = roots(load(tmp_path), select(load_manifest("debian-cloud"), [], []))
    assert parts["tomcat"] == ["tomcat10-common", "libtomcat10-java"]
