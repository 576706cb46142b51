"""``imagebuilder hash``: digests of files, in one pass each (holes of sparse files skipped).

A well-formed invocation is served by :mod:`imagebuilder.entry` without loading click; this is
the command for the rest (``--help``, usage errors, a missing file) and for ``main(argv)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click

from ..config.checks import file_kind
from ..errors import UserError
from .options import json_option
from .render import emit_json


@click.command("hash")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False),
                metavar="FILE...")
@click.option("--algo", type=click.Choice(["xxh3", "sha256", "xxh128"]), default="xxh3",
              show_default=True,
              help="xxh3: block-tree XXH3-128 that skips holes of sparse files; sha256: "
                   "standard; xxh128: plain XXH3-128 as `xxhsum -H2` prints it.")
@json_option("Print the digests as JSON.")
def hash_cmd(files: Sequence[str], algo: str, as_json: bool) -> None:
    """Hash files in one pass each, reading only the data of sparse files."""
    from ..hashing.core import hash_paths
    for name in files:
        kind = file_kind(Path(name))
        if kind == "missing":
            raise UserError(f"{name}: no such file")
        if kind != "a file":
            raise UserError(f"{name} is {kind}, not a regular file: hash reads regular files")
    results = hash_paths([Path(f) for f in files], algo)
    if as_json:
        emit_json([{"path": str(p), "algo": algo, "digest": d, "size": n}
                   for p, d, n in results])
        return
    for path, digest, _size in results:
        click.echo(f"{digest}  {path}")


COMMANDS: list[click.Command] = [hash_cmd]
