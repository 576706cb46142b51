"""End to end: the suite is configurable. bookworm's kernel (6.1, modules uncompressed under
/lib, virtio_pci a module), busybox 1.35 and JDK 17 build and boot like trixie's."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from .conftest import Cli, compile_example, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.network]


def test_bookworm_image_builds_and_serves(cli: Cli, tmp_path: Path, vms: list[str]) -> None:
    app = compile_example(tmp_path)
    toml = app / "imagebuilder.toml"
    toml.write_text(toml.read_text().replace('version = "1.0.0"', 'version = "bookworm"')
                    + '\n[jvm]\nversion = 17\n\n[system]\nsuite = "bookworm"\n')
    built = cli.json("build", str(app))
    assert built["ref"] == "hello:bookworm"
    info = cli.json("inspect", "hello:bookworm")
    assert info["config"]["kernel"]["release"].startswith("6.1.")
    port = free_port()
    started = json.loads(cli("run", "hello:bookworm", "--env", "test", "--accel", "tcg",
                             "--wait", "--json", "-p", f"127.0.0.1:{port}:8080", cwd=app).stdout)
    vms.append(started["id"])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/info", timeout=10) as response:
        body = json.loads(response.read())
    assert body["java"].startswith("17.")
    assert body["env"] == "test" and body["user"] == "app" and body["root_ro"] is True
    cli("stop", started["id"])
    vms.remove(started["id"])
    cli("rm", "hello:bookworm")
