"""Network boot (imagebuilder/targets/netboot.py): the iPXE script, the environment initrd and
the HTTP server, against real HTTP clients and GNU cpio."""

from __future__ import annotations

import http.client
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from imagebuilder.errors import UserError
from imagebuilder.targets.netboot import (
    ENV_PATH,
    NetbootServer,
    NetbootSource,
    env_layer,
    ipxe_script,
    parse_listen,
)


@pytest.fixture
def source(tmp_path: Path) -> NetbootSource:
    (tmp_path / "vmlinuz").write_bytes(b"K" * 100_000)
    layers = []
    for i, name in enumerate(("base", "jvm", "app"), 1):
        path = tmp_path / f"{name}.cpio.zst"
        path.write_bytes(bytes([i]) * (1000 * i))
        layers.append((name, path))
    return NetbootSource(tmp_path / "vmlinuz", tuple(layers), "console=ttyS0 quiet",
                         title="hello:1.0.0")


def get(server: NetbootServer, path: str, method: str = "GET",
        host: str | None = None) -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection(*server.address, timeout=5)
    try:
        headers = {"Host": host} if host else {}
        conn.request(method, path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read(), dict(resp.getheaders())
    finally:
        conn.close()


def test_script_boots_kernel_and_layers_in_order(source: NetbootSource) -> None:
    script = ipxe_script(source, "http://10.0.2.2:8000/")
    lines = [line for line in script.splitlines() if line and not line.startswith("#")]
    assert script.startswith("#!ipxe\n")
    assert lines[1:] == [
        "kernel http://10.0.2.2:8000/vmlinuz console=ttyS0 quiet",
        "initrd --name 1.img http://10.0.2.2:8000/initrd/1.img",
        "initrd --name 2.img http://10.0.2.2:8000/initrd/2.img",
        "initrd --name 3.img http://10.0.2.2:8000/initrd/3.img",
        "boot",
    ]
    with_env = ipxe_script(source.with_env("test", {"A": "b"}), "http://h:1")
    assert "initrd --name env.img http://h:1/initrd/env.img\nboot\n" in with_env


@pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio not installed")
def test_env_layer_is_a_cpio_the_kernel_unpacks(tmp_path: Path) -> None:
    data = env_layer("test", {"GREETING": "hi there", "Z": "a=b"})
    (tmp_path / "x").mkdir()
    subprocess.run(["cpio", "-idm", "--quiet"], input=data, cwd=tmp_path / "x", check=True)
    env = tmp_path / "x" / ENV_PATH
    assert env.read_text() == "GREETING=hi there\nIMAGEBUILDER_ENV=test\nZ=a=b\n"
    assert env.stat().st_mode & 0o777 == 0o600
    assert env_layer("test", {"GREETING": "hi there", "Z": "a=b"}) == data  # reproducible


def test_server_serves_script_kernel_and_layers(source: NetbootSource) -> None:
    logged: list[str] = []
    with NetbootServer(source.with_env("test", {"A": "b"}), ("127.0.0.1", 0),
                       log=logged.append).start() as server:
        status, body, headers = get(server, "/boot.ipxe", host="10.0.2.2:8123")
        assert status == 200 and headers["Content-Type"] == "text/plain"
        assert b"kernel http://10.0.2.2:8123/vmlinuz console=ttyS0 quiet\n" in body
        status, body, _ = get(server, "/vmlinuz")
        assert status == 200 and body == source.kernel.read_bytes()
        for i, (_name, path) in enumerate(source.initrds, 1):
            assert get(server, f"/initrd/{i}.img")[1] == path.read_bytes()
        assert get(server, "/initrd/env.img")[1] == env_layer("test", {"A": "b"})
        status, body, headers = get(server, "/vmlinuz", method="HEAD")
        assert status == 200 and body == b"" and headers["Content-Length"] == "100000"
        assert get(server, "/etc/passwd")[0] == 404
        assert get(server, "/initrd/../vmlinuz")[0] == 404
        assert get(server, "/initrd/4.img")[0] == 404
    assert any('"GET /vmlinuz HTTP/1.1" 200' in line for line in logged)


def test_kernel_initrd_export_directory(tmp_path: Path) -> None:
    out = tmp_path / "export"
    out.mkdir()
    (out / "vmlinuz").write_bytes(b"k")
    (out / "initrd.img").write_bytes(b"i")
    (out / "cmdline").write_text("console=ttyS0 panic=-1\n")
    source = NetbootSource.of_directory(out)
    assert source.cmdline == "console=ttyS0 panic=-1"
    assert source.initrds == (("initrd", out / "initrd.img"),)
    (out / "initrd.img").unlink()
    with pytest.raises(UserError, match="is not a kernel-initrd export \\(no initrd.img\\)"):
        NetbootSource.of_directory(out)


@pytest.mark.parametrize("text", ["8000", "localhost:8000", "1.2.3.4:0", "1.2.3.4:70000",
                                  "999.1.1.1:80"])
def test_bad_listen_addresses(text: str) -> None:
    with pytest.raises(UserError, match="--listen"):
        parse_listen(text)


def test_listen_addresses() -> None:
    assert parse_listen("0.0.0.0:8000") == ("0.0.0.0", 8000)
    assert parse_listen("[::1]:81") == ("::1", 81)


def test_a_busy_port_is_a_user_error(source: NetbootSource) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(UserError, match=f"cannot listen on 127.0.0.1:{port}"):
            NetbootServer(source, ("127.0.0.1", port))
