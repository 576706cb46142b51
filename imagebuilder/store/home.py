"""Where imagebuilder keeps its images, caches and running VMs.

One directory, ``$IMAGEBUILDER_HOME`` (default ``~/.local/share/imagebuilder``): ``store/`` is
the OCI image layout of the built images, ``cache/`` the stage outputs and downloaded packages,
``run/`` the state of VMs started in the background. Cheap to import: the command line reads it
for every command.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .cache import Cache
from .layout import Store


def default_home() -> Path:
    """$IMAGEBUILDER_HOME, else ~/.local/share/imagebuilder."""
    env = os.environ.get("IMAGEBUILDER_HOME")
    if env:
        return Path(env).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local/share")
    return Path(data) / "imagebuilder"


@dataclass
class Home:
    """Where imagebuilder keeps its images, caches and running VMs."""

    root: Path = field(default_factory=default_home)

    @property
    def store(self) -> Store:
        return Store(self.root / "store")

    @property
    def cache(self) -> Cache:
        return Cache(self.root / "cache")

    @property
    def downloads(self) -> Path:
        return self.root / "cache" / "archive"

    @property
    def runs(self) -> Path:
        return self.root / "run"
