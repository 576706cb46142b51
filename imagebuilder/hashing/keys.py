"""Cache keys: one XXH3-128 over a canonical encoding of structured values.

A stage's cache key must depend on its inputs' values only (option values, file digests, the
stage's code version), never on paths, timestamps, dict insertion order or a float's printing, so
that the same inputs give the same key on every machine. :func:`key_of` encodes the values
type-length-value (no two different values share an encoding) and hashes that.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import xxhash

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
    elif isinstance(value, os.PathLike):
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
