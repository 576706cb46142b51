"""Rendering of the jinja2 templates shipped in ``templates/`` (init, app config).

Undefined variables are errors, and rendering is pure: the same context gives the same bytes,
which the layers' cache keys rely on.
"""

from __future__ import annotations

import shlex
from functools import cache
from typing import Any

import jinja2

from ..resources import data_dir


def _shquote(value: Any) -> str:
    return shlex.quote("" if value is None else str(value))


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(data_dir("templates")),
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
    return (data_dir("templates") / name).read_bytes()
