"""The command line's bad paths: each prints exactly one ``ERROR: ...`` line, no traceback, and
exits 2 for the user's mistakes, 1 for the environment's failures.

Nothing here reaches the network or boots: mirrors are a closed loopback port or a local
http.server, and ``run`` is stopped by its checks before QEMU would start.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import textwrap
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from imagebuilder.cli import COMMANDS, cli, main
from imagebuilder.fetch import http
from imagebuilder.store.layout import INITRD_LAYER_MEDIA_TYPE, KERNEL_MEDIA_TYPE, Store

NAME_EXPECTED = (
    "expected lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
    " (it becomes an OCI reference)"
)
NOT_FOUND_HINT = (
    "write one (see examples/hello/imagebuilder.toml) or build a jar without one:"
    " imagebuilder build APP.jar --name N --version V"
)
NO_MAIN_CLASS = (
    "no Main-Class in META-INF/MANIFEST.MF: build it as an executable jar"
    " (jar --main-class CLASS, or your build tool's manifest setting) or set [app] main"
)


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """IMAGEBUILDER_HOME in tmp, and a fresh working directory; retries do not sleep."""
    monkeypatch.setenv("IMAGEBUILDER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    monkeypatch.setattr(http, "RETRY_BASE_DELAY", 0.0)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return tmp_path / "home"


@pytest.fixture
def invoke(home: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    def run(*argv: str) -> Result:
        capsys.readouterr()
        code = main(list(argv))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)
    return run


def assert_error(result: Result, code: int, message: str) -> None:
    """Exit ``code`` and exactly one stderr line, ``ERROR: message``."""
    assert (result.code, result.err) == (code, f"ERROR: {message}\n")


def assert_one_error_line(result: Result, code: int) -> str:
    assert result.code == code, result.err
    assert result.err.startswith("ERROR: ") and result.err.endswith("\n")
    assert result.err.count("\n") == 1, result.err
    assert "Traceback" not in result.err
    return result.err[len("ERROR: "):-1]


def executable_jar(path: Path, main_class: str | None = "com.example.Main") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest = "Manifest-Version: 1.0\r\n"
    if main_class:
        manifest += f"Main-Class: {main_class}\r\n"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("META-INF/MANIFEST.MF", manifest + "\r\n")
        zf.writestr("com/example/Main.class", b"\xca\xfe\xba\xbe\0\0\0=\0\1")
    return path


def project(root: Path, body: str = "", app: str = 'path = "app.jar"') -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "imagebuilder.toml").write_text(textwrap.dedent("""\
        [image]
        name = "hello"
        version = "1.0.0"

        [app]
        {app}
        """).format(app=app) + textwrap.dedent(body))
    return root


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def held_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def store_image(home: Path, ref: str = "hello:1.0.0", port: int | None = 8080) -> str:
    """A fake kernel and layers put in the real store of ``home``; the image digest."""
    store = Store(home / "store")
    kernel = store.add_blob_bytes(b"not a kernel", KERNEL_MEDIA_TYPE,
                                  {"org.opencontainers.image.title": "vmlinuz"})
    layers = [store.add_blob_bytes(f"{name} layer".encode(), INITRD_LAYER_MEDIA_TYPE,
                                   {"org.opencontainers.image.title": name})
              for name in ("base", "jvm", "app")]
    config = {"name": ref.split(":")[0], "version": ref.split(":")[1],
              "cmdline": "console=ttyS0", "memory": 512, "layers": ["base", "jvm", "app"],
              "app": {"jar": "app.jar", "port": port, "healthcheck": "/"}}
    return store.put_image(ref, config, [kernel, *layers])


def assert_store_empty(invoke: Any, home: Path) -> None:
    listing = invoke("images", "--json")
    assert (listing.code, json.loads(listing.out), listing.err) == (0, [], "")
    blobs = home / "store" / "blobs" / "sha256"
    assert not blobs.exists() or not any(blobs.iterdir())


def test_an_error_line_cannot_drive_the_terminal(invoke: Any) -> None:
    """Whatever an ERROR line quotes (here a reference; elsewhere an app's log or a registry's
    reply) has its control characters escaped."""
    result = invoke("inspect", "he\x1b[2K\rllo:1")
    assert result.code == 2 and "\x1b" not in result.err and "\r" not in result.err
    assert "he\\x1b[2K\\x0dllo:1" in result.err


# -- build: the config and the jar --------------------------------------------------------------


def test_build_dir_without_config(invoke: Any) -> None:
    Path("proj").mkdir()
    assert_error(invoke("build", "proj"), 2,
                 f"proj/imagebuilder.toml: not found; {NOT_FOUND_HINT}")


def test_build_in_a_dir_without_config(invoke: Any) -> None:
    assert_error(invoke("build"), 2, f"imagebuilder.toml: not found; {NOT_FOUND_HINT}")


def test_build_unknown_key(invoke: Any) -> None:
    project(Path("proj"), app='path = "app.jar"\nprot = 8080')
    executable_jar(Path("proj/app.jar"))
    assert_error(invoke("build", "proj"), 2,
                 "proj/imagebuilder.toml: unknown key 'app.prot' (did you mean 'port'?)")


def test_build_app_path_missing(invoke: Any) -> None:
    project(Path("proj"), app='path = "target/app.jar"')
    assert_error(invoke("build", "proj"), 2, "proj/imagebuilder.toml: app.path: file not found: "
                 f"{Path.cwd() / 'proj/target/app.jar'}")


def test_build_app_path_not_a_jar(invoke: Any, home: Path) -> None:
    project(Path("proj"))
    Path("proj/app.jar").write_text("#!/bin/sh\necho not a jar\n")
    assert_error(invoke("build", "proj"), 2,
                 f"{Path.cwd() / 'proj/app.jar'}: not a valid jar (File is not a zip file): "
                 "rebuild it or name a jar in app.path")
    assert_store_empty(invoke, home)


def test_build_jar_without_main_class(invoke: Any) -> None:
    project(Path("proj"))
    executable_jar(Path("proj/app.jar"), main_class=None)
    assert_error(invoke("build", "proj"), 2, f"{Path.cwd() / 'proj/app.jar'}: {NO_MAIN_CLASS}")


def test_build_bare_jar_without_main_class(invoke: Any) -> None:
    executable_jar(Path("lib.jar"), main_class=None)
    assert_error(invoke("build", "lib.jar", "--name", "lib", "--version", "1"), 2,
                 f"{Path.cwd() / 'lib.jar'}: {NO_MAIN_CLASS}")


def test_build_bare_jar_without_name(invoke: Any) -> None:
    executable_jar(Path("app.jar"))
    assert_error(invoke("build", "app.jar", "--version", "1.0"), 2,
                 "--name required when building a jar without an imagebuilder.toml: "
                 "imagebuilder build app.jar --name N --version V")


def test_build_bare_jar_without_name_and_version(invoke: Any) -> None:
    executable_jar(Path("app.jar"))
    assert_error(invoke("build", "app.jar"), 2,
                 "--name and --version required when building a jar without an "
                 "imagebuilder.toml: imagebuilder build app.jar --name N --version V")


def test_build_bare_jar_missing(invoke: Any) -> None:
    assert_error(invoke("build", "gone.jar", "--name", "x", "--version", "1"), 2,
                 f"gone.jar: file not found: {Path.cwd() / 'gone.jar'}")


@pytest.mark.parametrize("name", ["Hello", "hello world", "héllo", "-hello", "hello/x", "a:b"])
def test_build_bare_jar_invalid_name(invoke: Any, name: str) -> None:
    executable_jar(Path("app.jar"))
    assert_error(invoke("build", "app.jar", "--name", name, "--version", "1"), 2,
                 f"--name: {NAME_EXPECTED}, got {json.dumps(name, ensure_ascii=False)}")


def test_build_project_invalid_name_override(invoke: Any) -> None:
    project(Path("proj"))
    executable_jar(Path("proj/app.jar"))
    assert_error(invoke("build", "proj", "--name", "Bad_Name!"), 2,
                 f'--name: {NAME_EXPECTED}, got "Bad_Name!"')


def test_build_invalid_mirror(invoke: Any) -> None:
    project(Path("proj"))
    executable_jar(Path("proj/app.jar"))
    assert_error(invoke("build", "proj", "--mirror", "ftp://127.0.0.1/debian"), 2,
                 '--mirror: expected an http:// or https:// URL, got "ftp://127.0.0.1/debian"')


# -- build: the mirror --------------------------------------------------------------------------


def test_build_unreachable_mirror(invoke: Any, home: Path) -> None:
    project(Path("proj"))
    executable_jar(Path("proj/app.jar"))
    mirror = f"http://127.0.0.1:{closed_port()}/debian"
    message = assert_one_error_line(invoke("build", "proj", "--mirror", mirror), 1)
    assert message.startswith(
        f"the mirror is unreachable: {mirror}/dists/trixie/InRelease failed after 5 attempts (")
    assert message.endswith("); check the network or pass --mirror URL")
    assert not Path("proj/imagebuilder.lock").exists()
    assert sorted(p.name for p in Path("proj").iterdir()) == ["app.jar", "imagebuilder.toml"]
    assert_store_empty(invoke, home)


def test_build_bare_jar_unreachable_mirror(invoke: Any, home: Path) -> None:
    executable_jar(Path("app.jar"))
    mirror = f"http://127.0.0.1:{closed_port()}/debian/"
    result = invoke("build", "app.jar", "--name", "app", "--version", "1", "--mirror", mirror)
    message = assert_one_error_line(result, 1)
    assert message.startswith(f"the mirror is unreachable: {mirror}dists/trixie/InRelease ")
    assert sorted(p.name for p in Path.cwd().iterdir()) == ["app.jar"]
    assert_store_empty(invoke, home)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def empty_mirror(tmp_path: Path) -> Iterator[str]:
    """A real HTTP server on loopback serving an empty directory."""
    root = tmp_path / "empty-mirror"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/debian"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_build_mirror_without_the_suite(invoke: Any, home: Path, empty_mirror: str) -> None:
    project(Path("proj"), body='\n[system]\nsuite = "trixie"\n')
    executable_jar(Path("proj/app.jar"))
    assert_error(invoke("build", "proj", "--mirror", empty_mirror), 2,
                 f"suite 'trixie' not found on the mirror {empty_mirror} "
                 f"(no {empty_mirror}/dists/trixie/InRelease); check [system] suite or the mirror")
    assert not Path("proj/imagebuilder.lock").exists()
    assert_store_empty(invoke, home)


# -- images, inspect, rm ------------------------------------------------------------------------


def test_images_on_an_empty_store(invoke: Any) -> None:
    result = invoke("images")
    assert (result.code, result.out, result.err) == (
        0, "NAME  VERSION  DIGEST  SIZE  ENVIRONMENTS\n", "")
    result = invoke("images", "--json")
    assert (result.code, result.out, result.err) == (0, "[]\n", "")


def test_images_lists_a_stored_image(invoke: Any, home: Path) -> None:
    digest = store_image(home)
    result = invoke("images")
    assert result.code == 0 and result.err == ""
    header, row = result.out.splitlines()
    assert header.split() == ["NAME", "VERSION", "DIGEST", "SIZE", "ENVIRONMENTS"]
    assert row.split()[:3] == ["hello", "1.0.0", digest[:19]]
    assert row.split()[-1] == "-"
    (entry,) = json.loads(invoke("images", "--json").out)
    assert (entry["ref"], entry["digest"], entry["environments"]) == ("hello:1.0.0", digest, [])


@pytest.mark.parametrize("command", [["inspect"], ["rm"], ["run"], ["inspect", "--json"]])
def test_unknown_ref(invoke: Any, home: Path, command: list[str]) -> None:
    store_image(home)
    assert_error(invoke(*command, "nope:1.0"), 2,
                 "no image 'nope:1.0' in the store; list images with 'imagebuilder images'")


@pytest.mark.parametrize("command", ["inspect", "rm", "run"])
def test_unknown_ref_on_an_empty_store(invoke: Any, command: str) -> None:
    assert_error(invoke(command, "hello"), 2,
                 "no image 'hello' in the store; list images with 'imagebuilder images'")


def test_rm_unknown_ref_keeps_the_rest(invoke: Any, home: Path) -> None:
    digest = store_image(home)
    assert_error(invoke("rm", "hello:1.0.0", "nope:1.0"), 2,
                 "no image 'nope:1.0' in the store; list images with 'imagebuilder images'")
    assert invoke("images", "--json").out == "[]\n"  # the first ref was removed
    assert not (home / "store/blobs/sha256" / digest.removeprefix("sha256:")).exists()


def test_short_digest_prefix(invoke: Any, home: Path) -> None:
    store_image(home)
    assert_error(invoke("inspect", "sha256:abc"), 2,
                 "digest prefix 'sha256:abc' is too short: give at least 12 hex digits")


# -- run ----------------------------------------------------------------------------------------


def env_project(root: Path) -> Path:
    project(root, body='\n[env.test]\nvars = { GREETING = "hi" }\n\n[env.prod]\nvars = {}\n')
    executable_jar(root / "app.jar")
    return root / "imagebuilder.toml"


def test_run_unknown_env(invoke: Any, home: Path) -> None:
    store_image(home)
    config = env_project(Path("cfg"))
    assert_error(invoke("run", "hello:1.0.0", "--env", "staging", "--config", str(config)), 2,
                 "unknown environment 'staging' in cfg/imagebuilder.toml: known: test, prod")


def test_run_unknown_env_config_in_the_current_dir(invoke: Any, home: Path) -> None:
    store_image(home)
    env_project(Path.cwd())
    assert_error(invoke("run", "hello:1.0.0", "--env", "staging"), 2,
                 "unknown environment 'staging' in imagebuilder.toml: known: test, prod")


def test_run_env_does_not_need_the_jar(invoke: Any, home: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    store_image(home, port=None)
    config = env_project(Path("cfg"))
    Path("cfg/app.jar").unlink()
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # stops run at the next check, before any boot
    assert_error(invoke("run", "hello:1.0.0", "--env", "test", "--config", str(config)), 1,
                 "qemu-system-x86_64 not found: install it with 'apt-get install qemu-system-x86'")


def test_run_busy_host_port(invoke: Any, home: Path, held_port: int) -> None:
    store_image(home)
    assert_error(invoke("run", "hello:1.0.0", "-p", f"{held_port}:8080"), 2,
                 f"host port 127.0.0.1:{held_port} is not free (Address already in use): "
                 "pick another with -p HOSTPORT:8080")


def test_run_busy_default_port(invoke: Any, home: Path, held_port: int) -> None:
    store_image(home, port=held_port)  # forwarded to itself by default
    assert_error(invoke("run", "hello:1.0.0", "--wait"), 2,
                 f"host port 127.0.0.1:{held_port} is not free (Address already in use): "
                 f"pick another with -p HOSTPORT:{held_port}")


def test_run_invalid_port_forward(invoke: Any, home: Path) -> None:
    store_image(home)
    assert_error(invoke("run", "hello:1.0.0", "-p", "8080"), 2,
                 "-p 8080: expected [IP:]HOSTPORT:GUESTPORT, e.g. 8080:8080")


@pytest.mark.parametrize("wait", [False, True])
def test_run_without_qemu(invoke: Any, home: Path, tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch, wait: bool) -> None:
    store_image(home, port=None)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    argv = ["run", "hello:1.0.0"]
    if wait:
        argv += ["--wait", "-p", f"{closed_port()}:8080"]
    assert_error(invoke(*argv), 1,
                 "qemu-system-x86_64 not found: install it with 'apt-get install qemu-system-x86'")
    runs = home / "run"
    assert not runs.exists() or not any(runs.iterdir())


def test_run_wait_without_a_port(invoke: Any, home: Path) -> None:
    store_image(home, port=None)
    assert_error(invoke("run", "hello:1.0.0", "--wait"), 2,
                 "--wait needs a port to probe: set [app] port or pass -p HOST:GUEST")


def test_stop_unknown_vm(invoke: Any) -> None:
    assert_error(invoke("stop", "hello-0000"), 2, "no running VM 'hello-0000' (running: none)")


# -- help ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [None, *sorted(COMMANDS)])
def test_help(invoke: Any, command: str | None) -> None:
    argv = [command, "--help"] if command else ["--help"]
    result = invoke(*argv)
    assert (result.code, result.err) == (0, "")
    assert result.out.startswith(f"Usage: imagebuilder {command or ''}".rstrip())


def test_every_design_command_has_help() -> None:
    assert {"build", "run", "images", "inspect", "rm"} <= set(COMMANDS)


def test_every_command_is_defined_where_the_table_says() -> None:
    ctx = cli.make_context("imagebuilder", ["images"])
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        assert command is not None and command.name == name, name


def test_usage_error_exits_2(invoke: Any) -> None:
    result = invoke("run")
    assert result.code == 2
    assert "Missing argument 'REF'" in result.err
    assert "Traceback" not in result.err


def test_a_failing_disk_is_one_error_line_and_exit_1(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """An OSError no layer turned into an ImageBuilderError (EIO, ENOSPC: the fault suite,
    tests/e2e/test_faults.py, makes real ones) is one line, exit 1; --debug keeps it."""
    import errno
    import os

    import imagebuilder.hashing.core as hashing

    def fail(*_: Any, **__: Any) -> Any:
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(tmp_path / "f"))

    (tmp_path / "f").write_bytes(b"x")
    monkeypatch.setattr(hashing, "hash_paths", fail)
    assert main(["hash", str(tmp_path / "f")]) == 1
    assert capsys.readouterr().err == (
        f"ERROR: Input/output error: {tmp_path / 'f'}: fix the cause (a full or failing disk?) "
        "and run the command again\n")
    with pytest.raises(OSError):
        main(["--debug", "hash", str(tmp_path / "f")])


def test_hash_names_what_a_path_is_when_it_is_not_a_regular_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "a FIFO (named pipe)"), (Path("/dev/zero"), "a character device")):
        assert main(["hash", str(path)]) == 2
        assert capsys.readouterr().err == (
            f"ERROR: {path} is {kind}, not a regular file: hash reads regular files\n")
    assert main(["hash", str(tmp_path / "gone")]) == 2
    assert capsys.readouterr().err == f"ERROR: {tmp_path / 'gone'}: no such file\n"
