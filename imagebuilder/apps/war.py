"""A war, served at ``/`` by Tomcat 10 (Jakarta Servlet) from Debian's packages.

The war runs as it is, not unpacked, as ``/app/webapps/ROOT.war`` on a Catalina started by its
own ``Bootstrap`` from ``tomcat10-common`` and ``libtomcat10-java`` (in a ``tomcat`` layer of
their own, which changes only with those packages). Its configuration (``/app/tomcat/conf``: a
minimal ``server.xml`` rendered from ``templates/tomcat-server.xml.j2`` with ``[app] port``, and
the global ``web.xml`` defaults) goes into the app layer; Tomcat writes only below ``/tmp``.

Tomcat 10 runs Jakarta Servlet (``jakarta.servlet``): a war whose classes use ``javax.servlet``
(Java EE, Tomcat 9 and older) cannot run there and is refused with one line.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..errors import UserError
from ..resources import render, source
from . import javaclass
from .archive import Budget, Jar
from .shape import ClassSource, File, Shape, guest

#: The Debian packages of the Tomcat that runs wars, with the Java libraries they depend on
#: (the Eclipse compiler for JSPs) but not a JRE: the image has its own.
PACKAGES = ("tomcat10-common", "libtomcat10-java")
CATALINA_HOME = "/usr/share/tomcat10"
#: What the tomcat layer takes from the packages.
TOMCAT_DIRS = ("usr/share/tomcat10", "usr/share/java")
BASE = "tomcat"
WAR = "webapps/ROOT.war"
BOOTSTRAP = "org.apache.catalina.startup.Bootstrap"
CLASSES = "WEB-INF/classes/"
LIB = "WEB-INF/lib/"
JAVAX_SERVLET = "javax/servlet/"
SERVER_XML = "tomcat-server.xml.j2"
WEB_XML = "tomcat-web.xml"


def is_war(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".war"


def detect(path: Path, main: str | None, budget: Budget) -> Shape:
    """The shape of the war at ``path``; the Tomcat classes and the port come later
    (:func:`with_tomcat`), once its packages are fetched."""
    if main is not None:
        raise UserError(f"app.main: {path.name} is a war, which runs on Tomcat, not from a main "
                        "class: remove [app] main")
    sources = [ClassSource(f"{path}!/{CLASSES}", jar=path, prefix=CLASSES)]
    with budget.open(str(path), path) as war:
        for name, info in sorted(war.entries.items()):
            if info.is_dir():
                continue
            if name.startswith(LIB) and name.endswith(".jar"):
                sources.append(ClassSource(war.where(name), jar=war.read(name)))
            elif name.startswith(CLASSES) and name.endswith(".class"):
                _check_jakarta(war, name)
    argv = (f"-Dcatalina.home={CATALINA_HOME}", f"-Dcatalina.base={guest(BASE)}",
            "-Djava.io.tmpdir=/tmp", "-cp",
            f"{CATALINA_HOME}/bin/bootstrap.jar:{CATALINA_HOME}/bin/tomcat-juli.jar",
            BOOTSTRAP, "start")
    return Shape("war", (File(WAR, source=path),), (), argv, BOOTSTRAP, tuple(sources))


def _check_jakarta(war: Jar, name: str) -> None:
    try:
        classes = javaclass.parse(war.read(name)).classes
    except javaclass.ClassFormatError as exc:
        raise UserError(f"{war.where(name)}: not a valid class file ({exc}): rebuild the "
                        "war") from None
    if any(c.startswith(JAVAX_SERVLET) for c in classes):
        raise UserError(f"{war.where(name)} uses javax.servlet (Java EE: Tomcat 9 and older); "
                        "the image serves wars on Tomcat 10, which runs Jakarta Servlet "
                        "(jakarta.servlet): migrate the war (e.g. Apache's "
                        "tomcat-jakartaee-migration tool) and rebuild it")


def with_tomcat(shape: Shape, root: Path, port: int | None) -> Shape:
    """The war's shape completed with Tomcat's classes (from the unpacked packages in ``root``,
    for module detection) and Catalina's configuration for ``port``."""
    if port is None:
        raise UserError("app.port: a war is served by Tomcat on [app] port: set it (e.g. 8080)")
    home = root / CATALINA_HOME.lstrip("/")
    jars = sorted([*(home / "bin").glob("*.jar"), *(home / "lib").glob("*.jar")])
    if not any(j.name == "bootstrap.jar" for j in jars):
        raise UserError(f"no Tomcat in {root}: is tomcat10-common in the suite?")
    tomcat = tuple(ClassSource(str(j), jar=j.resolve()) for j in jars if j.resolve().is_file())
    conf = (File(f"{BASE}/conf/server.xml", data=render(SERVER_XML, port=port).encode()),
            File(f"{BASE}/conf/web.xml", data=source(WEB_XML)))
    return dataclasses.replace(shape, app=(*shape.app, *conf),
                               classpath=(*shape.classpath, *tomcat))
