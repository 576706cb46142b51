"""What a guest can carry: the host refuses larger variables, environments and user-data when it
reads the config (one ``ERROR:`` line, exit 2), and accepts everything up to the limits."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from imagebuilder.cli import main
from imagebuilder.config import envlimits
from imagebuilder.config.envlimits import TOTAL_MAX, USERDATA_MAX, VAR_MAX
from imagebuilder.config.parse import load
from imagebuilder.disk.configdrive import env_file
from imagebuilder.errors import ConfigError
from imagebuilder.store.layout import INITRD_LAYER_MEDIA_TYPE, KERNEL_MEDIA_TYPE, Store
from imagebuilder.targets.aws import publish as aws

MINIMAL = '[image]\nname = "hello"\nversion = "1.0.0"\n[app]\npath = "hello.jar"\n'


def _project(tmp_path: Path, vars: dict[str, str], env: str = "prod") -> Path:
    body = ", ".join(f"{k} = {json.dumps(v)}" for k, v in vars.items())
    (tmp_path / "imagebuilder.toml").write_text(MINIMAL + f"[env.{env}]\nvars = {{ {body} }}\n")
    return tmp_path


def _value(name: str, size: int) -> str:
    """A value making ``NAME=VALUE`` exactly ``size`` bytes."""
    return "v" * (size - len(name) - 1)


def test_the_limits_are_under_the_kernels() -> None:
    max_arg_strlen = 32 * 4096  # bytes of one exec string, with its NUL
    assert max_arg_strlen - 1 > VAR_MAX
    # Every variable as short as can be ("A=", 3 bytes with the NUL) and its 8-byte pointer:
    # still under a quarter of the default 8 MiB stack, with room for the app's command line.
    assert TOTAL_MAX + TOTAL_MAX // 3 * 8 < 2 * 1024 * 1024 - 64 * 1024
    assert USERDATA_MAX == 16384


def test_a_variable_up_to_the_limit_is_accepted(tmp_path: Path) -> None:
    cfg = load(_project(tmp_path, {"BIG": _value("BIG", VAR_MAX)}), check_app=False)
    assert len(cfg.env("prod").vars["BIG"]) == VAR_MAX - 4


def test_a_variable_over_the_limit_is_refused(tmp_path: Path) -> None:
    # The 140 kB value of the issue, and one byte over the limit.
    for size in (140_000, VAR_MAX + 1):
        with pytest.raises(ConfigError) as info:
            load(_project(tmp_path, {"BIG": _value("BIG", size)}), check_app=False)
        assert str(info.value) == (
            f"{tmp_path / 'imagebuilder.toml'}: env.prod.vars.BIG: BIG=VALUE is {size} bytes; a"
            f" variable may hold at most {VAR_MAX} (the guest's kernel cannot pass more to the"
            " app): keep large data in a file the app reads")


def test_multibyte_values_count_in_bytes(tmp_path: Path) -> None:
    value = "é" * (VAR_MAX // 2)  # fewer characters than the limit, more bytes
    with pytest.raises(ConfigError, match="is 65538 bytes"):
        load(_project(tmp_path, {"E": value}), check_app=False)


def test_an_environment_over_the_total_is_refused(tmp_path: Path) -> None:
    count = TOTAL_MAX // VAR_MAX + 1
    vars = {f"V{i}": _value(f"V{i}", VAR_MAX - 10) for i in range(count)}
    size = envlimits.env_size("prod", vars)
    with pytest.raises(ConfigError) as info:
        load(_project(tmp_path, vars), check_app=False)
    assert str(info.value) == (
        f"{tmp_path / 'imagebuilder.toml'}: env.prod.vars: the variables come to {size} bytes;"
        f" an environment may hold at most {TOTAL_MAX} (what the guest can pass to the app)")
    # The config drive, the env initrd and user-data are all made by env_file: it refuses too.
    with pytest.raises(ConfigError, match="env.prod.vars: the variables come to"):
        env_file("prod", vars)


def test_env_size_is_the_env_files_size() -> None:
    vars = {"A": "1", "GREETING": "hé llo", "Z": "a=b"}
    assert envlimits.env_size("test", vars) == len(env_file("test", vars))


def test_userdata_over_16_kib_is_refused() -> None:
    fits = {"A": _value("A", USERDATA_MAX - len(b"IMAGEBUILDER_ENV=prod\n") - 1)}
    assert len(aws.userdata("prod", fits).encode()) == USERDATA_MAX
    over = {"A": fits["A"] + "x"}
    with pytest.raises(ConfigError) as info:
        aws.userdata("prod", over)
    assert str(info.value) == (
        f"env.prod.vars: the user-data would be {USERDATA_MAX + 1} bytes; EC2 accepts at most"
        f" {USERDATA_MAX}: shorten the variables")


@pytest.fixture
def stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An image hello:1.0.0 in a store of its own (IMAGEBUILDER_HOME in tmp_path)."""
    monkeypatch.setenv("IMAGEBUILDER_HOME", str(tmp_path / "home"))
    store = Store(tmp_path / "home" / "store")
    kernel = store.add_blob_bytes(b"kernel", KERNEL_MEDIA_TYPE)
    layer = store.add_blob_bytes(b"app", INITRD_LAYER_MEDIA_TYPE)
    store.put_image("hello:1.0.0", {"name": "hello", "version": "1.0.0"}, [kernel, layer])
    return "hello:1.0.0"


@pytest.mark.parametrize(("argv", "vars", "message"), [
    (["userdata"], {"DATA": "x" * 20_000}, "env.prod.vars: the user-data would be 20028 bytes"),
    (["run"], {"BIG": "x" * 140_000}, "env.prod.vars.BIG: BIG=VALUE is 140004 bytes"),
    (["flash"], {"BIG": "x" * 140_000}, "env.prod.vars.BIG: BIG=VALUE is 140004 bytes"),
])
def test_cli_refuses_what_the_guest_cannot_carry_in_one_line(
        tmp_path: Path, stored: str, capsys: pytest.CaptureFixture[str], argv: list[str],
        vars: dict[str, str], message: str) -> None:
    project = _project(tmp_path, vars)
    extra = [str(tmp_path / "disk.img")] if argv == ["flash"] else []
    code = main([*argv, stored, *extra, "--env", "prod", "--config", str(project)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("ERROR: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "disk.img").exists()


def test_userdata_to_a_file_is_owner_only(tmp_path: Path, stored: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    project = _project(tmp_path, {"DB_PASSWORD": "s3cr3t"})
    out = tmp_path / "user-data"
    old = os.umask(0o022)
    try:
        code = main(["userdata", stored, "--env", "prod", "--config", str(project),
                     "-o", str(out)])
    finally:
        os.umask(old)
    assert code == 0, capsys.readouterr().err
    assert out.read_bytes() == env_file("prod", {"DB_PASSWORD": "s3cr3t"})
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "imagebuilder.toml",
                                                          "user-data"]
    code = main(["userdata", stored, "--env", "prod", "--config", str(project),
                 "-o", str(tmp_path / "nope" / "user-data")])
    err = capsys.readouterr().err
    assert (code, err) == (2, f"ERROR: output directory {tmp_path / 'nope'} does not exist\n")
