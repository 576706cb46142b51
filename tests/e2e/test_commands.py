"""Every command as a person runs it: the installed `imagebuilder` script, in its default human
mode (stderr a terminal, so progress bars draw) and with --json where it has one, on the
session's real hello build. No boots: run, ps and stop are booted in test_boot.py; here ps is
only listed. Each human run must print no traceback and no ERROR line.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagebuilder.config.parse import load
from imagebuilder.targets.aws.publish import userdata as aws_userdata
from support.registry import Registry
from support.servers import (
    assert_snapshot_holds,
    aws_env,
    free_port,
    moto_executable,
    moto_server,
)

from .conftest import Built, Cli

pytestmark = [pytest.mark.e2e, pytest.mark.network]


def human(cli: Cli, *args: str, cwd: Path | None = None,
          bar: str | None = None) -> list[str]:
    """Run ``imagebuilder ARGS`` with stderr on a terminal; its stdout lines. ``bar``: text
    the progress bar on stderr must have shown."""
    result = cli(*args, cwd=cwd, tty=True)
    assert "Traceback" not in result.stderr and "ERROR" not in result.stderr, result.stderr
    if bar is not None:
        assert bar in result.stderr, result.stderr
    return result.stdout.splitlines()


def as_json(cli: Cli, *args: str, cwd: Path | None = None, tty: bool = False) -> object:
    """``imagebuilder ARGS --json``, parsed; with ``tty`` (stderr a terminal) no bar draws."""
    result = cli(*args, "--json", cwd=cwd, tty=tty)  # stdout: the JSON alone (warnings: stderr)
    assert "Traceback" not in result.stderr and "ERROR" not in result.stderr, result.stderr
    assert not tty or result.stderr == "", result.stderr
    return json.loads(result.stdout)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


def test_export_bmap_hash_check_images_inspect(cli: Cli, hello: Built, tmp_path: Path) -> None:
    disk_digest = as_json(cli, "inspect", hello.ref)["config"]["disk"]["digest"]  # type: ignore[index]
    a, b = tmp_path / "a.raw", tmp_path / "b.raw"
    assert human(cli, "export", hello.ref, "--format", "raw", "--bmap", "-o", str(a),
                 bar="raw a.raw") == [f"wrote {a}", f"wrote {a}.bmap"]
    assert as_json(cli, "export", hello.ref, "--format", "raw", "--bmap", "-o", str(b),
                   tty=True) == {"ref": hello.ref, "format": "raw", "path": str(b),
                                 "bmap": f"{b}.bmap"}
    assert _sha256(a) == _sha256(b) == disk_digest
    assert Path(f"{a}.bmap").read_bytes() == Path(f"{b}.bmap").read_bytes()
    # bmaptool, the map's reference reader, copies by the map and checks every range's SHA-256.
    bmaptool = shutil.which("bmaptool")
    assert bmaptool, "bmap-tools is installed by scripts/setup.sh"
    copied = tmp_path / "copy.raw"
    subprocess.run([bmaptool, "copy", "--bmap", f"{a}.bmap", str(a), str(copied)], check=True,
                   capture_output=True, timeout=300)
    assert _sha256(copied) == disk_digest

    assert human(cli, "hash", "--algo", "sha256", str(a)) == [f"{disk_digest[7:]}  {a}"]
    assert as_json(cli, "hash", "--algo", "sha256", str(a)) == [
        {"path": str(a), "algo": "sha256", "digest": disk_digest[7:], "size": a.stat().st_size}]
    xxhsum = subprocess.run(["xxhsum", "-H2", str(a)], capture_output=True, text=True,
                            check=True).stdout.splitlines()
    assert human(cli, "hash", "--algo", "xxh128", str(a)) == [
        line.removeprefix("XXH128_") for line in xxhsum]

    lines = human(cli, "check")
    assert lines[0].startswith("checked ") and lines[-1] == "no damage found"
    assert as_json(cli, "check")["ok"] is True  # type: ignore[index]

    table = human(cli, "images")
    assert table[0].split() == ["NAME", "VERSION", "DIGEST", "SIZE", "ENVIRONMENTS"]
    name, version = hello.ref.split(":")
    assert any(row.split()[:3] == [name, version, hello.digest[:19]] for row in table[1:])
    assert hello.ref in [i["ref"] for i in as_json(cli, "images")]  # type: ignore[union-attr, index, attr-defined]
    shown = human(cli, "inspect", hello.ref)
    assert shown[0] == f"image:    {hello.ref}" and shown[1] == f"digest:   {hello.digest}"
    assert f"disk:     {disk_digest} " in "\n".join(shown)
    assert human(cli, "ps") == [] and as_json(cli, "ps") == []


@pytest.fixture
def demo(cli: Cli, hello: Built) -> Iterator[str]:
    """hello rebuilt under another name (every stage cached), so that promotions, gc and rm
    here leave hello's tags alone; removed afterwards."""
    lines = human(cli, "build", str(hello.app), "--name", "cmdsdemo", "--version", "1.0")
    assert len(lines) == 1 and lines[0].startswith("cmdsdemo:1.0 sha256:"), lines
    yield "cmdsdemo:1.0"
    cli("rm", "cmdsdemo:1.0", check=False)


def test_build_promote_userdata_rm_gc(cli: Cli, hello: Built, demo: str,
                                      tmp_path: Path) -> None:
    digest = as_json(cli, "build", str(hello.app), "--name", "cmdsdemo", "--version", "1.0")
    assert all(s["cached"] for s in digest["stages"])  # type: ignore[index]
    digest = digest["digest"]  # type: ignore[index]
    app = hello.app
    assert human(cli, "promote", demo, "--env", "test", cwd=app) == [
        f"promoted {demo} ({digest[:19]}) to test: locally"]
    assert as_json(cli, "promote", demo, "--env", "prod", cwd=app) == {
        "ref": demo, "environment": "prod", "digest": digest, "previous": None, "local": True,
        "registry": None, "history": 2, "amis": None}
    userdata = cli("userdata", demo, "--env", "prod", cwd=app, tty=True)
    prod = load(app, check_app=False).env("prod").vars
    assert userdata.stdout == aws_userdata("prod", prod) and userdata.stderr == ""
    assert "IMAGEBUILDER_ENV=prod\n" in userdata.stdout
    assert as_json(cli, "userdata", demo, "--env", "prod", cwd=app) == {
        "ref": demo, "digest": digest, "env": "prod", "path": None, "userdata": userdata.stdout}
    assert human(cli, "rm", demo) == [f"removed {demo} ({digest})"]
    # A version nothing else uses: once removed, its manifest and config are garbage.
    two = as_json(cli, "build", str(app), "--name", "cmdsdemo", "--version", "2.0",
                  "--format", "kernel-initrd", "--output-dir", str(tmp_path))
    assert two["outputs"] == [{"format": "kernel-initrd",  # type: ignore[index]
                               "path": str(tmp_path / "cmdsdemo-2.0")}]
    assert sorted(p.name for p in (tmp_path / "cmdsdemo-2.0").iterdir()) == [
        "cmdline", "initrd.img", "vmlinuz"]
    assert as_json(cli, "rm", "cmdsdemo:2.0") == [
        {"ref": "cmdsdemo:2.0", "digest": two["digest"]}]  # type: ignore[index]
    dry = human(cli, "gc", "--dry-run")
    assert len(dry) == 1 and dry[0].startswith("would remove "), dry
    got = as_json(cli, "gc")
    assert got["dry_run"] is False and len(got["removed"]) >= 2  # type: ignore[index, arg-type]
    assert dry[0].startswith(f"would remove {len(got['removed'])} blobs (")  # type: ignore[index, arg-type]
    assert human(cli, "gc") == ["removed 0 blobs (0 B)"]
    assert as_json(cli, "check")["ok"] is True  # type: ignore[index]


def test_push_pull_promote_registry(cli: Cli, hello: Built, demo: str, registry: Registry,
                                    tmp_path: Path) -> None:
    repo = f"{registry.host}/team/cmdsdemo"
    lines = human(cli, "push", demo, repo, "--insecure", bar="push cmdsdemo:1.0")
    assert lines[0].startswith(f"pushed {demo} to {repo}:1.0 (sha256:"), lines
    again = as_json(cli, "push", demo, repo, "--insecure")
    assert again["blobs_sent"] == 0  # type: ignore[index]
    other = Cli(tmp_path / "home2")
    lines = human(other, "pull", f"{repo}:1.0", "--insecure", bar="pull")
    assert lines[0] == f"pulled {repo}:1.0 as {demo} ({again['digest']})", lines  # type: ignore[index]
    assert as_json(other, "pull", f"{repo}:1.0", "--insecure", "--force")["ref"] == demo  # type: ignore[index]
    assert human(cli, "promote", demo, "--env", "test", "--registry", repo, "--insecure",
                 cwd=hello.app)[0].startswith(f"promoted {demo} ")
    assert as_json(other, "check")["ok"] is True  # type: ignore[index]


def test_flash_and_serve(cli: Cli, hello: Built, tmp_path: Path) -> None:
    target = tmp_path / "disk.img"
    lines = human(cli, "flash", hello.ref, str(target), "--env", "test", cwd=hello.app,
                  bar="flash")
    assert len(lines) == 1 and lines[0].startswith(f"flashed {hello.ref} onto {target}: ")
    assert " bytes written in " in lines[0] and ", verified: all " in lines[0], lines
    again = as_json(cli, "flash", hello.ref, str(tmp_path / "disk2.img"))
    assert again["ref"] == hello.ref and again["target"] == str(tmp_path / "disk2.img")  # type: ignore[index]
    port = free_port()
    proc = subprocess.Popen(cli.argv(["serve", hello.ref, "--listen", f"127.0.0.1:{port}"]),
                            env=cli.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        script = ""
        deadline = time.monotonic() + 120
        while not script and time.monotonic() < deadline and proc.poll() is None:
            try:
                script = urllib.request.urlopen(f"http://127.0.0.1:{port}/boot.ipxe",
                                                timeout=5).read().decode()
            except OSError:
                time.sleep(0.2)
        assert script.startswith("#!ipxe"), script
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err, err
    assert f"serving {hello.ref} at http://127.0.0.1:{port}" in err, err


def test_publish_the_real_disk_and_promote_on_aws(cli: Cli, hello: Built, demo: str,
                                                  tmp_path: Path) -> None:
    """publish uploads the real bootable disk of hello (as cmdsdemo) to moto_server; its
    blocks read back through the EBS direct APIs equal the exported raw disk."""
    boto3 = pytest.importorskip("boto3")
    exe = moto_executable()
    assert exe, "moto_server is installed by pip install -e '.[test]'"
    raw = tmp_path / "hello.raw"
    cli("export", demo, "--format", "raw", "-o", str(raw))
    with moto_server(exe) as url:
        env = aws_env(url)
        aws = Cli(cli.home, env)
        region = env["AWS_DEFAULT_REGION"]
        lines = human(aws, "publish", demo, "--target", "aws", "--region", region,
                      "--env", "test", "--regions", "eu-west-1", cwd=hello.app,
                      bar=f"upload {demo}")
        assert lines[0].startswith(f"published {demo} as ami-"), lines
        assert lines[0].endswith(f" in {region} for test")
        assert lines[2].startswith("copied to eu-west-1: ami-")
        got = as_json(aws, "publish", demo, "--target", "aws", "--region", region)
        assert got["reused"] and got["image_id"] == lines[0].split()[3]  # type: ignore[index]
        disk_digest = got["disk_digest"]  # type: ignore[index]
        assert disk_digest == _sha256(raw)

        ebs = boto3.client("ebs", region_name=region, endpoint_url=url,
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        ec2 = boto3.client("ec2", region_name=region, endpoint_url=url,
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        snapshots = ec2.describe_snapshots(OwnerIds=["self"], Filters=[  # moto's AMI names
            {"Name": "tag:imagebuilder:disk-digest", "Values": [disk_digest]}])["Snapshots"]
        assert [s["State"] for s in snapshots] == ["completed"]  # a snapshot of its own
        assert assert_snapshot_holds(ebs, snapshots[0]["SnapshotId"], raw) > 0

        line = human(aws, "promote", demo, "--env", "test", "--target", "aws",
                     "--region", region, "--regions", "eu-west-1", cwd=hello.app)
        assert line[0].startswith(f"promoted {demo} ") and f" in {region}" in line[0]
        promoted = as_json(aws, "promote", demo, "--env", "prod", "--target", "aws",
                           "--region", region, cwd=hello.app)
        assert promoted["amis"] == {region: got["image_id"]}  # type: ignore[index]
