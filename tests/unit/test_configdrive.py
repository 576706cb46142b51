"""The config drive: readable by pycdlib and the host's ISO tools, deterministic, verbatim."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import time
from pathlib import Path

import pycdlib
import pytest

from imagebuilder.config.network import StaticNetwork
from imagebuilder.config.parse import Environment
from imagebuilder.disk import configdrive
from imagebuilder.disk.configdrive import VOLUME_ID, write_config_drive
from imagebuilder.errors import ConfigError

TRICKY = {
    "GREETING": "hello, production",
    "QUOTES": "it's \"quoted\"",
    "DOLLAR": "$HOME and ${PATH} and `id`",
    "EQUALS": "a=b=c",
    "SPACES": "  leading and trailing  ",
    "EMPTY": "",
    "UNICODE": "grüße ✓",
    "lower_case": "x",
}


def _read_pycdlib(image: Path, **path: str) -> bytes:
    iso = pycdlib.PyCdlib()
    iso.open(str(image))
    try:
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, **path)
        return out.getvalue()
    finally:
        iso.close()


def _expected(env: str, vars: dict[str, str]) -> bytes:
    lines = {**vars, "IMAGEBUILDER_ENV": env}
    return "".join(f"{k}={lines[k]}\n" for k in sorted(lines)).encode()


def test_read_back_with_pycdlib(tmp_path: Path) -> None:
    dest = tmp_path / "config.iso"
    write_config_drive(dest, "prod", TRICKY)
    want = _expected("prod", TRICKY)
    assert _read_pycdlib(dest, rr_path="/imagebuilder/env") == want
    assert _read_pycdlib(dest, joliet_path="/imagebuilder/env") == want
    assert _read_pycdlib(dest, iso_path="/IMAGEBUILDER/ENV.;1") == want

    iso = pycdlib.PyCdlib()
    iso.open(str(dest))
    try:
        assert iso.pvd.volume_identifier.decode().strip() == VOLUME_ID
        assert iso.has_rock_ridge()
        assert iso.pvd.root_dir_record.children[0].rock_ridge.rr_version == "1.09"
        assert iso.has_joliet()
    finally:
        iso.close()


def test_lines_sorted_with_env_name(tmp_path: Path) -> None:
    dest = tmp_path / "c.iso"
    write_config_drive(dest, "test", {"ZED": "1", "ALPHA": "2"})
    text = _read_pycdlib(dest, rr_path="/imagebuilder/env").decode()
    assert text == "ALPHA=2\nIMAGEBUILDER_ENV=test\nZED=1\n"


def test_static_network_lines_ride_along(tmp_path: Path) -> None:
    dest = tmp_path / "c.iso"
    setting = StaticNetwork("10.0.0.5/24", "10.0.0.1", ("10.0.0.2",))
    environment = Environment("prod", {"A": "1"}, (setting,))
    write_config_drive(dest, "prod", environment.boot_vars())
    text = _read_pycdlib(dest, rr_path="/imagebuilder/env").decode()
    assert text == ("A=1\nIMAGEBUILDER_ENV=prod\nIMAGEBUILDER_NET_1=mac=any address=10.0.0.5/24"
                    " gateway=10.0.0.1 dns=10.0.0.2\n")


def test_empty_vars_still_names_the_environment(tmp_path: Path) -> None:
    dest = tmp_path / "c.iso"
    write_config_drive(dest, "dev", {})
    assert _read_pycdlib(dest, rr_path="/imagebuilder/env") == b"IMAGEBUILDER_ENV=dev\n"


@pytest.mark.skipif(shutil.which("isoinfo") is None, reason="isoinfo (genisoimage) not installed")
def test_read_back_with_isoinfo(tmp_path: Path) -> None:
    dest = tmp_path / "config.iso"
    write_config_drive(dest, "prod", TRICKY)
    info = subprocess.run(
        ["isoinfo", "-d", "-i", str(dest)], capture_output=True, text=True, check=True
    ).stdout
    assert "Volume id: IMAGEBUILDER" in info
    assert "Rock Ridge" in info and "Joliet" in info
    listing = subprocess.run(
        ["isoinfo", "-R", "-l", "-i", str(dest)], capture_output=True, text=True, check=True
    ).stdout
    assert "imagebuilder" in listing and " env" in listing  # lower case kept
    for flag in ("-R", "-J"):
        data = subprocess.run(
            ["isoinfo", flag, "-x", "/imagebuilder/env", "-i", str(dest)],
            capture_output=True, check=True,
        ).stdout
        assert data == _expected("prod", TRICKY)


@pytest.mark.skipif(
    shutil.which("7z") is None and shutil.which("bsdtar") is None, reason="no 7z or bsdtar"
)
def test_read_back_with_archiver(tmp_path: Path) -> None:
    dest = tmp_path / "config.iso"
    write_config_drive(dest, "prod", TRICKY)
    out = tmp_path / "out"
    out.mkdir()
    if shutil.which("bsdtar"):
        subprocess.run(["bsdtar", "-xf", str(dest), "-C", str(out)], check=True)
    else:
        subprocess.run(["7z", "x", f"-o{out}", str(dest)], check=True, capture_output=True)
    assert (out / "imagebuilder" / "env").read_bytes() == _expected("prod", TRICKY)


def test_guest_shell_loop_sees_values_verbatim(tmp_path: Path) -> None:
    """The guest's `while IFS= read -r line; do export "$line"; done` gets every value back."""
    dest = tmp_path / "config.iso"
    write_config_drive(dest, "prod", TRICKY)
    env_file = tmp_path / "env"
    env_file.write_bytes(_read_pycdlib(dest, rr_path="/imagebuilder/env"))
    shells = [s for s in (shutil.which("busybox"), shutil.which("sh")) if s]
    assert shells
    for shell in shells:
        argv = [shell, "sh"] if shell.endswith("busybox") else [shell]
        script = (
            'while IFS= read -r line; do export "$line"; done < "$1"; '
            + "; ".join(f'printf "%s\\0" "${k}"' for k in sorted(TRICKY))
        )
        out = subprocess.run(
            [*argv, "-c", script, "sh", str(env_file)], capture_output=True, check=True,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        ).stdout
        values = out.decode().split("\0")[:-1]
        assert values == [TRICKY[k] for k in sorted(TRICKY)], shell


def test_deterministic_across_time_and_timezone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, c = tmp_path / "a.iso", tmp_path / "b.iso", tmp_path / "c.iso"
    write_config_drive(a, "prod", TRICKY)
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 86400 * 400 + 3661.5)
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        write_config_drive(b, "prod", dict(reversed(list(TRICKY.items()))))
    finally:
        monkeypatch.undo()
        time.tzset()
    assert a.read_bytes() == b.read_bytes()
    write_config_drive(c, "test", TRICKY)
    assert a.read_bytes() != c.read_bytes()


def test_no_dates_but_the_fixed_one(tmp_path: Path) -> None:
    """Every date pycdlib sees on reading is 1980-01-01 00:00:00 UTC."""
    dest = tmp_path / "c.iso"
    write_config_drive(dest, "prod", {"A": "1"})
    iso = pycdlib.PyCdlib()
    iso.open(str(dest))
    try:
        for vd in (iso.pvd, iso.joliet_vd):
            assert vd.volume_creation_date.record() == b"1980010100000000\x00"
        for record in configdrive._records(iso):
            assert record.date.record() == bytes([80, 1, 1, 0, 0, 0, 0])
    finally:
        iso.close()
    raw = dest.read_bytes()
    assert raw[16 * 2048 + 830:16 * 2048 + 847] == b"1980010100000000\x00"


def test_atomic_write_leaves_no_temporary(tmp_path: Path) -> None:
    dest = tmp_path / "config.iso"
    dest.write_bytes(b"old")
    write_config_drive(dest, "prod", {"A": "1"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.iso"]
    assert dest.read_bytes()[32769:32774] == b"CD001"
    assert dest.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("env", "vars", "message"),
    [
        ("prod", {"A": "x\ny"}, "env.prod.vars.A: expected a one-line string"),
        ("prod", {"A": "x\0y"}, "env.prod.vars.A: expected a string without NUL"),
        ("prod", {"IMAGEBUILDER_ENV": "x"}, "names starting with IMAGEBUILDER_ are reserved"),
        ("prod", {"1A": "x"}, "env.prod.vars.1A: expected a variable name"),
        ("Prod", {}, "environment name 'Prod'"),
        ("prod", {"IMAGEBUILDER_NET_1": "mac=any address=10.0.0.5/24; reboot"},
         "env.prod.vars.IMAGEBUILDER_NET_1: expected 'mac=... address=A/N"),
        ("prod", {"IMAGEBUILDER_NET_X": "mac=any address=10.0.0.5/24"},
         "names starting with IMAGEBUILDER_ are reserved"),
    ],
)
def test_rejects_what_the_guest_cannot_read(
    tmp_path: Path, env: str, vars: dict[str, str], message: str
) -> None:
    dest = tmp_path / "c.iso"
    with pytest.raises(ConfigError, match=message.replace("$", r"\$")):
        write_config_drive(dest, env, vars)
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []
