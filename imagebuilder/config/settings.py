"""What a setting of imagebuilder.toml is, and how a table of them is read.

Each key is declared once, as a field of a section's frozen dataclass in :mod:`.spec`, with
:func:`rule` in its metadata: its one-line doc and its check. The field gives its name, type and
default. :func:`declared` turns a section's fields into :class:`Setting` rows; those rows are the
one table that :func:`read` parses with, that the unknown-key error suggests from and that the
configuration reference (:mod:`.reference`) is generated from.

A check takes the value as written in TOML and where it is (:class:`At`), and returns the value
the spec holds or raises the one-line :class:`~imagebuilder.errors.ConfigError` ``at.fail``
makes. A key left out takes its default unchecked.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..errors import ConfigError

#: The default of a key that must be given.
REQUIRED: Any = dataclasses.MISSING

@dataclass(frozen=True)
class Context:
    """The file being read: its name as shown in errors, the directory relative paths are
    taken from, and whether ``app.path`` must exist. Without a file (an option standing in for
    a key, ``--name``), errors start with the key."""

    shown: str = ""
    root: Path = Path()
    check_app: bool = True

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.shown}: {key}: {message}" if self.shown else
                           f"{key}: {message}")


@dataclass(frozen=True)
class At:
    """Where a value is being checked: its dotted key, the file, and the values its section
    has taken so far (a key may depend on one declared before it)."""

    key: str
    context: Context = Context()
    before: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def fail(self, message: str, key: str | None = None) -> ConfigError:
        """The error for this key (or ``key``, e.g. an item ``app.args[1]``)."""
        return self.context.fail(self.key if key is None else key, message)


T = TypeVar("T")

#: A check: the value as written and where it is -> the value the spec holds.
Check = Callable[[Any, At], Any]

#: Type names of the reference, by the annotation of a field (``from __future__`` keeps them
#: as text).
_KINDS = {
    "str": "string", "str | None": "string", "int": "integer", "int | None": "integer",
    "bool": "boolean", "tuple[str, ...]": "list of strings",
    "tuple[str, ...] | None": "list of strings", "Path": "path",
}


def rule(doc: str, check: Check, *, example: str = "", kind: str = "",
         default: str = "") -> dict[str, Any]:
    """A field's metadata that makes it a setting: ``doc`` is its line in the reference,
    ``example`` what the missing-key error suggests for a required key, ``kind`` its type
    when the annotation does not say it plainly, ``default`` its default when the value
    does not say it plainly (``None`` meaning "the host's apt configuration", say)."""
    return {"setting": _Rule(doc, check, example, kind, default)}


@dataclass(frozen=True)
class _Rule:
    doc: str
    check: Check
    example: str
    kind: str
    default: str


@dataclass(frozen=True)
class Setting:
    """One key of imagebuilder.toml: one row of the reference."""

    section: str  # "app", "jvm.train", "env.*"
    name: str
    kind: str
    default: Any  # REQUIRED when it must be given
    check: Check
    doc: str
    example: str = ""
    shown_default: str = ""

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def default_text(self) -> str:
        """The default as the reference shows it."""
        if self.shown_default:
            return self.shown_default
        if self.required:
            return "required"
        if dataclasses.is_dataclass(self.default):
            return "{}"
        value = list(self.default) if isinstance(self.default, tuple) else self.default
        return f"`{json.dumps(value)}`"


def declared(section: str, cls: type) -> tuple[Setting, ...]:
    """The settings of ``section``, in the order ``cls`` declares its fields."""
    out = []
    for f in dataclasses.fields(cls):
        r = f.metadata.get("setting")
        if r is None:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = REQUIRED
        kind = r.kind or _KINDS.get(str(f.type))
        if kind is None:
            raise TypeError(f"{cls.__name__}.{f.name}: say its kind in rule(kind=...)")
        out.append(Setting(section, f.name, kind, default, r.check, r.doc, r.example,
                           r.default))
    return tuple(out)


def check_unknown(table: Mapping[str, Any], prefix: str, allowed: tuple[str, ...],
                  context: Context) -> None:
    """Refuse a key ``allowed`` lacks, suggesting the closest known one."""
    for key in table:
        if key in allowed:
            continue
        dotted = f"{prefix}.{key}" if prefix else key
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(allowed)}"
        raise ConfigError(f"{context.shown}: unknown key '{dotted}' ({hint})")


def read(cls: type[T], section: str, table: Mapping[str, Any], context: Context,
         settings: tuple[Setting, ...], **given: Any) -> T:
    """``table`` (the TOML table of ``section``) as a ``cls``: unknown keys refused, required
    ones demanded, each value checked in declaration order. ``given`` fills fields that are no
    keys (an environment's name)."""
    check_unknown(table, section, tuple(s.name for s in settings), context)
    for s in settings:
        if s.required and s.name not in table:
            raise context.fail(f"{section}.{s.name}", f"required key is missing: add {s.name} ="
                               f" {s.example} under [{section}]")
    values: dict[str, Any] = dict(given)
    for s in settings:
        if s.name in table:
            at = At(f"{section}.{s.name}", context, dict(values))
            values[s.name] = s.check(table[s.name], at)
        else:
            values[s.name] = s.default
    return cls(**values)


def show(value: object) -> str:
    """A value as the user wrote it in TOML (roughly), for "got ..." in messages."""
    if isinstance(value, dict):
        return "a table"
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def absolute(path: Path) -> Path:
    """Absolute and normalised, without resolving symlinks (a jar keeps the name it was given)."""
    return Path(os.path.normpath(path.absolute()))


def shown(path: Path) -> str:
    """``path`` relative to the working directory when it is below it, else absolute."""
    full = absolute(path)
    cwd = absolute(Path.cwd())
    if cwd == Path(cwd.anchor):
        return str(full)
    try:
        return str(full.relative_to(cwd))
    except ValueError:
        return str(full)
