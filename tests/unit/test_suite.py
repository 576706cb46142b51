"""The suite's own rules (tests/conftest.py): strict mode turns a skip for a missing tool into
a failure, and a test that needs the mirror never runs under ``-m "not e2e"``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SAMPLE = '''
import pytest

def test_tool_missing():
    pytest.skip("isoinfo missing (apt-get install genisoimage)")

def test_not_root():
    pytest.skip("needs root and losetup")

@pytest.mark.skipif(True, reason="no 7z or bsdtar")
def test_marked():
    pass

@pytest.mark.network
def test_mirror():
    pass

def test_fine():
    pass
'''


def _run(tmp_path: Path, *args: str, strict: bool) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {k: v for k, v in os.environ.items() if k != "IMAGEBUILDER_STRICT_TESTS"}
    if strict:
        env["IMAGEBUILDER_STRICT_TESTS"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider",
         "-o", "markers=network\n e2e", "--rootdir", str(tmp_path), "-rA", *args,
         str(tmp_path / "test_sample.py")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_strict_mode_fails_missing_tools_and_keeps_privilege_skips(tmp_path: Path) -> None:
    loose = _run(tmp_path, "-m", "not e2e", strict=False)
    assert loose.returncode == 0, loose.stdout
    assert "1 passed, 3 skipped, 1 deselected" in loose.stdout
    strict = _run(tmp_path, "-m", "not e2e", strict=True)
    assert strict.returncode == 1, strict.stdout
    # a skipif marker skips at setup: its failure counts as an error
    assert "1 failed, 1 passed, 1 skipped, 1 deselected, 1 error" in strict.stdout
    assert ("skipped in strict mode (IMAGEBUILDER_STRICT_TESTS=1): isoinfo missing "
            "(apt-get install genisoimage)") in strict.stdout
    assert "no 7z or bsdtar" in strict.stdout


def test_network_tests_count_as_e2e(tmp_path: Path) -> None:
    only = _run(tmp_path, "-m", "e2e", strict=False)
    assert "1 passed, 4 deselected" in only.stdout, only.stdout
