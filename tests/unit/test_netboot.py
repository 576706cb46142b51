"""Network boot (imagebuilder/targets/metal/netboot.py): the iPXE script, the environment initrd and
the HTTP server, against real HTTP clients and GNU cpio."""

from __future__ import annotations

import http.client
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from imagebuilder.cli import main
from imagebuilder.disk.boot import BootSource
from imagebuilder.errors import UserError
from imagebuilder.targets.metal.netboot import (
    ENV_PATH,
    NetbootServer,
    NetbootSource,
    env_layer,
    ipxe_script,
    parse_allow,
    parse_listen,
    valid_host,
)


@pytest.fixture
def source(tmp_path: Path) -> NetbootSource:
    (tmp_path / "vmlinuz").write_bytes(b"K" * 100_000)
    layers = []
    for i, name in enumerate(("base", "jvm", "app"), 1):
        path = tmp_path / f"{name}.cpio.zst"
        path.write_bytes(bytes([i]) * (1000 * i))
        layers.append((name, path))
    boot = BootSource(tmp_path / "vmlinuz", tuple(layers), "console=ttyS0 quiet", ())
    return NetbootSource(boot, title="hello:1.0.0")


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
        "kernel http://10.0.2.2:8000/vmlinuz console=ttyS0 quiet || goto failed",
        "initrd --name 1.img http://10.0.2.2:8000/initrd/1.img || goto failed",
        "initrd --name 2.img http://10.0.2.2:8000/initrd/2.img || goto failed",
        "initrd --name 3.img http://10.0.2.2:8000/initrd/3.img || goto failed",
        "boot || goto failed",
        ":failed",
        "echo imagebuilder: network boot of hello:1.0.0 failed",
        "exit 1",
    ]
    # No command that waits for the console: nobody there can change the command line.
    commands = {line.split()[0] for line in lines}
    assert commands == {"echo", "kernel", "initrd", "boot", ":failed", "exit"}
    with_env = ipxe_script(source.with_env("test", {"A": "b"}), "http://h:1")
    assert "initrd --name env.img http://h:1/initrd/env.img || goto failed\nboot" in with_env


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
        assert b"kernel http://10.0.2.2:8123/vmlinuz console=ttyS0 quiet || goto failed\n" in body
        status, body, _ = get(server, "/vmlinuz")
        assert status == 200 and body == source.boot.kernel.read_bytes()
        for i, (_name, path) in enumerate(source.boot.initrds, 1):
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
    assert source.boot.cmdline == "console=ttyS0 panic=-1"
    assert source.boot.initrds == (("initrd", out / "initrd.img"),)
    (out / "initrd.img").unlink()
    with pytest.raises(UserError, match="is not a kernel-initrd export \\(no initrd.img\\)"):
        NetbootSource.of_directory(out)


@pytest.mark.parametrize(("name", "cmdline", "error"), [
    ("export", "console=ttyS0 ${net0/mac}\nshell\n#", "cmdline: kernel command line has '$'"),
    ("export", "console=ttyS0\nshell", "cmdline: kernel command line has '\\n' at offset 13"),
    ("boot$(x)", "console=ttyS0", "the directory's name has '$', which cannot go into an iPXE"),
    ("boot\nshell", "console=ttyS0", "the directory's name has '\\n', which cannot go"),
])
def test_an_export_directory_s_cmdline_and_name_are_checked_for_the_script(
        tmp_path: Path, name: str, cmdline: str, error: str) -> None:
    """Review F10: the cmdline file and the directory's name go into the iPXE script, where a
    newline starts a command (``shell``) and ``${...}`` expands: one line, as build says."""
    out = tmp_path / name
    out.mkdir()
    (out / "vmlinuz").write_bytes(b"k")
    (out / "initrd.img").write_bytes(b"i")
    (out / "cmdline").write_text(cmdline + "\n")
    with pytest.raises(UserError) as refused:
        NetbootSource.of_directory(out)
    assert error in str(refused.value) and "\n" not in str(refused.value)


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


# --- who may fetch the environment, and what the Host header may put in the script ----------


def test_env_on_loopback_is_served_to_loopback_clients(source: NetbootSource) -> None:
    with NetbootServer(source.with_env("test", {"A": "b"}), ("127.0.0.1", 0)).start() as server:
        assert get(server, "/initrd/env.img") == (200, env_layer("test", {"A": "b"}),
                                                  get(server, "/initrd/env.img")[2])


def test_env_is_403_for_clients_outside_allow(source: NetbootSource) -> None:
    with NetbootServer(source.with_env("test", {"SECRET": "s3cr3t"}), ("127.0.0.1", 0),
                       allow=parse_allow(["10.0.0.0/24"])).start() as server:
        assert [str(n) for n in server.env_clients] == ["10.0.0.0/24"]
        status, body, _ = get(server, "/initrd/env.img")
        assert status == 403 and b"s3cr3t" not in body
        assert get(server, "/initrd/env.img", method="HEAD")[0] == 403
        # Everything else is still served: only the environment is secret.
        assert get(server, "/vmlinuz")[0] == 200
        assert get(server, "/boot.ipxe")[0] == 200
    with NetbootServer(source.with_env("test", {"SECRET": "s3cr3t"}), ("127.0.0.1", 0),
                       allow=parse_allow(["10.0.0.0/24", "127.0.0.1"])).start() as server:
        assert get(server, "/initrd/env.img")[0] == 200


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
def test_allow_matches_ipv4_clients_of_an_ipv6_server(source: NetbootSource) -> None:
    try:
        server = NetbootServer(source.with_env("test", {"A": "b"}), ("::", 0),
                               allow=parse_allow(["127.0.0.0/8"]))
    except UserError:
        pytest.skip("cannot listen on ::")
    with server.start():
        port = server.address[1]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/initrd/env.img")
            assert conn.getresponse().status == 200
        finally:
            conn.close()


def test_env_on_a_public_address_needs_allow(source: NetbootSource) -> None:
    with pytest.raises(UserError) as info:
        NetbootServer(source.with_env("prod", {"A": "b"}), ("0.0.0.0", 0))
    assert str(info.value) == (
        "serve --env on 0.0.0.0 would hand the environment's variables to anyone who can reach"
        " it: name the clients that may fetch them with --allow CIDR (e.g. --allow"
        " 10.0.0.0/24), or listen on 127.0.0.1")
    # Without an environment there is nothing secret to guard.
    NetbootServer(source, ("0.0.0.0", 0)).close()
    with pytest.raises(UserError, match="use it with --env"):
        NetbootServer(source, ("0.0.0.0", 0), allow=parse_allow(["10.0.0.0/8"]))


@pytest.mark.parametrize("host", [
    "10.0.0.1:8000/x rdinit=/bin/sh x",  # kernel options smuggled into the kernel line
    "evil.example\tshell",
    "a;b",
    "[::1",
    "[fe80::zz]:80",
    "host:99999",
    "x" * 300,
    "",
])
def test_a_bad_host_header_never_reaches_the_script(source: NetbootSource, host: str) -> None:
    assert valid_host(host) is None
    with NetbootServer(source, ("127.0.0.1", 0)).start() as server:
        port = server.address[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(f"GET /boot.ipxe HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
    assert reply.startswith(b"HTTP/1.0 200")
    script = reply.split(b"\r\n\r\n", 1)[1].decode()
    assert f"kernel http://127.0.0.1:{port}/vmlinuz console=ttyS0 quiet || goto failed" in script
    assert "rdinit" not in script and (not host or host not in script)


@pytest.mark.parametrize("host", ["10.0.2.2:8123", "boot.example.com", "boot.example.com.:80",
                                  "[::1]:8000", "[fe80::1]", "my-host"])
def test_good_host_headers(host: str) -> None:
    assert valid_host(host) == host


@pytest.mark.parametrize(("argv", "message"), [
    (["--env", "prod", "--listen", "0.0.0.0:8000"], "serve --env on 0.0.0.0 would hand"),
    (["--env", "prod", "--listen", "10.1.2.3:8000"], "serve --env on 10.1.2.3 would hand"),
    (["--env", "prod", "--listen", "0.0.0.0:8000", "--allow", "10.0.0.0/33"],
     "--allow 10.0.0.0/33: expected an address or CIDR network"),
    (["--listen", "0.0.0.0:8000", "--allow", "10.0.0.0/24"], "use it with --env"),
])
def test_cli_serve_refuses_an_unguarded_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        argv: list[str], message: str) -> None:
    monkeypatch.setenv("IMAGEBUILDER_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    code = main(["serve", "hello:1.0.0", *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("ERROR: ") and message in err and err.count("\n") == 1


# --- what clients send never reaches the operator's terminal raw --------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _lines_until(proc: subprocess.Popen[bytes], done: Callable[[list[bytes]], bool]
                 ) -> list[bytes]:
    """stderr lines of ``proc`` until ``done(lines)`` (or 120 s without it: a loaded machine
    may take that long to start a Python process)."""
    assert proc.stderr is not None
    lines: list[bytes] = []
    deadline = time.monotonic() + 120
    while not done(lines) and time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], deadline - time.monotonic())
        if not ready:
            break
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
    return lines


def test_serve_escapes_client_bytes_and_logs_a_reset_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "export"
    out.mkdir()
    (out / "vmlinuz").write_bytes(b"k" * 1000)
    (out / "initrd.img").write_bytes(b"i" * 1000)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "imagebuilder.cli", "serve", str(out), "--listen",
         f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        bufsize=0,  # unbuffered: select() sees every byte not yet read
        env={**os.environ, "IMAGEBUILDER_HOME": str(tmp_path / "home")},
        # Ctrl-C as in a terminal: a suite started in the background inherits SIGINT ignored
        # (POSIX shells ignore it for `cmd &`), and Python then never raises KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert b"serving" in _lines_until(proc, lambda ls: any(b"serving" in x for x in ls))[-1]
        for request, status in ((b"GET /\x1b[2J\x1b]0;pwned\x07x\x9b HTTP/1.1", b"404"),
                                (b"GET /a\rb\x1b[1A HTTP/1.1", b"400"),
                                (b"GET /\\x1b[31m HTTP/1.1", b"404")):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
                c.sendall(request + b"\r\n\r\n")
                reply = b""
                while chunk := c.recv(4096):  # all of it: closing early would reset
                    reply += chunk
                assert reply.startswith(b"HTTP/1.0 " + status)
        reset = socket.create_connection(("127.0.0.1", port), timeout=10)
        reset.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        reset.sendall(b"GET /vmlinuz HTTP/1.1\r\n")  # headers never finished: then a RST
        reset.close()
        lines = _lines_until(proc, lambda ls: any(b"reset" in x for x in ls))
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rest = proc.communicate(timeout=120)[1]
        except subprocess.TimeoutExpired:
            proc.kill()  # never left running into the next test
            proc.communicate()
            raise
    text = b"".join(lines) + rest
    assert not set(text) & (set(range(0x20)) - {0x0a}) and 0x7f not in text
    assert b"\xc2\x9b" not in text and b"\x9b" not in text
    assert b'127.0.0.1 "GET /\\x1b[2J\\x1b]0;pwned\\x07x\\x9b HTTP/1.1" 404 -\n' in text
    assert b'127.0.0.1 "GET /a\\x0db\\x1b[1A HTTP/1.1" 400 -\n' in text
    # Review F12: a client's literal backslash is doubled, so it cannot pass for an escape.
    assert b'127.0.0.1 "GET /\\\\x1b[31m HTTP/1.1" 404 -\n' in text
    assert b"127.0.0.1 reset the connection\n" in text
    assert b"Traceback" not in text and text.count(b"reset") == 1
