"""The base layer's init files (imagebuilder/layers/base.py) and the base stage's cache key.

The key must change whenever a byte the stage renders does: a new part of the init, or an edit
to any of them, rebuilds the base layer. The key is the real one the build computes
(``Builder._base``), with a Builder that computes keys and builds nothing.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from imagebuilder import resources
from imagebuilder.build.plan import STAGE_VERSIONS, Builder
from imagebuilder.config.parse import load
from imagebuilder.layers import base
from imagebuilder.layers.hardware import select
from imagebuilder.layers.kernel import ModuleTree, load_manifest
from imagebuilder.store.home import Home


class _KeysOnly(Builder):
    """Records each stage's cache key instead of building it."""

    keys: dict[str, str]

    def _stage(self, name: str, inputs: dict[str, Any], produce: Callable[[Path], None]) -> Path:
        self.keys[name] = self.cache.stage_key(name, STAGE_VERSIONS[name], inputs)
        return Path("/nonexistent")


class _NoPackages:
    """A package resolution with no packages (the key's package part is not under test)."""

    def key(self, part: str) -> list[str]:
        return []


def _base_key(tmp_path: Path) -> str:
    """The base stage's key for hello's config, with the templates as they are now."""
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    (project / "app.jar").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    (project / "imagebuilder.toml").write_text(
        '[image]\nname = "hello"\nversion = "1.0.0"\n[app]\npath = "app.jar"\n')
    cfg = load(project)
    builder = _KeysOnly(cfg, Home(tmp_path / "home"))
    builder.keys = {}
    drivers = select(load_manifest(cfg.system.kernel), cfg.system.hardware, cfg.system.modules)
    builder._base(drivers, _NoPackages(), None)  # type: ignore[arg-type]
    return builder.keys["base"]


@pytest.fixture
def templates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A copy of templates/ that the renderer reads from."""
    copy = tmp_path / "templates"
    shutil.copytree(resources.data_dir("templates"), copy)
    monkeypatch.setattr(resources, "data_dir", lambda name: copy)
    resources._environment.cache_clear()
    yield copy
    resources._environment.cache_clear()


@pytest.mark.parametrize("path", ["init/network.sh", "init/log.sh", "init.sh.j2", "layers.sh",
                                  "udhcpc.script", "env.awk", "jdkhint.awk"])
def test_the_base_key_changes_with_every_file_the_init_renders(
        templates: Path, tmp_path: Path, path: str) -> None:
    before = _base_key(tmp_path)
    assert _base_key(tmp_path) == before  # the key is stable
    with (templates / path).open("a") as f:
        f.write("\n# one more line\n")
    resources._environment.cache_clear()
    assert _base_key(tmp_path) != before


def test_the_base_key_changes_with_a_part_added(templates: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    before = _base_key(tmp_path)
    (templates / "init/extra.sh").write_text("# shellcheck shell=sh\nextra() { :; }\n")
    monkeypatch.setattr(base, "INIT_PARTS", (*base.INIT_PARTS, "extra.sh"))
    assert _base_key(tmp_path) != before


def test_the_tree_carries_exactly_the_files_the_key_hashes(tmp_path: Path) -> None:
    """What build_tree adds of templates/ is init_files(), byte for byte, with its modes."""
    sysroot = tmp_path / "busybox"
    (sysroot / "usr/bin").mkdir(parents=True)
    (sysroot / "usr/bin/busybox").write_bytes(b"\x7fELF busybox")
    modules = tmp_path / "kernel"
    (modules / "usr/lib/modules/6.1.0-test/kernel").mkdir(parents=True)
    for name in ("modules.order", "modules.builtin"):
        (modules / "usr/lib/modules/6.1.0-test" / name).write_text("")
    (modules / "boot").mkdir()
    (modules / "boot/vmlinuz-6.1.0-test").write_bytes(b"kernel")
    tree = base.build_tree(sysroot, ModuleTree.scan(modules), [])
    files = base.init_files()
    for path, (data, mode) in files.items():
        entry = tree.get(path)
        assert entry is not None and (entry.data, entry.mode) == (data, mode), path
    ours = {e.path for e in tree.entries() if e.kind == "file"
            and (e.path == "init" or e.path.startswith(f"{base.SHARE}/"))}
    assert ours == set(files)
