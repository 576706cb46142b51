"""Where the data files users edit live: ``templates/`` (init, boot loaders) and ``kernels/``
(kernel manifests), and the one way templates are rendered.

They sit at the top of the repository, beside ``imagebuilder/``, where users look to add a
kernel manifest or change a boot template. An installed wheel carries them inside the package
(setuptools maps the folders with ``package-dir``); a source checkout or an editable install
reads them from the repository.

Templates are jinja2: undefined variables are errors, and rendering is pure (the same context
gives the same bytes, which the layers' cache keys rely on).
"""

from __future__ import annotations

import shlex
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2

_PACKAGE = Path(__file__).resolve().parent


@cache
def data_dir(name: str) -> Path:
    """The folder ``name`` ("templates" or "kernels"), installed or in the source tree."""
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"imagebuilder's {name}/ folder is missing from {_PACKAGE.parent}")


def _shquote(value: Any) -> str:
    return shlex.quote("" if value is None else str(value))


@cache
def _environment() -> jinja2.Environment:
    import jinja2  # only the commands that render pay for it

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
