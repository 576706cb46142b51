"""Dropping an ELF file's full symbol table, deterministically, without binutils.

Debian ships libjvm.so with its whole ``.symtab`` (about 4.6 MB, 1 MB compressed): names for
the serviceability agent (jhsdb, not in the image and unable to reach into a VM) and for the
native frames of a crash log. The dynamic symbols (``.dynsym``), which loading and linking use,
stay. Done in Python rather than with ``strip`` so the bytes depend only on the input, not on
the host's binutils: a layer keeps the same digest on every machine.

Only the simple, common layout is handled: ``.symtab`` and its string table are not loaded
(no SHF_ALLOC), lie after every loaded segment, and no other section links to them. Anything
else is left unchanged (the function returns None).
"""

from __future__ import annotations

import struct

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_PHDR = struct.Struct("<IIQQQQQQ")
_SHT_SYMTAB, _SHT_REL, _SHT_RELA = 2, 9, 4
_SHF_ALLOC, _SHF_INFO_LINK = 0x2, 0x40


def _align(n: int, to: int) -> int:
    return n + (-n % to) if to > 1 else n


def drop_symtab(data: bytes) -> bytes | None:
    """``data`` (a 64-bit little-endian ELF file) without its .symtab and that table's strings;
    None if it has none or its layout is not the simple one (see the module docstring)."""
    if len(data) < _EHDR.size or data[:6] != b"\x7fELF\x02\x01":
        return None
    head = list(_EHDR.unpack_from(data))
    phoff, shoff, phentsize, phnum, shentsize, shnum, shstrndx = (
        head[5], head[6], head[9], head[10], head[11], head[12], head[13])
    if shentsize != _SHDR.size or phentsize != _PHDR.size or shnum == 0 \
            or shoff + shnum * shentsize > len(data):
        return None
    sections = [list(_SHDR.unpack_from(data, shoff + i * shentsize)) for i in range(shnum)]
    symtabs = [i for i, s in enumerate(sections) if s[1] == _SHT_SYMTAB]
    if len(symtabs) != 1:
        return None
    gone = {symtabs[0], sections[symtabs[0]][6]}
    if shstrndx in gone or 0 in gone:
        return None
    loaded_end = max((p[1] + p[5] for p in (_PHDR.unpack_from(data, phoff + i * phentsize)
                                             for i in range(phnum))), default=0)
    cut = min(sections[i][4] for i in gone)
    for i, s in enumerate(sections):
        moved = i and s[4] >= cut and s[1] != 8  # 8: SHT_NOBITS occupies no file bytes
        if (i in gone or moved) and (s[2] & _SHF_ALLOC or s[4] < loaded_end):
            return None
        links = [s[6]] + ([s[7]] if s[1] in (_SHT_REL, _SHT_RELA) or s[2] & _SHF_INFO_LINK
                          else [])
        if i not in gone and gone & set(links):
            return None
    index: dict[int, int] = {}
    kept: list[list[int]] = []
    for i, s in enumerate(sections):
        if i not in gone:
            index[i] = len(kept)
            kept.append(s)
    out = bytearray(data[:cut])
    for s in kept:
        if s[4] >= cut and s[1] != 8 and s is not kept[0]:
            body = data[s[4]:s[4] + s[5]]
            out += b"\0" * (_align(len(out), s[8]) - len(out))
            s[4] = len(out)
            out += body
        s[6] = index.get(s[6], 0)
        if s[1] in (_SHT_REL, _SHT_RELA) or s[2] & _SHF_INFO_LINK:
            s[7] = index.get(s[7], 0)
    out += b"\0" * (_align(len(out), 8) - len(out))
    head[6], head[12], head[13] = len(out), len(kept), index[shstrndx]
    out[:_EHDR.size] = _EHDR.pack(*head)
    for s in kept:
        out += _SHDR.pack(*s)
    return bytes(out)
