"""A minimal reader for 64-bit little-endian ELF files.

The base layer needs the shared-library closure of the binaries it ships (``DT_NEEDED``,
``DT_SONAME``, ``PT_INTERP``) and the kernel module code needs each module's ``.modinfo``
section. Both are a few fixed-layout structures, so this module reads them with :mod:`struct`
rather than pulling in pyelftools. Every offset read from the file is bounds-checked: a truncated
or corrupt file raises :class:`ImageBuilderError` naming the file, never ``struct.error`` or
``IndexError``.

Functions taking a path read the file through ``mmap`` (only the pages touched are read);
:class:`ElfFile` works on bytes already in memory, such as a decompressed kernel module.
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NoReturn

from imagebuilder.errors import ImageBuilderError

__all__ = [
    "ElfFile",
    "dynamic_needed",
    "interpreter",
    "is_elf",
    "section",
    "section_bytes",
    "soname",
]

_MAGIC = b"\x7fELF"
_ELFCLASS64 = 2
_ELFDATA2LSB = 1

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")  # Elf64_Ehdr, 64 bytes
_SHDR = struct.Struct("<IIQQQQIIQQ")  # Elf64_Shdr, 64 bytes
_PHDR = struct.Struct("<IIQQQQQQ")  # Elf64_Phdr, 56 bytes
_DYN = struct.Struct("<qQ")  # Elf64_Dyn, 16 bytes

_SHT_NOBITS = 8
_SHT_DYNAMIC = 6
_SHN_UNDEF = 0
_SHN_LORESERVE = 0xFF00
_SHN_XINDEX = 0xFFFF

_PT_LOAD = 1
_PT_DYNAMIC = 2
_PT_INTERP = 3

_DT_NULL = 0
_DT_NEEDED = 1
_DT_STRTAB = 5
_DT_STRSZ = 10
_DT_SONAME = 14


@dataclass(frozen=True)
class _Section:
    name: str
    type: int
    offset: int
    size: int
    link: int


@dataclass(frozen=True)
class _Segment:
    type: int
    offset: int
    vaddr: int
    filesz: int


class ElfFile:
    """A parsed view of an ELF64 little-endian image held in memory (``bytes`` or ``mmap``).

    ``source`` names the file in error messages. Parsing is lazy: the constructor checks the
    header only; section and program headers are read on first use.
    """

    def __init__(self, data: bytes | bytearray | memoryview | mmap.mmap, source: str = "<data>"):
        self._data = data
        self.source = source
        if len(data) < _EHDR.size:
            self._fail(f"file is {len(data)} bytes, shorter than an ELF header")
        (
            ident,
            _type,
            _machine,
            _version,
            _entry,
            phoff,
            shoff,
            _flags,
            _ehsize,
            phentsize,
            phnum,
            shentsize,
            shnum,
            shstrndx,
        ) = _EHDR.unpack_from(data, 0)
        if ident[:4] != _MAGIC:
            self._fail("bad magic")
        if ident[4] != _ELFCLASS64:
            self._fail(f"ELF class {ident[4]} is not ELFCLASS64")
        if ident[5] != _ELFDATA2LSB:
            self._fail(f"data encoding {ident[5]} is not little-endian")
        self._phoff, self._phnum, self._phentsize = phoff, phnum, phentsize
        self._shoff, self._shnum, self._shentsize = shoff, shnum, shentsize
        self._shstrndx = shstrndx
        self._sections: list[_Section] | None = None
        self._segments: list[_Segment] | None = None

    # -- low level ---------------------------------------------------------------------------

    def _fail(self, reason: str) -> NoReturn:
        raise ImageBuilderError(f"{self.source}: not a valid ELF64 file: {reason}")

    def _slice(self, offset: int, size: int, what: str) -> bytes:
        if offset < 0 or size < 0 or offset + size > len(self._data):
            self._fail(
                f"{what} at offset {offset} size {size} runs past the end "
                f"of the file ({len(self._data)} bytes)"
            )
        return bytes(self._data[offset : offset + size])

    def _unpack(self, st: struct.Struct, offset: int, what: str) -> tuple[int, ...]:
        return st.unpack(self._slice(offset, st.size, what))

    @staticmethod
    def _cstring(table: bytes, offset: int) -> str | None:
        if offset >= len(table):
            return None
        end = table.find(b"\0", offset)
        if end < 0:
            return None
        return table[offset:end].decode("utf-8", "surrogateescape")

    # -- sections ------------------------------------------------------------------------------

    def _section_headers(self) -> list[_Section]:
        if self._sections is not None:
            return self._sections
        sections: list[_Section] = []
        if self._shoff == 0:
            self._sections = sections
            return sections
        if self._shentsize < _SHDR.size:
            self._fail(f"section header size {self._shentsize} < {_SHDR.size}")
        shnum, shstrndx = self._shnum, self._shstrndx
        if shnum == 0 or shstrndx == _SHN_XINDEX:
            # Extended numbering: the real values live in section header 0.
            first = self._unpack(_SHDR, self._shoff, "section header 0")
            if shnum == 0:
                shnum = first[5]
            if shstrndx == _SHN_XINDEX:
                shstrndx = first[6]
        if shnum > (len(self._data) - self._shoff) // self._shentsize + 1:
            self._fail(f"{shnum} section headers do not fit in the file")
        raw = []
        for i in range(shnum):
            raw.append(
                self._unpack(_SHDR, self._shoff + i * self._shentsize, f"section header {i}")
            )
        names = b""
        if shstrndx != _SHN_UNDEF and shstrndx < _SHN_LORESERVE:
            if shstrndx >= shnum:
                self._fail(f"section name table index {shstrndx} >= {shnum} sections")
            s = raw[shstrndx]
            if s[1] != _SHT_NOBITS:
                names = self._slice(s[4], s[5], "section name table")
        for i, (name_off, typ, _fl, _addr, off, size, link, _info, _al, _es) in enumerate(raw):
            name = self._cstring(names, name_off) if names else ""
            if name is None:
                self._fail(f"section {i} name offset {name_off} is outside the name table")
            sections.append(_Section(name or "", typ, off, size, link))
        self._sections = sections
        return sections

    def _section_data(self, s: _Section) -> bytes:
        if s.type == _SHT_NOBITS:
            return b""
        return self._slice(s.offset, s.size, f"section {s.name or '?'}")

    def section_names(self) -> list[str]:
        """Names of all sections, in header order (empty when there are no section headers)."""
        return [s.name for s in self._section_headers()]

    def section(self, name: str) -> bytes | None:
        """The contents of the first section called ``name``; None if there is none.

        A ``SHT_NOBITS`` section (``.bss``) exists but has no file contents: ``b""``.
        """
        for s in self._section_headers():
            if s.name == name:
                return self._section_data(s)
        return None

    # -- segments ------------------------------------------------------------------------------

    def _program_headers(self) -> list[_Segment]:
        if self._segments is not None:
            return self._segments
        segments: list[_Segment] = []
        if self._phoff != 0 and self._phnum:
            if self._phentsize < _PHDR.size:
                self._fail(f"program header size {self._phentsize} < {_PHDR.size}")
            for i in range(self._phnum):
                typ, _fl, off, vaddr, _pa, filesz, _memsz, _al = self._unpack(
                    _PHDR, self._phoff + i * self._phentsize, f"program header {i}"
                )
                segments.append(_Segment(typ, off, vaddr, filesz))
        self._segments = segments
        return segments

    def _vaddr_to_offset(self, vaddr: int) -> int | None:
        for seg in self._program_headers():
            if seg.type == _PT_LOAD and seg.vaddr <= vaddr < seg.vaddr + seg.filesz:
                return seg.offset + (vaddr - seg.vaddr)
        return None

    def interpreter(self) -> str | None:
        """The program interpreter (``PT_INTERP``), e.g. ``/lib64/ld-linux-x86-64.so.2``."""
        for seg in self._program_headers():
            if seg.type == _PT_INTERP:
                raw = self._slice(seg.offset, seg.filesz, "PT_INTERP")
                return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        return None

    # -- dynamic section -----------------------------------------------------------------------

    def _dynamic(self) -> tuple[list[tuple[int, int]], bytes] | None:
        """The dynamic entries (tag, value) up to DT_NULL, and the string table they index."""
        dyn_raw: bytes | None = None
        strtab: bytes | None = None
        for s in self._section_headers():
            if s.type == _SHT_DYNAMIC:
                dyn_raw = self._section_data(s)
                sections = self._section_headers()
                if 0 < s.link < len(sections):
                    strtab = self._section_data(sections[s.link])
                break
        if dyn_raw is None:
            for seg in self._program_headers():
                if seg.type == _PT_DYNAMIC:
                    dyn_raw = self._slice(seg.offset, seg.filesz, "PT_DYNAMIC")
                    break
        if dyn_raw is None:
            return None
        entries: list[tuple[int, int]] = []
        for off in range(0, len(dyn_raw) - _DYN.size + 1, _DYN.size):
            tag, val = _DYN.unpack_from(dyn_raw, off)
            if tag == _DT_NULL:
                break
            entries.append((tag, val))
        if strtab is None:
            # No section headers (stripped of them): find DT_STRTAB through the load segments.
            addr = next((v for t, v in entries if t == _DT_STRTAB), None)
            size = next((v for t, v in entries if t == _DT_STRSZ), None)
            if addr is None or size is None:
                self._fail("dynamic section has no DT_STRTAB/DT_STRSZ")
            str_off = self._vaddr_to_offset(addr)
            if str_off is None:
                self._fail(f"DT_STRTAB address {addr:#x} is in no loadable segment")
            strtab = self._slice(str_off, size, "dynamic string table")
        return entries, strtab

    def _dynamic_strings(self, tag: int) -> list[str]:
        dyn = self._dynamic()
        if dyn is None:
            return []
        entries, strtab = dyn
        out = []
        for t, val in entries:
            if t == tag:
                s = self._cstring(strtab, val)
                if s is None:
                    self._fail(f"dynamic string offset {val} is outside the string table")
                out.append(s)
        return out

    def needed(self) -> list[str]:
        """The ``DT_NEEDED`` entries, in file order (empty for static or non-dynamic files)."""
        return self._dynamic_strings(_DT_NEEDED)

    def soname(self) -> str | None:
        """The ``DT_SONAME`` of a shared library, or None."""
        names = self._dynamic_strings(_DT_SONAME)
        return names[0] if names else None


# -- path helpers --------------------------------------------------------------------------------


@contextmanager
def _open(path: str | os.PathLike[str]) -> Iterator[ElfFile]:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < _EHDR.size:
            data = f.read()
            yield ElfFile(data, os.fspath(path))
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            yield ElfFile(m, os.fspath(path))


def is_elf(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is a regular file starting with an ELF64 little-endian header.

    Other ELF flavours (32-bit, big-endian) answer False: nothing else here can read them.
    Symlinks are followed; directories, devices and short files answer False.
    """
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode) or st.st_size < _EHDR.size:
        return False
    with open(path, "rb") as f:
        ident = f.read(6)
    return ident[:4] == _MAGIC and ident[4] == _ELFCLASS64 and ident[5] == _ELFDATA2LSB


def section(path: str | os.PathLike[str], name: str) -> bytes | None:
    """The contents of section ``name`` of the ELF file at ``path``; None if it has none."""
    with _open(path) as elf:
        return elf.section(name)


def section_bytes(data: bytes, name: str, *, source: str = "<data>") -> bytes | None:
    """Like :func:`section`, for an ELF image already in memory; ``source`` names it in errors."""
    return ElfFile(data, source).section(name)


def dynamic_needed(path: str | os.PathLike[str]) -> list[str]:
    """The shared libraries (``DT_NEEDED``) the ELF file at ``path`` asks for, in file order."""
    with _open(path) as elf:
        return elf.needed()


def soname(path: str | os.PathLike[str]) -> str | None:
    """The ``DT_SONAME`` of the shared library at ``path``, or None."""
    with _open(path) as elf:
        return elf.soname()


def interpreter(path: str | os.PathLike[str]) -> str | None:
    """The program interpreter (``PT_INTERP``) of the executable at ``path``, or None."""
    with _open(path) as elf:
        return elf.interpreter()
