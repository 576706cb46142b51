"""elfstrip: a shared library compiled here loses its .symtab, keeps its dynamic symbols, and
still loads and runs (checked with the real readelf and the real dynamic loader)."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from imagebuilder.layers.elfstrip import drop_symtab

pytestmark = pytest.mark.skipif(shutil.which("cc") is None or shutil.which("readelf") is None,
                                reason="needs a C compiler and readelf (binutils)")

SOURCE = """
static int hidden_helper(int x) { return x * 7; }
__attribute__((visibility("hidden"))) int internal(int x) { return hidden_helper(x) + 1; }
int exported(int x) { return internal(x) * 2; }
"""


def _readelf(*args: str) -> str:
    return subprocess.run(["readelf", "-W", *args], capture_output=True, text=True,
                          check=True).stdout


@pytest.fixture
def library(tmp_path: Path) -> Path:
    (tmp_path / "lib.c").write_text(SOURCE)
    out = tmp_path / "libx.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-o", str(out), str(tmp_path / "lib.c")],
                   check=True, capture_output=True)
    return out


def test_drops_the_symbol_table_and_the_library_still_works(library: Path,
                                                            tmp_path: Path) -> None:
    assert ".symtab" in _readelf("-S", str(library))
    smaller = drop_symtab(library.read_bytes())
    assert smaller is not None and len(smaller) < library.stat().st_size
    out = tmp_path / "libx-stripped.so"
    out.write_bytes(smaller)
    sections = _readelf("-S", str(out))
    assert ".symtab" not in sections and ".strtab" not in sections
    assert ".shstrtab" in sections and ".dynsym" in sections
    assert _readelf("--dyn-syms", str(out)) == _readelf("--dyn-syms", str(library))
    assert "internal" not in _readelf("-s", str(out))  # only the dynamic table is left
    assert ctypes.CDLL(str(out)).exported(3) == 44
    assert drop_symtab(smaller) is None  # nothing left to drop: unchanged


def test_the_result_depends_only_on_the_input(library: Path) -> None:
    assert drop_symtab(library.read_bytes()) == drop_symtab(library.read_bytes())


def test_anything_else_is_left_alone(library: Path) -> None:
    assert drop_symtab(b"#!/bin/sh\n") is None
    assert drop_symtab(library.read_bytes()[:200]) is None
