"""The shell the guest runs: app.conf must give back the exact argv, the init must parse.

The guest's shell is busybox ``sh`` (ash), so every check runs under Debian's ``busybox sh`` as
well as the host's ``sh`` (dash on Debian).
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

import jinja2
import pytest

from imagebuilder.apps.shape import File, Shape
from imagebuilder.config.parse import Config, load
from imagebuilder.errors import ConfigError
from imagebuilder.layers import base
from imagebuilder.layers.app import app_conf, command
from imagebuilder.layers.base import init_files
from imagebuilder.resources import render, source

BUSYBOX = shutil.which("busybox")
SH = shutil.which("sh") or "/bin/sh"
SHELLS = [
    pytest.param([SH], id="sh"),
    pytest.param([BUSYBOX or "busybox", "sh"], id="busybox-sh", marks=pytest.mark.skipif(
        BUSYBOX is None, reason="busybox not installed (apt-get install busybox-static)")),
]

# Words a shell would mangle if they were not quoted right.
TRICKY_ARGS = [
    "--greeting=hello world",
    "it's",
    'say "hi"',
    "$HOME",
    "${PATH}",
    "`id`",
    "$(touch pwned)",
    "a\\b\\\\c",
    "*",
    "~",
    "semi;colon && pipe | amp & end",
    "",
    "  leading and trailing  ",
    "tab\there",
    "'",
    '"',
    "-e",
    "-n",
    "%s %d",
    "ünïcödé ✓",
    "#not a comment",
    "x=y",
]


def _jar(cfg: Config) -> Shape:
    """The shape of an executable jar named by ``cfg`` (run with -jar)."""
    name = cfg.app.path.name
    return Shape("jar", (File(name, source=cfg.app.path),), (), ("-jar", f"/app/{name}"),
                 "com.example.Main", ())


def _config(tmp_path: Path, app: str = "", jvm: str = "", image: str = "") -> Config:
    (tmp_path / "app.jar").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    (tmp_path / "imagebuilder.toml").write_text(textwrap.dedent("""\
        [image]
        name = "hello"
        version = "1.0.0"
        {image}
        [app]
        path = "app.jar"
        {app}
        [jvm]
        {jvm}
        """).format(app=app, jvm=jvm, image=image))
    return load(tmp_path)


def _toml_list(words: list[str]) -> str:
    # TOML literal strings cannot hold every character: use basic strings with escapes.
    def basic(word: str) -> str:
        return '"' + word.replace("\\", "\\\\").replace('"', '\\"').replace("\t", "\\t") + '"'
    return "[" + ", ".join(basic(w) for w in words) + "]"


def _sourced(shell: list[str], conf: str, cwd: Path, script: str) -> str:
    (cwd / "app.conf").write_text(conf)
    result = subprocess.run(
        [*shell, "-c", f". ./app.conf; {script}"],
        cwd=cwd, capture_output=True, check=False, env={"PATH": "/usr/bin:/bin", "HOME": "/nope"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    return result.stdout.decode()


@pytest.fixture
def tricky(tmp_path: Path) -> Config:
    return _config(
        tmp_path,
        app=f"args = {_toml_list(TRICKY_ARGS)}\nport = 8080",
        jvm='args = ["-Xmx512m", "-Dgreeting=a b", "-Dx=$HOME"]',
    )


def test_config_keeps_the_tricky_args(tricky: Config) -> None:
    assert list(tricky.app.args) == TRICKY_ARGS
    argv = command(tricky, _jar(tricky))
    assert argv[0] == "/opt/java/bin/java"
    assert argv[-len(TRICKY_ARGS):] == TRICKY_ARGS
    assert argv[argv.index("-jar") + 1] == "/app/app.jar"
    assert argv[2:5] == ["-Xmx512m", "-Dgreeting=a b", "-Dx=$HOME"]


@pytest.mark.parametrize("shell", SHELLS)
def test_app_conf_gives_back_the_exact_argv(shell: list[str], tricky: Config, tmp_path: Path
                                            ) -> None:
    out = _sourced(shell, app_conf(tricky, _jar(tricky)), tmp_path, "printf '%s\\n' \"$@\"")
    assert out.split("\n")[:-1] == command(tricky, _jar(tricky))
    # Nothing was expanded or executed while sourcing.
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("shell", SHELLS)
def test_app_conf_gives_back_the_exact_argv_nul_separated(shell: list[str], tricky: Config,
                                                          tmp_path: Path) -> None:
    # Separated by NUL rather than newline: no word can hide a line break either.
    out = _sourced(shell, app_conf(tricky, _jar(tricky)), tmp_path,
                   "for w; do printf '%s\\000' \"$w\"; done")
    assert out.split("\0")[:-1] == command(tricky, _jar(tricky))


@pytest.mark.parametrize("shell", SHELLS)
def test_app_conf_variables(shell: list[str], tricky: Config, tmp_path: Path) -> None:
    script = 'printf "%s|%s|%s|%s\\n" "$IMAGE_NAME" "$IMAGE_VERSION" "$APP_PORT" "$#"'
    out = _sourced(shell, app_conf(tricky, _jar(tricky)), tmp_path, script)
    assert out == f"hello|1.0.0|8080|{len(command(tricky, _jar(tricky)))}\n"


@pytest.mark.parametrize("shell", SHELLS)
def test_app_conf_without_port_or_args(shell: list[str], tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    assert cfg.app.port is None
    out = _sourced(shell, app_conf(cfg, _jar(cfg)), tmp_path,
                   'printf "[%s]\\n" "$APP_PORT"; printf "%s\\n" "$@"')
    assert out.split("\n")[:-1] == ["[]", *command(cfg, _jar(cfg))]
    assert command(cfg, _jar(cfg)) == ["/opt/java/bin/java", "-XX:-UsePerfData",
                                       "-XX:MaxRAMPercentage=75", "-jar", "/app/app.jar"]


def test_app_conf_is_deterministic(tricky: Config) -> None:
    assert app_conf(tricky, _jar(tricky)) == app_conf(tricky, _jar(tricky))
    assert app_conf(tricky, _jar(tricky)).endswith("\n")


@pytest.mark.parametrize("where", ["app", "jvm"])
def test_config_rejects_newlines_in_args(tmp_path: Path, where: str) -> None:
    with pytest.raises(ConfigError) as info:
        _config(tmp_path, **{where: 'args = ["ok", "two\\nlines"]'})
    assert str(info.value) == (
        f"{tmp_path / 'imagebuilder.toml'}: {where}.args[1]: expected a one-line string without"
        " NUL characters"
    )


# -- the init and the DHCP hook -----------------------------------------------------------------


#: The shell files the base layer carries: the init, its parts, layers.sh, the DHCP hook.
SCRIPTS = [path for path in init_files() if not path.endswith(".awk")]


def test_the_init_renders_the_constants_python_owns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "STOP_TIMEOUT", 17)
    monkeypatch.setattr(base, "APP_FLOOR_MIB", 99)
    monkeypatch.setattr(base, "APP_USER", "runner")
    monkeypatch.setattr(base.network_config, "VAR_PREFIX", "NET_")
    files = {path: data.decode() for path, (data, _) in init_files().items()}
    assert files["init"].startswith("#!/bin/sh\n")
    app = files["usr/share/imagebuilder/app.sh"]
    assert "sleep 17;" in app and "in 17 s" in app and "-c runner:runner" in app
    assert "app_floor=99 " in files["usr/share/imagebuilder/memory.sh"]
    assert "chown runner:runner /app" in files["usr/share/imagebuilder/root.sh"]
    assert "/^NET_[0-9]+=mac=" in files["usr/share/imagebuilder/config.sh"]
    for path in base.INIT_PARTS:  # sourced by the init, in order
        assert f"\n. /usr/share/imagebuilder/{path}\n" in files["init"]
    for text in files.values():
        assert "{{" not in text and "{%" not in text


def test_init_needs_its_variables() -> None:
    with pytest.raises(jinja2.UndefinedError):
        render("init.sh.j2")


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("path", SCRIPTS)
def test_the_inits_shell_files_parse(shell: list[str], path: str, tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_bytes(init_files()[path][0])
    result = subprocess.run([*shell, "-n", str(script)], capture_output=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""


@pytest.mark.parametrize("shell", SHELLS)
def test_udhcpc_script_parses(shell: list[str], tmp_path: Path) -> None:
    script = tmp_path / "udhcpc.script"
    script.write_text(render("udhcpc.script"))
    assert script.read_bytes() == source("udhcpc.script")  # no template syntax in it
    result = subprocess.run([*shell, "-n", str(script)], capture_output=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("shell", SHELLS)
def test_udhcpc_script_ignores_unknown_events(shell: list[str], tmp_path: Path) -> None:
    script = tmp_path / "udhcpc.script"
    script.write_text(render("udhcpc.script"))
    result = subprocess.run([*shell, str(script), "leasefail"], capture_output=True, check=False,
                            env={"PATH": "/nonexistent"})
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
