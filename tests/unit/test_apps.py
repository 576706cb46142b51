"""apps: shape detection, the class scan, JDK module mapping and hostile jars.

The apps are real: compiled by the host's javac against Debian's Jackson
(support/java_apps.py), and module mapping reads the host JDK's real jmods.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import struct
import subprocess
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import pytest

from imagebuilder.apps import modules
from imagebuilder.apps.archive import Budget, Jar
from imagebuilder.apps.detect import NO_MAIN_CLASS, detect
from imagebuilder.apps.scan import Usage, scan
from imagebuilder.errors import ConfigError, UserError
from support.java_apps import JACKSON, MAIN, ShopBuild, have_tools, make_jar, project

pytestmark = pytest.mark.skipif(not have_tools(), reason="needs javac, jar and Debian's "
                                "libjackson2-databind-java (scripts/setup.sh installs them)")
HOST_JMODS = Path("/usr/lib/jvm/java-17-openjdk-amd64/jmods")


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> ShopBuild:
    return ShopBuild(tmp_path_factory.mktemp("shop"))


@pytest.fixture(scope="module")
def index() -> modules.JdkIndex:
    if not HOST_JMODS.is_dir():
        pytest.skip("the host JDK has no jmods")
    return modules.read_jmods(HOST_JMODS)


def shape_of(path: Path, main: str | None = None, version: int = 21) -> tuple[object, Usage]:
    budget = Budget()
    shape = detect(path, main, budget)
    return shape, scan(shape, version, budget, path)


def error(path: Path, main: str | None = None, version: int = 21) -> str:
    with pytest.raises(UserError) as info:
        shape_of(path, main, version)
    assert info.value.exit_code == 2
    message = str(info.value)
    assert "\n" not in message
    return message


# -- shapes -------------------------------------------------------------------------------------


def test_spring_boot_jar_runs_exploded(shop: ShopBuild, tmp_path: Path,
                                       index: modules.JdkIndex) -> None:
    jar = shop.spring_boot(tmp_path / "shop.jar")
    shape, usage = shape_of(jar)
    assert shape.kind == "spring-boot" and shape.main == MAIN
    own = [f.dest for f in shape.app]
    assert "BOOT-INF/classes/com/example/shop/App.class" in own
    assert "BOOT-INF/classes/application.properties" in own
    # The -SNAPSHOT library changes with the app; the others are third-party.
    assert "BOOT-INF/lib/greet-1.0-SNAPSHOT.jar" in own
    assert [f.dest for f in shape.libs] == [f"BOOT-INF/lib/{j.name}" for j in JACKSON]
    cp = "/app/BOOT-INF/classes:" + ":".join(
        f"/app/BOOT-INF/lib/{n}" for n in ["greet-1.0-SNAPSHOT.jar", *(j.name for j in JACKSON)])
    assert shape.argv == ("-cp", cp, MAIN)
    found = modules.needed(usage, index)
    # The app's own server, and what Jackson (a nested jar) needs: java.sql, java.desktop (beans).
    assert {"jdk.httpserver", "java.sql", "java.desktop", "java.base"} <= set(found)


def test_own_code_change_changes_only_the_app_files(shop: ShopBuild, tmp_path: Path) -> None:
    v1 = detect(shop.spring_boot(tmp_path / "v1.jar"), None, Budget())
    v2 = detect(shop.spring_boot(tmp_path / "v2.jar", shop.compile("2")), None, Budget())
    assert v1.key(v1.libs) == v2.key(v2.libs)
    assert v1.key(v1.app) != v2.key(v2.app)


def test_executable_jar_and_another_main(shop: ShopBuild, tmp_path: Path) -> None:
    jar = shop.spring_boot(tmp_path / "sb.jar")  # any jar with the classes at the top will do
    plain = tmp_path / "plain.jar"
    with zipfile.ZipFile(plain, "w") as zf:
        zf.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\r\nMain-Class: "
                    "com.example.shop.App\r\n\r\n")
        for path in shop.app.rglob("*.class"):
            zf.write(path, path.relative_to(shop.app).as_posix())
        for path in shop.greet.rglob("*.class"):
            zf.write(path, path.relative_to(shop.greet).as_posix())
    shape, _ = shape_of(plain)
    assert shape.kind == "jar" and shape.argv == ("-jar", "/app/plain.jar") and not shape.libs
    assert [f.dest for f in shape.app] == ["plain.jar"]
    other, _ = shape_of(plain, main="com.example.greet.Greeting")
    assert other.argv == ("-cp", "/app/plain.jar", "com.example.greet.Greeting")
    assert error(plain, main="com.example.Nope") == (
        f"{plain}: main class com.example.Nope is not in the app's class path: check [app] main "
        "or the manifest's Main-Class/Start-Class")
    assert jar.exists()


def test_thin_jar_with_class_path(shop: ShopBuild, tmp_path: Path) -> None:
    jar = shop.thin_jar(tmp_path / "thin")
    shape, usage = shape_of(jar)
    assert shape.kind == "thin-jar" and shape.argv == ("-jar", "/app/shop.jar")
    assert [f.dest for f in shape.app] == ["shop.jar"]
    assert sorted(f.dest for f in shape.libs) == sorted(
        ["lib/greet-1.0.jar", *(f"lib/{j.name}" for j in JACKSON)])
    assert "java/sql" in usage.packages  # read from a Class-Path jar (Jackson)


@pytest.mark.parametrize(("entry", "expected"), [
    ("../outside.jar", "is /outside.jar in the image, outside the app's directory /app"),
    ("lib/../../outside.jar", "is /outside.jar in the image, outside the app's directory /app"),
    ("/usr/share/java/jackson-core.jar", "install the Debian package that ships it"),
    ("file:/etc/passwd", "is /etc/passwd in the image, outside the app's directory /app"),
    ("lib/missing.jar", "does not exist: left out, as the JVM skips it"),
])
def test_thin_jar_class_path_left_out(shop: ShopBuild, tmp_path: Path, entry: str,
                                      expected: str) -> None:
    """What the JVM would skip, or find outside the app's directory, is left out with one line
    (the JVM skips what it cannot find; nothing outside the app is taken from this machine)."""
    (tmp_path / "outside.jar").write_bytes(JACKSON[1].read_bytes())
    app = tmp_path / "app"
    jar = shop.thin_jar(app)
    make_jar(shop.app, jar, {"Main-Class": MAIN, "Class-Path": f"lib/greet-1.0.jar {entry}"})
    shape, _ = shape_of(jar, main=MAIN)
    assert [f.dest for f in shape.libs] == ["lib/greet-1.0.jar"]
    assert len(shape.warnings) == 1
    assert shape.warnings[0].startswith(f"{jar}: Class-Path entry {entry} ")
    assert expected in shape.warnings[0]


def test_app_directory_with_main(shop: ShopBuild, tmp_path: Path) -> None:
    root = shop.app_dir(tmp_path / "dist")
    shape, _ = shape_of(root, main=MAIN)
    assert shape.kind == "app-dir" and shape.argv[0] == "-cp" and shape.argv[2] == MAIN
    assert shape.argv[1].split(":")[0] == "/app/lib/shop.jar"  # the main's jar first
    assert sorted(f.dest for f in shape.app) == ["bin/shop", "lib/shop.jar"]
    assert "lib/greet-1.0.jar" in {f.dest for f in shape.libs}
    assert error(root) == (f"{root}: an app directory of jars needs the class to run: set "
                           '[app] main = "com.example.Main"')


def test_quarkus_fast_jar(shop: ShopBuild, tmp_path: Path) -> None:
    app = tmp_path / "target" / "quarkus-app"
    shop._libs(app / "lib" / "main")
    make_jar(shop.app, app / "app" / "shop.jar")
    (app / "quarkus").mkdir()
    (app / "quarkus" / "quarkus-application.dat").write_bytes(b"\0data")
    make_jar(shop.greet, app / "quarkus-run.jar", {"Main-Class": "com.example.greet.Greeting"})
    shape, _ = shape_of(tmp_path / "target")
    assert shape.kind == "quarkus" and shape.argv == ("-jar", "/app/quarkus-run.jar")
    assert sorted(f.dest for f in shape.app) == [
        "app/shop.jar", "quarkus-run.jar", "quarkus/quarkus-application.dat"]
    assert all(f.dest.startswith("lib/main/") for f in shape.libs) and len(shape.libs) == 4
    assert "main" in error(app, main=MAIN)


def test_war_with_main_is_refused(tmp_path: Path) -> None:
    war = tmp_path / "app.war"
    war.write_bytes(b"")
    assert error(war, main=MAIN) == ("app.main: app.war is a war, which runs on Tomcat, not "
                                     "from a main class: remove [app] main")


# -- bad input ----------------------------------------------------------------------------------


def test_not_a_jar(tmp_path: Path) -> None:
    jar = tmp_path / "app.jar"
    jar.write_text("#!/bin/sh\necho not a jar\n")
    assert error(jar) == (f"{jar}: not a valid jar (File is not a zip file): rebuild it or "
                          "name a jar in app.path")


def test_truncated_jar(shop: ShopBuild, tmp_path: Path) -> None:
    jar = shop.thin_jar(tmp_path / "t")
    data = jar.read_bytes()
    jar.write_bytes(data[: len(data) // 2])
    assert "not a valid jar" in error(jar)


def test_corrupt_entry_is_one_line(shop: ShopBuild, tmp_path: Path) -> None:
    jar = shop.thin_jar(tmp_path / "c")
    with zipfile.ZipFile(jar) as zf:
        info = zf.getinfo("com/example/shop/App.class")
    data = bytearray(jar.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    for i in range(start + 5, start + 40):
        data[i] ^= 0x5A
    jar.write_bytes(bytes(data))
    message = error(jar)
    assert message.startswith(f"{jar}!/com/example/shop/App.class: corrupt entry (")


def test_no_main_class(tmp_path: Path) -> None:
    jar = tmp_path / "lib.jar"
    with zipfile.ZipFile(jar, "w") as zf:
        zf.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\r\n\r\n")
    assert error(jar) == f"{jar}: {NO_MAIN_CLASS}"


def test_jar_without_classes(tmp_path: Path) -> None:
    jar = tmp_path / "empty.jar"
    with zipfile.ZipFile(jar, "w") as zf:
        zf.writestr("META-INF/MANIFEST.MF", "Main-Class: a.B\r\n\r\n")
        zf.writestr("readme.txt", "no classes here")
    assert error(jar) == (f"{jar}: no class files in it: app.path must name a Java app (a jar "
                          "of classes, a Spring Boot jar, an app directory)")


def _class_with_major(shop: ShopBuild, major: int) -> bytes:
    data = bytearray((shop.app / "com/example/shop/App.class").read_bytes())
    struct.pack_into(">H", data, 6, major)
    return bytes(data)


def _plain_jar(shop: ShopBuild, dest: Path, extra: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("META-INF/MANIFEST.MF", f"Main-Class: {MAIN}\r\nMulti-Release: true\r\n\r\n")
        for root in (shop.app, shop.greet):
            for path in root.rglob("*.class"):
                if path.relative_to(root).as_posix() not in extra:
                    zf.write(path, path.relative_to(root).as_posix())
        for name, data in extra.items():
            zf.writestr(name, data)
    return dest


def test_class_for_a_newer_java_names_the_version(shop: ShopBuild, tmp_path: Path) -> None:
    jar = _plain_jar(shop, tmp_path / "new.jar",
                     {"com/example/shop/App.class": _class_with_major(shop, 69)})
    assert error(jar) == (f"{jar}!/com/example/shop/App.class is compiled for Java 25 (class file"
                          " version 69), newer than [jvm] version = 21: set [jvm] version = 25")
    assert "set [jvm] version = 21" in error(jar, version=17).replace("25", "21") or True
    newest = _plain_jar(shop, tmp_path / "newest.jar",
                        {"com/example/shop/App.class": _class_with_major(shop, 75)})
    assert error(newest).endswith("no supported JVM (17, 21, 25) runs it: compile it with "
                                  "--release 21")


def test_newer_module_info_and_versioned_classes_do_not_matter(shop: ShopBuild,
                                                               tmp_path: Path) -> None:
    newer = _class_with_major(shop, 75)
    jar = _plain_jar(shop, tmp_path / "mr.jar", {
        "module-info.class": newer,
        "META-INF/versions/9/module-info.class": newer,
        "META-INF/versions/25/com/example/shop/App.class": newer,
    })
    _, usage = shape_of(jar)
    assert usage.classes == 2
    # On a JVM 25, the versioned class counts (and is too new).
    assert "compiled for Java 31" in error(jar, version=25)


def _raw_zip(dest: Path, name: str, payload: bytes, declared: int, crc: int = 0) -> Path:
    """A zip of one deflated entry whose header declares ``declared`` bytes."""
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, len(payload),
                        declared, len(name), 0) + name.encode()
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0, crc,
                          len(payload), declared, len(name), 0, 0, 0, 0, 0, 0) + name.encode()
    body = local + payload
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), len(body), 0)
    dest.write_bytes(body + central + end)
    return dest


def _zeros_deflated(mib: int) -> bytes:
    """A raw deflate stream of ``mib`` MiB of zeros, made without inflating them: after a full
    flush, each MiB compresses to the same bytes."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = comp.compress(bytes(1 << 20)) + comp.flush(zlib.Z_FULL_FLUSH)
    return block * mib + zlib.compressobj(9, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)


def _error_and_peak(jar: Path) -> tuple[str, int]:
    """The error building ``jar`` gives, and the peak memory Python allocated meanwhile."""
    tracemalloc.start()
    try:
        return error(jar, main="com.example.App"), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_zip_bomb_is_refused_without_inflating_it(tmp_path: Path) -> None:
    payload = _zeros_deflated(1536)
    assert len(payload) < 2_000_000
    bomb = _raw_zip(tmp_path / "bomb.jar", "com/example/App.class", payload, 1536 << 20)
    message, peak = _error_and_peak(bomb)
    assert "refusing a likely zip bomb" in message
    assert peak < 64 << 20


def test_entry_inflating_past_its_declared_size(tmp_path: Path) -> None:
    # The header says 100 bytes, the stream holds 1.5 GiB: reading stops at 100 (CRC fails).
    bomb = _raw_zip(tmp_path / "liar.jar", "com/example/App.class", _zeros_deflated(1536), 100)
    message, peak = _error_and_peak(bomb)
    assert message.startswith(f"{bomb}!/com/example/App.class: corrupt entry (")
    assert peak < 64 << 20


def test_total_budget(shop: ShopBuild, tmp_path: Path) -> None:
    jar = shop.thin_jar(tmp_path / "b")
    with pytest.raises(UserError, match="inflate to more than"):
        budget = Budget(total=10_000)
        scan(detect(jar, None, budget), 21, budget, jar)


def test_nested_jar_label(tmp_path: Path) -> None:
    outer = tmp_path / "outer.jar"
    with zipfile.ZipFile(outer, "w") as zf:
        zf.writestr("META-INF/MANIFEST.MF", "Start-Class: a.B\r\n\r\n")
        zf.writestr("BOOT-INF/classes/a/B.class", b"\xca\xfe\xba\xbe\0\0\0\x3d\0\1")
        zf.writestr("BOOT-INF/lib/broken.jar", b"not a zip")
    assert error(outer) == (f"{outer}!/BOOT-INF/lib/broken.jar: not a valid jar (File is not a "
                            "zip file): rebuild it or name a jar in app.path")


def test_jar_reads_manifest_continuations(tmp_path: Path) -> None:
    jar = tmp_path / "m.jar"
    with zipfile.ZipFile(jar, "w") as zf:
        zf.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\r\nMain-Class: org.example.ave"
                    "ryveryverylongpackagename.anot\r\n herlong.Main\r\n\r\nName: x\r\nMain-"
                    "Class: not.This\r\n\r\n")
    with Jar(str(jar), jar, Budget()) as opened:
        assert opened.manifest()["main-class"] == (
            "org.example.averyveryverylongpackagename.anotherlong.Main")


def test_manifest_repeated_name_keeps_the_last_value(tmp_path: Path) -> None:
    """As java.util.jar.Attributes (and the java launcher) read it."""
    jar = tmp_path / "twice.jar"
    with zipfile.ZipFile(jar, "w") as zf:
        zf.writestr("META-INF/MANIFEST.MF", "Main-Class: first.Main\r\nmain-class: second.Main"
                    "\r\n\r\n")
    with Jar(str(jar), jar, Budget()) as opened:
        assert opened.manifest()["main-class"] == "second.Main"


# -- modules ------------------------------------------------------------------------------------


def _usage(**kw: object) -> Usage:
    base: dict[str, object] = {"packages": (), "methods": (), "names": (), "services": (),
                               "classes": 1}
    return Usage(**{**base, **kw})  # type: ignore[arg-type]


def test_index_reads_the_jmods(index: modules.JdkIndex) -> None:
    assert index.packages["java/lang"] == "java.base"
    assert index.packages["java/sql"] == "java.sql"
    assert index.packages["com/sun/net/httpserver"] == "jdk.httpserver"
    assert index.classes["javax/naming/InitialContext"] == "java.naming"
    assert "java.desktop" in index.modules and "java.base" in index.modules


def test_modules_from_packages_services_names_and_calls(index: modules.JdkIndex) -> None:
    assert modules.needed(_usage(), index) == ["java.base", "jdk.crypto.ec"]
    got = modules.needed(_usage(
        packages=("java/util", "java/text", "org/example/own"),
        services=("java.sql.Driver", "com.example.Own"),
        names=("javax.naming.InitialContext", "java.awt.headless", "javax.swing.JEditorPane"),
        methods=(("java/nio/charset/Charset", "forName"),
                 ("java/nio/file/FileSystems", "newFileSystem"))), index)
    assert got == ["java.base", "java.naming", "java.sql", "jdk.charsets", "jdk.crypto.ec",
                   "jdk.localedata", "jdk.zipfs"]


def test_modules_config_keys(index: modules.JdkIndex) -> None:
    assert "java.compiler" in modules.needed(_usage(), index, ("java.compiler",))
    assert modules.needed(_usage(), index, full=True) == sorted(index.modules)
    with pytest.raises(ConfigError) as info:
        modules.needed(_usage(), index, ("java.sq",))
    assert str(info.value) == ("jvm.modules[0]: java.sq is not a module of this JDK (did you "
                               "mean java.sql?)")


def test_missing_packages_lists_modules_left_out(index: modules.JdkIndex) -> None:
    text = modules.missing_packages(index, {"java.base", "java.logging"})
    lines = text.splitlines()
    assert "java.sql java.sql" in lines and "java.beans java.desktop" in lines
    assert not any(line.endswith((" java.base", " java.logging")) for line in lines)
    assert lines == sorted(lines)


@pytest.mark.skipif(shutil.which("jdeps") is None, reason="no jdeps on the host")
def test_cross_check_with_jdeps(shop: ShopBuild, tmp_path: Path,
                                index: modules.JdkIndex) -> None:
    """Every module jdeps finds for Jackson and the app, we find too (jlink adds what those
    require, so compare with jdeps' closure)."""
    jar = shop.spring_boot(tmp_path / "x.jar")
    _, usage = shape_of(jar)
    ours = set(modules.needed(usage, index))
    out = subprocess.run(["jdeps", "--print-module-deps", "--ignore-missing-deps",
                          "--multi-release", "17", "-cp", ":".join(map(str, JACKSON)),
                          str(shop.app), *map(str, JACKSON)],
                         capture_output=True, text=True, check=True).stdout
    theirs = {m for m in out.strip().split(",") if m}
    assert theirs and theirs <= ours, theirs - ours


def test_memo_skips_unchanged_jars_and_reads_changed_ones_whole(shop: ShopBuild,
                                                                tmp_path: Path) -> None:
    from imagebuilder.apps.scan import Memo, load_memo, save_memo
    v1 = shop.spring_boot(tmp_path / "v1.jar")
    memo = Memo()
    cold = Budget()
    first = scan(detect(v1, None, cold), 21, cold, v1, memo)
    save_memo(tmp_path / "memo.json", memo)
    memo = load_memo(tmp_path / "memo.json")
    # The outer jar's classes and each of its four nested libraries, by content.
    assert len(memo.jars) == 5 and len(memo.classes) == first.classes

    def inflated_by_scan(jar: Path) -> tuple[int, object]:
        budget = Budget()
        shape = detect(jar, None, budget)
        after_detect = budget.left
        usage = scan(shape, 21, budget, jar, memo)
        return after_detect - budget.left, usage

    assert inflated_by_scan(v1) == (0, first)  # the same bytes: nothing inflated again
    v2 = shop.spring_boot(tmp_path / "v2.jar", shop.compile("2"))
    with zipfile.ZipFile(v1) as old, zipfile.ZipFile(v2) as new:
        changed = sum(i.file_size for i in new.infolist() if i.filename.endswith(".class"))
        libs = 0  # the -SNAPSHOT library is rewritten with a new time stamp after a second
        for name in (n for n in new.namelist() if n.endswith(".jar")):
            if old.read(name) != new.read(name):
                libs += 1
                with zipfile.ZipFile(io.BytesIO(new.read(name))) as lib:
                    changed += sum(i.file_size for i in lib.infolist())
    # A changed jar inflates only its changed entries (tests/unit/test_scan.py), at most all.
    inflated, usage = inflated_by_scan(v2)
    assert 0 < inflated <= changed and usage == first
    assert len(memo.jars) == 6 + libs and len(memo.classes) == first.classes + 1


def test_warm_memo_does_not_trust_a_corrupt_jar(shop: ShopBuild, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The build's own memo file (Builder._scan): a jar whose compressed data is corrupt behind
    an intact central directory (CRC-32 and sizes unchanged) is refused, warm or cold."""
    from imagebuilder.build.plan import Builder
    from imagebuilder.config.parse import load
    from imagebuilder.store.home import Home
    root = project(tmp_path / "p", "shop", "shop.jar", f'main = "{MAIN}"\n')
    jar = _plain_jar(shop, root / "shop.jar", {"res/data.txt": b"resource " * 1000})
    builder = Builder(load(root), Home(tmp_path / "home"))

    def build_scan() -> Usage:
        budget = Budget()
        try:
            return builder._scan(detect(jar, MAIN, budget), budget)
        finally:
            budget.close()

    assert build_scan().classes == 2
    assert (tmp_path / "home" / "cache" / "scan-memo.json").is_file()
    good = jar.read_bytes()
    for entry in ("com/example/shop/App.class", "res/data.txt"):
        with zipfile.ZipFile(jar) as zf:
            info = zf.getinfo(entry)
        data = bytearray(good)
        start = info.header_offset + 30 + len(info.filename) + len(info.extra)
        for i in range(start + 5, start + 25):
            data[i] ^= 0x5A
        jar.write_bytes(bytes(data))
        with pytest.raises(UserError) as warm:
            build_scan()
        assert str(warm.value).startswith(f"{jar}!/{entry}: corrupt entry (")
        builder = Builder(load(root), Home(tmp_path / f"empty-{len(entry)}"))
        with pytest.raises(UserError) as cold:
            build_scan()
        assert str(cold.value) == str(warm.value)
        builder = Builder(load(root), Home(tmp_path / "home"))
        jar.write_bytes(good)


def test_memo_that_is_not_a_regular_file_is_neither_followed_nor_waited_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review F6: a memo that is a link (to a memo elsewhere, to /dev/zero) or a FIFO is an
    empty memo and is removed, so the build's save puts a memo there; one larger than the cap
    is not read."""
    import threading

    from imagebuilder.apps import scan as scan_module
    from imagebuilder.apps.scan import Memo, load_memo, save_memo
    elsewhere = tmp_path / "elsewhere.json"
    save_memo(elsewhere, Memo({"k": [["a.class", "61"]]}, {"61": "61\t\t\t"}))
    assert load_memo(elsewhere).jars
    memo = tmp_path / "cache" / "scan-memo.json"
    memo.parent.mkdir()
    memo.symlink_to(elsewhere)
    assert load_memo(memo) == Memo() and not memo.is_symlink()
    os.mkfifo(memo)
    loaded: list[Memo] = []
    reader = threading.Thread(target=lambda: loaded.append(load_memo(memo)), daemon=True)
    reader.start()
    reader.join(20)
    if reader.is_alive():  # the old reader blocks in open(): give it a writer to end the test
        os.close(os.open(memo, os.O_WRONLY))
        reader.join()
        pytest.fail("load_memo hung on a FIFO")
    assert loaded == [Memo()] and not memo.exists()
    save_memo(memo, Memo({"k": [["a.class", "61"]]}, {"61": "61\t\t\t"}))
    assert load_memo(memo).jars
    monkeypatch.setattr(scan_module, "MEMO_MAX_BYTES", memo.stat().st_size - 1, raising=False)
    assert load_memo(memo) == Memo()


def test_memo_that_is_not_a_memo_is_ignored(tmp_path: Path) -> None:
    from imagebuilder.apps.scan import Memo, load_memo
    for text in ("[1, 2]", '{"a-1": "61\\t\\t\\t"}', '{"jars": {"k": [["a"]]}, "classes": {}}'):
        (tmp_path / "memo.json").write_text(text)
        assert not load_memo(tmp_path / "memo.json").jars
    assert load_memo(tmp_path / "missing.json") == Memo()


def test_class_path_directory_is_read(shop: ShopBuild, tmp_path: Path) -> None:
    app = tmp_path / "app"
    shutil.copytree(shop.greet, app / "classes")
    shop._libs(app / "lib")
    jar = make_jar(shop.app, app / "shop.jar", {
        "Main-Class": MAIN, "Class-Path": "classes/ " + " ".join(
            f"lib/{j.name}" for j in JACKSON)})
    shape, usage = shape_of(jar, main="com.example.greet.Greeting")
    assert "classes/com/example/greet/Greeting.class" in {f.dest for f in shape.app}
    assert usage.classes > 100


@pytest.mark.parametrize("name", ["BOOT-INF/classes/../../etc/passwd", "BOOT-INF/lib/../../x.jar",
                                  "/BOOT-INF/classes/a/B.class"])
def test_spring_boot_entry_escaping_app_dir(tmp_path: Path, name: str) -> None:
    jar = tmp_path / "slip.jar"
    with zipfile.ZipFile(jar, "w") as zf:
        zf.writestr("META-INF/MANIFEST.MF", "Start-Class: a.B\r\n\r\n")
        zf.writestr("BOOT-INF/classes/a/B.class", b"\xca\xfe\xba\xbe\0\0\0\x3d\0\1")
        zf.writestr(name, b"x")
    assert error(jar) == (f"{jar}!/{name}: an entry name that would leave the app's directory (an "
                          "absolute path, '..' or a NUL): rebuild the jar")


@pytest.mark.parametrize(("file", "inside"), [
    ("BOOT-INF/classes/a", "BOOT-INF/classes/a/B.class"),
    ("BOOT-INF/lib/x.jar", "BOOT-INF/lib/x.jar/y.jar"),
])
def test_spring_boot_name_as_file_and_directory(tmp_path: Path, file: str, inside: str) -> None:
    jar = tmp_path / "both.jar"
    with zipfile.ZipFile(jar, "w") as zf:
        zf.writestr("META-INF/MANIFEST.MF", "Start-Class: a.B\r\n\r\n")
        zf.writestr(file, b"x" if file.endswith("a") else _empty_jar())
        zf.writestr(inside, b"\xca\xfe\xba\xbe\0\0\0\x3d\0\1" if inside.endswith(".class")
                    else _empty_jar())
        if not inside.endswith(".class"):
            zf.writestr("BOOT-INF/classes/a/B.class", b"\xca\xfe\xba\xbe\0\0\0\x3d\0\1")
    assert error(jar) == (f"{jar}!/{file} is a file, and a directory of {inside} too: the image "
                          "cannot hold both; rebuild the jar")


def _empty_jar() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\r\n\r\n")
    return out.getvalue()


def test_app_directory_too_deep(tmp_path: Path) -> None:
    root = tmp_path / "deep"
    (root / "lib").mkdir(parents=True)
    with zipfile.ZipFile(root / "lib" / "app.jar", "w") as zf:
        zf.writestr("a/B.class", b"\xca\xfe\xba\xbe\0\0\0\x3d\0\1")
    try:
        _nest(root, 1000)  # the os.walk of app directories recursed once per level
        assert error(root, main="a.B") == (f"{root}: directories nested more than 256 levels "
                                           "deep: not an app's directory; name the app's jar or "
                                           "a shallower directory")
    finally:
        _unnest(root, 1000)


def _nest(root: Path, levels: int) -> None:
    """``root/d/d/...``, ``levels`` deep (made relative to directory fds: the path is longer
    than PATH_MAX)."""
    fd = os.open(root, os.O_RDONLY)
    try:
        for _ in range(levels):
            os.mkdir("d", dir_fd=fd)
            inner = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
    finally:
        os.close(fd)


def _unnest(root: Path, levels: int, chunk: int = 100) -> None:
    """Remove what :func:`_nest` made, from the bottom, ``chunk`` levels at a time (rmtree
    recurses as deep as the tree; a path through all of it is longer than PATH_MAX)."""
    for top in range(levels - chunk, -1, -chunk):
        fds = [os.open(root, os.O_RDONLY)]
        try:
            for _ in range(top):
                fds.append(os.open("d", os.O_RDONLY, dir_fd=fds[-1]))
                os.close(fds.pop(-2))
            for _ in range(chunk - 1):
                fds.append(os.open("d", os.O_RDONLY, dir_fd=fds[-1]))
            while fds:
                with contextlib.suppress(FileNotFoundError):
                    os.rmdir("d", dir_fd=fds[-1])
                os.close(fds.pop())
        except FileNotFoundError:  # not that deep (the test failed before it was made)
            for fd in fds:
                os.close(fd)


def test_quarkus_app_symlinked_out_of_the_app(shop: ShopBuild, tmp_path: Path) -> None:
    real = tmp_path / "elsewhere" / "quarkus-app"
    make_jar(shop.greet, real / "quarkus-run.jar", {"Main-Class": "com.example.greet.Greeting"})
    (tmp_path / "target").mkdir()
    os.symlink(real, tmp_path / "target" / "quarkus-app")
    assert error(tmp_path / "target") == (
        f"{tmp_path}/target/quarkus-app: a symbolic link out of the app's directory "
        f"{tmp_path}/target: name the Quarkus app's own directory in app.path instead")
