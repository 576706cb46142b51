"""End to end: real Java apps on the headless runtime, and the JVM versions.

An app compiled here with javac draws text with Graphics2D into a PNG through ImageIO and serves
it (java.desktop: the X11 natives left out, freetype/lcms/libjpeg/fontconfig and a font fetched
by themselves); a class that only calls java.beans.Introspector builds, with ``[jvm] fonts =
false``; a war compiled against Debian's Jakarta Servlet API is served by Debian's Tomcat 10;
examples/hello boots on JDK 25. Three boots; JDK 17 on bookworm is test_bookworm.py's.
"""

from __future__ import annotations

import json
import struct
import subprocess
import urllib.request
import zlib
from collections import Counter
from pathlib import Path

import pytest

from support.java_apps import project
from support.wars import build_war

from .conftest import Cli, compile_example, cpio_listing, free_port, layers_of

pytestmark = [pytest.mark.e2e, pytest.mark.network]

PNG_APP = """\
package png;

import com.sun.net.httpserver.HttpServer;
import java.awt.Color;
import java.awt.Font;
import java.awt.Graphics2D;
import java.awt.GraphicsEnvironment;
import java.awt.image.BufferedImage;
import java.io.ByteArrayOutputStream;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import javax.imageio.ImageIO;

public class Main {
    static byte[] draw(String text) throws Exception {
        BufferedImage image = new BufferedImage(320, 80, BufferedImage.TYPE_INT_RGB);
        Graphics2D g = image.createGraphics();
        g.setColor(Color.WHITE);
        g.fillRect(0, 0, 320, 80);
        g.setColor(Color.BLACK);
        g.setFont(new Font(Font.SANS_SERIF, Font.BOLD, 32));
        g.drawString(text, 10, 50);
        g.dispose();
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        ImageIO.write(image, "png", out);
        return out.toByteArray();
    }

    public static void main(String[] args) throws Exception {
        HttpServer server = HttpServer.create(new InetSocketAddress(8080), 0);
        server.createContext("/", exchange -> {
            byte[] body;
            String type = "text/plain";
            try {
                if (exchange.getRequestURI().getPath().equals("/image.png")) {
                    body = draw("imagebuilder");
                    type = "image/png";
                } else {
                    body = ("{\\"headless\\": " + GraphicsEnvironment.isHeadless()
                            + ", \\"max_heap\\": " + Runtime.getRuntime().maxMemory()
                            + ", \\"java\\": \\"" + System.getProperty("java.version") + "\\"}")
                            .getBytes();
                }
            } catch (Throwable e) {
                e.printStackTrace();
                body = e.toString().getBytes();
                exchange.sendResponseHeaders(500, body.length);
                try (OutputStream os = exchange.getResponseBody()) { os.write(body); }
                return;
            }
            exchange.getResponseHeaders().set("Content-Type", type);
            exchange.sendResponseHeaders(200, body.length);
            try (OutputStream os = exchange.getResponseBody()) { os.write(body); }
        });
        server.start();
    }
}
"""

BEANS_APP = """\
package beans;

public class Main {
    public String getName() { return "beans"; }

    public static void main(String[] args) throws Exception {
        System.out.println(java.beans.Introspector.getBeanInfo(Main.class)
                .getPropertyDescriptors().length);
    }
}
"""


def _jar_app(dest: Path, name: str, source: str, toml_extra: str = "") -> Path:
    """An app directory holding ``name``.jar compiled from ``source`` and its config."""
    package = name
    src = dest / "src" / package / "Main.java"
    src.parent.mkdir(parents=True)
    src.write_text(source)
    classes = dest / "classes"
    subprocess.run(["javac", "--release", "17", "-d", str(classes), str(src)], check=True,
                   capture_output=True)
    subprocess.run(["jar", "--create", "--file", str(dest / f"{name}.jar"), "--main-class",
                    f"{package}.Main", "-C", str(classes), "."], check=True, capture_output=True)
    project(dest, name, f"{name}.jar", toml_extra)
    return dest


def _png_pixels(data: bytes) -> tuple[int, int, Counter[bytes]]:
    """Width, height and the count of each pixel value of an 8-bit RGB/RGBA PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:16]
    pos, idat, width = 8, b"", 0
    height = depth = colour = 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", chunk[:10])
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    assert depth == 8 and colour in (2, 6), (depth, colour)
    bpp = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    prev, pixels = bytearray(stride), Counter[bytes]()
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        pixels.update(bytes(line[i:i + bpp]) for i in range(0, stride, bpp))
        prev = line
    return width, height, pixels


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as response:
        return bytes(response.read())


def test_desktop_app_draws_text_into_a_png_on_the_headless_runtime(
        cli: Cli, tmp_path: Path, vms: list[str]) -> None:
    app = _jar_app(tmp_path / "png", "png", PNG_APP)
    built = cli.json("build", str(app))
    info = cli.json("inspect", built["ref"])
    assert "java.desktop" in info["config"]["jvm"]["modules"]
    listing = set(cpio_listing(cli, str(layers_of(cli, built["ref"])["jvm"]["digest"])))
    for present in ("opt/java/lib/libfontmanager.so", "opt/java/lib/libawt_headless.so",
                    "usr/lib/x86_64-linux-gnu/libfreetype.so.6",
                    "usr/lib/x86_64-linux-gnu/libfontconfig.so.1",
                    "usr/lib/x86_64-linux-gnu/liblcms2.so.2", "etc/fonts/fonts.conf",
                    "usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"):
        assert present in listing, present
    for absent in ("opt/java/lib/libawt_xawt.so", "opt/java/lib/libsplashscreen.so",
                   "opt/java/lib/libjawt.so"):
        assert absent not in listing, absent
    lock = (app / "imagebuilder.lock").read_text()
    assert "natives = [" in lock and '"libfreetype6"' in lock and '"fonts-dejavu-core"' in lock

    port = free_port()
    started = json.loads(cli("run", built["ref"], "--accel", "tcg", "--wait", "--json",
                             "--timeout", "300", "-p", f"127.0.0.1:{port}:8080",
                             cwd=app).stdout)
    vms.append(started["id"])
    state = json.loads(_get(f"http://127.0.0.1:{port}/"))
    assert state["headless"] is True and state["java"].startswith("21.")
    # MaxRAMPercentage=75 of the guest's 1024 MiB (the JVM's own default would be a quarter).
    assert state["max_heap"] > 600 * 2**20
    width, height, pixels = _png_pixels(_get(f"http://127.0.0.1:{port}/image.png"))
    assert (width, height) == (320, 80)
    # Black text on white: the font was found and rendered (not one colour, not a filled box).
    dark = sum(n for pixel, n in pixels.items() if max(pixel[:3]) < 128)
    assert len(pixels) >= 2 and 0.01 < dark / (width * height) < 0.5, pixels.most_common(4)
    cli("stop", started["id"])
    vms.remove(started["id"])
    cli("rm", built["ref"])


def test_a_class_calling_only_introspector_builds_and_fonts_can_be_left_out(
        cli: Cli, tmp_path: Path) -> None:
    app = _jar_app(tmp_path / "beans", "beans", BEANS_APP, "\n[jvm]\nfonts = false\n")
    built = cli.json("build", str(app))
    assert "java.desktop" in cli.json("inspect", built["ref"])["config"]["jvm"]["modules"]
    listing = set(cpio_listing(cli, str(layers_of(cli, built["ref"])["jvm"]["digest"])))
    assert "opt/java/lib/libfontmanager.so" in listing
    assert "usr/lib/x86_64-linux-gnu/libfreetype.so.6" in listing
    assert not any(p.startswith(("etc/fonts", "usr/share/fonts")) for p in listing)
    assert "usr/lib/x86_64-linux-gnu/libfontconfig.so.1" not in listing
    cli("rm", built["ref"])


def test_jdk_25_boots_hello(cli: Cli, tmp_path: Path, vms: list[str]) -> None:
    app = compile_example(tmp_path)
    toml = app / "imagebuilder.toml"
    toml.write_text(toml.read_text().replace('version = "1.0.0"', 'version = "jdk25"')
                    + "\n[jvm]\nversion = 25\n")
    built = cli.json("build", str(app))
    listing = cpio_listing(cli, str(layers_of(cli, built["ref"])["jvm"]["digest"]))
    assert not any(p.endswith(".debuginfo") for p in listing)
    port = free_port()
    started = json.loads(cli("run", built["ref"], "--env", "test", "--accel", "tcg", "--wait",
                             "--json", "--timeout", "300", "-p", f"127.0.0.1:{port}:8080",
                             cwd=app).stdout)
    vms.append(started["id"])
    body = json.loads(_get(f"http://127.0.0.1:{port}/info"))
    assert body["java"].startswith("25")
    cli("stop", started["id"])
    vms.remove(started["id"])
    cli("rm", built["ref"])


def test_war_is_served_at_root_by_tomcat_10(cli: Cli, tmp_path: Path, vms: list[str]) -> None:
    app = tmp_path / "web"
    app.mkdir()
    build_war(app / "shop.war")
    project(app, "web", "shop.war")
    built = cli.json("build", str(app))
    info = cli.json("inspect", built["ref"])
    assert info["config"]["app"]["shape"] == "war"
    layers = layers_of(cli, built["ref"])
    assert list(layers) == ["vmlinuz", "base", "jvm", "tomcat", "app"]
    tomcat = set(cpio_listing(cli, str(layers["tomcat"]["digest"])))
    assert "usr/share/tomcat10/bin/bootstrap.jar" in tomcat
    app_files = set(cpio_listing(cli, str(layers["app"]["digest"])))
    assert {"app/webapps/ROOT.war", "app/tomcat/conf/server.xml"} <= app_files
    port = free_port()
    started = json.loads(cli("run", built["ref"], "--accel", "tcg", "--wait", "--json",
                             "--timeout", "300", "-p", f"127.0.0.1:{port}:8080",
                             cwd=app).stdout)
    vms.append(started["id"])
    base = f"http://127.0.0.1:{port}"
    hello = _get(f"{base}/hello").decode()
    # Served by Tomcat 10 at / (the context path is empty).
    assert hello.startswith("hello from a war on Apache Tomcat/10.") and hello.endswith(" at []")
    assert b"static index of the war" in _get(f"{base}/")
    assert _get(f"{base}/answer.jsp").decode().strip() == "six times seven is 42"
    cli("stop", started["id"])
    vms.remove(started["id"])
    cli("rm", built["ref"])
