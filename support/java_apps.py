"""Real Java apps in every shape, assembled from Debian's Java libraries with the host's javac.

The unit tests, the e2e tests and the benchmarks (bench/apps.py, bench/aot.py, bench/memory.py)
share these: a small JSON service (the JDK's
HTTP server and Jackson from ``libjackson2-databind-java``) packed as a Spring Boot executable jar
(``BOOT-INF/classes``, ``BOOT-INF/lib``, ``Start-Class``), a thin jar with ``Class-Path:
lib/...``, and a Gradle ``installDist``-style app directory (``lib/*.jar``, run with
``[app] main``). The greeting library is the app's own ``-SNAPSHOT`` library in the Spring Boot
jar and a third-party one elsewhere.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import textwrap
import zipfile
from pathlib import Path

from support.inputs import inputs_dir

WIREMOCK = "wiremock@3.13.2"
WIREMOCK_JAR = "package/build/wiremock-standalone-3.13.2.jar"
DEBIAN_JAVA = Path("/usr/share/java")
JACKSON = tuple(DEBIAN_JAVA / f"jackson-{n}.jar" for n in ("databind", "core", "annotations"))
MAIN = "com.example.shop.App"

GREETING = """\
package com.example.greet;

public final class Greeting {
    public static String text() {
        return "hello from a library";
    }
}
"""

APP = """\
package com.example.shop;

import com.example.greet.Greeting;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.sun.net.httpserver.HttpServer;
import java.net.InetSocketAddress;
import java.util.Map;

public final class App {
    public static void main(String[] args) throws Exception {
        int port = Integer.parseInt(System.getenv().getOrDefault("PORT", "8080"));
        ObjectMapper mapper = new ObjectMapper();
        HttpServer server = HttpServer.create(new InetSocketAddress(port), 0);
        server.createContext("/", exchange -> {
            byte[] body = mapper.writeValueAsBytes(Map.of(
                "app", "shop", "version", "VERSION", "greeting", Greeting.text()));
            exchange.getResponseHeaders().add("Content-Type", "application/json");
            exchange.sendResponseHeaders(200, body.length);
            exchange.getResponseBody().write(body);
            exchange.close();
        });
        server.start();
        System.out.println("shop listening on " + port);
    }
}
"""


def project(root: Path, name: str, app: str, extra: str = "", version: str = "1.0.0") -> Path:
    """``root`` with an imagebuilder.toml for app NAME:VERSION at ``app`` on port 8080, plus
    ``extra`` (more [app] keys, then other tables)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "imagebuilder.toml").write_text(textwrap.dedent(f"""\
        [image]
        name = "{name}"
        version = "{version}"

        [app]
        path = "{app}"
        port = 8080
        """) + extra)
    return root


def fetch_wiremock(cache_dir: Path | None = None) -> Path:
    """WireMock's standalone jar, fetched once with ``npm pack`` into ``cache_dir`` (by default
    the shared inputs cache, :func:`support.inputs.inputs_dir`)."""
    cache_dir = cache_dir or inputs_dir("apps")
    jar = cache_dir / WIREMOCK_JAR.rpartition("/")[2]
    if not jar.exists():
        subprocess.run(["npm", "pack", WIREMOCK, "--silent"], cwd=cache_dir, check=True,
                       capture_output=True, timeout=600)
        with tarfile.open(cache_dir / "wiremock-3.13.2.tgz") as tar:
            member = tar.extractfile(WIREMOCK_JAR)
            assert member is not None
            tmp = jar.with_suffix(".tmp")
            tmp.write_bytes(member.read())
        tmp.rename(jar)
    return jar


def have_tools() -> bool:
    return all(shutil.which(t) for t in ("javac", "jar")) and all(p.exists() for p in JACKSON)


def _javac(src: dict[str, str], out: Path, classpath: list[Path]) -> Path:
    """Compile ``src`` (relative path -> text) into ``out``."""
    srcdir = out.with_name(out.name + "-src")
    for rel, text in src.items():
        (srcdir / rel).parent.mkdir(parents=True, exist_ok=True)
        (srcdir / rel).write_text(text)
    out.mkdir(parents=True, exist_ok=True)
    cp = ["-cp", ":".join(map(str, classpath))] if classpath else []
    subprocess.run(["javac", "--release", "17", "-nowarn", *cp, "-d", str(out),
                    *(str(srcdir / r) for r in src)], check=True, capture_output=True)
    return out


def make_jar(classes: Path, dest: Path, manifest: dict[str, str] | None = None) -> Path:
    """A jar of every file below ``classes``, with a manifest of ``manifest``'s attributes."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        text = "Manifest-Version: 1.0\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in (manifest or {}).items())
        zf.writestr("META-INF/MANIFEST.MF", text + "\r\n")
        for path in sorted(classes.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(classes).as_posix())
    return dest


class ShopBuild:
    """The shop app compiled once into ``work``; shapes are assembled from it on demand."""

    def __init__(self, work: Path, version: str = "1") -> None:
        self.work = work
        self.greet = _javac({"com/example/greet/Greeting.java": GREETING}, work / "greet", [])
        self.version = version
        self.app = self.compile(version)

    def compile(self, version: str) -> Path:
        """The app's classes for ``version`` (the JSON it serves names it): an own-code change."""
        return _javac({"com/example/shop/App.java": APP.replace("VERSION", version)},
                      self.work / f"app-{version}", [self.greet, *JACKSON])

    def spring_boot(self, dest: Path, app: Path | None = None) -> Path:
        """A Spring Boot executable jar: nested jars stored, as Spring's loader wants them."""
        greet = make_jar(self.greet, self.work / "greet-1.0-SNAPSHOT.jar")
        libs = [greet, *JACKSON]
        with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\r\nMain-Class: "
                        "org.springframework.boot.loader.launch.JarLauncher\r\nStart-Class: "
                        f"{MAIN}\r\nSpring-Boot-Classes: BOOT-INF/classes/\r\n"
                        "Spring-Boot-Lib: BOOT-INF/lib/\r\n\r\n")
            for path in sorted((app or self.app).rglob("*.class")):
                zf.write(path, "BOOT-INF/classes/" + path.relative_to(app or self.app).as_posix())
            zf.writestr("BOOT-INF/classes/application.properties", "server.port=8080\n")
            for lib in libs:
                zf.write(lib.resolve(), f"BOOT-INF/lib/{lib.name}",
                         compress_type=zipfile.ZIP_STORED)
            zf.writestr("BOOT-INF/classpath.idx",
                        "".join(f'- "BOOT-INF/lib/{lib.name}"\n' for lib in libs))
        return dest

    def thin_jar(self, root: Path) -> Path:
        """``root/shop.jar`` with ``Class-Path: lib/...`` and the libraries in ``root/lib``."""
        names = self._libs(root / "lib")
        return make_jar(self.app, root / "shop.jar", {
            "Main-Class": MAIN, "Class-Path": " ".join(f"lib/{n}" for n in names)})

    def app_dir(self, root: Path) -> Path:
        """A Gradle installDist-style directory: ``lib/shop.jar`` and its libraries."""
        self._libs(root / "lib")
        make_jar(self.app, root / "lib" / "shop.jar")
        (root / "bin").mkdir(parents=True, exist_ok=True)
        (root / "bin" / "shop").write_text("#!/bin/sh\nexec java -cp 'lib/*' " + MAIN + "\n")
        return root

    def _libs(self, lib: Path) -> list[str]:
        lib.mkdir(parents=True, exist_ok=True)
        make_jar(self.greet, lib / "greet-1.0.jar")
        for jar in JACKSON:
            shutil.copyfile(jar.resolve(), lib / jar.name)
        return ["greet-1.0.jar", *(j.name for j in JACKSON)]
