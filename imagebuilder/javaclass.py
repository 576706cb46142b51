"""What an application jar needs from the JDK, read from its class files.

``jdeps`` finds the JDK modules an app needs, but it starts a JVM and needs the JDK unpacked:
seconds. The modules depend only on which JDK packages the app's classes refer to, so this
module reads the constant pools of the jar's classes (milliseconds) and the set of referenced
packages keys a cache of jdeps' answer: a new app version that imports nothing new reuses it.
It also checks that a jar is one imagebuilder can run.
"""

from __future__ import annotations

import re
import struct
import zipfile
from pathlib import Path

from .errors import UserError

_DESCRIPTOR_CLASS = re.compile(rb"L([A-Za-z0-9_$/]+);")
# Sizes of constant pool entries by tag (tags 5 and 6 take two slots).
_SIZES = {3: 4, 4: 4, 5: 8, 6: 8, 7: 2, 8: 2, 9: 4, 10: 4, 11: 4, 12: 4, 15: 3, 16: 2, 17: 4,
          18: 4, 19: 2, 20: 2}


def main_class(jar: Path) -> str:
    """The jar's Main-Class; UserError if it is not an executable jar."""
    try:
        with zipfile.ZipFile(jar) as zf:
            try:
                manifest = zf.read("META-INF/MANIFEST.MF").decode("utf-8", "replace")
            except KeyError:
                manifest = ""
    except (zipfile.BadZipFile, OSError) as exc:
        raise UserError(f"{jar}: not a jar file ({exc}): app.path must name an executable jar")\
            from None
    # Manifest lines are wrapped at 72 bytes with a leading space on continuations.
    unwrapped = manifest.replace("\r\n", "\n").replace("\n ", "")
    for line in unwrapped.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() == "main-class" and value.strip():
            return value.strip()
    raise UserError(f"{jar}: no Main-Class in META-INF/MANIFEST.MF: build it as an executable "
                    "jar (jar --main-class CLASS, or your build tool's manifest setting)")


def class_names(data: bytes) -> set[str]:
    """Internal names of the classes a class file refers to (constant pool and descriptors)."""
    if data[:4] != b"\xca\xfe\xba\xbe":
        return set()
    count = struct.unpack_from(">H", data, 8)[0]
    pos, index = 10, 1
    names: set[str] = set()
    utf8: dict[int, bytes] = {}
    class_refs: list[int] = []
    while index < count:
        tag = data[pos]
        if tag == 1:
            length = struct.unpack_from(">H", data, pos + 1)[0]
            utf8[index] = data[pos + 3:pos + 3 + length]
            pos += 3 + length
        elif tag in _SIZES:
            if tag == 7:
                class_refs.append(struct.unpack_from(">H", data, pos + 1)[0])
            pos += 1 + _SIZES[tag]
        else:
            raise ValueError(f"bad constant pool tag {tag}")
        index += 2 if tag in (5, 6) else 1
    for ref in class_refs:
        name = utf8.get(ref, b"").lstrip(b"[")
        if name.startswith(b"L") and name.endswith(b";"):
            name = name[1:-1]
        names.add(name.decode("utf-8", "replace"))
    for text in utf8.values():
        for match in _DESCRIPTOR_CLASS.finditer(text):
            names.add(match.group(1).decode("utf-8", "replace"))
    return names


def referenced_packages(jar: Path) -> list[str]:
    """Packages outside the jar that its classes refer to, sorted (a cache key for jdeps)."""
    own: set[str] = set()
    used: set[str] = set()
    with zipfile.ZipFile(jar) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".class"):
                continue
            name = info.filename[:-len(".class")]
            name = re.sub(r"^META-INF/versions/\d+/", "", name)
            own.add(name.rpartition("/")[0])
            try:
                used |= {n.rpartition("/")[0] for n in class_names(zf.read(info))}
            except (ValueError, struct.error, IndexError):
                raise UserError(f"{jar}: {info.filename} is not a valid class file") from None
    return sorted(used - own - {""})
