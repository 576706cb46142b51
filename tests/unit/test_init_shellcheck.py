"""``shellcheck -s sh`` on every shell file an image carries, as rendered.

The guest's shell is busybox sh, so the files are checked as POSIX sh, at shellcheck's strictest
severity (style). The base layer's files (the init, its parts, layers.sh, the DHCP hook) are
written out as they lie in the image, so that the init's ``# shellcheck source=`` directives lead
shellcheck (``-x``, sources found from the script's folder) from /init into its parts. The app
layer's app.conf, which the init sources, is rendered for a command full of words a shell would
mangle. Without shellcheck (Debian's ``shellcheck``, scripts/setup.sh) the test skips, which
strict mode (IMAGEBUILDER_STRICT_TESTS=1, tests/conftest.py) turns into a failure.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from imagebuilder.apps.shape import File, Shape
from imagebuilder.config.parse import load
from imagebuilder.layers.app import app_conf
from imagebuilder.layers.base import init_files

SHELLCHECK = shutil.which("shellcheck")
pytestmark = pytest.mark.skipif(SHELLCHECK is None,
                                reason="shellcheck not installed (apt-get install shellcheck)")
SHELL_START = (b"#!/bin/sh\n", b"# shellcheck shell=sh\n")


def _shellcheck(root: Path, paths: list[str], *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SHELLCHECK or "shellcheck", "-s", "sh", "-x", "-P", "SCRIPTDIR",
                           "-f", "gcc", *options, *paths], cwd=root, capture_output=True,
                          text=True, check=False, timeout=120)


def test_the_base_layers_shell_files_pass_shellcheck(tmp_path: Path) -> None:
    files = init_files()
    scripts = [path for path, (data, _) in files.items() if data.startswith(SHELL_START)]
    # Every file of the init but the awk programs is shell, and says so on its first line.
    assert scripts == [path for path in files if not path.endswith(".awk")]
    assert {"init", "usr/share/imagebuilder/layers.sh",
            "usr/share/imagebuilder/udhcpc.script"} < set(scripts)
    for path, (data, mode) in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(data)
        (tmp_path / path).chmod(mode)
    result = _shellcheck(tmp_path, scripts)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_app_conf_passes_shellcheck(tmp_path: Path) -> None:
    """Two findings are left out, each the point of the file: its variables are read by the
    init that sources it ("assigned but unused", SC2034), and the app's words are quoted so
    that nothing in them expands ("expressions don't expand in single quotes", SC2016)."""
    (tmp_path / "app.jar").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    (tmp_path / "imagebuilder.toml").write_text(
        '[image]\nname = "hello"\nversion = "1.0.0"\n'
        '[app]\npath = "app.jar"\nport = 8080\n'
        'args = ["a b", "$HOME", "`id`", "*", "\'", "\\"", "x=y", "#no", "tab\\there", ""]\n')
    cfg = load(tmp_path)
    shape = Shape("jar", (File("app.jar", source=cfg.app.path),), (), ("-jar", "/app/app.jar"),
                  "com.example.Main", ())
    for aot in ("", "/app/app.aot"):
        conf = tmp_path / "app.conf"
        conf.write_text(app_conf(cfg, shape, aot=aot))
        result = _shellcheck(tmp_path, ["app.conf"], "-e", "SC2034,SC2016")
        assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), conf.read_text()
