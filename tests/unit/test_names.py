"""Names and references are checked whole: a trailing newline (which ``$`` lets through) is
refused everywhere a name or reference enters, so nothing is stored under a name no command
can type back."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagebuilder.config import parse as config_mod
from imagebuilder.errors import ConfigError, UserError
from imagebuilder.registry.transfer import RegistryRef
from imagebuilder.store.layout import Store, split_ref
from imagebuilder.targets.qemu.run import PortForward


def _toml(tmp_path: Path, image: str, env: str = "") -> Path:
    (tmp_path / "app.jar").write_bytes(b"")
    (tmp_path / "imagebuilder.toml").write_text(
        f'[image]\n{image}\n[app]\npath = "app.jar"\n{env}')
    return tmp_path


@pytest.mark.parametrize("image", [
    'name = "hello"\nversion = "9.9.9\\n"',
    'name = "hello\\n"\nversion = "1.0"',
])
def test_config_names_with_a_trailing_newline(tmp_path: Path, image: str) -> None:
    with pytest.raises(ConfigError):
        config_mod.load(_toml(tmp_path, image), check_app=False)


@pytest.mark.parametrize("env", [
    '[env."prod\\n"]\nvars = {}\n',
    '[env.prod]\nvars = { "A\\n" = "1" }\n',
    '[system]\nsuite = "trixie\\n"\n',
])
def test_config_env_and_system_names_with_a_trailing_newline(tmp_path: Path, env: str) -> None:
    with pytest.raises(ConfigError):
        config_mod.load(_toml(tmp_path, 'name = "hello"\nversion = "1.0"', env),
                        check_app=False)


@pytest.mark.parametrize("ref", ["hello:9.9.9\n", "hello\n:1.0", "team/hello\n:1.0"])
def test_store_refs_with_a_trailing_newline(tmp_path: Path, ref: str) -> None:
    with pytest.raises(UserError):
        split_ref(ref)
    with pytest.raises(UserError):
        Store(tmp_path).put_image(ref, {}, [])


@pytest.mark.parametrize("text", ["127.0.0.1:5000/hello:1.0\n", "127.0.0.1:5000/hello\n",
                                  "127.0.0.1:5000\n/hello:1.0",
                                  "127.0.0.1:5000/hello@sha256:" + "0" * 64 + "\n"])
def test_registry_refs_with_a_trailing_newline(text: str) -> None:
    with pytest.raises(UserError):
        RegistryRef.parse(text)


def test_port_forward_with_a_trailing_newline() -> None:
    with pytest.raises(UserError):
        PortForward.parse("8080:8080\n")
