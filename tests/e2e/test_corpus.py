"""End to end, issue 17: a corpus of real published Java server apps (support/corpus.py) that
nobody here wrote, in every shape: executable jars (WireMock, Selenium, the Nu Html Checker),
jars run with a documented main class (H2's and HSQLDB's web servers), an app directory
(ZooKeeper's ``lib/`` layout), wars (Tomcat's examples webapp, Debian's default ROOT webapp) and
a jar whose libraries are named by absolute ``Class-Path`` entries (Jython, with the Debian
packages that ship them in ``[app] packages``, as ``build``'s warning says).

Sources: the npm registry (``npm pack NAME@VERSION`` in the inputs cache, ``inputs_dir("corpus")``),
Debian packages fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x`` into the same
cache (libh2-java, libhsqldb-java, tomcat10-examples, tomcat10 for its stock conf and ROOT
webapp), and Debian packages that scripts/setup.sh installs because the host run needs their
libraries in /usr/share/java (jython, libzookeeper-java) or Tomcat itself (tomcat10-common,
libtomcat10-java).

Every app is built the way a user would (an imagebuilder.toml with ``[app]`` path, port,
healthcheck, args, the documented main class and, for Jython, packages) into one
IMAGEBUILDER_HOME (the module's ``home``), so the base, kernel, JDK and Tomcat are made once.
Three are also booted (``run --accel tcg -p HOST:GUEST``, run's defaults otherwise) next to a
run on the host as their documentation says, and must answer the same requests the same way;
the host run's requests come from a non-loopback address of the host, as the image's come from
QEMU's gateway (10.0.2.2). The booted three are the shapes no other module boots, with cheap
builds: H2's console (a Debian jar run with its documented main class, its absolute
``Class-Path`` entries left out), the war (Debian's ROOT webapp: the examples' own
``META-INF/context.xml`` admits only 127.0.0.0/8, so they answer 403 to any remote client, on
the host too, which :func:`test_examples_deny_remote_clients_on_the_host_too` shows without a
boot) and Jython (a packages layer the app needs). Executable jars and app directories boot in
tests/e2e/test_apps.py and test_aot.py; bench/corpus.py boots the whole corpus.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from support.corpus import (
    CORPUS,
    H2,
    JYTHON,
    TOMCAT_EXAMPLES,
    TOMCAT_ROOT,
    CorpusApp,
    differences,
    exchange,
    on_host,
    project,
)
from support.inputs import inputs_dir

from .conftest import Cli, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.network]

BOOT_TIMEOUT = "600"
BOOTED = (H2, TOMCAT_ROOT, JYTHON)
"""Booted first, each right after its own build: a boot runs one QEMU thread, so it overlaps
the other xdist worker's work, and the builds after it reuse the base, kernel and JDK."""
BUILT = (*BOOTED, *(a for a in CORPUS if a not in BOOTED))

NEEDS = ("npm", "apt-get", "dpkg-deb")
INSTALLED = (Path("/usr/share/java/jython-2.7.3.jar"), Path("/usr/share/java/zookeeper.jar"),
             Path("/usr/share/tomcat10/bin/catalina.sh"))


def _param(app: CorpusApp) -> object:
    return pytest.param(app, id=app.name.removeprefix("corpus-"))


@pytest.fixture(scope="module")
def cache() -> Path:
    missing = [t for t in NEEDS if shutil.which(t) is None]
    missing += [str(p) for p in INSTALLED if not p.exists()]
    if missing:
        pytest.skip(f"the corpus needs {', '.join(missing)} (scripts/setup.sh installs them)")
    return inputs_dir("corpus")


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


@pytest.mark.parametrize("app", [_param(a) for a in BOOTED])
def test_answers_in_the_image_as_on_the_host(home: Cli, cache: Path, projects: Path,
                                             tmp_path: Path, app: CorpusApp) -> None:
    root = _built(home, cache, projects, app)
    with on_host(app, cache, root, tmp_path) as host:
        on_the_host = exchange(app, host.url(), host.source)
    port = free_port()
    out = home("run", f"{app.name}:1.0.0", "--accel", "tcg", "-p", f"127.0.0.1:{port}:{app.port}",
               "--wait", "--timeout", BOOT_TIMEOUT, "--json", timeout=900)
    vm_id = json.loads(out.stdout)["id"]
    try:
        in_the_image = exchange(app, f"http://127.0.0.1:{port}")
    finally:
        home("stop", vm_id, check=False)
    assert differences(on_the_host, in_the_image, app) == []


@pytest.mark.parametrize("app", [_param(a) for a in BUILT])
def test_builds_as_the_shape_it_is(home: Cli, cache: Path, projects: Path,
                                   app: CorpusApp) -> None:
    _built(home, cache, projects, app)
    info = home.json("inspect", f"{app.name}:1.0.0")
    assert isinstance(info, dict)
    assert info["config"]["app"]["shape"] == app.shape


def test_examples_deny_remote_clients_on_the_host_too(cache: Path, projects: Path,
                                                      tmp_path: Path) -> None:
    """The examples war's own valve answers a client off loopback 403 on the host as in the
    image (bench/corpus.py boots it): the app's policy, not a difference of the image."""
    app = TOMCAT_EXAMPLES
    root = project(app, cache, projects / f"host-{app.name}")
    with on_host(app, cache, root, tmp_path) as host:
        answers = exchange(app, host.url(), host.source)
    assert [a.status for a in answers] == [403] * len(app.requests)
    assert all("403 Access Denied" in a.body for a in answers)
