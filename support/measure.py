"""Timing and medians as every benchmark takes them: wall time on the monotonic clock, CPU time
of the child processes waited for (which other work on a shared machine does not inflate), a
command's peak resident memory as ``/usr/bin/time -v`` reports it, and the median of several
runs."""

from __future__ import annotations

import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

TIME_V = "/usr/bin/time"
"""GNU time (Debian package ``time``): its ``-v`` report holds the peak RSS and CPU times."""


class MeasureError(RuntimeError):
    """A measured command failed: the measurement could not be taken."""


def median(values: Iterable[float]) -> float:
    """The median of ``values``; NaN when there are none (a measurement that never succeeded)."""
    values = list(values)
    return float(statistics.median(values)) if values else float("nan")


def seconds_list(values: Iterable[float], digits: int = 2) -> str:
    """``1.23, 4.56``: the runs behind a median, as the reports list them."""
    return ", ".join(f"{v:.{digits}f}" for v in values)


@dataclass
class Timing:
    """Filled when its :func:`stopwatch` block ends."""

    seconds: float = 0.0
    """Wall time (monotonic clock)."""
    cpu: float = 0.0
    """User + system CPU seconds of the child processes this process waited for meanwhile."""


@contextmanager
def stopwatch() -> Iterator[Timing]:
    """``with stopwatch() as t: ...``; then ``t.seconds`` and ``t.cpu``."""
    timing = Timing()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    try:
        yield timing
    finally:
        timing.seconds = time.monotonic() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        timing.cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def logger(tag: str) -> Callable[[str], None]:
    """A function printing ``[tag HH:MM:SS] message`` on stderr: a benchmark's progress."""
    def log(message: str) -> None:
        print(f"[{tag} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
    return log


@dataclass
class Ran:
    """One run of a command: its output, wall time and (under ``/usr/bin/time -v``) its peak
    resident memory and CPU time."""

    stdout: str
    stderr: str
    seconds: float
    rss_kib: int = 0
    cpu: float = 0.0


def run_timed(argv: Sequence[str | os.PathLike[str]], *, env: dict[str, str] | None = None,
              cwd: Path | None = None, rss: bool = True) -> Ran:
    """Run ``argv`` to completion, timed from spawn to exit; with ``rss`` under
    ``/usr/bin/time -v`` (its report written to a file of its own, so the command's stderr stays
    clean). :class:`MeasureError` with the tail of stderr if it fails."""
    args = [os.fspath(a) for a in argv]
    with tempfile.TemporaryDirectory(prefix="time-v-") as tmp:
        report = Path(tmp) / "time.txt"
        wrap = [TIME_V, "-v", "-o", str(report)] if rss else []
        start = time.monotonic()
        result = subprocess.run([*wrap, *args], capture_output=True, text=True, cwd=cwd, env=env)
        seconds = time.monotonic() - start
        if result.returncode != 0:
            raise MeasureError(f"{' '.join(args)} failed ({result.returncode}): "
                               f"{result.stderr.strip()[-2000:]}")
        ran = Ran(result.stdout, result.stderr, seconds)
        if rss:
            ran.rss_kib, ran.cpu = _time_v_report(report.read_text())
    return ran


def _time_v_report(text: str) -> tuple[int, float]:
    """(peak RSS in KiB, user + system seconds) from a ``/usr/bin/time -v`` report."""
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    cpu = re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", text)
    if not rss or len(cpu) != 2:
        raise MeasureError(f"unexpected /usr/bin/time report: {text[-500:]}")
    return int(rss[1]), sum(map(float, cpu))


def installed_python_env(work: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a measured Python command runs in: Python as installed, with its bytecode
    cache. PYTHONDONTWRITEBYTECODE (set in development shells) would have our side compile its
    modules on every start, which an installed package never does; the cache is kept in
    ``work`` (PYTHONPYCACHEPREFIX), not in the repository, and filled by a warm-up run."""
    env = {k: v for k, v in (base or os.environ).items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    return env
