"""Text from outside (an app's log, a client's request, a registry's reply) shown to a person:
every character that could drive a terminal becomes a visible escape.

A training run's log or a client's request line may hold ESC sequences (OSC 52 writes the
clipboard, CSI 2K plus CR rewrites a line into a fake "build OK"), so nothing untrusted is
echoed raw; the one function here is the one way to make it safe to print.
"""

from __future__ import annotations


def printable(text: str, keep: str = "", backslash: bool = False) -> str:
    """``text`` with every character that is not printable (ESC, CR, other control and format
    characters), but those in ``keep``, as a ``\\xNN`` (or ``\\uNNNN``) escape. ``backslash``:
    ``\\`` becomes ``\\\\`` too, so an escape in the result always stands for one character
    (a log read later cannot take a client's literal ``\\x1b`` for an ESC it sent)."""
    if text.isprintable() and not (backslash and "\\" in text):
        return text
    return "".join("\\\\" if backslash and c == "\\" else
                   c if c.isprintable() or c in keep else
                   f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"
                   if ord(c) < 0x10000 else f"\\U{ord(c):08x}" for c in text)
