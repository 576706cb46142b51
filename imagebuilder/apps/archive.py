"""Reading jars someone else wrote: zip archives, with caps on what reading them may cost.

An app's jars are untrusted input. A zip bomb declares small sizes or packs a huge ratio (1.5 MB
that inflates to GBs, or many entries sharing one compressed stream), a truncated download has no
central directory, a flipped bit fails the CRC or the inflater. Every entry read here is checked
before it is inflated: its declared size against a per-entry cap, its compression ratio when it is
large, and the bytes inflated so far for the whole app against a total cap shared by every
archive (a :class:`Budget`). zipfile never returns more than the declared size, so memory stays
bounded by the caps whatever the compressed stream holds. Every failure is one
:class:`~imagebuilder.errors.UserError` line naming the jar and the entry.

Nested jars (Spring Boot's ``BOOT-INF/lib/*.jar``) are opened from their bytes, with the label
``outer.jar!/BOOT-INF/lib/x.jar`` in messages.

An entry's :meth:`Jar.fingerprint` is the digest of everything inflating it depends on (its
central directory record's name, method, flags, CRC-32 and sizes, its local header and its
compressed bytes), read raw: about thirty times cheaper than inflating, so a reader that has
inflated and checked those exact bytes before need not do it again.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import xxhash

from ..errors import UserError

MiB = 1 << 20
#: The most one entry may inflate to (a class, a resource or a nested jar).
MAX_ENTRY_BYTES = 512 * MiB
#: The most all entries read for one app may inflate to, together.
MAX_TOTAL_BYTES = 4096 * MiB
#: Entries larger than RATIO_FLOOR may not inflate more than MAX_RATIO times (deflate's own
#: limit is about 1032; real classes and resources stay far below 100).
MAX_RATIO = 200
RATIO_FLOOR = 1 * MiB
MAX_ENTRIES = 500_000
#: A local file header: its fixed part (signature ... extra length), then name and extra.
_LOCAL = struct.Struct("<4s22xHH")
_LOCAL_MAGIC = b"PK\x03\x04"

_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError,
                RuntimeError, ValueError)


class Budget:
    """The bytes left to inflate for one app, shared by all its archives; and the jars on disk
    already opened for it (their central directories are read once, not once per use)."""

    def __init__(self, total: int = MAX_TOTAL_BYTES) -> None:
        self.left = total
        self._open: dict[Path, Jar] = {}

    def open(self, label: str, source: Path | bytes) -> Jar:
        """The jar at ``source`` (a path, opened once for this app, or a nested jar's bytes)."""
        if isinstance(source, bytes):
            return Jar(label, source, self)
        if source not in self._open:
            self._open[source] = Jar(label, source, self, shared=True)
        return self._open[source]

    def close(self) -> None:
        for jar in self._open.values():
            jar.zip.close()
        self._open.clear()

    def take(self, n: int, where: str) -> None:
        if n > self.left:
            raise UserError(f"{where}: the app's jars inflate to more than "
                            f"{MAX_TOTAL_BYTES // MiB} MiB: refusing a likely zip bomb")
        self.left -= n


class Jar:
    """A zip archive (a jar, a war, a nested jar) opened for capped reading."""

    def __init__(self, label: str, source: Path | bytes, budget: Budget, *,
                 shared: bool = False) -> None:
        self.label = label
        self.budget = budget
        self.shared = shared
        self._data = memoryview(source) if isinstance(source, bytes) else None
        try:
            file = io.BytesIO(source) if isinstance(source, bytes) else source
            self.zip = zipfile.ZipFile(file)
            infos = self.zip.infolist()
        except zipfile.LargeZipFile:
            raise UserError(f"{label}: not a valid jar (too large): rebuild it") from None
        except _READ_ERRORS as exc:
            raise UserError(f"{label}: not a valid jar ({_why(exc)}): rebuild it or name a "
                            "jar in app.path") from None
        if len(infos) > MAX_ENTRIES:
            raise UserError(f"{label}: {len(infos)} entries, more than {MAX_ENTRIES}: refusing "
                            "a likely zip bomb")
        #: name -> entry; the first of duplicated names wins, as in the JDK's jar reader.
        self.entries: dict[str, zipfile.ZipInfo] = {}
        #: name -> the later entries of a duplicated name (which a scanner may read too).
        self.duplicates: dict[str, list[zipfile.ZipInfo]] = {}
        for info in infos:
            if self.entries.setdefault(info.filename, info) is not info:
                self.duplicates.setdefault(info.filename, []).append(info)
        #: The entries inflated whole and found sound (size and CRC-32).
        self.checked: set[str] = set()
        self._fd = -1 if self._data is not None else self.zip.fp.fileno()  # type: ignore[union-attr]

    def __enter__(self) -> Jar:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.shared:
            self.zip.close()

    def where(self, name: str) -> str:
        return f"{self.label}!/{name}"

    def read(self, name: str) -> bytes:
        """The inflated bytes of entry ``name``, within the caps."""
        chunks = list(self._inflate(name, whole=True))
        return chunks[0] if chunks else b""

    def read_duplicate(self, info: zipfile.ZipInfo) -> bytes:
        """The inflated bytes of ``info``, one of :attr:`duplicates`, within the caps."""
        return b"".join(self._inflate(info.filename, whole=True, info=info))

    def check(self, name: str) -> None:
        """Inflate entry ``name`` within the caps and check its size and CRC-32, keeping none of
        it; an entry read or checked already is not read again."""
        if name not in self.checked:
            for _ in self._inflate(name, whole=False):
                pass

    def _inflate(self, name: str, *, whole: bool,
                 info: zipfile.ZipInfo | None = None) -> Iterator[bytes]:
        """The bytes of entry ``name`` (or of its duplicate ``info``): in one piece, or in
        chunks of at most 1 MiB."""
        info = info or self.entries[name]
        where = self.where(name)
        size = info.file_size
        if size > MAX_ENTRY_BYTES:
            raise UserError(f"{where}: declares {size} bytes, more than {MAX_ENTRY_BYTES // MiB}"
                            " MiB: refusing a likely zip bomb")
        if size > RATIO_FLOOR and size > MAX_RATIO * max(info.compress_size, 1):
            raise UserError(f"{where}: inflates {size // max(info.compress_size, 1)} times "
                            f"(more than {MAX_RATIO}): refusing a likely zip bomb")
        self.budget.take(size, where)
        got = 0
        try:
            with self.zip.open(info) as f:
                while got <= size:
                    data = f.read(size + 1 if whole else MiB)
                    if not data:
                        break
                    got += len(data)
                    yield data
                    if whole:
                        break
        except _READ_ERRORS as exc:
            raise UserError(f"{where}: corrupt entry ({_why(exc)}): rebuild the jar") from None
        if got != size:
            raise UserError(f"{where}: corrupt entry ({got} bytes, {size} declared): "
                            "rebuild the jar")
        if info is self.entries[name]:
            self.checked.add(name)

    def fingerprint(self, name: str) -> str:
        """The xxh3-128 of entry ``name`` as inflating it reads it: its central directory
        record's name, method, flags, CRC-32 and sizes, then its local header and compressed
        bytes, read raw. Equal fingerprints inflate alike (to the same bytes or the same error);
        "" if the raw bytes cannot be read whole (inflating it then says why)."""
        info = self.entries[name]
        head = self._pread(info.header_offset, _LOCAL.size)
        if len(head) != _LOCAL.size:
            return ""
        magic, name_len, extra_len = _LOCAL.unpack(head)
        if magic != _LOCAL_MAGIC:
            return ""
        rest = name_len + extra_len + info.compress_size
        raw = self._pread(info.header_offset + _LOCAL.size, rest)
        if len(raw) != rest:
            return ""
        h = xxhash.xxh3_128(f"{info.orig_filename}\0{info.compress_type} {info.flag_bits} "
                            f"{info.CRC} {info.compress_size} {info.file_size}\0".encode())
        h.update(head)
        h.update(raw)
        return h.hexdigest()

    def _pread(self, offset: int, size: int) -> bytes | memoryview:
        if self._data is not None:
            return self._data[offset:offset + size]
        return os.pread(self._fd, size, offset)

    def text(self, name: str) -> str:
        return self.read(name).decode("utf-8", "replace")

    def manifest(self) -> dict[str, str]:
        """The main section of META-INF/MANIFEST.MF (keys lower-cased); empty if there is none."""
        if "META-INF/MANIFEST.MF" not in self.entries:
            return {}
        return parse_manifest(self.text("META-INF/MANIFEST.MF"))


def parse_manifest(text: str) -> dict[str, str]:
    """The main attributes of a jar manifest, keys lower-cased; a repeated name keeps its last
    value, as ``java.util.jar.Attributes`` does."""
    # Lines are wrapped at 72 bytes with a leading space on continuations; the main section
    # ends at the first empty line.
    unwrapped = text.replace("\r\n", "\n").replace("\r", "\n").replace("\n ", "")
    attrs: dict[str, str] = {}
    for line in unwrapped.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            attrs[key.strip().lower()] = value.strip()
    return attrs


def _why(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]
