"""What a class file refers to, read from its constant pool without a JVM.

Finding the JDK modules an app needs only takes the names a class file mentions: the classes of
its CONSTANT_Class entries and of every descriptor, the methods it calls (to spot calls that load
JDK code by name, such as ``Charset.forName``) and its string literals (class names passed to
``Class.forName``). Reading them from the constant pool takes microseconds per class, where jdeps
starts a JVM. The class-file version says which Java release compiled the class.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

MAGIC = b"\xca\xfe\xba\xbe"
#: Class-file major version of Java 8; release N has major 44 + N.
_MAJOR_OFFSET = 44
_DESCRIPTOR_CLASS = re.compile(rb"L([A-Za-z0-9_$/]+);")
# Sizes of constant pool entries by tag (tags 5 and 6 take two slots).
_SIZES = {3: 4, 4: 4, 5: 8, 6: 8, 7: 2, 8: 2, 9: 4, 10: 4, 11: 4, 12: 4, 15: 3, 16: 2, 17: 4,
          18: 4, 19: 2, 20: 2}
_U2 = struct.Struct(">H")
_U2U2 = struct.Struct(">HH")


class ClassFormatError(ValueError):
    """The bytes are not a class file this reader understands."""


@dataclass
class ClassRefs:
    """What one class file names."""

    major: int
    classes: set[str] = field(default_factory=set)
    methods: set[tuple[str, str]] = field(default_factory=set)
    strings: list[str] = field(default_factory=list)

    @property
    def release(self) -> int:
        """The Java release that compiled the class (8 for major 52, 21 for 65, ...)."""
        return self.major - _MAJOR_OFFSET


def release_of(major: int) -> int:
    return major - _MAJOR_OFFSET


def parse(data: bytes) -> ClassRefs:
    """The class names, called methods (owner, name) and string literals of a class file."""
    if data[:4] != MAGIC or len(data) < 10:
        raise ClassFormatError("no class file magic")
    try:
        return _parse(data)
    except (struct.error, IndexError):
        raise ClassFormatError("truncated constant pool") from None


def _parse(data: bytes) -> ClassRefs:
    major, count = _U2U2.unpack_from(data, 6)
    pos, index = 10, 1
    utf8: dict[int, bytes] = {}
    class_refs: dict[int, int] = {}
    string_refs: list[int] = []
    method_refs: list[tuple[int, int]] = []
    name_types: dict[int, int] = {}
    while index < count:
        tag = data[pos]
        if tag == 1:
            length = _U2.unpack_from(data, pos + 1)[0]
            end = pos + 3 + length
            if end > len(data):
                raise IndexError
            utf8[index] = data[pos + 3:end]
            pos = end
        elif tag in _SIZES:
            if tag == 7:
                class_refs[index] = _U2.unpack_from(data, pos + 1)[0]
            elif tag == 8:
                string_refs.append(_U2.unpack_from(data, pos + 1)[0])
            elif tag in (10, 11):
                method_refs.append(_U2U2.unpack_from(data, pos + 1))
            elif tag == 12:
                name_types[index] = _U2.unpack_from(data, pos + 1)[0]
            pos += 1 + _SIZES[tag]
        else:
            raise ClassFormatError(f"bad constant pool tag {tag}")
        index += 2 if tag in (5, 6) else 1
    refs = ClassRefs(major)
    owners: dict[int, str] = {}
    for index, ref in class_refs.items():
        raw = utf8.get(ref, b"")
        owners[index] = raw.decode("utf-8", "replace")
        name = raw.lstrip(b"[")
        if name.startswith(b"L") and name.endswith(b";"):
            name = name[1:-1]
        refs.classes.add(name.decode("utf-8", "replace"))
    for text in utf8.values():
        if b";" in text:
            for match in _DESCRIPTOR_CLASS.finditer(text):
                refs.classes.add(match.group(1).decode("utf-8", "replace"))
    for class_index, nat_index in method_refs:
        owner = owners.get(class_index)
        method = utf8.get(name_types.get(nat_index, 0))
        if owner and method:
            refs.methods.add((owner, method.decode("utf-8", "replace")))
    refs.strings = [utf8[i].decode("utf-8", "replace") for i in string_refs if i in utf8]
    return refs
