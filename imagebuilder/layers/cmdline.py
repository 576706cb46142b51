"""The kernel command line an image carries, checked before it is written anywhere.

An image's ``cmdline`` ends up as text inside other languages: the ``APPEND`` line of
syslinux.cfg, the ``options`` line of a systemd-boot entry, the ``kernel`` line of an iPXE
script, and QEMU's ``-append``. A newline there starts a new boot-loader directive or iPXE
command; in an iPXE script ``${...}`` expands settings, ``||`` and ``&&`` chain commands, ``#``
starts a comment and quotes and backslashes change how words split. A pulled image's config is
written by whoever controls the registry, so the same check runs at build (user input, exit 2)
and on pull (a malformed image, exit 1): printable ASCII, none of those characters, and at most
:data:`MAX_CMDLINE_BYTES` (x86's ``COMMAND_LINE_SIZE`` of 2048 with its terminating NUL).
"""

from __future__ import annotations

from ..errors import UserError

MAX_CMDLINE_BYTES = 2047
SPECIAL = frozenset("$|&#\"'\\")
"""Characters iPXE's script parser gives a meaning (settings, chaining, comments, quoting)."""


def check_cmdline(text: str) -> str:
    """``text`` if boot loaders, iPXE and the kernel take it as one plain line; else a
    UserError naming the first offending character."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_CMDLINE_BYTES:
        raise UserError(f"kernel command line is {size} bytes; the kernel takes at most "
                        f"{MAX_CMDLINE_BYTES}")
    for pos, char in enumerate(text):
        if not (" " <= char <= "~"):
            raise UserError(f"kernel command line has {char!r} at offset {pos}: only printable "
                            "ASCII on one line is allowed")
        if char in SPECIAL:
            raise UserError(f"kernel command line has {char!r} at offset {pos}, which iPXE "
                            f"scripts treat specially; avoid {' '.join(sorted(SPECIAL))}")
    return text
