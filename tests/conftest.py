"""What every test shares: a test that needs the Debian mirror counts as end-to-end, and the
strict mode CI runs in.

``-m "not e2e"`` is the quick, offline run: a test marked ``network`` is marked ``e2e`` too, so
it never runs there. ``IMAGEBUILDER_STRICT_TESTS=1`` (set by ``.ci/run``) turns a skip into a
failure: on a machine set up by ``scripts/setup.sh`` every validator a test reads its output
with is installed, so a skip there means a check did not run while the suite said "passed".
Only the skips that no installation can remove stay skips (see :data:`ALLOWED_SKIPS`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Generator
from typing import Any

import pytest

STRICT = os.environ.get("IMAGEBUILDER_STRICT_TESTS") == "1"

ALLOWED_SKIPS = re.compile(
    r"needs root"  # device nodes and loop devices: the privileges of the CI user
    r"|cannot make device nodes here|losetup does not work here"  # a container without them
    r"|namespaces are not allowed here"  # a container that forbids unshare(2)
    r"|cannot mount a tmpfs here"  # the fault suite's ENOSPC (tests/e2e/faults_fixture.py)
    r"|needs iproute2 and veth"  # veth pairs in a network namespace (iproute2: setup.sh)
    r"|no IPv6|cannot listen on ::"  # the host's network stack
    r"|no multiarch libc on this host"
    r"|set IMAGEBUILDER_TEST_KERNEL_DEB"  # opt-in; the e2e builds use the real kernel anyway
)
"""Skip reasons strict mode accepts: what the machine forbids, not what it lacks."""


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under pytest-xdist (``-n 2``, the README's command) each test module runs whole on one
    worker, so that its module fixtures (built images, registries) are made once. No module
    needs another's: what several share comes from conftest.py fixtures or ``support/``.
    (``--dist loadgroup`` would do this with markers, but with pytest 9 it groups nothing.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ByModule(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return nodeid.split("::", 1)[0]

    return ByModule(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("network") and not item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.e2e)


def skip_reason(report: pytest.TestReport) -> str:
    longrepr: Any = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if STRICT and report.skipped and not hasattr(report, "wasxfail"):
        reason = skip_reason(report)
        if not ALLOWED_SKIPS.search(reason):
            report.outcome = "failed"
            report.longrepr = (f"skipped in strict mode (IMAGEBUILDER_STRICT_TESTS=1): {reason}; "
                               "install what it needs (scripts/setup.sh)")
