"""The kernel command line check shared by build and pull (imagebuilder/layers/cmdline.py)."""

from __future__ import annotations

import pytest

from imagebuilder.errors import UserError
from imagebuilder.layers.cmdline import MAX_CMDLINE_BYTES, check_cmdline


@pytest.mark.parametrize("text", [
    "console=tty0 console=ttyS0 quiet panic=-1",
    "root=PARTUUID=0a1b-02 init=/sbin/init ip=10.0.0.5::10.0.0.1:255.255.255.0:h:eth0:off",
    "",
    "x" * MAX_CMDLINE_BYTES,
])
def test_plain_command_lines_pass(text: str) -> None:
    assert check_cmdline(text) == text


@pytest.mark.parametrize(("text", "message"), [
    ("quiet\nboot", r"'\\n' at offset 5: only printable ASCII"),
    ("quiet\rx", r"'\\r' at offset 5"),
    ("quiet\x00", r"'\\x00' at offset 5"),
    ("quiet\tx", r"'\\t' at offset 5"),
    ("quiet\x7f", r"'\\x7f' at offset 5"),
    ("café", "'é' at offset 3"),
    ("a=${net0/mac}", r"'\$' at offset 2, which iPXE"),
    ("quiet || shell", r"'\|' at offset 6"),
    ("quiet && x", "'&' at offset 6"),
    ("quiet #x", "'#' at offset 6"),
    ('a="b c"', "'\"' at offset 2"),
    ("a\\b", r"'\\\\' at offset 1"),
    ("x" * (MAX_CMDLINE_BYTES + 1), "is 2048 bytes; the kernel takes at most 2047"),
])
def test_refused_with_one_line(text: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as e:
        check_cmdline(text)
    assert "\n" not in str(e.value) and e.value.exit_code == 2
