"""Where downloaded test and benchmark inputs (WireMock's jar, the corpus's apps, a kernel) are
kept between runs: ``$XDG_CACHE_HOME/imagebuilder-tests/NAME`` (``~/.cache`` by default), one
place the tests and the benchmarks both fill and read, outside the repository and independent of
pytest's own cache."""

from __future__ import annotations

import os
from pathlib import Path


def inputs_dir(name: str) -> Path:
    """The cache directory ``name`` (``apps``, ``corpus``, ...), created if missing."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = base / "imagebuilder-tests" / name
    path.mkdir(parents=True, exist_ok=True)
    return path
