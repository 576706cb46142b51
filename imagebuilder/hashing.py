"""The hashing core: read a file once, feed every digest that needs its bytes.

Cache keys and change detection use xxh3-128 (fast, not cryptographic); OCI digests and anything
that crosses a trust boundary use SHA-256. A build hashes large files (kernels, JDK runtimes, disk
images) several ways, so the bytes are streamed once through a :class:`MultiHasher` instead of once
per algorithm, in fixed-size chunks so memory stays flat whatever the file size.

All reading goes through :func:`iter_file_chunks`; that is the seam where sparse-file hole skipping
(SEEK_DATA/SEEK_HOLE) and per-block digests plug in later without changing the callers.

:func:`key_of` turns structured values (stage name, version, options, file digests) into one stable
cache key with an unambiguous encoding, so that equal inputs give equal keys on every machine and
different inputs never collide by concatenation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import xxhash

CHUNK_SIZE = 1 << 20
"""Bytes per read: large enough to amortise syscalls, small enough to keep memory flat."""

DEFAULT_ALGOS: tuple[str, ...] = ("xxh3", "sha256")


class _Hash(Protocol):
    def update(self, data: bytes, /) -> object: ...

    def hexdigest(self) -> str: ...


_FACTORIES: dict[str, Callable[[], _Hash]] = {
    "xxh3": xxhash.xxh3_128,
    "xxh64": xxhash.xxh64,
    "sha256": hashlib.sha256,
    "sha512": hashlib.sha512,
}


def supported_algos() -> tuple[str, ...]:
    """Names accepted by :class:`MultiHasher` and :func:`hash_file`."""
    return tuple(sorted(_FACTORIES))


class MultiHasher:
    """Several digests over one stream of bytes.

    ``xxh3`` is XXH3-128 (32 hex digits); ``sha256``/``sha512`` are hashlib's. Digests are
    lower-case hex without an algorithm prefix.
    """

    def __init__(self, algos: Sequence[str] = DEFAULT_ALGOS) -> None:
        if isinstance(algos, str):
            algos = (algos,)
        if not algos:
            raise ValueError("MultiHasher needs at least one algorithm")
        unknown = [a for a in algos if a not in _FACTORIES]
        if unknown:
            raise ValueError(
                f"unknown hash algorithm(s) {', '.join(unknown)}; "
                f"supported: {', '.join(supported_algos())}"
            )
        self.algos: tuple[str, ...] = tuple(dict.fromkeys(algos))
        self._hashes: dict[str, _Hash] = {a: _FACTORIES[a]() for a in self.algos}
        self.size = 0
        """Bytes fed so far."""

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Feed ``data`` to every digest."""
        for h in self._hashes.values():
            h.update(data)  # type: ignore[arg-type]
        self.size += len(data)

    def hexdigests(self) -> dict[str, str]:
        """``{algo: hex}`` for every algorithm, in the order they were asked for."""
        return {a: h.hexdigest() for a, h in self._hashes.items()}


def iter_chunks(f: BinaryIO, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """The contents of the open file ``f`` from its current position, ``chunk_size`` at a time."""
    while True:
        chunk = f.read(chunk_size)
        if not chunk:
            return
        yield chunk


def iter_file_chunks(path: Path | str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """The contents of the file at ``path``, read once, ``chunk_size`` bytes at a time."""
    with open(path, "rb") as f:
        yield from iter_chunks(f, chunk_size)


def hash_chunks(chunks: Iterable[bytes], algos: Sequence[str] = ("xxh3",)) -> dict[str, str]:
    """Digests of the concatenation of ``chunks``."""
    hasher = MultiHasher(algos)
    for chunk in chunks:
        hasher.update(chunk)
    return hasher.hexdigests()


def hash_file(path: Path | str, algos: Sequence[str] = ("xxh3",)) -> dict[str, str]:
    """``{algo: hex}`` of the file at ``path``, reading it once in 1 MiB chunks."""
    hasher = MultiHasher(algos)  # validate algos before opening the file
    for chunk in iter_file_chunks(path):
        hasher.update(chunk)
    return hasher.hexdigests()


def xxh3_file(path: Path | str) -> str:
    """XXH3-128 hex digest of a file."""
    return hash_file(path, ("xxh3",))["xxh3"]


def sha256_file(path: Path | str) -> str:
    """SHA-256 hex digest of a file (no ``sha256:`` prefix)."""
    return hash_file(path, ("sha256",))["sha256"]


def xxh3_bytes(data: bytes | bytearray | memoryview) -> str:
    """XXH3-128 hex digest of ``data``."""
    return xxhash.xxh3_128(data).hexdigest()


def sha256_bytes(data: bytes | bytearray | memoryview) -> str:
    """SHA-256 hex digest of ``data`` (no ``sha256:`` prefix)."""
    return hashlib.sha256(data).hexdigest()


# --- cache keys -------------------------------------------------------------------------------

_KEY_DOMAIN = b"imagebuilder-key-v1\x00"


def _encode(value: Any, out: list[bytes]) -> None:
    """Append the canonical type-length-value encoding of ``value`` to ``out``.

    Every value carries a one-byte type tag and every variable-length value an explicit length,
    so no two different values share an encoding: ("ab", "c") != ("a", "bc"), 1 != "1" != b"1",
    [1, 2] != [[1], 2]. Dicts are encoded with their keys sorted, so insertion order is irrelevant.
    """
    if value is None:
        out.append(b"N")
    elif value is True:
        out.append(b"T")
    elif value is False:
        out.append(b"F")
    elif isinstance(value, int):
        text = str(value).encode()
        out.append(b"i%d:" % len(text) + text)
    elif isinstance(value, str):
        raw = value.encode("utf-8", "surrogateescape")
        out.append(b"s%d:" % len(raw) + raw)
    elif isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        out.append(b"b%d:" % len(raw) + raw)
    elif isinstance(value, Mapping):
        items = []
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"cache key dicts need str keys, not {type(k).__name__} {k!r}")
            items.append((k.encode("utf-8", "surrogateescape"), v))
        items.sort(key=lambda kv: kv[0])
        out.append(b"d%d:" % len(items))
        for k_raw, v in items:
            out.append(b"s%d:" % len(k_raw) + k_raw)
            _encode(v, out)
    elif isinstance(value, list | tuple):
        out.append(b"l%d:" % len(value))
        for item in value:
            _encode(item, out)
    elif isinstance(value, Path):
        raise TypeError(
            f"cache keys never contain paths ({value}): hash the file and use its digest"
        )
    else:
        raise TypeError(f"cannot use {type(value).__name__} {value!r} in a cache key")


def key_of(*parts: Any) -> str:
    """XXH3-128 hex over the canonical encoding of ``parts``.

    Accepts None, bool, int, str, bytes and (nested) lists, tuples and str-keyed dicts. Floats,
    paths and other objects are refused: a key must depend on values, never on locations or on
    representations that may differ between machines. Lists and tuples encode alike.
    """
    out: list[bytes] = [_KEY_DOMAIN]
    _encode(list(parts), out)
    h = xxhash.xxh3_128()
    for piece in out:
        h.update(piece)
    return h.hexdigest()
