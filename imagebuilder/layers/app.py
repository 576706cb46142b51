"""The app and libs layers: the app's files, its third-party libraries, and how it starts.

The app layer is the only layer that changes with each app version, so it is small and quick to
build: the app's own files (its jar, or its classes taken out of a Spring Boot jar, its
``-SNAPSHOT`` libraries) and ``/etc/imagebuilder/app.conf`` (name, version, port and the
shell-quoted command) that the generic init sources. The libs layer holds the third-party
libraries (``BOOT-INF/lib``, ``lib/``, ``Class-Path`` jars), which change rarely; it is left out
when an app has none. Both come from the app's :class:`~imagebuilder.apps.shape.Shape`.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..apps.shape import GUEST_DIR, File, Shape
from ..config.parse import Config
from ..resources import render
from .cpio import Tree
from .jvm import JAVA_HOME, heap_flags

#: Flags for every image: no perf-data file in /tmp (saves start-up time and a writable mmap).
DEFAULT_JVM_FLAGS = ("-XX:-UsePerfData",)


def command(cfg: Config, shape: Shape, extra: Sequence[str] = ()) -> list[str]:
    """The app's argv inside the guest, with the JVM options ``extra`` first."""
    return [f"/{JAVA_HOME}/bin/java", *extra, *DEFAULT_JVM_FLAGS, *heap_flags(cfg.jvm.args),
            *cfg.jvm.args, *shape.argv, *cfg.app.args]


def app_conf(cfg: Config, shape: Shape, extra: Sequence[str] = (), aot: str = "") -> str:
    """The shell fragment the init sources; ``aot`` is the path of the AOT class data the JVM
    options ``extra`` name, for the init's console line about it."""
    return render("app.conf.j2", name=cfg.image.name, version=cfg.image.version,
                  port=cfg.app.port if cfg.app.port is not None else "",
                  command=command(cfg, shape, extra), aot=aot)


def files_tree(files: tuple[File, ...]) -> Tree:
    """A tree holding ``files`` below /app."""
    tree = Tree()
    for f in files:
        if f.data is not None:
            tree.add_file(f"{GUEST_DIR}/{f.dest}", data=f.data, mode=0o644)
        else:
            tree.add_file(f"{GUEST_DIR}/{f.dest}", source=f.source, mode=0o644,
                          identity=f.identity)
    return tree


def build_tree(cfg: Config, shape: Shape) -> Tree:
    """The app layer."""
    tree = files_tree(shape.app)
    tree.add_file("etc/imagebuilder/app.conf", data=app_conf(cfg, shape).encode(), mode=0o644)
    return tree
