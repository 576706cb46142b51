"""The package's shape, read from its imports: folders follow the pipeline, imports run only
down it, no module imports itself back through another, and none takes another's private names.

The order, from the bottom: the root's helpers (errors, files, processes, text, resources);
config, hashing and the training run's sandbox; fetching and reading the app; the layers; the
store; registries and disks; disk formats; the build and the targets (each target on its own);
the command line.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "imagebuilder"

RANKS = {
    "errors": 0, "text": 0, "proc": 0, "resources": 0, "fsutil": 0, "scratch": 0,
    "progress": 0, "keyfiles": 0,
    "config": 1, "hashing": 1, "sandbox": 1,
    "fetch": 2, "apps": 2,
    "layers": 3, "sbom": 3,
    "store": 4,
    "registry": 5, "disk": 5,
    "formats": 6, "signing": 6,
    "build": 7, "targets": 7,
    "commands": 8, "cli": 8, "entry": 9,
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports() -> dict[str, set[tuple[str, str]]]:
    """module -> {(imported module, name taken from it or "")}"""
    modules = _modules()
    found: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found[name] |= {(a.name, "") for a in node.names
                                if a.name.startswith("imagebuilder")}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if not target.startswith("imagebuilder"):
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    found[name].add((sub, "") if sub in modules else (target, alias.name))
    return found


def _group(module: str) -> str:
    """The folder (or root module) a module belongs to; each target is a group of its own."""
    parts = module.split(".")[1:] or ["__init__"]
    return ".".join(parts[:2]) if parts[0] == "targets" and len(parts) > 2 else parts[0]


def _rank(group: str) -> int:
    return RANKS[group.split(".")[0]] if group != "__init__" else 0


def test_every_folder_and_root_module_has_a_place_in_the_order() -> None:
    groups = {_group(m) for m in _modules()} - {"__init__", "targets"}
    assert {g.split(".")[0] for g in groups} <= set(RANKS)


def test_imports_run_down_the_pipeline_only() -> None:
    upward = []
    for module, targets in _imports().items():
        for target, _ in targets:
            a, b = _group(module), _group(target)
            if a == b or b == "__init__":
                continue
            if _rank(b) > _rank(a) or (a.startswith("targets.") and b.startswith("targets.")):
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_no_module_imports_itself_back() -> None:
    graph = {m: {t for t, _ in ts} for m, ts in _imports().items()}
    cycles = []

    def visit(node: str, path: list[str], done: set[str]) -> None:
        for nxt in graph.get(node, ()):
            if nxt in path:
                cycles.append([*path[path.index(nxt):], nxt])
            elif nxt not in done:
                visit(nxt, [*path, nxt], done)
        done.add(node)

    done: set[str] = set()
    for start in sorted(graph):
        if start not in done:
            visit(start, [start], done)
    assert cycles == []


def test_no_module_takes_another_modules_private_names() -> None:
    private = sorted(f"{m} takes {n} from {t}" for m, ts in _imports().items() for t, n in ts
                     if n.startswith("_") and not n.startswith("__"))
    assert private == []


def test_modules_and_functions_stay_readable() -> None:
    """No module over 500 lines, no function over 80: past that a reader stops seeing its job."""
    too_long = []
    for name, path in _modules().items():
        text = path.read_text()
        if text.count("\n") > 500:
            too_long.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > 80:
                    too_long.append(f"{name}.{node.name}: {length} lines")
    assert too_long == []
