"""Rendering of the jinja2 templates shipped in ``imagebuilder/templates`` (init, app config).

Undefined variables are errors, and rendering is pure: the same context gives the same bytes,
which the layers' cache keys rely on.
"""

from __future__ import annotations

import shlex
from functools import cache
from importlib import resources
from typing import Any

import jinja2


def _shquote(value: Any) -> str:
    return shlex.quote("" if value is None else str(value))


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("imagebuilder", "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["shquote"] = _shquote
    return env


def render(template: str, **context: Any) -> str:
    """The template ``template`` rendered with ``context``."""
    return _environment().get_template(template).render(**context)


def source(name: str) -> bytes:
    """The raw bytes of a template, for cache keys."""
    return (resources.files("imagebuilder") / "templates" / name).read_bytes()
