"""``app.path`` naming a FIFO, a device or a socket is called what it is (and a FIFO never makes
the build hang waiting for a writer): one line, exit 2."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from imagebuilder.cli import main


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("IMAGEBUILDER_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    capsys.readouterr()
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ERROR: ")
    return err.strip()


def _config(work: Path, app: str) -> None:
    (work / "imagebuilder.toml").write_text(
        f'[image]\nname = "hello"\nversion = "1.0"\n[app]\npath = "{app}"\n')


def test_a_fifo(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    os.mkfifo(work / "app.jar")
    _config(work, "app.jar")
    assert _error(capsys, "build") == (
        f"ERROR: imagebuilder.toml: app.path: {work}/app.jar is a FIFO (named pipe), not a jar, "
        "a war or an app directory")
    assert _error(capsys, "build", "app.jar", "--name", "a", "--version", "1") == (
        f"ERROR: app.jar: expected a jar file, got a FIFO (named pipe): {work}/app.jar")


def test_a_device_and_a_socket(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _config(work, "/dev/null")
    assert "/dev/null is a character device, not a jar" in _error(capsys, "build")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(work / "app.sock"))
        _config(work, "app.sock")
        assert "app.sock is a socket, not a jar" in _error(capsys, "build")


def test_a_directory_as_a_bare_jar(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "app.jar").mkdir()
    assert _error(capsys, "build", "app.jar", "--name", "a", "--version", "1") == (
        f"ERROR: app.jar: expected a jar file, got a directory: {work}/app.jar")


def _jar(path: Path, manifest: str) -> None:
    import zipfile
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("META-INF/MANIFEST.MF", manifest)
        zf.writestr("readme.txt", "no classes")


def test_build_warns_of_class_path_entries_it_leaves_out(
        work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The warnings go through the build's report, one line each, before any error."""
    _jar(work / "app.jar", "Main-Class: a.B\r\nClass-Path: lib/gone.jar /usr/share/java/x.jar"
         "\r\n\r\n")
    _config(work, "app.jar")
    capsys.readouterr()
    assert main(["build"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"WARNING: {work}/app.jar: Class-Path entry lib/gone.jar ({work}/lib/gone.jar) does not "
        "exist: left out, as the JVM skips it",
        f"WARNING: {work}/app.jar: Class-Path entry /usr/share/java/x.jar is /usr/share/java/x.jar"
        f" in the image, outside the app's directory /app: left out (nothing outside {work} is "
        f"taken from this machine); to include it, copy it into {work} and name it relative to "
        "the jar, or install the Debian package that ships it with [app] packages (the image "
        "resolves the same path)",
        f"ERROR: {work}/app.jar: no class files in it: app.path must name a Java app (a jar of "
        "classes, a Spring Boot jar, an app directory)"]


def test_an_app_directory_outside_the_config_directory(
        work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "elsewhere" / "lib").mkdir(parents=True)
    _jar(work / "elsewhere" / "lib" / "app.jar", "Main-Class: a.B\r\n\r\n")
    project = work / "project"
    project.mkdir()
    _config(project, "../elsewhere")
    assert _error(capsys, "build", str(project)) == (
        f"ERROR: app.path: {work}/elsewhere is an app directory outside {project}, where "
        "imagebuilder.toml is: only a single jar or war may be outside it; move the directory "
        "into it")
    os.symlink(work / "elsewhere", project / "linked")  # a symbolic link is no way in
    _config(project, "linked")
    assert "is an app directory outside" in _error(capsys, "build", str(project))
    _config(project, "../elsewhere/lib/app.jar")  # a single jar may be anywhere
    assert "no class files in it" in _error(capsys, "build", str(project))
