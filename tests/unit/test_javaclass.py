"""javaclass: Main-Class from real jars, and the JDK packages real class files refer to.

Jars are made by the host JDK (``javac --release 17`` and ``jar``), so the manifests and constant
pools are exactly what a user's build produces.
"""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from imagebuilder.errors import UserError
from imagebuilder.javaclass import main_class, referenced_packages

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("javac", "jar", "java")),
    reason="javac/jar not installed (apt-get install openjdk-17-jdk-headless)",
)

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

LONG_PACKAGE = "org.example.averyveryverylongpackagename.anotherlongsubpackagename"
LONG_CLASS = "ApplicationEntryPointWithALongName"
LONG_MAIN = f"""\
package {LONG_PACKAGE};

public final class {LONG_CLASS} {{
    public static void main(String[] args) {{
        System.out.println("hi");
    }}
}}
"""


# Runs every javac and jar command in one JVM (java.util.spi.ToolProvider): the same tools as
# the `javac` and `jar` commands, without paying a JDK start-up and warm-up per command.
TOOL_DRIVER = """\
import java.nio.file.*;
import java.util.*;
import java.util.spi.ToolProvider;

public class ToolDriver {
    public static void main(String[] a) throws Exception {
        for (String line : Files.readAllLines(Path.of(a[0]))) {
            String[] argv = line.split("\\t");
            ToolProvider tool = ToolProvider.findFirst(argv[0]).orElseThrow();
            int rc = tool.run(System.out, System.err, Arrays.copyOfRange(argv, 1, argv.length));
            if (rc != 0) { System.err.println("failed: " + line); System.exit(rc); }
        }
    }
}
"""


class _Jars:
    """Collects the javac/jar commands that build some jars, then runs them all at once."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.commands: list[list[str]] = []

    def add(self, name: str, sources: dict[str, str], main: str | None) -> Path:
        """Compile ``sources`` (relative path -> text) and jar the classes as ``name``."""
        src, classes = self.work / f"{name}-src", self.work / f"{name}-classes"
        for rel, text in sources.items():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_text(text)
        classes.mkdir()
        self.commands.append(["javac", "--release", "17", "-d", str(classes),
                              *(str(src / rel) for rel in sources)])
        jar = self.work / name
        argv = ["jar", "--create", "--file", str(jar)]
        if main is not None:
            argv += ["--main-class", main]
        self.commands.append([*argv, "-C", str(classes), "."])
        return jar

    def build(self) -> None:
        driver = self.work / "ToolDriver.java"
        driver.write_text(TOOL_DRIVER)
        listing = self.work / "commands.txt"
        listing.write_text("".join("\t".join(c) + "\n" for c in self.commands))
        result = subprocess.run(
            ["java", "-XX:TieredStopAtLevel=1", str(driver), str(listing)],
            check=False, capture_output=True, text=True, cwd=self.work,
        )
        assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def jars(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    builder = _Jars(tmp_path_factory.mktemp("jars"))
    helper = {"com/example/util/Helper.java": HELPER}
    main = "com.example.app.Main"
    out = {
        "v1": builder.add("v1.jar", {**helper, "com/example/app/Main.java": MAIN_V1}, main),
        "v2": builder.add("v2.jar", {**helper, "com/example/app/Main.java": MAIN_V2}, main),
        "v3": builder.add("v3.jar", {**helper, "com/example/app/Main.java": MAIN_V3}, main),
        "long": builder.add(
            "long.jar",
            {f"{LONG_PACKAGE.replace('.', '/')}/{LONG_CLASS}.java": LONG_MAIN},
            f"{LONG_PACKAGE}.{LONG_CLASS}",
        ),
        "nomain": builder.add("nomain.jar", helper, None),
    }
    builder.build()
    return out


def _copy_jar(src: Path, dest: Path, extra: dict[str, bytes | str]) -> None:
    """``src`` with ``extra`` entries added."""
    with zipfile.ZipFile(src) as zin:
        entries = [(info.filename, zin.read(info)) for info in zin.infolist()]
    with zipfile.ZipFile(dest, "w") as zout:
        for name, data in [*entries, *extra.items()]:
            zout.writestr(name, data)


# -- main_class ---------------------------------------------------------------------------------


def test_main_class_of_an_executable_jar(jars: dict[str, Path]) -> None:
    assert main_class(jars["v1"]) == "com.example.app.Main"


def test_main_class_wrapped_over_several_manifest_lines(jars: dict[str, Path]) -> None:
    manifest = zipfile.ZipFile(jars["long"]).read("META-INF/MANIFEST.MF")
    # The jar tool wraps lines at 72 bytes: the value continues on a line starting with a space.
    assert b"\r\n " in manifest or b"\n " in manifest
    assert main_class(jars["long"]) == f"{LONG_PACKAGE}.{LONG_CLASS}"


def test_main_class_manifest_without_main_class(jars: dict[str, Path]) -> None:
    jar = jars["nomain"]
    assert "META-INF/MANIFEST.MF" in zipfile.ZipFile(jar).namelist()
    with pytest.raises(UserError) as info:
        main_class(jar)
    assert str(info.value) == (
        f"{jar}: no Main-Class in META-INF/MANIFEST.MF: build it as an executable jar "
        "(jar --main-class CLASS, or your build tool's manifest setting)"
    )
    assert info.value.exit_code == 2


def test_main_class_zip_without_manifest(tmp_path: Path) -> None:
    jar = tmp_path / "plain.jar"
    with zipfile.ZipFile(jar, "w") as zf:
        zf.writestr("com/example/Main.class", b"\xca\xfe\xba\xbe")
    with pytest.raises(UserError) as info:
        main_class(jar)
    assert str(info.value) == (
        f"{jar}: no Main-Class in META-INF/MANIFEST.MF: build it as an executable jar "
        "(jar --main-class CLASS, or your build tool's manifest setting)"
    )


def test_main_class_text_file_named_jar(tmp_path: Path) -> None:
    jar = tmp_path / "app.jar"
    jar.write_text("this is not a zip archive\n")
    with pytest.raises(UserError) as info:
        main_class(jar)
    assert str(info.value) == (
        f"{jar}: not a jar file (File is not a zip file): app.path must name an executable jar"
    )
    assert info.value.exit_code == 2


def test_main_class_empty_value_is_no_main_class(tmp_path: Path) -> None:
    jar = tmp_path / "empty.jar"
    with zipfile.ZipFile(jar, "w") as zf:
        zf.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\r\nMain-Class: \r\n\r\n")
    with pytest.raises(UserError, match="no Main-Class"):
        main_class(jar)


# -- referenced_packages ------------------------------------------------------------------------


def test_referenced_packages_lists_jdk_packages_not_own(jars: dict[str, Path]) -> None:
    used = referenced_packages(jars["v1"])
    assert used == sorted(used)
    assert {"java/net", "com/sun/net/httpserver", "java/lang"} <= set(used)
    assert "java/lang/invoke" in used  # the lambda's bootstrap method
    assert not {p for p in used if p.startswith("com/example")}, used
    assert "" not in used


def test_referenced_packages_same_for_a_code_only_change(jars: dict[str, Path]) -> None:
    assert jars["v1"].read_bytes() != jars["v2"].read_bytes()
    assert referenced_packages(jars["v2"]) == referenced_packages(jars["v1"])


def test_referenced_packages_changes_with_a_new_import(jars: dict[str, Path]) -> None:
    before, after = referenced_packages(jars["v1"]), referenced_packages(jars["v3"])
    assert "java/util/concurrent" not in before
    assert set(after) - set(before) == {"java/util/concurrent"}


def test_referenced_packages_ignores_non_class_entries(tmp_path: Path, jars: dict[str, Path]
                                                      ) -> None:
    jar = tmp_path / "with-resources.jar"
    _copy_jar(jars["v1"], jar, {"static/Lcom/evil/Thing;.txt": "Ljavax/swing/JFrame;"})
    assert referenced_packages(jar) == referenced_packages(jars["v1"])


def test_referenced_packages_bad_class_file(tmp_path: Path, jars: dict[str, Path]) -> None:
    data = zipfile.ZipFile(jars["v1"]).read("com/example/app/Main.class")
    jar = tmp_path / "broken.jar"
    with zipfile.ZipFile(jar, "w") as zf:
        zf.writestr("com/example/app/Main.class", data[:40])  # cut inside the constant pool
    with pytest.raises(UserError) as info:
        referenced_packages(jar)
    assert str(info.value) == f"{jar}: com/example/app/Main.class is not a valid class file"


def test_referenced_packages_multi_release_classes_are_own(tmp_path: Path,
                                                           jars: dict[str, Path]) -> None:
    jar = tmp_path / "mr.jar"
    helper = zipfile.ZipFile(jars["v1"]).read("com/example/util/Helper.class")
    _copy_jar(jars["v1"], jar, {"META-INF/versions/17/com/example/util/Helper.class": helper})
    assert referenced_packages(jar) == referenced_packages(jars["v1"])



def test_source_variants_differ_as_intended() -> None:
    # Guard against the string edits that make v2 and v3 silently not applying.
    assert MAIN_V2 != MAIN_V1
    assert "ConcurrentHashMap" in MAIN_V3 and "import java.util.concurrent" in MAIN_V3
