#!/usr/bin/env python3
"""Build and boot benchmarks of imagebuilder, with a peer tool side by side.

What it measures, on examples/hello (a small HTTP server jar), each time with a throwaway
IMAGEBUILDER_HOME:

1. Build time.  "Fully cold": empty home, no lock file, every .deb downloaded from the host's
   Debian mirror (one run, informational: it depends on the mirror).  "Cold, packages cached":
   empty home except ``cache/archive`` copied from the fully cold run, and the app directory
   holding the lock file that run wrote (as an app repository that commits its lock does), so
   every stage runs but nothing is downloaded; median of --runs.
2. Warm rebuild after an app-only change: a new class (that imports nothing new) is added to the
   jar, the jar is rebuilt with the example's build.sh (not timed), then the whole
   ``imagebuilder build`` command is timed; ``build --json`` must show every stage before ``app``
   (kernel, base, jdk, jvm, packages) cached: only ``app`` and what follows it ran.  Median
   of --fast-runs.  Target <= 1 s.
3. Image size: kernel + initrd layers as stored (``inspect --json``), target <= 40 MB; and the
   initrd decompressed (the root lives in RAM, so this is the guest's RAM cost of its root).
4. Boot to HTTP under TCG: ``run --accel tcg --wait --json`` (run's default --boot mode), its
   "seconds" and the wall time of the whole command, median of --runs, target <= 8 s; the same
   with ``--boot direct`` when that is not the default (informational); and one boot with
   ``--memory 256`` that must answer (pass/fail).
5. Peak memory of a cold, packages-cached build: ``/usr/bin/time -v`` "Maximum resident set size"
   (the largest single process of the build), target < 500 MB; and, informational, the peak of
   the summed RSS of the whole process tree, sampled from /proc every 0.1 s.
6. Peer: mmdebstrap building a trixie root (``--variant=apt --include=openjdk-21-jre-headless``
   plus the jar) from the same mirror (read from the host's apt configuration), once with an
   empty package cache and --runs times with its .debs cached; its tarball's size raw and
   compressed with zstd at the level of our big layers (19).  Skipped with --no-peer or when
   mmdebstrap is missing.

Results replace the part of docs/benchmarks.md between ``<!-- build_boot:start -->`` and
``<!-- build_boot:end -->`` (the file is created if missing).

Run it from the repository with the project's virtualenv (it takes about ten minutes on 2 cores)::

    .venv/bin/python bench/build_boot.py [--runs N] [--fast-runs N] [--out docs/benchmarks.md]
                                         [--wait-quiet SECONDS] [--no-peer] [--keep]

On a machine shared with other work, ``--wait-quiet 900`` waits (up to 15 min) before each timed
phase until other processes leave the CPUs idle; the report always says how much CPU other work
used during each phase and warns when timings are inflated by it.

Needs: javac/jar (17+), qemu-system-x86_64, zstd, and for the peer mmdebstrap (run as root, or
with unprivileged user namespaces).  Every VM it starts is stopped and every temporary directory
removed, also on errors.  Exit status: 0 when every measurement was taken (missed targets are
reported in the table; add --strict to exit 3 on a miss), 1 when a measurement failed (the
document is then left untouched), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchdoc import write_section

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from support.cli import Cli  # noqa: E402
from support.machine import cpu_model, memory_gib  # noqa: E402
from support.measure import logger, median  # noqa: E402
from support.servers import free_port  # noqa: E402

EXAMPLE = REPO / "examples" / "hello"
MB = 1_000_000
MIB = 1 << 20
TARGET_WARM_S = 1.0
TARGET_SIZE_MB = 40
TARGET_BOOT_S = 8.0
TARGET_RSS_MB = 500
PEER_ZSTD_LEVEL = 19
BUSY_CPUS = 0.25
EXTRA_CLASS = """package hello;

/** Added by bench/build_boot.py: changes the jar's bytes without importing anything new. */
final class BenchExtra {{
    static final String MARK = "{mark}";

    private BenchExtra() {{
    }}
}}
"""


class BenchError(Exception):
    """A measurement could not be taken."""


log = logger("build_boot")


# --------------------------------------------------------------------------- processes


def source_fingerprint() -> str:
    """A hash of imagebuilder's sources: the run notices if they change under it."""
    import hashlib
    digest = hashlib.sha256()
    for path in sorted((REPO / "imagebuilder").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def find_cli() -> list[str]:
    """How to run the command line: $IMAGEBUILDER_CLI, else support.cli's runner (the console
    script beside this interpreter)."""
    named = os.environ.get("IMAGEBUILDER_CLI")
    if named and not Path(named).is_file():
        raise BenchError(f"IMAGEBUILDER_CLI={named} is not a file")
    return [named] if named else Cli(Path()).argv([])


@dataclass
class Done:
    argv: list[str]
    code: int
    out: str
    err: str
    wall: float
    rss_tree_kb: int = 0


def _ppid_map() -> dict[int, int]:
    parents = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses.
        rest = stat[stat.rfind(b")") + 2:].split()
        parents[int(entry.name)] = int(rest[1])
    return parents


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except (OSError, IndexError, ValueError):
        return 0


class TreeRss(threading.Thread):
    """Samples the summed RSS of a process and all its descendants; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_kb = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval):
            parents = _ppid_map()
            tree, frontier = set(), {self.pid}
            while frontier:
                tree |= frontier
                frontier = {p for p, pp in parents.items() if pp in frontier} - tree
            self.peak_kb = max(self.peak_kb, sum(_rss_kb(p) for p in tree))


class CpuMeter:
    """How much CPU other people's processes used while we measured.

    Busy time of the whole machine (/proc/stat) minus our own: this process and its waited-for
    children (os.times), live descendants, and the VMs we started (daemons of `run --wait`, so
    their CPU is remembered by pid until they are stopped).  Timings taken while others keep the
    CPUs busy are inflated: the report says so.
    """

    def __init__(self) -> None:
        self.vms: dict[int, int] = {}
        self.marks: list[tuple[str, int, int, float]] = []
        self.tick = os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _busy() -> int:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
        return user + nice + system + irq + softirq + steal

    @staticmethod
    def _cpu(pid: int) -> int:
        """utime + stime + cutime + cstime of ``pid`` in clock ticks (0 if it is gone)."""
        try:
            stat = Path(f"/proc/{pid}/stat").read_bytes()
        except OSError:
            return 0
        rest = stat[stat.rfind(b")") + 2:].split()
        return sum(int(x) for x in rest[11:15])

    def see_vm(self, pid: int) -> None:
        self.vms[pid] = max(self.vms.get(pid, 0), self._cpu(pid))

    def _ours(self) -> int:
        t = os.times()
        total = round((t.user + t.system + t.children_user + t.children_system) * self.tick)
        parents = _ppid_map()
        tree, frontier = set(), {os.getpid()}
        while frontier:
            tree |= frontier
            frontier = {p for p, pp in parents.items() if pp in frontier} - tree
        total += sum(self._cpu(p) for p in tree - {os.getpid()})
        for pid in self.vms:
            self.see_vm(pid)
        return total + sum(self.vms.values())

    def mark(self, name: str) -> None:
        """Start phase ``name`` (ending the previous one)."""
        self.marks.append((name, self._busy(), self._ours(), time.monotonic()))

    def foreign(self) -> list[tuple[str, float]]:
        """(phase, average CPUs busy with other people's work) for each finished phase."""
        out = []
        for (name, busy0, ours0, t0), (_, busy1, ours1, t1) in zip(
                self.marks, self.marks[1:], strict=False):
            other = max(0, (busy1 - busy0) - (ours1 - ours0)) / self.tick
            out.append((name, other / max(t1 - t0, 1e-3)))
        return out


def _end_group(proc: subprocess.Popen[str]) -> None:
    """SIGTERM the process group of ``proc`` (ours alone), then SIGKILL what is left."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired, ValueError, OSError):
            proc.communicate(timeout=grace)
            return


def wait_quiet(limit: float, window: float = 10.0) -> None:
    """Wait (at most ``limit`` seconds) for a ``window`` in which others use < BUSY_CPUS."""
    deadline = time.monotonic() + limit
    while True:
        meter = CpuMeter()
        meter.mark("probe")
        time.sleep(window)
        meter.mark("end")
        busy = meter.foreign()[0][1]
        if busy < BUSY_CPUS:
            log(f"the machine is quiet ({busy:.2f} CPUs busy with other work)")
            return
        if time.monotonic() > deadline:
            log(f"still {busy:.2f} CPUs busy with other work: measuring anyway")
            return
        log(f"{busy:.2f} CPUs busy with other work: waiting")


def run(argv: Sequence[str | os.PathLike[str]], *, env: dict[str, str] | None = None,
        cwd: Path | None = None, check: bool = True, sample_rss: bool = False,
        timeout: float = 3600) -> Done:
    """Run argv, capture its output, time it (wall, monotonic)."""
    args = [os.fspath(a) for a in argv]
    start = time.monotonic()
    # Its own session, so that a timeout or Ctrl-C ends the whole command, helpers included.
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=cwd, start_new_session=True)
    sampler = TreeRss(proc.pid) if sample_rss else None
    if sampler:
        sampler.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _end_group(proc)
        raise BenchError(f"timed out after {timeout:.0f} s: {' '.join(args)}") from None
    except BaseException:
        _end_group(proc)
        raise
    finally:
        if sampler:
            sampler.done.set()
            sampler.join()
    done = Done(args, proc.returncode, out, err, time.monotonic() - start,
                sampler.peak_kb if sampler else 0)
    if check and done.code != 0:
        tail = " | ".join((err or out).strip().splitlines()[-5:])
        raise BenchError(f"exit {done.code}: {' '.join(args)}: {tail}")
    return done


def last_json(text: str) -> Any:
    """The last line of ``text`` that parses as JSON (the CLI prints one JSON line)."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith(("{", "[")):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    raise BenchError(f"no JSON in output: {text.strip()[-300:]!r}")


# --------------------------------------------------------------------------- imagebuilder


@dataclass
class Tool:
    """The imagebuilder CLI, bound to one IMAGEBUILDER_HOME."""

    cli: list[str]
    home: Path
    meter: CpuMeter
    vms: list[str] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        return Cli(self.home).env()

    def __call__(self, *args: str, check: bool = True, wrap: Sequence[str] = (),
                 sample_rss: bool = False, timeout: float = 3600) -> Done:
        return run([*wrap, *self.cli, *args], env=self.env(), check=check,
                   sample_rss=sample_rss, timeout=timeout)

    def build(self, app: Path, *, wrap: Sequence[str] = (), sample_rss: bool = False
              ) -> tuple[Done, dict[str, Any]]:
        done = self("build", str(app), "--json", wrap=wrap, sample_rss=sample_rss)
        return done, last_json(done.out)

    def boot(self, port: int, memory: int | None = None, mode: str | None = None,
             timeout: float = 180) -> tuple[Done, dict[str, Any]]:
        args = ["run", "hello:1.0.0", "--accel", "tcg", "--wait", "--json",
                "-p", f"127.0.0.1:{port}:8080", "--timeout", str(timeout)]
        if memory:
            args += ["--memory", str(memory)]
        if mode:
            args += ["--boot", mode]
        done = self(*args, check=False, timeout=timeout + 120)
        result = last_json(done.out) if done.code == 0 else {}
        if result.get("id"):
            self.vms.append(result["id"])
            if result.get("pid"):
                self.pids[result["id"]] = int(result["pid"])
                self.meter.see_vm(int(result["pid"]))
        if done.code != 0:
            raise BenchError(f"boot failed (exit {done.code}): "
                             + " | ".join(done.err.strip().splitlines()[-3:]))
        return done, result

    def boot_modes(self) -> tuple[str | None, list[str]]:
        """`run --boot`'s default and choices from its --help; (None, []) without the option."""
        text = " ".join(self("run", "--help").out.split())
        match = re.search(r"--boot \[([a-z|]+)\].*?\[default: ([a-z]+)\]", text)
        return (match[2], match[1].split("|")) if match else (None, [])

    def stop(self, vm_id: str) -> None:
        if vm_id in self.vms:
            self.vms.remove(vm_id)
        if vm_id in self.pids:
            self.meter.see_vm(self.pids[vm_id])
        self("stop", vm_id, check=False, timeout=90)

    def stop_all(self) -> None:
        """Stop what we started, then anything else still running in this throwaway home."""
        for vm_id in list(self.vms):
            self.stop(vm_id)
        if (self.home / "run").is_dir():
            with contextlib.suppress(BenchError, ValueError):
                for vm in last_json(self("ps", "--json", check=False).out or "[]"):
                    self.stop(vm["id"])


def stages_rebuilt(result: dict[str, Any]) -> list[str]:
    return [s["name"] for s in result["stages"] if not s["cached"]]


def all_stages(result: dict[str, Any]) -> list[str]:
    return [s["name"] for s in result["stages"]]


def max_rss_kb(done: Done) -> int:
    """"Maximum resident set size" (KiB) from /usr/bin/time -v's report on stderr."""
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.err)
    if not rss:
        raise BenchError("no 'Maximum resident set size' in /usr/bin/time -v output")
    return int(rss[1])


def http_get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.read().decode(errors="replace")


def uncompressed_size(path: Path) -> int:
    """Bytes of a zstd file once decompressed (all frames)."""
    try:
        import zstandard
    except ImportError:
        done = subprocess.run(f"zstd -dc -- '{path}' | wc -c", shell=True, check=True,
                              capture_output=True, text=True)
        return int(done.stdout.strip())
    total = 0
    with open(path, "rb") as f:
        reader = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
        while chunk := reader.read(1 << 20):
            total += len(chunk)
    return total


# --------------------------------------------------------------------------- the app


def prepare_app(dest: Path) -> Path:
    """A copy of examples/hello without its jar and lock file; hello.jar built in it."""
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns(
        "hello.jar", "imagebuilder.lock", "*.class"))
    build_jar(dest)
    return dest


def build_jar(app: Path) -> None:
    run(["sh", app / "build.sh"])
    if not (app / "hello.jar").is_file():
        raise BenchError("examples/hello/build.sh did not produce hello.jar")


def change_app(app: Path, mark: str) -> None:
    """Add (or rewrite) one class that imports nothing new, and rebuild the jar."""
    (app / "src/hello/BenchExtra.java").write_text(EXTRA_CLASS.format(mark=mark))
    build_jar(app)


# --------------------------------------------------------------------------- peer


def mirror_from_apt() -> str:
    """The main Debian archive from the host's apt configuration (deb822, then one-line)."""
    found: list[str] = []
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if fields.get("enabled", "yes").lower() == "no":
                continue
            if "deb" not in fields.get("types", "").split():
                continue
            suites = fields.get("suites", "").split()
            if any(s.endswith("-security") for s in suites):
                continue
            found += fields.get("uris", "").split()
    sources_list = Path("/etc/apt/sources.list")
    if sources_list.is_file():
        for line in sources_list.read_text().splitlines():
            parts = re.sub(r"\[[^]]*\]", "", line).split()
            if len(parts) >= 3 and parts[0] == "deb" and not parts[2].endswith("-security"):
                found.append(parts[1])
    for uri in found:
        if uri.startswith(("http://", "https://", "file:/")):
            return uri.rstrip("/")
    raise BenchError("no Debian mirror in /etc/apt/sources.list.d/*.sources or sources.list")


def peer_build(mirror: str, jar: Path, debs: Path, out: Path, tmp: Path) -> Done:
    """mmdebstrap: minimal trixie root with the JRE and the jar, as a tarball.

    The .deb cache ``debs`` is synced in before and out after, so the first call downloads and
    later calls find every package cached (apt still fetches the index: it is small).
    """
    argv = [
        "mmdebstrap", "--variant=apt", "--include=openjdk-21-jre-headless",
        "--skip=essential/unlink", "--skip=download/empty",
        "--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/",
        f"--setup-hook=sync-in {debs} /var/cache/apt/archives/",
        f"--customize-hook=sync-out /var/cache/apt/archives {debs}",
        "--customize-hook=mkdir -p \"$1\"/opt/app",
        f"--customize-hook=copy-in {jar} /opt/app",
        "trixie", str(out), mirror,
    ]
    return run(argv, env={**os.environ, "TMPDIR": str(tmp)}, timeout=1800)


# --------------------------------------------------------------------------- the report


@dataclass
class Row:
    metric: str
    result: str
    target: str = "—"
    ok: bool | None = None

    def cells(self) -> list[str]:
        mark = "—" if self.ok is None else ("pass" if self.ok else "**FAIL**")
        return [self.metric, self.result, self.target, mark]


def machine() -> dict[str, str]:
    mem = memory_gib()
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu_model(),
        "memory": f"{mem:.1f} GiB" if mem is not None else "unknown",
        "kernel": os.uname().release,
    }


def versions(cli: list[str]) -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, check=False, capture_output=True, text=True,
                                  timeout=30)
        except OSError:
            return "not installed"
        return (done.stdout or done.stderr).strip().splitlines()[0] if done.returncode == 0 \
            else "unknown"
    commit = first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain",
                            "--untracked-files=no"],
                           check=False, capture_output=True, text=True).stdout.strip()
    return {
        "imagebuilder": first_line([*cli, "--version"]),
        "commit": commit + (" (with uncommitted changes)" if dirty else ""),
        "qemu": first_line(["qemu-system-x86_64", "--version"]),
        "mmdebstrap": first_line(["mmdebstrap", "--version"]) if shutil.which("mmdebstrap")
        else "mmdebstrap not installed",
        "python": sys.version.split()[0],
    }


def table(rows: list[Row]) -> str:
    lines = ["| metric | result | target | pass |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(lines)




def fmt_s(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"


def fmt_list(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


# --------------------------------------------------------------------------- the benchmark


@dataclass
class Bench:
    args: argparse.Namespace
    work: Path
    cli: list[str]
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tools: list[Tool] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)
    ours_cached: float = 0.0
    ours_stored: int = 0
    ours_raw: int = 0
    fingerprint: str = field(default_factory=source_fingerprint)
    meter: CpuMeter = field(default_factory=CpuMeter)

    def phase(self, name: str) -> None:
        """Start a timed phase: first, with --wait-quiet, wait for other work to calm down."""
        if self.args.wait_quiet > 0:
            self.meter.mark("(waiting for a quiet machine)")
            wait_quiet(self.args.wait_quiet)
        self.meter.mark(name)

    def sources_changed(self) -> bool:
        return source_fingerprint() != self.fingerprint

    def tool(self, name: str) -> Tool:
        t = Tool(self.cli, self.work / name, self.meter)
        self.tools.append(t)
        return t

    def row(self, metric: str, result: str, target: str = "—", ok: bool | None = None) -> None:
        self.rows.append(Row(metric, result, target, ok))
        if ok is False:
            self.missed.append(metric)
        log(f"{metric}: {result}" + (f" (target {target})" if target != "—" else ""))

    def run_all(self) -> None:
        args = self.args
        app = prepare_app(self.work / "app")

        # 1a. fully cold: empty home, no lock, downloads.
        self.phase("fully cold build")
        log("fully cold build (downloads every package)")
        cold = self.tool("home-cold")
        done, result = cold.build(app)
        if sorted(stages_rebuilt(result)) != sorted(all_stages(result)):
            raise BenchError(f"fully cold build reused stages: {result['stages']}")
        if not (app / "imagebuilder.lock").is_file():
            raise BenchError("the fully cold build wrote no imagebuilder.lock")
        digest = result["digest"]
        self.row("Build, fully cold (downloads incl.; 1 run, informational)", fmt_s(done.wall))
        seed = cold.home / "cache" / "archive"
        seed_bytes = sum(p.stat().st_size for p in seed.rglob("*") if p.is_file())

        # 1b + 5. cold, packages cached, under /usr/bin/time -v and the tree sampler.
        self.phase("cold builds (packages cached)")
        time_bin = Path("/usr/bin/time")
        wrap = [str(time_bin), "-v"] if time_bin.is_file() else []
        if not wrap:
            raise BenchError("/usr/bin/time is missing: apt-get install -y time")
        walls, rss, tree, digests, last = [], [], [], set(), None
        for i in range(args.runs):
            home = self.tool(f"home-cached-{i}")
            shutil.copytree(seed, home.home / "cache" / "archive")
            run(["sync"])
            log(f"cold build, packages cached, run {i + 1}/{args.runs}")
            done, result = home.build(app, wrap=wrap, sample_rss=True)
            if sorted(stages_rebuilt(result)) != sorted(all_stages(result)):
                raise BenchError(f"cold build reused stages: {result['stages']}")
            walls.append(done.wall)
            rss.append(max_rss_kb(done))
            tree.append(done.rss_tree_kb)
            digests.add(result["digest"])
            if last is not None:  # keep only the last home: it serves the later steps
                shutil.rmtree(last.home, ignore_errors=True)
            last = home
        stage_times = {s["name"]: s["seconds"] for s in result["stages"]}
        self.ours_cached = median(walls)
        self.row(f"Build, cold, packages cached (median of {args.runs})", fmt_s(median(walls)))
        peak = max(rss) / 1024
        self.row("Peak RSS of `build`, cold, packages cached (`/usr/bin/time -v`, max of "
                 f"{args.runs})", f"{peak:.0f} MiB", f"< {TARGET_RSS_MB} MB",
                 peak * MIB < TARGET_RSS_MB * MB)
        self.row("Peak RSS summed over the build's process tree (sampled, informational)",
                 f"{max(tree) / 1024:.0f} MiB")
        self.notes.append(
            f"Cold builds, packages cached: {fmt_list(walls)} s; stages of the last run: "
            + ", ".join(f"{k} {v:.1f} s" for k, v in stage_times.items())
            + f". Seeded cache/archive: {seed_bytes / MIB:.0f} MiB.")
        reproducible = digests == {digest}
        self.notes.append(
            "Reproducibility: every cold build gave the same image digest "
            f"(`{digest[:19]}…`)." if reproducible else
            f"**Reproducibility problem**: cold builds gave different image digests: "
            f"{sorted(digests | {digest})}"
            + (" (imagebuilder's sources changed during the run)." if self.sources_changed()
               else "."))
        shutil.rmtree(cold.home, ignore_errors=True)
        assert last is not None
        home = last

        # 2. warm rebuild after an app-only change.
        self.phase("warm rebuilds")
        warm, downstream, last_stages = [], set(), {}
        nonce = os.urandom(4).hex()
        for i in range(args.fast_runs):
            change_app(app, f"{nonce}-{i}")
            log(f"warm rebuild after an app change, run {i + 1}/{args.fast_runs}")
            done, result = home.build(app)
            names = all_stages(result)
            if "app" not in names:
                raise BenchError(f"no `app` stage in build --json: {names}")
            # Stages before `app` are its inputs' (kernel, base, jdk, jvm, packages): an
            # app-only change must find them all cached.  Stages after it (e.g. the disk digest)
            # depend on the app layer and rightly run again.
            upstream = names[:names.index("app")]
            rebuilt = stages_rebuilt(result)
            if "app" not in rebuilt or set(rebuilt) & set(upstream):
                why = (" (imagebuilder's sources changed during the run: run it again)"
                       if self.sources_changed() else "")
                raise BenchError(f"app-only change rebuilt {rebuilt}, expected only `app` and "
                                 f"what follows it, none of {upstream}{why}")
            downstream |= set(rebuilt) - {"app"}
            last_stages = {s["name"]: s["seconds"] for s in result["stages"]
                           if not s["cached"]}
            warm.append(done.wall)
        self.row(f"Warm rebuild after an app-only change (whole command, median of "
                 f"{args.fast_runs})", fmt_s(median(warm)), f"<= {TARGET_WARM_S:.0f} s",
                 median(warm) <= TARGET_WARM_S)
        after = (f"; the stages after it ran again too ({', '.join(sorted(downstream))}), as "
                 "they depend on the app layer" if downstream else "")
        self.notes.append(
            f"Warm rebuilds: {fmt_list(warm)} s; each found every stage before `app` cached and "
            f"rebuilt `app`{after} (checked with `build --json`; last run: "
            + ", ".join(f"{k} {v:.2f} s" for k, v in last_stages.items()) + ").")

        # 3. size.
        self.meter.mark("size")
        image = last_json(home("inspect", "hello:1.0.0", "--json").out)
        layers = image["manifest"]["layers"]
        blobs = home.home / "store" / "blobs" / "sha256"
        sizes: dict[str, int] = {}
        raw: dict[str, int] = {}
        others: list[str] = []
        for lay in layers:
            title = (lay.get("annotations") or {}).get("org.opencontainers.image.title", "?")
            kind = lay.get("mediaType", "")
            if "kernel" in kind:
                sizes[title] = lay["size"]
            elif "initrd" in kind:
                sizes[title] = lay["size"]
                raw[title] = uncompressed_size(blobs / lay["digest"].removeprefix("sha256:"))
            else:
                others.append(f"{title} ({kind}) {lay['size'] / MB:.2f} MB")
        if not raw or len(sizes) == len(raw):
            raise BenchError(f"expected a kernel and initrd layers in the manifest: {layers}")
        stored = sum(sizes.values())
        self.ours_stored, self.ours_raw = stored, sum(raw.values())
        self.row("Image size: kernel + initrd layers, as stored (zstd)",
                 f"{stored / MB:.1f} MB ({stored / MIB:.1f} MiB)", f"<= {TARGET_SIZE_MB} MB",
                 stored <= TARGET_SIZE_MB * MB)
        self.row("Initrd uncompressed (root in RAM: the guest's RAM cost of its root)",
                 f"{sum(raw.values()) / MB:.1f} MB ({sum(raw.values()) / MIB:.1f} MiB)")
        disk = image.get("config", {}).get("disk") or {}
        self.notes.append(
            "Layers as stored: " + ", ".join(f"{t} {n / MB:.2f} MB" for t, n in sizes.items())
            + "; initrd layers uncompressed: "
            + ", ".join(f"{t} {n / MB:.1f} MB" for t, n in raw.items())
            + (f"; other blobs (not counted): {', '.join(others)}" if others else "")
            + (f"; raw bootable disk (`disk` in the image config): {disk['size'] / MB:.1f} MB "
               "apparent size" if disk.get("size") else "") + ".")

        # 4. boot to HTTP under TCG.
        self.phase("boots")
        default_mode, modes = home.boot_modes()
        label = f"`--boot {default_mode}` (the default)" if default_mode else "the default boot"
        secs, walls = self.boots(home, None)
        self.row(f"Boot to HTTP under TCG, {label}: `run --wait` seconds (median of "
                 f"{args.runs})", fmt_s(median(secs)), f"<= {TARGET_BOOT_S:.0f} s",
                 median(secs) <= TARGET_BOOT_S)
        self.row(f"Boot to HTTP under TCG, {label}: wall time of the `run` command (median of "
                 f"{args.runs})", fmt_s(median(walls)), f"<= {TARGET_BOOT_S:.0f} s",
                 median(walls) <= TARGET_BOOT_S)
        self.notes.append(f"Boots with {label}, 1024 MiB: run seconds {fmt_list(secs)}; "
                          f"command wall {fmt_list(walls)}.")
        if "direct" in modes and default_mode != "direct":
            secs, walls = self.boots(home, "direct")
            self.row(f"Boot to HTTP under TCG, `--boot direct` (kernel and initrd, no firmware): "
                     f"`run --wait` seconds (median of {args.runs}, informational)",
                     fmt_s(median(secs)))
            self.notes.append(f"Boots with `--boot direct`: run seconds {fmt_list(secs)}; "
                              f"command wall {fmt_list(walls)}.")
        port = free_port()
        log(f"boot with --memory 256 (127.0.0.1:{port})")
        try:
            done, result = home.boot(port, memory=256)
            status, _ = http_get(f"http://127.0.0.1:{port}/health")
            ok, text = status == 200, f"answers in {fmt_s(float(result['seconds']))}"
        except (BenchError, OSError) as exc:
            ok, text = False, f"no answer ({str(exc)[:120]})"
        finally:
            home.stop_all()
        self.row("Boot with `--memory 256` answers HTTP (default boot, 1 run)", text, "answers",
                 ok)

        # 6. peer.
        if args.no_peer:
            self.notes.append("Peer comparison skipped (--no-peer).")
        elif not shutil.which("mmdebstrap"):
            self.notes.append("Peer comparison skipped: mmdebstrap is not installed "
                              "(apt-get install mmdebstrap).")
        else:
            self.peer(app, self.ours_cached)
        self.meter.mark("end")

    def boots(self, home: Tool, mode: str | None) -> tuple[list[float], list[float]]:
        """--runs boots to HTTP (each checked with GET / and stopped); run seconds, wall times."""
        secs, walls = [], []
        for i in range(self.args.runs):
            port = free_port()
            log(f"boot under TCG ({mode or 'default'}), run {i + 1}/{self.args.runs} "
                f"(127.0.0.1:{port})")
            try:
                done, result = home.boot(port, mode=mode)
                status, body = http_get(f"http://127.0.0.1:{port}/")
                if status != 200 or "hello from imagebuilder" not in body:
                    raise BenchError(f"GET / answered {status}: {body[:100]!r}")
            finally:
                home.stop_all()
            secs.append(float(result["seconds"]))
            walls.append(done.wall)
        return secs, walls

    def peer(self, app: Path, ours_cached: float) -> None:
        args = self.args
        self.phase("peer")
        mirror = mirror_from_apt()
        peer = self.work / "peer"
        debs, tmp = peer / "debs", peer / "tmp"
        debs.mkdir(parents=True)
        tmp.mkdir()
        jar = app / "hello.jar"
        log("peer: mmdebstrap, empty package cache")
        cold = peer_build(mirror, jar, debs, peer / "root-cold.tar", tmp)
        (peer / "root-cold.tar").unlink()
        walls = []
        for i in range(args.runs):
            log(f"peer: mmdebstrap, packages cached, run {i + 1}/{args.runs}")
            out = peer / f"root-{i}.tar"
            walls.append(peer_build(mirror, jar, debs, out, tmp).wall)
            if i + 1 < args.runs:
                out.unlink()
        tar = peer / f"root-{args.runs - 1}.tar"
        log(f"peer: zstd -{PEER_ZSTD_LEVEL} of the root tarball")
        zst = tar.with_suffix(".tar.zst")
        squeeze = run(["zstd", f"-{PEER_ZSTD_LEVEL}", "-T0", "-q", "-f", tar, "-o", zst])
        raw, packed = tar.stat().st_size, zst.stat().st_size
        self.row("Peer mmdebstrap root, fully cold (downloads incl.; 1 run)", fmt_s(cold.wall))
        self.row(f"Peer mmdebstrap root, packages cached (median of {args.runs})",
                 fmt_s(median(walls)))
        self.row(f"Peer root tarball + zstd -{PEER_ZSTD_LEVEL} (time of the compression alone)",
                 fmt_s(squeeze.wall))
        self.row(f"Peer root size: tar / tar.zst -{PEER_ZSTD_LEVEL}",
                 f"{raw / MB:.1f} MB / {packed / MB:.1f} MB")
        self.notes.append(
            f"Side by side: our bootable image (kernel included) is {self.ours_stored / MB:.1f} MB "
            f"stored and {self.ours_raw / MB:.1f} MB unpacked, the peer's root "
            f"{packed / MB:.1f} MB (zstd -{PEER_ZSTD_LEVEL}) and {raw / MB:.1f} MB unpacked: "
            f"{packed / self.ours_stored:.1f}x and {raw / self.ours_raw:.1f}x ours.")
        self.notes.append(
            f"Peer builds, packages cached: {fmt_list(walls)} s. Ours, cold with packages "
            f"cached ({fmt_s(ours_cached)}), includes the zstd compression of its layers "
            f"(levels of build/plan.py's LEVELS) and a jlink-trimmed JVM; the peer's time "
            f"excludes compression (zstd -{PEER_ZSTD_LEVEL} "
            f"of its tarball alone takes {fmt_s(squeeze.wall)}), so a like-for-like compressed "
            f"artifact costs it {fmt_s(median(walls) + squeeze.wall)}.")
        shutil.rmtree(peer, ignore_errors=True)


def section(bench: Bench, v: dict[str, str], started: dt.datetime, elapsed: float) -> str:
    m = machine()
    args = bench.args
    lines = [
        "## Build and boot (`bench/build_boot.py`)",
        "",
        (f"- Date: {started.strftime('%Y-%m-%d %H:%M UTC')} (the whole run took "
        f"{elapsed / 60:.1f} min)"),
        (f"- Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory']} RAM, Linux {m['kernel']}; "
        "KVM unusable, so every boot is TCG"),
        (f"- Software: {v['imagebuilder']} at {v['commit']}; {v['qemu']}; "
        f"{v['mmdebstrap']}; Python {v['python']}"),
        ("- App: `examples/hello` (hello.jar built by its `build.sh`), image `hello:1.0.0`, "
        "Debian trixie, JVM 21"),
        (f"- Runs: {args.runs} for slow measurements, {args.fast_runs} for warm rebuilds; "
        "medians reported"),
        "",
        table(bench.rows),
        "",
        "### Notes on method",
        "",
        ("- Every measurement uses its own throwaway `IMAGEBUILDER_HOME` and a copy of the example "
        "in a temporary directory; times are wall-clock (monotonic) of the whole CLI command, "
        "including Python start-up."),
        ("- *Fully cold*: empty home and no lock file, so the archive index and every `.deb` come "
        "from the host's Debian mirror (depends on the mirror: informational). *Cold, packages "
        "cached*: empty home except `cache/archive` copied from the fully cold run, and the app "
        "directory holds the `imagebuilder.lock` that run wrote (as an app repository that commits "
        "its lock does): every stage runs, nothing is downloaded."),
        ("- *Warm rebuild*: a new class `hello.BenchExtra` (a string constant, no new imports) is "
        "added and the jar rebuilt with `build.sh` (not timed); `build --json` must report every "
        "stage before `app` as cached (`jvm` too: the JDK modules the classes use are unchanged) "
        "and `app` as rebuilt."),
        ("- *Size*: sum of the kernel and initrd layer blobs from `inspect --json` (MB = 10^6 "
        "bytes). Uncompressed: each initrd layer's zstd stream decompressed and counted; the "
        "kernel unpacks the initrd into RAM, so this is what the root costs the guest in memory."),
        ("- *Boot*: `run hello:1.0.0 --accel tcg --wait --json -p 127.0.0.1:PORT:8080` on a free "
        "loopback port; \"seconds\" is imagebuilder's own QEMU-start-to-HTTP-2xx time, *wall* "
        "the whole command (CLI start, preparing the initrd or disk it boots, boot). After each "
        "boot `GET /` must return the app's greeting; the VM is then stopped with "
        "`imagebuilder stop`."),
        ("- *Peak RSS*: `/usr/bin/time -v` reports the largest resident set of any single process "
        "of the build (Python or a child such as jlink), not their sum; the sampled row adds up "
        "the RSS of the whole process tree every 0.1 s (shared pages counted twice: an upper "
        "bound)."),
        ("- *Peer*: `mmdebstrap --variant=apt --include=openjdk-21-jre-headless trixie` plus the "
        "jar copied to /opt/app, as a tarball, from the same mirror (read from "
        "`/etc/apt/sources.list.d/*.sources`). Its .debs are kept between runs with "
        "`sync-in`/`sync-out` hooks, so the *packages cached* runs download only the index. "
        "The peer root has no kernel and is not bootable as is, while our size includes a kernel "
        "and its modules; it carries the full JRE, apt, dpkg and perl-base, ours a jlink runtime "
        "of the modules found in the app's classes."),
    ]
    lines += [f"- {note}" for note in bench.notes]
    foreign = bench.meter.foreign()
    lines.append("- Other processes' CPU use while we measured (average CPUs busy with work that "
                 "is not ours, of " + str(os.cpu_count()) + "): "
                 + ", ".join(f"{name} {cpus:.2f}" for name, cpus in foreign
                             if not name.startswith("(")) + ".")
    busy = [name for name, cpus in foreign
            if cpus > BUSY_CPUS and name != "size" and not name.startswith("(")]
    if busy:
        lines.append(f"- **Warning**: the machine was busy with other work during: "
                     f"{', '.join(busy)} (more than {BUSY_CPUS} CPU on average): those timings "
                     "are inflated; run again on a quiet machine.")
    if bench.sources_changed():
        lines.append("- **Warning**: imagebuilder's sources changed while this ran; the results "
                     "may mix two versions of the code.")
    if bench.missed:
        lines += ["", "**Missed targets:** " + "; ".join(bench.missed) + "."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3,
                        help="runs of the slow measurements (cold builds, boots, peer); default 3")
    parser.add_argument("--fast-runs", type=int, default=5,
                        help="runs of the fast measurements (warm rebuilds); default 5")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md",
                        help="Markdown file whose build_boot section is rewritten")
    parser.add_argument("--no-peer", action="store_true", help="skip the mmdebstrap comparison")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help="before each timed phase, wait up to SECONDS for other work to leave "
                        "the CPUs idle")
    parser.add_argument("--strict", action="store_true", help="exit 3 if a target is missed")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.fast_runs < 1:
        parser.error("--runs and --fast-runs must be at least 1")
    for tool in ("javac", "jar", "qemu-system-x86_64", "zstd"):
        if not shutil.which(tool):
            print(f"build_boot: {tool} is not installed", file=sys.stderr)
            return 1

    started = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="bench-build-boot-"))
    bench: Bench | None = None
    try:
        cli = find_cli()
        info = versions(cli)
        bench = Bench(args, work, cli)
        bench.run_all()
    except BenchError as exc:
        log(f"FAILED: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        for t in bench.tools if bench else []:
            with contextlib.suppress(Exception):
                t.stop_all()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    write_section(args.out, "build_boot", section(bench, info, started, time.monotonic() - t0))
    log(f"wrote {args.out}")
    if bench.missed:
        log("missed targets: " + "; ".join(bench.missed))
        if args.strict:
            return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
