"""Fixtures several unit test modules share: the boot payload and a real kernel (made once per
session; tests/unit/boot_fixture.py says what they are), and the init's sandbox
(tests/unit/guest_fixture.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from support.inputs import inputs_dir
from tests.unit.boot_fixture import fetched_kernel, make_payload
from tests.unit.guest_fixture import Guest, make_guest


@pytest.fixture(scope="session")
def boot_kernel() -> Path:
    """A real x86-64 kernel: $IMAGEBUILDER_TEST_KERNEL, or Debian trixie's cloud kernel fetched
    (signed index, verified .deb) into the inputs cache (support/inputs.py)."""
    override = os.environ.get("IMAGEBUILDER_TEST_KERNEL")
    if override:
        return Path(override)
    return fetched_kernel(inputs_dir("boot-kernel"))


@pytest.fixture(scope="session")
def payload(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, Path]]:
    if not Path("/bin/busybox").is_file():
        pytest.skip("/bin/busybox missing (apt-get install busybox-static)")
    return make_payload(tmp_path_factory.mktemp("payload"))


@pytest.fixture
def guest(tmp_path: Path) -> Guest:
    """A root laid out like the base and app layers, with the real init: run it with
    ``guest.boot(env)``."""
    return make_guest(tmp_path / "root")
