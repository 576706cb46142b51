"""The thin command line's promises, checked as a person meets them: every command that prints a
result takes ``--json``; ``run --json`` needs ``--wait``; ``-o`` names a file everywhere (build's
directory is ``--output-dir``); progress and warnings come from the library through one reporter
the command line renders (bars on a terminal only, none with ``--json``), and the library never
prints, logs or exits.

Commands run through ``imagebuilder.cli.main`` inside click's CliRunner isolation, and one case
of each through the installed ``imagebuilder`` script in a child process (support/cli.py).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import click
import pytest
import requests
from click.testing import CliRunner

import imagebuilder
from imagebuilder import progress
from imagebuilder.cli import COMMANDS, cli, main
from imagebuilder.errors import UserError
from imagebuilder.fetch import debian, http
from imagebuilder.fetch.lock import LockEntry
from imagebuilder.store.layout import INITRD_LAYER_MEDIA_TYPE, KERNEL_MEDIA_TYPE, Store
from support.cli import Cli

PACKAGE = Path(imagebuilder.__file__).parent
NOT_IN_STORE = "no image '{}' in the store; list images with 'imagebuilder images'"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("IMAGEBUILDER_HOME", str(tmp_path / "home"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return tmp_path / "home"


def invoke(*argv: str) -> tuple[int, str, str]:
    """``imagebuilder ARGV`` in CliRunner's isolation: exit code, stdout, stderr."""
    with CliRunner().isolation() as (out, err, _):
        code = main(list(argv))
    return code, out.getvalue().decode(), err.getvalue().decode()


def store_image(home: Path, ref: str = "hello:1.0.0") -> str:
    """A stored image of fake kernel and layers; its digest."""
    store = Store(home / "store")
    kernel = store.add_blob_bytes(b"not a kernel", KERNEL_MEDIA_TYPE,
                                  {"org.opencontainers.image.title": "vmlinuz"})
    layer = store.add_blob_bytes(f"{ref} app".encode(), INITRD_LAYER_MEDIA_TYPE,
                                 {"org.opencontainers.image.title": "app"})
    name, version = ref.split(":")
    config = {"name": name, "version": version, "cmdline": "console=ttyS0", "memory": 512,
              "app": {"jar": "app.jar", "port": 8080, "healthcheck": "/"}}
    return store.put_image(ref, config, [kernel, layer])


def env_project(root: Path) -> Path:
    """An imagebuilder.toml naming environments test and prod (its app need not exist)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "imagebuilder.toml").write_text(textwrap.dedent("""\
        [image]
        name = "hello"
        version = "1.0.0"

        [app]
        path = "app.jar"

        [env.test]
        vars = { GREETING = "hi" }

        [env.prod]
        vars = { GREETING = "hello" }
        """))
    return root / "imagebuilder.toml"


# -- every command that prints a result takes --json --------------------------------------------


def test_every_command_but_serve_takes_json() -> None:
    """serve prints no result: it serves until interrupted and logs requests on stderr."""
    ctx = click.Context(cli)
    lacking = set()
    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        assert command is not None
        if not any("--json" in p.opts for p in command.params):
            lacking.add(name)
    assert lacking == {"serve"}


def test_rm_json_lists_what_it_removed(home: Path) -> None:
    first, second = store_image(home, "hello:1.0.0"), store_image(home, "hello:2.0.0")
    assert invoke("rm", "hello:1.0.0", "hello:2.0.0", "--json") == (0, json.dumps([
        {"ref": "hello:1.0.0", "digest": first}, {"ref": "hello:2.0.0", "digest": second}]) +
        "\n", "")
    assert invoke("images", "--json")[1] == "[]\n"


def test_rm_json_stopped_by_a_missing_ref_lists_those_removed_before_it(home: Path) -> None:
    digest = store_image(home)
    code, out, err = invoke("rm", "hello:1.0.0", "nope:1", "--json")
    assert (code, err) == (2, f"ERROR: {NOT_IN_STORE.format('nope:1')}\n")
    assert json.loads(out) == [{"ref": "hello:1.0.0", "digest": digest}]


def test_userdata_json_carries_the_user_data(home: Path) -> None:
    digest = store_image(home)
    config = env_project(Path("app"))
    code, out, err = invoke("userdata", "hello:1.0.0", "--env", "test", "--config", str(config),
                            "--json")
    assert (code, err) == (0, "")
    got = json.loads(out)
    plain = invoke("userdata", "hello:1.0.0", "--env", "test", "--config", str(config))[1]
    assert got == {"ref": "hello:1.0.0", "digest": digest, "env": "test", "path": None,
                   "userdata": plain}
    assert "GREETING=hi" in plain


def test_userdata_json_with_a_file_keeps_the_variables_off_stdout(home: Path) -> None:
    store_image(home)
    config = env_project(Path("app"))
    dest = Path("user-data").absolute()
    code, out, err = invoke("userdata", "hello:1.0.0", "--env", "prod", "--config", str(config),
                            "-o", str(dest), "--json")
    assert (code, err) == (0, "")
    assert json.loads(out)["path"] == str(dest) and json.loads(out)["userdata"] is None
    assert "GREETING=hello" in dest.read_text() and "GREETING" not in out
    assert dest.stat().st_mode & 0o777 == 0o600


@pytest.fixture
def vm_process(home: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A live process that ``stop`` takes for a VM (its command line names the run directory's
    pid file, as QEMU's -pidfile does); no QEMU."""
    vm_id = "hello-89abcdef"
    run_dir = home / "run" / vm_id
    run_dir.mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)",
                             "-pidfile", str(run_dir / "qemu.pid")])
    (run_dir / "qemu.pid").write_text(f"{proc.pid}\n")
    (run_dir / "image").write_text("hello:1.0.0 sha256:x\n")
    yield vm_id, proc
    proc.kill()
    proc.wait()


def test_stop_json_lists_the_vms_it_stopped(vm_process: tuple[str, subprocess.Popen[bytes]]
                                            ) -> None:
    vm_id, proc = vm_process
    code, out, err = invoke("stop", vm_id, "--json")
    assert (code, json.loads(out), err) == (0, [{"id": vm_id, "pid": proc.pid}], "")
    assert proc.wait(10) == -signal.SIGTERM


def test_stop_json_of_an_unknown_vm_is_one_error_and_an_empty_list(home: Path) -> None:
    assert invoke("stop", "hello-00000000", "--json") == (
        2, "[]\n", "ERROR: no running VM 'hello-00000000' (running: none)\n")


def test_run_json_without_wait_is_a_usage_error(home: Path) -> None:
    store_image(home)
    assert invoke("run", "hello:1.0.0", "--json") == (
        2, "", "ERROR: --json goes with --wait: without it, run shows the app's console and "
               "exits with its status\n")


# -- -o names a file; build's directory is --output-dir -------------------------------------------


def test_build_o_is_a_one_line_error_naming_output_dir(home: Path) -> None:
    assert invoke("build", "--format", "raw", "-o", "out") == (
        2, "", "ERROR: build -o is now --output-dir out: the directory of the --format files "
               "(-o names the one file export and userdata write)\n")


def test_build_output_dir_must_exist(home: Path) -> None:
    assert invoke("build", "--format", "raw", "--output-dir", "missing") == (
        2, "", "ERROR: output directory missing does not exist\n")


def test_export_bmap_goes_with_raw_only(home: Path) -> None:
    store_image(home)
    assert invoke("export", "hello:1.0.0", "--format", "qcow2", "--bmap", "-o", "x.qcow2") == (
        2, "", "ERROR: --bmap goes with --format raw, not qcow2\n")
    assert not Path("x.qcow2").exists()


# -- the installed script, one case each --------------------------------------------------------


def test_the_installed_script_keeps_these_promises(tmp_path: Path) -> None:
    person = Cli(tmp_path / "home")
    digest = store_image(person.home)
    config = env_project(tmp_path / "app")
    removed = person("rm", "hello:1.0.0", "--json")
    assert (json.loads(removed.stdout), removed.stderr) == (
        [{"ref": "hello:1.0.0", "digest": digest}], "")
    store_image(person.home)
    user_data = person("userdata", "hello:1.0.0", "--env", "test", "--config", str(config),
                       "--json")
    assert json.loads(user_data.stdout)["env"] == "test"
    stopped = person("stop", "hello-00000000", "--json", check=False)
    assert (stopped.returncode, stopped.stdout) == (2, "[]\n")
    run = person("run", "hello:1.0.0", "--json", check=False)
    assert (run.returncode, run.stdout, run.stderr.count("\n")) == (2, "", 1)
    assert run.stderr.startswith("ERROR: --json goes with --wait")
    build = person("build", "-o", str(tmp_path), check=False)
    assert (build.returncode, build.stderr.count("\n")) == (2, 1)
    assert build.stderr.startswith("ERROR: build -o is now --output-dir ")


def test_bars_draw_on_a_terminal_and_not_with_json(tmp_path: Path) -> None:
    """check's bar, on stderr as a terminal: drawn in human mode, absent with --json."""
    person = Cli(tmp_path / "home")
    store_image(person.home)
    human = person("check", tty=True)
    assert "check" in human.stderr and "B/s" in human.stderr, human.stderr
    quiet = person("check", "--json", tty=True)
    assert quiet.stderr == "" and json.loads(quiet.stdout)["ok"] is True


# -- the library reports through one interface; it never prints, logs or exits -----------------


class Recorder:
    """A reporter that keeps what it was told."""

    def __init__(self) -> None:
        self.bars: list[tuple[int | None, str, int]] = []
        self.warnings: list[str] = []

    @contextmanager
    def _bar(self, total: int | None, desc: str) -> Iterator[progress.Advance]:
        done = [0]

        def advance(n: int) -> None:
            done[0] += n

        yield advance
        self.bars.append((total, desc, done[0]))

    def progress(self, total: int | None, desc: str) -> AbstractContextManager[progress.Advance]:
        return self._bar(total, desc)

    def warn(self, text: str) -> None:
        self.warnings.append(text)

    def info(self, text: str) -> None:
        raise AssertionError(f"unexpected info: {text}")


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server over a directory: its URL and the directory."""
    root = tmp_path / "mirror"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def test_a_download_reports_its_bytes_to_the_installed_reporter(
        mirror: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url, root = mirror
    body = bytes(range(256)) * 4096
    (root / "f.deb").write_bytes(body)
    recorder = Recorder()
    with progress.using(recorder), requests.Session() as session:
        http.download(session, f"{url}/f.deb", tmp_path / "f.deb",
                      sha256=hashlib.sha256(body).hexdigest(), size=len(body), desc="f")
    assert recorder.bars == [(len(body), "f", len(body))]
    assert progress.current() is not recorder  # the reporter before it is back
    assert capsys.readouterr() == ("", "")


def test_a_damaged_cached_deb_is_a_warning_to_the_reporter(
        mirror: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url, root = mirror
    body = b"a real deb" * 100
    sha = hashlib.sha256(body).hexdigest()
    (root / "pool").mkdir()
    (root / "pool" / "x.deb").write_bytes(body)
    cache = tmp_path / "cache"
    damaged = debian.deb_path(cache, sha)
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"flipped")
    recorder = Recorder()
    with progress.using(recorder):
        got = debian.fetch_locked(cache, url, LockEntry("x", "1", "pool/x.deb", sha, len(body)))
    assert got.read_bytes() == body
    assert recorder.warnings == [f"cached {damaged} is damaged; fetching it again"]
    assert capsys.readouterr() == ("", "")


def test_the_silent_reporter_shows_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    reporter = progress.current()
    with reporter.progress(10, "x") as advance:
        advance(10)
    reporter.warn("w")
    reporter.info("i")
    assert capsys.readouterr() == ("", "")


def _is_main_block(node: ast.AST) -> bool:
    """``if __name__ == "__main__":``: a module run as a script may exit with its status."""
    return isinstance(node, ast.If) and ast.unparse(node.test) == "__name__ == '__main__'"


def _calls(tree: ast.Module) -> Iterator[str]:
    tree.body = [node for node in tree.body if not _is_main_block(node)]
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield ast.unparse(node.func)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names]
            yield from (f"import {n}" for n in [getattr(node, "module", None) or "", *names])


THE_COMMAND_LINE = {"cli.py", "entry.py", "sandbox/__main__.py"}
"""Where printing and exiting belong; commands/ prints through click and never exits."""


@pytest.mark.parametrize("word", ["print", "sys.exit", "import logging", "import tqdm"])
def test_the_library_never_prints_logs_or_exits(word: str) -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = str(path.relative_to(PACKAGE))
        if name in THE_COMMAND_LINE or (word == "import tqdm" and name == "commands/render.py"):
            continue
        if word in set(_calls(ast.parse(path.read_text()))):
            found.append(name)
    assert found == []


def test_shared_options_are_declared_once() -> None:
    """--config and --json are declared in commands/options.py only (entry.py's fast path for
    hash parses its few arguments by hand)."""
    command_line = [PACKAGE / "cli.py", *sorted((PACKAGE / "commands").glob("*.py"))]
    for option in ('"--config"', '"--json"'):
        holders = [str(p.relative_to(PACKAGE)) for p in command_line if option in p.read_text()]
        assert holders == ["commands/options.py"], option


def test_flash_source_refuses_a_block_map_for_a_reference(tmp_path: Path) -> None:
    from imagebuilder.store.cache import Cache
    from imagebuilder.targets.metal.source import flash_source
    with pytest.raises(UserError, match="--bmap goes with a raw image file"):
        flash_source(Store(tmp_path / "store"), Cache(tmp_path / "cache"), "hello:1.0.0",
                     bmap_path="x.bmap")


def test_the_hash_fast_path_loads_neither_click_nor_the_command_line(tmp_path: Path) -> None:
    """`imagebuilder hash FILE` competes with xxhsum on whole-command time (see entry.py)."""
    (tmp_path / "f").write_bytes(b"x" * 4096)
    probe = ("import sys; from imagebuilder.entry import main; code = main(['hash', sys.argv[1]]);"
             " print(sorted(m for m in sys.modules if m == 'click' or m.startswith("
             "('imagebuilder.cli', 'imagebuilder.commands', 'imagebuilder.build'))), code)")
    done = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "f")], text=True,
                          capture_output=True, check=True, timeout=60)
    assert done.stdout.splitlines()[-1] == "[] 0", done.stdout
