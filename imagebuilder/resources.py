"""Where the data files users edit live: ``templates/`` (init, boot loaders) and ``kernels/``
(kernel manifests).

They sit at the top of the repository, beside ``imagebuilder/``, where users look to add a
kernel manifest or change a boot template. An installed wheel carries them inside the package
(setuptools maps the folders with ``package-dir``); a source checkout or an editable install
reads them from the repository.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


@cache
def data_dir(name: str) -> Path:
    """The folder ``name`` ("templates" or "kernels"), installed or in the source tree."""
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"imagebuilder's {name}/ folder is missing from {_PACKAGE.parent}")
