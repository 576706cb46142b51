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
