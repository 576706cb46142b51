"""Tests for imagebuilder.layers.elf against real host binaries and objects compiled here with
gcc."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from imagebuilder.errors import ImageBuilderError
from imagebuilder.layers import elf

LS = Path("/bin/ls")
LIBC = Path("/lib/x86_64-linux-gnu/libc.so.6")

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")

MODINFO = b"depends=foo,bar\0alias=pci:v00001AF4d00001000sv*sd*bc*sc*i*\0"


def _gcc(tmp_path: Path, source: str, *args: str, out: str = "out.o") -> Path:
    c = tmp_path / "src.c"
    c.write_text(source)
    target = tmp_path / out
    subprocess.run(["gcc", *args, "-o", str(target), str(c)], check=True, capture_output=True)
    return target


@pytest.fixture
def modinfo_object(tmp_path: Path) -> Path:
    return _gcc(
        tmp_path,
        '__attribute__((section(".modinfo"), used)) static const char m[] = '
        '"depends=foo,bar\\0alias=pci:v00001AF4d00001000sv*sd*bc*sc*i*";\n',
        "-c",
    )


def test_ls_needs_libc() -> None:
    assert "libc.so.6" in elf.dynamic_needed(LS)


def test_ls_interpreter() -> None:
    assert elf.interpreter(LS) == "/lib64/ld-linux-x86-64.so.2"


@pytest.mark.skipif(not LIBC.exists(), reason="no multiarch libc on this host")
def test_libc_soname() -> None:
    assert elf.soname(LIBC) == "libc.so.6"
    assert elf.soname(LS) is None


def test_is_elf(tmp_path: Path) -> None:
    assert elf.is_elf(LS)
    text = tmp_path / "text"
    text.write_text("#!/bin/sh\necho not an ELF file, but long enough to have a header\n" * 2)
    assert not elf.is_elf(text)
    assert not elf.is_elf(tmp_path)  # a directory
    short = tmp_path / "short"
    short.write_bytes(b"\x7fELF")
    assert not elf.is_elf(short)


def test_section_of_host_binary() -> None:
    interp = elf.section(LS, ".interp")
    assert interp == b"/lib64/ld-linux-x86-64.so.2\0"
    assert elf.section(LS, ".no-such-section") is None


def test_without_section_headers_uses_program_headers(tmp_path: Path) -> None:
    """With e_shoff zeroed, DT_NEEDED is found through PT_DYNAMIC and DT_STRTAB."""
    data = bytearray(LS.read_bytes())
    struct.pack_into("<Q", data, 0x28, 0)  # e_shoff
    struct.pack_into("<HHH", data, 0x3A, 0, 0, 0)  # e_shentsize, e_shnum, e_shstrndx
    stripped = tmp_path / "ls"
    stripped.write_bytes(bytes(data))
    assert elf.dynamic_needed(stripped) == elf.dynamic_needed(LS)
    assert elf.section(stripped, ".interp") is None
    assert elf.interpreter(stripped) == "/lib64/ld-linux-x86-64.so.2"


@needs_gcc
def test_modinfo_section_of_compiled_object(modinfo_object: Path) -> None:
    assert elf.section(modinfo_object, ".modinfo") == MODINFO
    assert elf.section_bytes(modinfo_object.read_bytes(), ".modinfo") == MODINFO
    assert elf.ElfFile(modinfo_object.read_bytes()).section_names()[0] == ""
    # A relocatable object has no dynamic section and no interpreter.
    assert elf.dynamic_needed(modinfo_object) == []
    assert elf.soname(modinfo_object) is None
    assert elf.interpreter(modinfo_object) is None


@needs_gcc
def test_shared_library_soname_and_needed(tmp_path: Path) -> None:
    lib = _gcc(
        tmp_path,
        "#include <math.h>\ndouble f(double x) { return cos(x); }\n",
        "-shared",
        "-fPIC",
        "-Wl,-soname,libfoo.so.1",
        "-Wl,--no-as-needed",
        "-lm",
        out="libfoo.so.1.2",
    )
    assert elf.soname(lib) == "libfoo.so.1"
    assert "libm.so.6" in elf.dynamic_needed(lib)
    assert elf.interpreter(lib) is None


def test_truncated_file_is_an_error(tmp_path: Path) -> None:
    data = LS.read_bytes()
    for size in (100, len(data) // 2):
        cut = tmp_path / f"ls-{size}"
        cut.write_bytes(data[:size])
        with pytest.raises(ImageBuilderError, match=r"ls-\d+: not a valid ELF64 file: "):
            elf.section(cut, ".modinfo")


def test_short_and_foreign_data_are_errors() -> None:
    with pytest.raises(ImageBuilderError, match="mod.ko: not a valid ELF64 file: .*shorter"):
        elf.section_bytes(b"\x7fELF\x02\x01", ".modinfo", source="mod.ko")
    with pytest.raises(ImageBuilderError, match="bad magic"):
        elf.section_bytes(b"MZ" + bytes(100), ".modinfo")
    header32 = b"\x7fELF\x01\x01\x01" + bytes(100)
    with pytest.raises(ImageBuilderError, match="not ELFCLASS64"):
        elf.section_bytes(header32, ".modinfo")


def test_corrupt_section_table_is_an_error() -> None:
    data = bytearray(LS.read_bytes())
    struct.pack_into("<H", data, 0x3C, 0xFFF0)  # e_shnum far beyond the file
    with pytest.raises(ImageBuilderError, match="not a valid ELF64 file"):
        elf.section_bytes(bytes(data), ".interp")
