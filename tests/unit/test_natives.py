"""The headless runtime's natives: which are dropped, which libraries the rest need, and which
Debian packages provide them (a real signed archive on loopback, real ELF files built by gcc)."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import requests

from imagebuilder.build.packages import NATIVES, Resolution
from imagebuilder.errors import HostError, UserError
from imagebuilder.fetch.lock import Lock
from imagebuilder.layers import jvm as jvm_layer
from imagebuilder.layers import natives

try:  # pytest puts tests/unit itself on sys.path while it is no package
    import archive_fixture as fx
except ImportError:
    from tests.unit import archive_fixture as fx  # type: ignore[no-redef]

gpg_key, fast_retries = fx.gpg_key, fx.fast_retries
LIB = "usr/lib/x86_64-linux-gnu"


def _jmod(path: Path, names: list[str]) -> Path:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name in names:
            archive.writestr(name, b"x")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"JM\x01\x00" + buf.getvalue())
    return path


def _touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")


def _gcc_lib(dest: Path, soname: str, *link: str) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build test libraries")
    dest.parent.mkdir(parents=True, exist_ok=True)
    src = dest.parent / f"{soname}.c"
    src.write_text("int f(void) { return 1; }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-Wl,--no-as-needed",
                    "-o", str(dest), str(src), *link], check=True, capture_output=True)
    src.unlink()
    return dest


def test_jmod_natives_lists_the_shared_libraries_under_lib(tmp_path: Path) -> None:
    jmod = _jmod(tmp_path / "java.desktop.jmod", [
        "classes/java/awt/Font.class", "lib/libawt.so", "lib/libawt_xawt.so",
        "lib/psfont.properties",
        "conf/x.properties"])
    assert natives.jmod_natives(jmod) == ["libawt.so", "libawt_xawt.so"]


def test_a_damaged_jmod_is_one_error(tmp_path: Path) -> None:
    bad = tmp_path / "java.desktop.jmod"
    bad.write_bytes(b"JM\x01\x00 not a zip")
    with pytest.raises(UserError, match="not a readable jmod"):
        natives.jmod_natives(bad)


def test_strip_runtime_drops_what_the_headless_jdk_lacks_and_debug_info(tmp_path: Path) -> None:
    home, runtime = tmp_path / "jdk", tmp_path / "runtime"
    _touch(home, "lib/libawt.so", "lib/libawt_headless.so", "lib/server/libjvm.so")
    _touch(runtime, "lib/libawt.so", "lib/libawt_headless.so", "lib/libawt_xawt.so",
           "lib/libsplashscreen.so", "lib/libjawt.so", "lib/server/libjvm.so",
           "bin/jwebserver.debuginfo", "lib/libjava.so.debuginfo", "lib/modules")
    dropped = jvm_layer.strip_runtime(runtime, home)
    assert sorted(p.relative_to(runtime).as_posix() for p in dropped) == [
        "bin/jwebserver.debuginfo", "lib/libawt_xawt.so", "lib/libjava.so.debuginfo",
        "lib/libjawt.so", "lib/libsplashscreen.so"]
    left = sorted(p.relative_to(runtime).as_posix() for p in runtime.rglob("*") if p.is_file())
    assert left == ["lib/libawt.so", "lib/libawt_headless.so", "lib/modules",
                    "lib/server/libjvm.so"]


def test_missing_sonames_of_the_headless_natives_of_the_linked_modules(tmp_path: Path) -> None:
    root = tmp_path / "root"
    home = root / "usr/lib/jvm/java-21-openjdk-amd64"
    deps = tmp_path / "deps"
    _gcc_lib(deps / "libfoo.so.1", "libfoo.so.1")
    _gcc_lib(deps / "libxonly.so.3", "libxonly.so.3")
    (deps / "libfoo.so").symlink_to("libfoo.so.1")
    (deps / "libxonly.so").symlink_to("libxonly.so.3")
    _gcc_lib(home / "lib/libfontmanager.so", "libfontmanager.so", f"-L{deps}", "-lfoo")
    _gcc_lib(tmp_path / "xawt/libawt_xawt.so", "libawt_xawt.so", f"-L{deps}", "-lxonly")
    _gcc_lib(home / "lib/libnet.so", "libnet.so", f"-L{deps}", "-lxonly")
    _jmod(home / "jmods/java.desktop.jmod", ["lib/libfontmanager.so", "lib/libawt_xawt.so"])
    _jmod(home / "jmods/java.base.jmod", ["lib/libjava.so"])
    _touch(root, f"{LIB}/libc.so.6")
    assert natives.missing_sonames(root, home, ["java.base", "java.desktop"], fonts=True) == [
        "libfontconfig.so.1", "libfoo.so.1"]
    assert natives.missing_sonames(root, home, ["java.base", "java.desktop"], fonts=False) == [
        "libfoo.so.1"]
    assert natives.missing_sonames(root, home, ["java.base"], fonts=True) == []


def test_library_closure_searches_every_root_and_follows_dlopened_libraries(
        tmp_path: Path) -> None:
    jvm_root, lib_root, runtime = tmp_path / "jvm", tmp_path / "natives", tmp_path / "runtime"
    _touch(jvm_root, f"{LIB}/ld-linux-x86-64.so.2")
    shutil.copy(Path("/lib/x86_64-linux-gnu/libc.so.6"), jvm_root / LIB / "libc.so.6")
    _gcc_lib(lib_root / LIB / "libfoo.so.1", "libfoo.so.1")
    _gcc_lib(lib_root / LIB / "libbar.so.2", "libbar.so.2")
    (lib_root / LIB / "libfoo.so").symlink_to("libfoo.so.1")
    _gcc_lib(runtime / "lib/libfontmanager.so", "libfontmanager.so", f"-L{lib_root / LIB}",
             "-lfoo")
    found = jvm_layer.library_closure([jvm_root, lib_root], runtime, loads=["libbar.so.2"])
    assert {"libc.so.6", "libfoo.so.1", "libbar.so.2", "ld-linux-x86-64.so.2"} <= set(found)
    assert found["libbar.so.2"].is_relative_to(lib_root)
    with pytest.raises(jvm_layer.MissingLibraryError) as caught:
        jvm_layer.library_closure([jvm_root], runtime)
    assert str(caught.value) == (
        "libfoo.so.1, needed by lib/libfontmanager.so, is in no fetched package: add the Debian "
        "package that provides it to [app] packages")
    named = jvm_layer.MissingLibraryError("libfoo.so.1", "lib/libfontmanager.so", "libfoo1")
    assert "add libfoo1 (the Debian package that provides it) to [app] packages" in str(named)


def test_rank_puts_the_package_named_after_the_library_first() -> None:
    candidates = ["java-common", "libnss3", "libfreetype6", "liblcms2-2", "libjpeg62-turbo"]
    assert natives.rank(candidates, "libfreetype.so.6")[0] == "libfreetype6"
    assert natives.rank(candidates, "libjpeg.so.62")[0] == "libjpeg62-turbo"
    assert natives.rank(candidates, "liblcms2.so.2")[0] == "liblcms2-2"


def test_policy_name() -> None:
    assert natives.policy_name("libfreetype.so.6") == "libfreetype6"
    assert natives.policy_name("liblcms2.so.2") == "liblcms2-2"
    assert natives.policy_name("libX11.so.6") == "libx11-6"


def test_library_files_only_counts_the_library_directories() -> None:
    assert natives.library_files([
        f"{LIB}/libfoo.so.1", "usr/share/doc/libfoo1/libbar.so.2", "lib/x86_64-linux-gnu/libz.so.1",
        f"{LIB}/foo/libnested.so.1"]) == {"libfoo.so.1", "libz.so.1"}


def test_choose_providers_confirms_by_file_list_and_lists_each_package_once() -> None:
    files = {"libfoo1": [f"{LIB}/libfoo.so.1"], "libother": [f"{LIB}/libfoo2.so.1"],
             "libx": [f"{LIB}/libbar.so.2", f"{LIB}/libbaz.so.3"]}
    asked: list[str] = []

    def files_of(name: str) -> list[str]:
        asked.append(name)
        return files[name]
    chosen = natives.choose_providers(["libbar.so.2", "libbaz.so.3", "libfoo.so.1", "libq.so.9"],
                                      list(files), files_of)
    assert chosen == {"libbar.so.2": "libx", "libbaz.so.3": "libx", "libfoo.so.1": "libfoo1"}
    assert sorted(asked) == sorted(set(asked)) == ["libfoo1", "libother", "libx"]


# -- the packages, from a real signed archive ---------------------------------------------------

JRE = "openjdk-21-jre-headless"


@pytest.fixture
def archive(tmp_path: Path, gpg_key: fx.GpgKey, fast_retries: None):  # type: ignore[no-untyped-def]
    specs = [
        fx.DebSpec(JRE, depends="libc6, java-common", recommends="libfreetype6, libasound2t64"),
        fx.DebSpec("libc6", files={f"{LIB}/libc.so.6": b"c"}),
        fx.DebSpec("java-common", files={"usr/share/java-common/x": b"x"}),
        fx.DebSpec("libfreetype6", depends="libpng16-16t64",
                   files={f"{LIB}/libfreetype.so.6": b"f"}),
        fx.DebSpec("libpng16-16t64", files={f"{LIB}/libpng16.so.16": b"p"}),
        fx.DebSpec("libasound2t64", files={f"{LIB}/libasound.so.2": b"a"}),
        fx.DebSpec("libx11-6", files={f"{LIB}/libX11.so.6": b"x"}),
    ]
    tree = fx.build_archive(tmp_path / "work", gpg_key, specs)
    server = fx.ArchiveServer(tree.root).start()
    yield tree, server
    server.stop()


def _resolution(tmp_path: Path, tree: fx.ArchiveTree, server: fx.ArchiveServer,
                lock: Path) -> Resolution:
    from imagebuilder.fetch.debian import Archive

    archive = Archive(server.url + "/", fx.SUITE, tmp_path / "cache", keyring=tree.key.keyring)
    jre = archive.packages()[JRE].lock_entry()
    return Resolution({"jvm": [jre]}, lambda: server.url, tmp_path / "cache",
                      lock_path=lock, suite=fx.SUITE, roots={"jvm": [JRE]}, _archive=archive)


def test_providers_come_from_the_jdks_depends_and_recommends_by_file_list(
        tmp_path: Path, archive: tuple[fx.ArchiveTree, fx.ArchiveServer]) -> None:
    tree, server = archive
    lock = tmp_path / "imagebuilder.lock"
    resolution = _resolution(tmp_path, tree, server, lock)
    chosen = resolution.providers(["libasound.so.2", "libfreetype.so.6", "libX11.so.6"], "jvm")
    assert chosen == {"libasound.so.2": "libasound2t64", "libfreetype.so.6": "libfreetype6"}
    # libX11 is in no package the JDK names; Debian's naming policy finds one for the error.
    assert resolution.suggest("libX11.so.6") == "libx11-6"
    assert resolution.suggest("libnothing.so.1") is None

    resolution.set_part(NATIVES, sorted(set(chosen.values())))
    assert [e.name for e in resolution.parts[NATIVES]] == [
        "libasound2t64", "libfreetype6", "libpng16-16t64"]
    written = Lock.load(lock)
    assert written is not None
    assert written.roots[NATIVES] == ["libasound2t64", "libfreetype6"]
    assert written.matches(fx.SUITE, {"jvm": [JRE]}, derived=(NATIVES,))

    resolution.set_part(NATIVES, [])
    assert NATIVES not in resolution.parts
    after = Lock.load(lock)
    assert after is not None and NATIVES not in after.roots


class NoNetwork(requests.Session):
    def request(self, *args: object, **kwargs: object) -> requests.Response:  # type: ignore
        raise AssertionError(f"unexpected network access: {args}")


def test_pinned_natives_answer_without_the_archive(
        tmp_path: Path, archive: tuple[fx.ArchiveTree, fx.ArchiveServer]) -> None:
    tree, server = archive
    first = _resolution(tmp_path, tree, server, tmp_path / "imagebuilder.lock")
    first.set_part(NATIVES, ["libfreetype6"])
    first.debs(NATIVES)  # into the cache
    offline = Resolution(dict(first.parts), lambda: "http://127.0.0.1:9/", tmp_path / "cache",
                         session=NoNetwork(), suite=fx.SUITE, roots=dict(first.roots))
    assert offline.providers(["libfreetype.so.6"], "jvm") == {"libfreetype.so.6": "libfreetype6"}
    offline.set_part(NATIVES, ["libfreetype6"])  # same roots: nothing to resolve


def test_heap_default_unless_the_user_sizes_the_heap() -> None:
    assert jvm_layer.heap_flags([]) == ["-XX:MaxRAMPercentage=75"]
    assert jvm_layer.heap_flags(["-Dx=y", "-XX:+UseSerialGC"]) == ["-XX:MaxRAMPercentage=75"]
    for sized in ("-Xmx512m", "-XX:MaxRAMPercentage=50", "-XX:MaxHeapSize=1g", "-XX:MaxRAM=2g"):
        assert jvm_layer.heap_flags(["-Dx=y", sized]) == []


def test_the_jvm_layer_leaves_libraries_of_the_apps_packages_to_their_layer(
        tmp_path: Path) -> None:
    """A library no JDK package names, added through [app] packages: found there (the build
    passes) and not copied into the jvm layer; the natives' fonts are."""
    jvm_root, lib_root, pkg_root = tmp_path / "jvm", tmp_path / "natives", tmp_path / "packages"
    runtime = tmp_path / "runtime"
    _touch(jvm_root, f"{LIB}/ld-linux-x86-64.so.2", f"{jvm_layer.LOCALE_DIR}/LC_CTYPE")
    shutil.copy(Path("/lib/x86_64-linux-gnu/libc.so.6"), jvm_root / LIB / "libc.so.6")
    _gcc_lib(pkg_root / LIB / "libfoo.so.1", "libfoo.so.1")
    (pkg_root / LIB / "libfoo.so").symlink_to("libfoo.so.1")
    _touch(lib_root, "etc/fonts/fonts.conf", "usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
           "usr/share/doc/libx/copyright")
    _gcc_lib(runtime / "lib/libfontmanager.so", "libfontmanager.so", f"-L{pkg_root / LIB}",
             "-lfoo")
    with pytest.raises(jvm_layer.MissingLibraryError):
        jvm_layer.build_tree([jvm_root, lib_root], runtime)
    tree = jvm_layer.build_tree([jvm_root, lib_root], runtime, shared=[pkg_root])
    assert f"{LIB}/libc.so.6" in tree and "opt/java/lib/libfontmanager.so" in tree
    assert f"{LIB}/libfoo.so.1" not in tree
    assert "etc/fonts/fonts.conf" in tree
    assert "usr/share/fonts/truetype/dejavu/DejaVuSans.ttf" in tree
    assert "usr/share/doc/libx/copyright" not in tree


def test_the_jvm_layer_carries_the_locale_the_guests_lang_names(tmp_path: Path) -> None:
    """LANG=C.UTF-8 with no locale behind it makes the JVM read the environment as ASCII."""
    jvm_root, runtime = tmp_path / "jvm", tmp_path / "runtime"
    _touch(jvm_root, f"{LIB}/ld-linux-x86-64.so.2")
    _touch(runtime, "bin/java")
    with pytest.raises(HostError, match="usr/lib/locale/C.utf8 in the fetched libc-bin"):
        jvm_layer.build_tree([jvm_root], runtime)
    _touch(jvm_root, f"{jvm_layer.LOCALE_DIR}/LC_CTYPE", f"{jvm_layer.LOCALE_DIR}/LC_MESSAGES/x")
    tree = jvm_layer.build_tree([jvm_root], runtime)
    assert f"{jvm_layer.LOCALE_DIR}/LC_CTYPE" in tree
    assert f"{jvm_layer.LOCALE_DIR}/LC_MESSAGES/x" in tree


def test_the_lock_records_the_index_it_was_resolved_against(
        tmp_path: Path, archive: tuple[fx.ArchiveTree, fx.ArchiveServer]) -> None:
    """So that a build served by its lock names the same archive snapshot in its provenance as
    the build that wrote the lock (it was None before)."""
    tree, server = archive
    lock = tmp_path / "imagebuilder.lock"
    resolution = _resolution(tmp_path, tree, server, lock)
    resolution.set_part(NATIVES, ["libfreetype6"])
    inrelease = (tree.root / "dists" / fx.SUITE / "InRelease").read_bytes()
    snapshot = (hashlib.sha256(inrelease).hexdigest(), "Sat, 01 Nov 2025 00:00:00 UTC")
    written = Lock.load(lock)
    assert written is not None and written.archive == snapshot
    assert "[archive]" in lock.read_text()
    offline = Resolution(dict(resolution.parts), lambda: "http://127.0.0.1:9/",
                         tmp_path / "cache", session=NoNetwork(), suite=fx.SUITE,
                         roots=dict(resolution.roots), locked_snapshot=written.archive)
    assert offline.snapshot() == snapshot
