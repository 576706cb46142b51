"""The table of settings (imagebuilder/config/spec.py): every key declared once, read, checked
and defaulted by it, and docs/configuration.md agreeing with it."""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from imagebuilder.config import reference
from imagebuilder.config.parse import load
from imagebuilder.config.settings import Setting
from imagebuilder.config.spec import SECTIONS, SETTINGS, TABLES
from imagebuilder.errors import ConfigError

PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
SHOWN = "hello/imagebuilder.toml"
REWRITE = "rewrite it: .venv/bin/python -m imagebuilder.config.reference docs/configuration.md"
#: An environment for the keys of [env.NAME].
ENV = "test"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding hello/ with a (fake) hello.jar; returns hello/."""
    monkeypatch.chdir(tmp_path)
    app = tmp_path / "hello"
    app.mkdir()
    (app / "hello.jar").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    return app


def minimal() -> dict[str, Any]:
    return {"image": {"name": "hello", "version": "1.0.0"}, "app": {"path": "hello.jar"}}


def toml(doc: dict[str, Any], prefix: str = "") -> str:
    """``doc`` as TOML: plain values first, then each table under its header."""
    lines = [f"{k} = {json.dumps(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for k, v in doc.items():
        if isinstance(v, dict):
            name = f"{prefix}.{k}" if prefix else k
            lines += [f"\n[{name}]", toml(v, name)]
    return "\n".join(lines) + "\n"


def place(doc: dict[str, Any], setting: Setting) -> dict[str, Any]:
    """The table of ``doc`` that holds ``setting`` (created if need be)."""
    table = doc
    for part in setting.section.replace("*", ENV).split("."):
        table = table.setdefault(part, {})
    return table


def dotted(setting: Setting) -> str:
    return setting.key.replace("*", ENV)


def load_doc(project: Path, doc: dict[str, Any]) -> Any:
    (project / "imagebuilder.toml").write_text(toml(doc))
    return load(project)


def test_every_field_of_the_spec_is_a_key_declared_once() -> None:
    keys = [s.key for s in SETTINGS]
    assert len(keys) == len(set(keys))
    fields = {f"{section}.{f.name}" for section, cls in SECTIONS.items()
              for f in dataclasses.fields(cls)}
    assert fields - set(keys) == {"env.*.name"}  # the table's name, not a key in it
    assert set(TABLES) == {"image", "app", "jvm", "system", "environments", "env"}
    for s in SETTINGS:
        assert s.doc and "\n" not in s.doc, s.key
        assert not s.required or s.example, f"{s.key}: a required key needs an example"


@pytest.mark.parametrize("setting", [s for s in SETTINGS if not s.required], ids=dotted)
def test_a_key_left_out_takes_the_tables_default(project: Path, setting: Setting) -> None:
    doc = minimal()
    doc.setdefault("env", {})[ENV] = {}
    cfg = load_doc(project, doc)
    section, _, _ = setting.section.partition(".")
    holder = {"image": cfg.image, "app": cfg.app, "jvm": cfg.jvm, "system": cfg.system,
              "env": cfg.env(ENV) if cfg.environments else None}.get(section)
    if setting.section == "jvm.train":
        holder = cfg.jvm.train
    if section == "environments":
        assert cfg.env_names == (ENV,)  # no order: the tables' order
        return
    assert getattr(holder, setting.name) == setting.default


@pytest.mark.parametrize("setting", SETTINGS, ids=dotted)
def test_every_key_is_checked_under_its_own_name(project: Path, setting: Setting) -> None:
    """A value no key accepts (a list holding a list) is refused with the key's name."""
    doc = minimal()
    place(doc, setting)[setting.name] = [[1]]
    with pytest.raises(ConfigError) as e:
        load_doc(project, doc)
    assert str(e.value).startswith(f"{SHOWN}: {dotted(setting)}")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("setting", SETTINGS, ids=dotted)
def test_a_misspelt_key_gets_the_closest_one_of_its_table(project: Path,
                                                          setting: Setting) -> None:
    doc = minimal()
    typo = setting.name[:-1] + "x" + setting.name[-1]
    place(doc, setting)[typo] = 1
    with pytest.raises(ConfigError) as e:
        load_doc(project, doc)
    section = setting.section.replace("*", ENV)
    assert str(e.value) == (
        f"{SHOWN}: unknown key '{section}.{typo}' (did you mean '{setting.name}'?)")


# --- docs/configuration.md ------------------------------------------------------------------


def page_rows() -> dict[str, str]:
    """The page's reference table: key -> default as shown."""
    text = PAGE.read_text()
    block = text[text.index(reference.BEGIN):text.index(reference.END)]
    rows = re.findall(r"^\| `([^`]+)` \| [^|]+ \| ([^|]+) \|", block, re.MULTILINE)
    return {key: default.strip() for key, default in rows}


def example_keys(data: dict[str, Any], prefix: str = "") -> set[str]:
    """The keys an example imagebuilder.toml names, as the reference names them."""
    keys = set()
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else k
        if key == "env":
            keys |= {f"env.NAME.{name}" for body in v.values() for name in body}
        elif isinstance(v, dict) and (key in SECTIONS or key in TABLES):
            keys |= example_keys(v, key) | ({key} if prefix else set())
        else:
            keys.add(key)
    return keys


def page_examples() -> list[tuple[dict[str, Any], str]]:
    """Every imagebuilder.toml the page shows: (parsed, text)."""
    blocks = re.findall(r"^```toml\n(.*?)^```", PAGE.read_text(), re.MULTILINE | re.DOTALL)
    return [(tomllib.loads(b), b) for b in blocks]


def test_the_page_shows_the_table_written_from_the_settings() -> None:
    text = PAGE.read_text()
    assert reference.rewritten(text) == text, f"docs/configuration.md is stale: {REWRITE}"


def test_the_page_lists_every_key_of_the_table() -> None:
    missing = [reference.dotted(s) for s in SETTINGS if reference.dotted(s) not in page_rows()]
    assert not missing, f"docs/configuration.md lacks {missing}: {REWRITE}"


def test_the_page_names_no_key_the_table_lacks() -> None:
    known = {reference.dotted(s) for s in SETTINGS}
    text = PAGE.read_text()
    named = set(page_rows())
    named |= {f"{t}.{k}" for t, k in re.findall(r"`\[([a-z.]+)\] ([a-z_]+)`", text)}
    named |= {k for k in re.findall(r"`([a-z]+(?:\.[A-Za-z_*]+)+)`", text)
              if k.split(".")[0] in TABLES}
    for data, _ in page_examples():
        named |= example_keys(data)
    named = {re.sub(r"^env\.(?!NAME\.)[^.]+\.", "env.NAME.", k) for k in named}
    assert page_examples(), "the page shows no example"
    assert named - known == set(), f"docs/configuration.md names keys the table lacks: {REWRITE}"


def test_the_pages_defaults_are_the_tables() -> None:
    """In the reference table and in the example's comments: ``(default X)``,
    ``# default: X`` or ``X (default)``."""
    defaults = {reference.dotted(s): s.default_text() for s in SETTINGS}
    rows = page_rows()
    assert {k: v for k, v in rows.items() if defaults.get(k, v) != v} == {}, REWRITE
    said = {}
    for _, text in page_examples():
        section = ""
        for line in text.splitlines():
            if header := re.match(r"^\[([^\]]+)\]", line):
                section = re.sub(r"^env\.[^.]+$", "env.NAME", header[1])
            key, _, comment = line.partition("#")
            name = key.split("=")[0].strip()
            found = (re.search(r"\(default(?:: | (?=[\"\[{\d]|true|false))([^)]*)\)", comment)
                     or re.match(r"\s*default:? (.*?)\s*$", comment)
                     or re.match(r"\s*(\S+) \(default\)", comment))
            if name and found:
                said[f"{section}.{name}"] = found[1]
    assert said, "the example says no default"
    wrong = {k: (v, defaults[k]) for k, v in said.items() if v != defaults[k].replace("`", "")}
    assert wrong == {}, "the example's comments disagree with the table (said, table)"
