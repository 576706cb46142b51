"""The fault-injection suite: interruptions, full and failing disks, and servers that fail
mid-stream never leave a store or cache that a later command trusts wrongly.

Every fault is followed by the same checks: ``imagebuilder check`` finds no damage in the store
and the stage cache (leftover scratch files are allowed: the next command or gc removes them),
any output file is either absent or whole, and running the command again (without the fault)
succeeds with the expected digests. The faults, all drawn from one seed
(``IMAGEBUILDER_FAULT_SEED``):

- SIGKILL of the whole process group at a seeded moment of build, export, flash, push, pull and
  publish (moto_server); push, pull and publish go through a throttled proxy so that the moment
  falls mid-transfer;
- ENOSPC from a size-limited tmpfs (root only) and EFBIG from RLIMIT_FSIZE, in the store, the
  cache and an export's output; EIO at a seeded byte count of reads or writes in the store and
  the cache (Python-level, see eio_hook/sitecustomize.py: no device-mapper or FUSE here);
- docker-registry and moto_server behind a proxy that answers 500 or drops the connection
  after a seeded number of bytes, on a seeded connection.

bench/faults.py runs this module and reports the counts in docs/benchmarks.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from imagebuilder.store.layout import TITLE_ANNOTATION
from support.registry import Registry, start_registry
from support.servers import assert_snapshot_holds, aws_env, moto_executable, moto_server

from .conftest import Built, Cli
from .faults_fixture import SEED, FaultLog, FaultProxy, run_killed, timed, tmpfs

pytestmark = [pytest.mark.e2e, pytest.mark.network, pytest.mark.faults]

KILLS = 3
"""SIGKILLs per command."""
EIO_HOOK = Path(__file__).parent / "eio_hook"
MIB = 1 << 20


# --- fixtures and checks ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def fcli(cli: Cli, hello: Built, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    """A copy of the session's home (hard links kept), so faults never touch other tests'."""
    home = tmp_path_factory.mktemp("faults") / "home"
    subprocess.run(["cp", "-a", str(cli.home), str(home)], check=True)
    return Cli(home)


@pytest.fixture(scope="module")
def app(hello: Built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the hello app directory: a killed build may be writing its lock file."""
    dest = tmp_path_factory.mktemp("fapp") / "hello"
    shutil.copytree(hello.app, dest)
    return dest


@pytest.fixture(scope="module")
def facts(fcli: Cli, hello: Built) -> dict[str, Any]:
    info = fcli.json("inspect", hello.ref)
    assert isinstance(info, dict)
    layers = {layer["annotations"][TITLE_ANNOTATION]: layer["digest"]
              for layer in info["manifest"]["layers"]}
    return {"layers": layers, "disk_digest": info["config"]["disk"]["digest"],
            "disk_size": int(info["config"]["disk"]["size"])}


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    return random.Random(f"{SEED}:{request.node.name}")


@pytest.fixture(scope="module")
def log() -> FaultLog:
    return FaultLog()


def intact(cli: Cli) -> None:
    """The store and the cache hold nothing damaged."""
    result = cli("check", "--json", check=False)
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["ok"], report


def failed_cleanly(result: subprocess.CompletedProcess[str]) -> None:
    """A command a fault made fail: one ERROR line and exit 1, no traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr
    assert lines and lines[-1].startswith("ERROR: ") and "Traceback" not in result.stderr, (
        result.stderr)


def sha256_of(path: Path, size: int | None = None) -> str:
    h = hashlib.sha256()
    left = size if size is not None else path.stat().st_size
    with open(path, "rb") as f:
        while left > 0 and (chunk := f.read(min(left, 1 << 20))):
            h.update(chunk)
            left -= len(chunk)
    return f"sha256:{h.hexdigest()}"


def forget_stages(cli: Cli, keep: set[str]) -> None:
    """Delete the stage-cache entries whose output's SHA-256 is not in ``keep`` (and not the
    module list or the JDK's class index, JSON read from the JDK: 8 s to make again, and the
    same code as every stage's): the next build or export redoes that work."""
    for entry in (cli.home / "cache" / "stages").glob("*/*"):
        if entry.suffix == ".xxh3":
            continue
        with open(entry, "rb") as f:
            if f.read(11).startswith((b'["', b'{"classes"')):
                continue
        if sha256_of(entry) not in keep:
            entry.unlink()
            entry.with_name(entry.name + ".xxh3").unlink(missing_ok=True)


def kill_loop(log: FaultLog, rng: random.Random, command: str, cli: Cli,
              argv: Callable[[], list[str]], prepare: Callable[[], None],
              after: Callable[[], None]) -> None:
    """Time the command once, then KILLS times: prepare, run ``imagebuilder ARGV()`` and
    SIGKILL it at a seeded moment, then the checks of ``after``."""
    prepare()
    seconds = timed(cli.argv(argv()), cli.env())
    for _ in range(KILLS):
        delay = rng.uniform(0.05, 0.95) * seconds
        for _attempt in range(3):  # a run faster than the timed one may finish first: earlier
            prepare()
            killed = run_killed(cli.argv(argv()), cli.env(), delay)
            if killed:
                break
            after()
            delay /= 2
        with log.fault("SIGKILL", command, f"at {delay:.2f} s of {seconds:.2f} s",
                       injected=killed):
            after()


# --- SIGKILL ---------------------------------------------------------------------------------


def test_kill_build(fcli: Cli, hello: Built, app: Path, facts: dict[str, Any],
                    log: FaultLog, rng: random.Random) -> None:
    """Killed while the base, app and disk stages run. The jlink'd JVM, the kernel and the
    JDK's index stay cached: making them again (45 s) would add nothing, since every stage goes
    through the same write-then-rename code."""
    keep = {facts["layers"]["jvm"], facts["layers"]["vmlinuz"]}

    def after() -> None:
        intact(fcli)
        out = fcli.json("build", str(app))
        assert isinstance(out, dict) and out["digest"] == hello.digest
        assert out["disk_digest"] == facts["disk_digest"]
        intact(fcli)

    kill_loop(log, rng, "build", fcli, lambda: ["build", str(app)],
              lambda: forget_stages(fcli, keep), after)


def test_kill_export(fcli: Cli, hello: Built, facts: dict[str, Any], log: FaultLog,
                     rng: random.Random, tmp_path: Path) -> None:
    """Killed while the ESP is rebuilt into the cache and the disk written."""
    out = tmp_path / "disk.raw"
    keep = set(facts["layers"].values())

    def prepare() -> None:
        out.unlink(missing_ok=True)
        forget_stages(fcli, keep)

    def after() -> None:
        assert not out.exists() or sha256_of(out) == facts["disk_digest"]  # whole or absent
        intact(fcli)
        fcli("export", hello.ref, "--format", "raw", "-o", str(out))
        assert sha256_of(out) == facts["disk_digest"]
        intact(fcli)

    kill_loop(log, rng, "export", fcli, lambda: ["export", hello.ref, "--format", "raw", "-o",
                                                 str(out)], prepare, after)


def test_kill_flash(fcli: Cli, hello: Built, facts: dict[str, Any], log: FaultLog,
                    rng: random.Random, tmp_path: Path) -> None:
    """Killed mid-write; the rerun writes and verifies the whole disk."""
    target = tmp_path / "disk.img"

    def after() -> None:
        intact(fcli)
        fcli("flash", hello.ref, str(target))
        assert sha256_of(target, facts["disk_size"]) == facts["disk_digest"]

    kill_loop(log, rng, "flash", fcli, lambda: ["flash", hello.ref, str(target)],
              lambda: target.unlink(missing_ok=True), after)


@pytest.fixture(scope="module")
def rproxy(registry: Registry) -> Iterator[FaultProxy]:
    proxy = FaultProxy(registry.port)
    yield proxy
    proxy.close()


class FreshRegistry:
    """A new, empty docker-registry behind the proxy for every run, so that a push uploads
    every blob (a new repository of the same registry would get them by cross-repository
    mount); the proxy goes back to the module's registry on close."""

    def __init__(self, proxy: FaultProxy, workdir: Path) -> None:
        self.proxy, self.workdir, self.home_port = proxy, workdir, proxy.upstream
        self.count = 0
        self.current: Registry | None = None

    def next(self) -> str:
        self.close()
        self.count += 1
        self.current = start_registry(self.workdir / f"registry{self.count}")
        self.proxy.upstream = self.current.port
        return f"127.0.0.1:{self.proxy.port}/faults/hello"

    def close(self) -> None:
        if self.current is not None:
            self.current.stop()
            self.current = None
        self.proxy.upstream = self.home_port


def _pulled(cli: Cli, source: str, expected: str) -> None:
    out = cli.json("pull", source, "--insecure", "--force")
    assert isinstance(out, dict) and out["digest"] == expected
    intact(cli)


def test_kill_push_and_pull(fcli: Cli, hello: Built, rproxy: FaultProxy,
                            log: FaultLog, rng: random.Random, tmp_path: Path) -> None:
    """Killed mid-transfer (a proxy throttled to 16 MiB/s in front of docker-registry)."""
    rproxy.reset(rate=16 * MIB)
    fresh = FreshRegistry(rproxy, tmp_path)
    repo = [""]
    names = iter(range(1000))

    def push_prepare() -> None:
        repo[0] = fresh.next()

    def push_after() -> None:
        intact(fcli)
        fcli("push", hello.ref, repo[0], "--insecure")
        _pulled(Cli(tmp_path / f"check{next(names)}"), f"{repo[0]}:1.0.0", hello.digest)

    kill_loop(log, rng, "push", fcli, lambda: ["push", hello.ref, repo[0], "--insecure"],
              push_prepare, push_after)

    source = f"{repo[0]}:1.0.0"
    homes = iter(range(1000))
    puller = [Cli(tmp_path / "pull-0")]

    def pull_after() -> None:
        intact(puller[0])
        _pulled(puller[0], source, hello.digest)

    # Into an empty store each time: every blob comes again.
    kill_loop(log, rng, "pull", puller[0], lambda: ["pull", source, "--insecure"],
              lambda: setattr(puller[0], "home", tmp_path / f"pull-{next(homes)}"), pull_after)
    rproxy.reset()
    fresh.close()


@pytest.fixture(scope="module")
def moto(fcli: Cli) -> Iterator[tuple[FaultProxy, Cli, Any]]:
    """moto_server behind a proxy; a Cli pointed at the proxy; a boto3 session on moto."""
    boto3 = pytest.importorskip("boto3")
    exe = moto_executable()
    assert exe, "moto_server is installed by pip install -e '.[test]'"
    with moto_server(exe) as url:
        proxy = FaultProxy(int(url.rsplit(":", 1)[1]))
        env = aws_env(url)
        session = boto3.Session(region_name=env["AWS_DEFAULT_REGION"],
                                aws_access_key_id="testing", aws_secret_access_key="testing")
        yield proxy, Cli(fcli.home, aws_env(proxy.url)), (session, url)
        proxy.close()


@pytest.fixture(scope="module")
def raw(fcli: Cli, hello: Built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fraw") / "hello.raw"
    fcli("export", hello.ref, "--format", "raw", "-o", str(path))
    return path


def clear_account(session_url: Any) -> None:
    """No AMI and no snapshot left in moto: the next publish uploads everything."""
    session, url = session_url
    ec2 = session.client("ec2", endpoint_url=url)
    ours = [{"Name": "tag-key", "Values": ["imagebuilder:disk-digest"]}]  # not moto's own
    for image in ec2.describe_images(Owners=["self"], Filters=ours)["Images"]:
        ec2.deregister_image(ImageId=image["ImageId"])
    for snapshot in ec2.describe_snapshots(OwnerIds=["self"], Filters=ours)["Snapshots"]:
        ec2.delete_snapshot(SnapshotId=snapshot["SnapshotId"])


def published_whole(session_url: Any, raw: Path, out: dict[str, Any]) -> None:
    """Every snapshot marked complete (the mark a later publish trusts) holds exactly the raw
    disk, and a publish that uploaded or resumed names one of them. (moto reports every
    snapshot as completed, even one a kill left half-written, and its RegisterImage names a
    snapshot of its own; the mark is what tells them apart.)"""
    session, url = session_url
    ec2 = session.client("ec2", endpoint_url=url)
    marked = [s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"], Filters=[
        {"Name": "tag:imagebuilder:disk-digest", "Values": [out["disk_digest"]]},
        {"Name": "tag:imagebuilder:upload", "Values": ["complete"]}])["Snapshots"]]
    assert marked
    for snapshot in marked:
        assert_snapshot_holds(session.client("ebs", endpoint_url=url), snapshot, raw)
    if not out["reused"]:
        assert out["snapshot_id"] in marked


def test_kill_publish(moto: tuple[FaultProxy, Cli, Any], hello: Built, raw: Path,
                      log: FaultLog, rng: random.Random) -> None:
    """Killed mid-upload (moto behind a proxy throttled to 16 MiB/s): a snapshot the kill left
    half-written is never trusted, and the rerun publishes the whole disk (or registers the
    snapshot a kill left complete)."""
    proxy, acli, session_url = moto
    proxy.reset(rate=16 * MIB)
    argv = ["publish", hello.ref, "--target", "aws", "--region", "us-east-1"]

    def after() -> None:
        intact(acli)
        out = acli.json(*argv)
        assert isinstance(out, dict)
        published_whole(session_url, raw, out)

    kill_loop(log, rng, "publish", acli, lambda: argv, lambda: clear_account(session_url),
              after)
    proxy.reset()


# --- servers failing mid-stream --------------------------------------------------------------


def _plan(rng: random.Random, connections: int) -> tuple[dict[int, tuple[str, int]], str]:
    """One faulty connection among ``connections``: a 500, or a drop after a few bytes (a
    request's head) or many (inside a blob)."""
    number = rng.randrange(max(1, connections))
    if rng.random() < 0.5:
        return {number: ("500", 0)}, f"500 on connection {number} of {connections}"
    cut = rng.randrange(1, 4096) if rng.random() < 0.5 else rng.randrange(4096, 8 * MIB)
    return {number: ("drop", cut)}, f"drop after {cut} B on connection {number} of {connections}"


def _mid_stream(log: FaultLog, rng: random.Random, proxy: FaultProxy, command: str,
                run: Callable[[], subprocess.CompletedProcess[str]],
                after: Callable[[], None], runs: int = 4) -> None:
    """A clean run counts the connections; then ``runs`` runs with one faulty connection, each
    followed by ``after`` (the checks and the rerun without faults)."""
    proxy.reset()
    assert run().returncode == 0
    connections = proxy.connections
    for _ in range(runs):
        plan, detail = _plan(rng, connections)
        proxy.reset(plan)
        result = run()
        struck = proxy.faults > 0
        proxy.reset()
        kind = "HTTP 500" if "500" in detail else "dropped connection"
        with log.fault(kind, command, detail, injected=struck):
            if result.returncode != 0:
                failed_cleanly(result)
            after()


def test_registry_fails_mid_stream(fcli: Cli, hello: Built, rproxy: FaultProxy, log: FaultLog,
                                   rng: random.Random, tmp_path: Path) -> None:
    fresh = FreshRegistry(rproxy, tmp_path)
    names = iter(range(1000))
    repo = [""]

    def push() -> subprocess.CompletedProcess[str]:
        repo[0] = fresh.next()
        return fcli("push", hello.ref, repo[0], "--insecure", check=False)

    def push_after() -> None:
        intact(fcli)
        fcli("push", hello.ref, repo[0], "--insecure")
        _pulled(Cli(tmp_path / f"p{next(names)}"), f"{repo[0]}:1.0.0", hello.digest)

    _mid_stream(log, rng, rproxy, "push", push, push_after)

    source = f"{repo[0]}:1.0.0"
    puller = [Cli(tmp_path / "x")]

    def pull() -> subprocess.CompletedProcess[str]:
        puller[0] = Cli(tmp_path / f"q{next(names)}")
        return puller[0]("pull", source, "--insecure", check=False)

    def pull_after() -> None:
        intact(puller[0])
        _pulled(puller[0], source, hello.digest)

    _mid_stream(log, rng, rproxy, "pull", pull, pull_after)
    fresh.close()


def test_aws_fails_mid_stream(moto: tuple[FaultProxy, Cli, Any], hello: Built, raw: Path,
                              log: FaultLog, rng: random.Random) -> None:
    proxy, acli, session_url = moto
    argv = ["publish", hello.ref, "--target", "aws", "--region", "us-east-1"]

    def publish() -> subprocess.CompletedProcess[str]:
        clear_account(session_url)
        return acli(*argv, check=False)

    def after() -> None:
        intact(acli)
        out = acli.json(*argv)
        assert isinstance(out, dict)
        published_whole(session_url, raw, out)

    _mid_stream(log, rng, proxy, "publish", publish, after)


# --- full and failing disks ------------------------------------------------------------------


def _du(path: Path) -> int:
    out = subprocess.run(["du", "-s", "--block-size=1", str(path)], capture_output=True,
                         text=True, check=True)  # allocated bytes: what a tmpfs holds
    return int(out.stdout.split()[0])


def _used(mount: Path) -> int:
    st = os.statvfs(mount)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def test_disk_full(fcli: Cli, hello: Built, app: Path, facts: dict[str, Any], registry: Registry,
                   log: FaultLog, tmp_path: Path) -> None:
    """ENOSPC for real: a size-limited tmpfs, grown (remount) before the rerun."""
    def grow(mount: Path, size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)

    # The store: a pull into a home on a tmpfs smaller than the image.
    source = f"{registry.host}/faults/full:1.0.0"
    fcli("push", hello.ref, source.rsplit(":", 1)[0], "--insecure")
    with tmpfs(tmp_path / "pullfs", 12 * MIB) as mount:
        puller = Cli(mount / "home")
        result = puller("pull", source, "--insecure", check=False)
        with log.fault("ENOSPC", "pull", "store on a 12 MiB tmpfs"):
            failed_cleanly(result)
            intact(puller)
            grow(mount, 256 * MIB)
            _pulled(puller, source, hello.digest)

    # The cache: a build in a home on a tmpfs with 2 MiB to spare (the kernel and ESP are not).
    with tmpfs(tmp_path / "buildfs", 2 * _du(fcli.home)) as mount:
        subprocess.run(["cp", "-a", str(fcli.home), str(mount / "home")], check=True)
        builder = Cli(mount / "home")
        forget_stages(builder, {facts["layers"]["jvm"], facts["layers"]["vmlinuz"]})
        grow(mount, _used(mount) + 2 * MIB)
        result = builder("build", str(app), check=False)
        with log.fault("ENOSPC", "build", "home on a tmpfs with 2 MiB free"):
            failed_cleanly(result)
            intact(builder)
            grow(mount, _used(mount) + 256 * MIB)
            out = builder.json("build", str(app))
            assert isinstance(out, dict) and out["digest"] == hello.digest
            intact(builder)

    # An export's output on a tmpfs smaller than the disk: no partial file is left.
    with tmpfs(tmp_path / "outfs", 8 * MIB) as mount:
        dest = mount / "hello.raw"
        result = fcli("export", hello.ref, "--format", "raw", "-o", str(dest), check=False)
        with log.fault("ENOSPC", "export", "output on an 8 MiB tmpfs"):
            failed_cleanly(result)
            assert list(mount.iterdir()) == []
            intact(fcli)
            grow(mount, 256 * MIB)
            fcli("export", hello.ref, "--format", "raw", "-o", str(dest))
            assert sha256_of(dest) == facts["disk_digest"]


def _limited(cli: Cli, limit: int, *args: str) -> subprocess.CompletedProcess[str]:
    """``imagebuilder ARGS`` under RLIMIT_FSIZE: a write past ``limit`` fails with EFBIG."""
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return subprocess.run(cli.argv(args), env=cli.env(), capture_output=True, text=True,
                          timeout=900, preexec_fn=preexec)


def test_file_too_large(fcli: Cli, hello: Built, app: Path, facts: dict[str, Any],
                        log: FaultLog, tmp_path: Path) -> None:
    """EFBIG for real (RLIMIT_FSIZE, no root needed) in the cache and an export's output."""
    dest = tmp_path / "hello.raw"
    result = _limited(fcli, 8 * MIB, "export", hello.ref, "--format", "raw", "-o", str(dest))
    with log.fault("EFBIG", "export", "RLIMIT_FSIZE 8 MiB"):
        failed_cleanly(result)
        assert not dest.exists()
        intact(fcli)
        fcli("export", hello.ref, "--format", "raw", "-o", str(dest))
        assert sha256_of(dest) == facts["disk_digest"]
    forget_stages(fcli, set(facts["layers"].values()))  # the ESP (34 MiB) must be written again
    result = _limited(fcli, 8 * MIB, "build", str(app))
    with log.fault("EFBIG", "build", "RLIMIT_FSIZE 8 MiB"):
        failed_cleanly(result)
        intact(fcli)
        out = fcli.json("build", str(app))
        assert isinstance(out, dict) and out["disk_digest"] == facts["disk_digest"]
        intact(fcli)


def _eio(cli: Cli, prefix: Path, op: str, after: int, *args: str,
         ) -> subprocess.CompletedProcess[str]:
    env = {**cli.env(), "PYTHONPATH": str(EIO_HOOK), "IB_FAULT_EIO": f"{prefix}/|{op}|{after}"}
    return subprocess.run(cli.argv(args), env=env, capture_output=True, text=True, timeout=900)


def test_io_errors(fcli: Cli, hello: Built, app: Path, facts: dict[str, Any],
                   registry: Registry, log: FaultLog, rng: random.Random,
                   tmp_path: Path) -> None:
    """EIO after a seeded number of bytes read from or written to the store or the cache."""
    store, stages = fcli.home / "store", fcli.home / "cache"
    dest = tmp_path / "hello.raw"
    layers = set(facts["layers"].values())

    def export_after() -> None:
        intact(fcli)
        fcli("export", hello.ref, "--format", "raw", "-o", str(dest))
        assert sha256_of(dest) == facts["disk_digest"]

    def build_after() -> None:
        intact(fcli)
        out = fcli.json("build", str(app))
        assert isinstance(out, dict) and out["digest"] == hello.digest
        intact(fcli)

    source = f"{registry.host}/faults/eio:1.0.0"
    fcli("push", hello.ref, source.rsplit(":", 1)[0], "--insecure")
    names = iter(range(1000))
    for op, where, command in (("read", store, "export"), ("read", stages, "export"),
                               ("write", stages, "build"), ("write", None, "pull")):
        after = rng.randrange(0, 24 * MIB)
        if command == "export":
            forget_stages(fcli, layers)  # the ESP is rebuilt from the store's blobs
            if where == stages:
                fcli("export", hello.ref, "--format", "raw", "-o", str(dest))  # cache it again
            dest.unlink(missing_ok=True)
            result = _eio(fcli, where, op, after, "export", hello.ref, "--format", "raw",
                          "-o", str(dest))
            check = export_after
        elif command == "build":
            after = rng.randrange(0, 8 * MIB)  # the ESP is written by mkfs.fat and mtools
            forget_stages(fcli, {facts["layers"]["jvm"], facts["layers"]["vmlinuz"]})
            result = _eio(fcli, where, op, after, "build", str(app))
            check = build_after
        else:
            puller = Cli(tmp_path / f"pull{next(names)}")
            where = puller.home / "store"
            result = _eio(puller, where, op, after, "pull", source, "--insecure")

            def check(puller: Cli = puller) -> None:
                intact(puller)
                _pulled(puller, source, hello.digest)
        detail = f"{op}s under {where.relative_to(where.parents[1])} fail after {after} B"
        with log.fault("EIO", command, detail, injected=result.returncode != 0):
            if result.returncode != 0:
                failed_cleanly(result)
            check()
