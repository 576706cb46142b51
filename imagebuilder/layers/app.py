"""The app layer: the application jar and the command line that runs it.

The only layer that changes with each app version, so it is small and quick to build: the jar,
and ``/etc/imagebuilder/app.conf`` (name, version, port and the shell-quoted command) that the
generic init sources.
"""

from __future__ import annotations

from ..config import Config
from .cpio import Tree
from .jvm import JAVA_HOME, heap_flags
from .templates import render

#: Flags for every image: no perf-data file in /tmp (saves start-up time and a writable mmap).
DEFAULT_JVM_FLAGS = ("-XX:-UsePerfData",)


def command(cfg: Config) -> list[str]:
    """The app's argv inside the guest."""
    return [f"/{JAVA_HOME}/bin/java", *DEFAULT_JVM_FLAGS, *heap_flags(cfg.jvm.args), *cfg.jvm.args,
            "-jar", f"/app/{cfg.app.path.name}", *cfg.app.args]


def app_conf(cfg: Config) -> str:
    """The shell fragment the init sources."""
    return render("app.conf.j2", name=cfg.image.name, version=cfg.image.version,
                  port=cfg.app.port if cfg.app.port is not None else "", command=command(cfg))


def build_tree(cfg: Config) -> Tree:
    """The app layer."""
    tree = Tree()
    tree.add_file(f"app/{cfg.app.path.name}", source=cfg.app.path, mode=0o644)
    tree.add_file("etc/imagebuilder/app.conf", data=app_conf(cfg).encode(), mode=0o644)
    return tree
