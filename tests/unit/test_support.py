"""The suite's and the benchmarks' own structure (issue 18, item 7): what both need comes from
``support/``, never from each other, and no test module borrows another test module's helpers;
and support's timing, medians and inputs cache do what the benchmarks rely on."""

from __future__ import annotations

import ast
import math
import sys
import tomllib
from pathlib import Path

import pytest

from support import inputs, measure

REPO = Path(__file__).resolve().parents[2]


def _imports(path: Path, root: Path) -> list[str]:
    """The modules ``path`` imports (and the names it takes from them), relative imports
    resolved against its package under ``root``."""
    package = ".".join(path.relative_to(root).parts[:-1])
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0]
                base = f"{parent}.{base}" if base else parent
            names += [base, *(f"{base}.{alias.name}" for alias in node.names)]
    return names


def _breaks_rule(top: str, name: str) -> bool:
    parts = name.split(".")
    if top in ("bench", "support") and parts[0] == "tests":
        return True
    if top == "support" and parts[0] in ("bench", "benchdoc"):
        return True
    return top == "tests" and any(part.startswith("test_") for part in parts)


def borrowed(root: Path) -> list[str]:
    """``file: what`` for everything under ``root`` (a checkout) that breaks the rules: bench/
    or support/ importing tests, support/ importing bench, a test module importing a test
    module, a benchmark reading pytest's cache."""
    found = []
    for path in sorted(root.glob("*/**/*.py")):
        rel = path.relative_to(root)
        top = rel.parts[0]
        if top not in ("tests", "bench", "support"):
            continue
        found += [f"{rel}: {name}" for name in _imports(path, root) if _breaks_rule(top, name)]
        if top == "bench" and ".pytest_cache" in path.read_text():
            found.append(f"{rel}: reads .pytest_cache")
    return found


def test_tests_and_benchmarks_share_support_and_borrow_nothing() -> None:
    assert borrowed(REPO) == []


def test_the_rule_finds_a_borrowed_helper(tmp_path: Path) -> None:
    (tmp_path / "tests/e2e").mkdir(parents=True)
    (tmp_path / "bench").mkdir()
    (tmp_path / "tests/e2e/test_a.py").write_text("from .test_b import helper\n")
    (tmp_path / "tests/e2e/test_b.py").write_text("def helper() -> None: ...\n")
    (tmp_path / "bench/x.py").write_text(
        "from tests.servers import free_port\nCACHE = '.pytest_cache/d/apps-inputs'\n")
    assert borrowed(tmp_path) == [
        "bench/x.py: tests.servers", "bench/x.py: tests.servers.free_port",
        "bench/x.py: reads .pytest_cache",
        "tests/e2e/test_a.py: tests.e2e.test_b", "tests/e2e/test_a.py: tests.e2e.test_b.helper"]


def test_warnings_fail_the_suite() -> None:
    options = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]
    assert options["ini_options"]["filterwarnings"][0] == "error"


def test_median_of_nothing_is_nan_and_of_runs_their_middle() -> None:
    assert math.isnan(measure.median([]))
    assert measure.median([3.0, 1.0, 2.0]) == 2.0
    assert measure.median(x for x in (1.0, 4.0)) == 2.5


def test_run_timed_reports_peak_memory_and_cpu_and_names_a_failure(tmp_path: Path) -> None:
    if not Path(measure.TIME_V).is_file():
        pytest.skip("/usr/bin/time missing (apt-get install time)")
    ran = measure.run_timed([sys.executable, "-c", "x = bytearray(64 << 20); print('ok')"])
    assert ran.stdout == "ok\n" and ran.seconds > 0
    assert ran.rss_kib > 64 * 1024 and ran.cpu >= 0
    with pytest.raises(measure.MeasureError, match="failed \\(3\\): boom"):
        measure.run_timed(
            [sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"])


def test_stopwatch_counts_the_cpu_of_children_waited_for() -> None:
    with measure.stopwatch() as timing:
        measure.run_timed([sys.executable, "-c", "sum(range(3_000_000))"], rss=False)
    assert timing.seconds > 0 and timing.cpu > 0


def test_inputs_live_in_the_cache_dir_the_environment_names(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert inputs.inputs_dir("apps") == tmp_path / "imagebuilder-tests" / "apps"
    assert (tmp_path / "imagebuilder-tests" / "apps").is_dir()
