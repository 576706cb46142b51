"""The `imagebuilder` executable's entry point, with a fast path for `imagebuilder hash`.

`hash` competes with `xxhsum` on whole-command time, where loading click (and the rest of the
command line) costs more than hashing a gigabyte. So a well-formed `hash` invocation —
``hash [--algo A] [--json] FILE...`` and nothing else — is served here without importing click;
anything else (``--help``, an unknown option, a missing file) goes to :mod:`imagebuilder.cli`,
which defines the command and its errors.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

_ALGOS = ("xxh3", "sha256", "xxh128")


def _fast_hash(args: Sequence[str]) -> int | None:
    """Exit code of a well-formed `hash` command, or None to let the full CLI handle it."""
    algo, as_json, files = "xxh3", False, []
    it = iter(args)
    for arg in it:
        if arg == "--json":
            as_json = True
        elif arg == "--algo":
            algo = next(it, "")
        elif arg.startswith("--algo="):
            algo = arg.partition("=")[2]
        elif arg.startswith("-") and arg != "-":
            return None
        else:
            files.append(arg)
    if algo not in _ALGOS or not files or not all(os.path.isfile(f) for f in files):
        return None
    from .hashing.core import hash_paths
    results = hash_paths(files, algo)
    if as_json:
        import json

        print(json.dumps([{"path": str(p), "algo": algo, "digest": d, "size": n}
                          for p, d, n in results]))
    else:
        sys.stdout.write("".join(f"{d}  {p}\n" for p, d, _n in results))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["hash"]:
        code = _fast_hash(args[1:])
        if code is not None:
            return code
    from .cli import main as cli_main
    return cli_main(args)
