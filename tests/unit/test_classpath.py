"""Class-Path as the JVM reads it: the pure rules (imagebuilder/apps/classpath.py), the thin-jar
walk that takes only what is inside the app's directory (imagebuilder/apps/thin.py), checked
against the host's real JVM, with jars made by the JDK's ``jar`` tool and Debian's jars (whose
manifests name /usr/share/java/... and wrap long lines)."""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from imagebuilder.apps import classpath
from imagebuilder.apps.archive import Budget
from imagebuilder.apps.detect import detect
from imagebuilder.apps.scan import scan
from imagebuilder.errors import UserError
from support.java_apps import JACKSON, MAIN, ShopBuild, have_tools, make_jar

needs_jdk = pytest.mark.skipif(not have_tools(), reason="needs javac, jar and Debian's "
                               "libjackson2-databind-java (scripts/setup.sh installs them)")
DEBIAN_JAVA = Path("/usr/share/java")


# -- the rules ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("token", "path", "directory"), [
    ("lib/a.jar", "/app/lib/a.jar", False),
    ("../b.jar", "/b.jar", False),
    ("lib/./x/../a.jar", "/app/lib/a.jar", False),
    ("/usr/share/java/c.jar", "/usr/share/java/c.jar", False),
    ("file:/usr/share/java/c.jar", "/usr/share/java/c.jar", False),
    ("FILE:lib/a.jar", "/app/lib/a.jar", False),  # the jar's own scheme: relative
    ("file://localhost/opt/d.jar", "/opt/d.jar", False),
    ("url:lib/a.jar", "/app/lib/a.jar", False),
    ("lib/sp%20ace.jar", "/app/lib/sp ace.jar", False),
    ("lib/%C3%BC.jar", "/app/lib/\u00fc.jar", False),
    ("lib/a.jar#frag", "/app/lib/a.jar", False),
    ("lib/q.jar?v=1", "/app/lib/q.jar?v=1", False),  # the query stays in the file name
    ("classes/", "/app/classes/", True),
    ("./", "/app/", True),
    (".", "/app/", True),
    ("lib/%2e%2e/x.jar", "/app/lib/../x.jar", False),  # decoded after the dots are removed
])
def test_resolve_like_java_net_url(token: str, path: str, directory: bool) -> None:
    entry = classpath.resolve("/app/shop.jar", token)
    assert (entry.path, entry.directory, entry.ignored, entry.fatal) == (path, directory, None,
                                                                        None)


@pytest.mark.parametrize(("token", "ignored"), [
    ("http://example.org/x.jar", "a http: URL"),
    ("jar:file:/x.jar!/", "a jar: URL"),
    ("file://build-host/x.jar", "a file on host build-host"),
    ("lib/bad%zz.jar", "a malformed %-escape"),
    ("lib/%ff.jar", "not UTF-8"),
])
def test_entries_the_jvm_skips(token: str, ignored: str) -> None:
    entry = classpath.resolve("/app/shop.jar", token)
    assert entry.path is None and entry.ignored and ignored in entry.ignored


def test_unknown_scheme_drops_the_jar() -> None:
    assert classpath.resolve("/app/shop.jar", "foo:x.jar").fatal == "unknown protocol foo"
    # A drive letter or a colon after a slash is no scheme.
    assert classpath.resolve("/app/shop.jar", "lib/a:b.jar").path == "/app/lib/a:b.jar"


def test_split_on_the_tokenizer_whitespace() -> None:
    assert classpath.split(" a.jar\tb.jar\r\nc.jar\fd.jar  ") == ["a.jar", "b.jar", "c.jar",
                                                                   "d.jar"]


def test_manifest_as_java_util_jar_reads_it() -> None:
    text = (b"Manifest-Version: 1.0\r\nClass-Path: lib/a.jar lib/b\r\n .jar\r\n  lib/c.jar\n"
            b"Main-Class: x.Y\rclass-path: lib/last.jar lib/wins.jar\r\n\r\nName: z\r\n"
            b"Class-Path: not/main.jar\r\n")
    attrs = classpath.main_attributes(text)
    assert attrs["main-class"] == "x.Y"
    assert classpath.class_path(text) == "lib/last.jar lib/wins.jar"  # the last one wins
    wrapped = b"Class-Path: lib/a.jar lib/b\r\n .jar\r\n  lib/c.jar\n\n"
    assert classpath.split(classpath.class_path(wrapped) or "") == ["lib/a.jar", "lib/b.jar",
                                                                    "lib/c.jar"]
    # A last line without a newline is not read; no Class-Path bytes, nothing is parsed.
    assert classpath.class_path(b"Main-Class: a.B\r\nClass-Path: x.jar") is None
    assert classpath.class_path(b"Main-Class:a.B\r\n") is None
    for bad in (b"Class-Path: a.jar\r\nBad:x\r\n", b" Class-Path: x.jar\r\n",
                b"Class-Path: " + b"x" * 600 + b"\r\n", b"Bad Name: v\r\nClass-Path: a\r\n"):
        with pytest.raises(classpath.ManifestError):
            classpath.class_path(bad)


# -- the thin-jar walk, with real jars ----------------------------------------------------------


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> ShopBuild:
    if not have_tools():
        pytest.skip("needs javac, jar and libjackson2-databind-java")
    return ShopBuild(tmp_path_factory.mktemp("shop"))


def _jar_tool(classes: Path, dest: Path, attrs: dict[str, str]) -> Path:
    """A jar made by the JDK's jar tool (which wraps manifest lines at 72 bytes)."""
    manifest = dest.with_suffix(".mf")
    manifest.write_text("".join(f"{k}: {v}\n" for k, v in attrs.items()))
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["jar", "--create", "--file", str(dest), "--manifest", str(manifest),
                    "-C", str(classes), "."], check=True, capture_output=True)
    manifest.unlink()
    return dest


def _detect(jar: Path, main: str | None = None, config_dir: Path | None = None):  # type: ignore[no-untyped-def]
    budget = Budget()
    shape = detect(jar, main, budget, **({"config_dir": config_dir} if config_dir else {}))
    scan(shape, 21, budget, jar)
    return shape


@needs_jdk
def test_debian_jars_absolute_class_path_is_left_out_with_a_warning(shop: ShopBuild,
                                                                    tmp_path: Path) -> None:
    """Debian's jackson-databind.jar names /usr/share/java/jackson-{annotations,core}.jar and
    cdi-api.jar wraps /usr/share/java/el-api-3.0.jar across a continuation line: the guest
    resolves those paths itself; nothing is taken from this machine's /usr/share/java."""
    cdi = DEBIAN_JAVA / "cdi-api.jar"
    app = tmp_path / "app"
    (app / "lib").mkdir(parents=True)
    shutil.copyfile(JACKSON[0], app / "lib" / "jackson-databind.jar")
    names = ["lib/jackson-databind.jar"]
    if cdi.is_file():
        shutil.copyfile(cdi, app / "lib" / "cdi-api.jar")
        names.append("lib/cdi-api.jar")
    jar = _jar_tool(shop.app, app / "shop.jar", {
        "Main-Class": MAIN, "Class-Path": "file:/usr/share/java/jackson-annotations.jar "
        + " ".join(names) + " lib/optional-1.0.jar"})
    with zipfile.ZipFile(jar) as zf:  # the jar tool wrapped the long Class-Path
        assert b"\r\n " in zf.read("META-INF/MANIFEST.MF")
    shape = _detect(jar)
    assert shape.kind == "thin-jar" and [f.dest for f in shape.libs] == names
    databind = app / "lib" / "jackson-databind.jar"
    assert shape.warnings[:3] == (
        f"{jar}: Class-Path entry file:/usr/share/java/jackson-annotations.jar is /usr/share/java"
        "/jackson-annotations.jar in the image, outside the app's directory /app: left out "
        f"(nothing outside {app} is taken from this machine); to include it, copy it into {app} "
        "and name it relative to the jar, or install the Debian package that ships it with "
        "[app] packages (the image resolves the same path)",
        # Debian's own absolute entry (the other one is named already: taken once).
        f"{databind}: Class-Path entry /usr/share/java/jackson-core.jar is /usr/share/java/"
        "jackson-core.jar in the image, outside the app's directory /app: left out (nothing "
        f"outside {app} is taken from this machine); to include it, copy it into {app} and name "
        "it relative to the jar, or install the Debian package that ships it with [app] "
        "packages (the image resolves the same path)",
        f"{app}/lib/cdi-api.jar: Class-Path entry /usr/share/java/atinject-jsr330-api.jar is "
        "/usr/share/java/atinject-jsr330-api.jar in the image, outside the app's directory "
        f"/app: left out (nothing outside {app} is taken from this machine); to include it, copy"
        f" it into {app} and name it relative to the jar, or install the Debian package that "
        "ships it with [app] packages (the image resolves the same path)")[:len(names) + 1]
    assert shape.warnings[-1] == (f"{jar}: Class-Path entry lib/optional-1.0.jar ({app}/lib/"
                                  "optional-1.0.jar) does not exist: left out, as the JVM skips "
                                  "it")
    warned = "\n".join(shape.warnings)
    if cdi.is_file():
        assert "Class-Path entry /usr/share/java/el-api-3.0.jar is" in warned
    assert all("\n" not in w for w in shape.warnings)
    assert not any(f.source and not f.source.is_relative_to(app) for f in shape.libs)


@needs_jdk
def test_percent_encoding_spaces_duplicates_and_directories(shop: ShopBuild,
                                                            tmp_path: Path) -> None:
    app = tmp_path / "app"
    (app / "lib dir").mkdir(parents=True)
    shutil.copyfile(JACKSON[1], app / "lib dir" / "jackson core.jar")
    shutil.copytree(shop.greet, app / "classes")
    shutil.copytree(shop.greet, app / "noslash")
    jar = _jar_tool(shop.app, app / "shop.jar", {
        "Main-Class": MAIN, "Class-Path": "lib%20dir/jackson%20core.jar ./lib%20dir/./jackson"
        "%20core.jar file:lib%20dir/jackson%20core.jar classes/ noslash http://x.invalid/a.jar"})
    shape = _detect(jar)
    assert [f.dest for f in shape.libs] == ["lib dir/jackson core.jar"]  # named three times
    assert "classes/com/example/greet/Greeting.class" in {f.dest for f in shape.app}
    assert not any(f.dest.startswith("noslash/") for f in shape.app)
    assert shape.warnings == (
        f"{jar}: Class-Path entry http://x.invalid/a.jar is a http: URL, which the JVM ignores: "
        "left out",
        f"{jar}: Class-Path entry noslash ({app}/noslash) is a directory named without a "
        "trailing /, which the JVM opens as a jar: left out, as the JVM skips it")


@needs_jdk
def test_escaping_entries_are_left_out(shop: ShopBuild, tmp_path: Path) -> None:
    (tmp_path / "outside.jar").write_bytes(JACKSON[1].read_bytes())
    app = tmp_path / "app"
    jar = make_jar(shop.app, app / "shop.jar", {
        "Main-Class": MAIN, "Class-Path": "../outside.jar lib/../../outside.jar "
        f"{tmp_path}/outside.jar"})
    shape = _detect(jar)
    assert not shape.libs and shape.kind == "jar"
    assert [w.split(" is ", 1)[1].split(" in the image")[0] for w in shape.warnings] == [
        "/outside.jar", str(tmp_path / "outside.jar")]  # the second names the same /outside.jar


@needs_jdk
def test_symbolic_links_out_of_the_app_are_left_out(shop: ShopBuild, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copyfile(JACKSON[1], outside / "jackson-core.jar")
    shutil.copytree(shop.greet, outside / "classes")
    app = tmp_path / "app"
    (app / "lib").mkdir(parents=True)
    os.symlink(outside / "jackson-core.jar", app / "lib" / "core.jar")  # a symlinked file
    os.symlink(outside, app / "deps")  # a symlinked parent directory
    os.symlink(outside / "classes", app / "classes")  # a symlinked directory of classes
    jar = make_jar(shop.app, app / "shop.jar", {
        "Main-Class": MAIN, "Class-Path": "lib/core.jar deps/jackson-core.jar classes/"})
    shape = _detect(jar)
    assert not shape.libs and [f.dest for f in shape.app] == ["shop.jar"]
    assert len(shape.warnings) == 3 and all(
        f"leads out of the app's directory {app} through a symbolic link" in w
        for w in shape.warnings)


@needs_jdk
def test_library_class_path_and_its_failures(shop: ShopBuild, tmp_path: Path) -> None:
    app = tmp_path / "app"
    make_jar(shop.greet, app / "lib" / "greet.jar", {"Class-Path": "core.jar ../lib/core.jar"})
    shutil.copyfile(JACKSON[1], app / "lib" / "core.jar")
    make_jar(shop.greet, app / "lib" / "broken.jar", {"Class-Path": "foo:x.jar core.jar"})
    jar = make_jar(shop.app, app / "shop.jar", {"Main-Class": MAIN,
                                            "Class-Path": "lib/greet.jar lib/broken.jar"})
    shape = _detect(jar)
    assert [f.dest for f in shape.libs] == ["lib/greet.jar", "lib/core.jar"]  # the JVM's order
    assert shape.warnings == (f"{app}/lib/broken.jar: its Class-Path entry foo:x.jar is not a "
                              "URL the JVM accepts (unknown protocol foo), so the JVM drops it "
                              "and what it names from the class path: left out",)
    bad = make_jar(shop.app, tmp_path / "bad" / "shop.jar", {"Main-Class": MAIN,
                                                         "Class-Path": "foo:x.jar"})
    with pytest.raises(UserError) as info:
        _detect(bad)
    assert str(info.value) == (f"{bad}: its Class-Path entry foo:x.jar is not a URL the JVM "
                               "accepts (unknown protocol foo), so the JVM cannot load it: fix "
                               "the jar's manifest")


@needs_jdk
def test_class_path_directories_only_inside_the_config_directory(shop: ShopBuild,
                                                                 tmp_path: Path) -> None:
    app = tmp_path / "dist"
    shutil.copytree(shop.greet, app / "classes")
    jar = make_jar(shop.app, app / "shop.jar", {"Main-Class": MAIN, "Class-Path": "classes/"})
    inside = _detect(jar, config_dir=tmp_path)
    assert "classes/com/example/greet/Greeting.class" in {f.dest for f in inside.app}
    project = tmp_path / "project"
    project.mkdir()
    outside = detect(jar, None, Budget(), config_dir=project)
    assert [f.dest for f in outside.app] == ["shop.jar"]
    assert outside.warnings == (
        f"{jar}: Class-Path entry classes/ ({app}/classes) is a directory outside {project}, "
        "where imagebuilder.toml is: left out (an app outside it may only be a single file); "
        "move the app into it",)
    with pytest.raises(UserError) as info:
        detect(app, MAIN, Budget(), config_dir=project)
    assert str(info.value) == (f"app.path: {app} is an app directory outside {project}, where "
                               "imagebuilder.toml is: only a single jar or war may be outside "
                               "it; move the directory into it")


# -- against the real JVM -----------------------------------------------------------------------

PROBE = """\
package probe;

public final class Probe {
    public static void main(String[] args) {
        StringBuilder found = new StringBuilder();
        for (String name : args) {
            try {
                Class.forName(name);
                found.append(name).append(' ');
            } catch (ClassNotFoundException e) {
                // not on the class path
            }
        }
        System.out.println(found.toString().trim());
    }
}
"""


@needs_jdk
def test_the_jvm_loads_what_we_take(tmp_path: Path) -> None:
    """A jar whose Class-Path exercises every rule, run by the host's JVM: the classes it can load
    come from exactly the jars and directories we take, plus those we leave out only because
    they are outside the app's directory (where the JVM on this host finds them)."""
    from imagebuilder.apps import thin
    src = tmp_path / "src"
    markers = ["Plain", "Space", "Umlaut", "Query", "Hash", "Dots", "FileRel", "FileAbs", "Local",
               "Dir", "NoSlash", "Nested", "Deeper", "Dropped", "Outside", "Missing", "Http",
               "Percent", "PercentNext"]
    for name in markers:
        (src / "m").mkdir(parents=True, exist_ok=True)
        (src / "m" / f"{name}.java").write_text(f"package m; public final class {name} {{}}\n")
    (src / "probe").mkdir()
    (src / "probe" / "Probe.java").write_text(PROBE)
    classes = tmp_path / "classes"
    subprocess.run(["javac", "--release", "17", "-d", str(classes),
                    *map(str, src.rglob("*.java"))], check=True, capture_output=True)
    app = tmp_path / "app"

    def marker(name: str, dest: Path, attrs: dict[str, str] | None = None) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(dest, "w") as zf:
            if attrs:
                zf.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\r\n" + "".join(
                    f"{k}: {v}\r\n" for k, v in attrs.items()) + "\r\n")
            zf.write(classes / "m" / f"{name}.class", f"m/{name}.class")

    marker("Plain", app / "lib" / "plain.jar", {"Class-Path": "nested.jar"})
    marker("Nested", app / "lib" / "nested.jar", {"Class-Path": "../deeper/d.jar"})
    marker("Deeper", app / "deeper" / "d.jar")
    marker("Space", app / "lib" / "sp ace.jar")
    marker("Umlaut", app / "lib" / "\u00fc.jar")
    marker("Query", app / "lib" / "q.jar?v=1")
    marker("Hash", app / "lib" / "h.jar")
    marker("Dots", app / "lib" / "dots.jar")
    marker("FileRel", app / "lib" / "filerel.jar")
    marker("FileAbs", app / "lib" / "fileabs.jar")
    marker("Local", app / "lib" / "local.jar")
    marker("Dropped", app / "lib" / "dropped.jar", {"Class-Path": "bogus:x.jar"})
    marker("Outside", tmp_path / "outside.jar")
    marker("Http", app / "lib" / "http.jar")
    # A directory named with a % : its jar's entries resolve against the encoded URL.
    marker("Percent", app / "100%" / "p.jar", {"Class-Path": "next%20one.jar"})
    marker("PercentNext", app / "100%" / "next one.jar")
    for name, folder in (("Dir", "dir"), ("NoSlash", "noslash")):
        (app / folder / "m").mkdir(parents=True)
        shutil.copyfile(classes / "m" / f"{name}.class", app / folder / "m" / f"{name}.class")
    entries = ["lib/plain.jar", "lib/sp%20ace.jar", "lib/%C3%BC.jar", "lib/q.jar?v=1",
               "lib/h.jar#x", "lib/./x/../dots.jar", "file:lib/filerel.jar",
               f"file:{app}/lib/fileabs.jar", f"file://localhost{app}/lib/local.jar", "dir/",
               "noslash", "lib/dropped.jar", "../outside.jar", "lib/missing.jar",
               "http://127.0.0.1:9/lib/http.jar", "100%25/p.jar"]
    shutil.copytree(classes / "probe", tmp_path / "probe-only" / "probe")
    jar = _jar_tool(tmp_path / "probe-only", app / "probe.jar", {"Main-Class": "probe.Probe",
                                                 "Class-Path": " ".join(entries)})
    out = subprocess.run(["java", "-Xshare:auto", "-jar", str(jar), *(f"m.{m}" for m in markers)],
                         check=True, capture_output=True, text=True).stdout.split()
    jvm = {name.removeprefix("m.") for name in out}
    assert jvm == {"Plain", "Nested", "Deeper", "Space", "Umlaut", "Query", "Hash", "Dots",
                   "FileRel", "FileAbs", "Local", "Dir", "Outside", "Percent", "PercentNext"}
    # Ours, with the app's directory where the JVM above had it (so absolute paths agree).
    found = thin.follow(jar, Budget(), guest_dir=str(app))
    ours = {_marker_of(f.source) for f in [*found.jars, *found.dir_files]}
    outside = {w for w in found.warnings if "outside the app's directory" in w}
    assert ours | ({"Outside"} if len(outside) == 1 else set()) == jvm


def _marker_of(path: Path | None) -> str:
    assert path is not None
    if path.suffix == ".class":
        return path.stem
    with zipfile.ZipFile(path) as zf:
        return next(n for n in zf.namelist() if n.endswith(".class"))[2:-6]


@needs_jdk
def test_app_directory_jars_class_path(shop: ShopBuild, tmp_path: Path) -> None:
    """The jars on an app directory's -cp have their Class-Path followed too: what they name
    inside the app is scanned (the JVM loads it), what they name outside is a warning."""
    root = shop.app_dir(tmp_path / "dist")
    (root / "lib" / "greet-1.0.jar").rename(root / "extra.jar")
    (root / "greeting").mkdir()
    (root / "extra.jar").rename(root / "greeting" / "greet.jar")
    make_jar(shop.app, root / "lib" / "shop.jar", {"Class-Path": "../greeting/greet.jar"})
    shape = _detect(root, main="com.example.greet.Greeting")  # only in greeting/greet.jar
    assert "/app/greeting/greet.jar" not in shape.argv[1]
    databind = root / "lib" / "jackson-databind.jar"
    assert [w.partition(" is ")[0] for w in shape.warnings] == [
        f"{databind}: Class-Path entry /usr/share/java/jackson-annotations.jar",
        f"{databind}: Class-Path entry /usr/share/java/jackson-core.jar"]
