"""javaclass: the classes, calls and strings real class files name, and their Java release.

Class files are made by the host JDK (``javac --release 17``), so the constant pools are exactly
what a user's build produces.
"""

from __future__ import annotations

import zipfile

import pytest

from imagebuilder.apps import javaclass

try:
    from java_fixture import Jars, needs_jdk
except ImportError:  # run as a package
    from tests.unit.java_fixture import Jars, needs_jdk  # type: ignore[no-redef]

pytestmark = needs_jdk

HELPER = """\
package com.example.util;

public final class Helper {
    public static String greet(String who) {
        return "hello, " + who;
    }
}
"""

MAIN_V1 = """\
package com.example.app;

import com.example.util.Helper;
import com.sun.net.httpserver.HttpServer;
import java.net.InetSocketAddress;

public final class Main {
    public static void main(String[] args) throws Exception {
        HttpServer server = HttpServer.create(new InetSocketAddress(8080), 0);
        server.createContext("/", exchange -> {
            byte[] body = Helper.greet("world").getBytes();
            exchange.sendResponseHeaders(200, body.length);
            exchange.getResponseBody().write(body);
            exchange.close();
        });
        server.start();
    }
}
"""

# The same imports, other code: a new app version that needs nothing new from the JDK.
MAIN_V2 = MAIN_V1.replace('Helper.greet("world")', 'Helper.greet("everyone" + args.length)')
# One more JDK package used.
MAIN_V3 = MAIN_V1.replace(
    "import java.net.InetSocketAddress;",
    "import java.net.InetSocketAddress;\nimport java.util.concurrent.ConcurrentHashMap;",
).replace(
    "        server.start();",
    "        new ConcurrentHashMap<String, String>().put(\"a\", \"b\");\n        server.start();",
)



@pytest.fixture(scope="module")
def classes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    builder = Jars(tmp_path_factory.mktemp("jars"))
    helper = {"com/example/util/Helper.java": HELPER}
    v1 = builder.add("v1.jar", {**helper, "com/example/app/Main.java": MAIN_V1}, None)
    v3 = builder.add("v3.jar", {**helper, "com/example/app/Main.java": MAIN_V3}, None)
    builder.build()
    return {"v1": zipfile.ZipFile(v1).read("com/example/app/Main.class"),
            "v3": zipfile.ZipFile(v3).read("com/example/app/Main.class")}


def test_parse_names_jdk_and_own_classes(classes: dict[str, bytes]) -> None:
    refs = javaclass.parse(classes["v1"])
    assert {"java/net/InetSocketAddress", "com/sun/net/httpserver/HttpServer",
            "com/example/util/Helper", "com/example/app/Main"} <= refs.classes
    assert "java/lang/invoke/LambdaMetafactory" in refs.classes  # the lambda's bootstrap method
    assert ("com/sun/net/httpserver/HttpServer", "create") in refs.methods
    assert ("com/example/util/Helper", "greet") in refs.methods
    assert "world" in refs.strings
    assert refs.major == 61 and refs.release == 17


def test_parse_sees_a_new_import(classes: dict[str, bytes]) -> None:
    before, after = javaclass.parse(classes["v1"]), javaclass.parse(classes["v3"])
    assert "java/util/concurrent/ConcurrentHashMap" not in before.classes
    assert "java/util/concurrent/ConcurrentHashMap" in after.classes


@pytest.mark.parametrize("cut", [8, 10, 40, 200])
def test_parse_truncated_class(classes: dict[str, bytes], cut: int) -> None:
    with pytest.raises(javaclass.ClassFormatError):
        javaclass.parse(classes["v1"][:cut])


def test_parse_not_a_class() -> None:
    with pytest.raises(javaclass.ClassFormatError, match="no class file magic"):
        javaclass.parse(b"PK\x03\x04 a zip, not a class")


def test_parse_bad_tag(classes: dict[str, bytes]) -> None:
    data = bytearray(classes["v1"])
    data[10] = 99  # the first constant pool entry's tag
    with pytest.raises(javaclass.ClassFormatError, match="bad constant pool tag 99"):
        javaclass.parse(bytes(data))


def test_release_of() -> None:
    assert javaclass.release_of(65) == 21 and javaclass.release_of(52) == 8


def test_source_variants_differ_as_intended() -> None:
    # Guard against the string edits that make v3 silently not applying.
    assert "ConcurrentHashMap" in MAIN_V3 and "import java.util.concurrent" in MAIN_V3
