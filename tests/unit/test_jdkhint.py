"""The init's app output filter (templates/jdkhint.awk), run for real by /init under busybox.

An app that dies of a JDK class left out of the image must say on the console which module to
add and with which key. The "app" here is busybox awk printing what a JVM prints when a class of
java.sql is missing, in the init's sandbox (tests/unit/guest_fixture.py).
"""

from __future__ import annotations

import pytest

from tests.unit.guest_fixture import Guest, needs_sandbox

pytestmark = needs_sandbox

TRACE = ('BEGIN { print "starting"; '
         'print "Exception in thread \\"main\\" java.lang.NoClassDefFoundError: '
         'java/sql/SQLException" > "/dev/stderr"; '
         'print "Caused by: java.lang.ClassNotFoundException: java.sql.SQLException" '
         '> "/dev/stderr"; print "ClassNotFoundException: com.example.Own"; exit 1 }')


def test_missing_jdk_module_is_named_on_the_console(guest: Guest) -> None:
    root = guest.root
    (root / "etc/imagebuilder/app.conf").write_text(
        f"IMAGE_NAME=shop\nIMAGE_VERSION=1\nAPP_PORT=\nset -- /usr/bin/awk '{TRACE}'\n")
    (root / "etc/imagebuilder/jdk-missing").write_text(
        "java.beans java.desktop\njava.sql java.sql\n")
    booted = guest.boot(None)
    assert booted.exit_status == 1, booted.console
    hint = ('imagebuilder: the app needs the JDK module java.sql (for java.sql.SQLException), '
            'which is not in this image: add "java.sql" to [jvm] modules in imagebuilder.toml '
            '(or set [jvm] runtime = "full") and rebuild')
    lines = booted.console.splitlines()
    assert lines.count(hint) == 1  # once per module, though two lines name the class
    assert "starting" in lines and "ClassNotFoundException: com.example.Own" in lines
    # The app's own lines come through before the init says it exited.
    assert lines.index(hint) < next(i for i, line in enumerate(lines) if "app exited" in line)


def test_app_output_without_a_map_passes_through(guest: Guest) -> None:
    (guest.root / "etc/imagebuilder/app.conf").write_text(
        f"IMAGE_NAME=shop\nIMAGE_VERSION=1\nAPP_PORT=\nset -- /usr/bin/awk '{TRACE}'\n")
    booted = guest.boot(None)
    assert booted.exit_status == 1
    assert "starting" in booted.console and "needs the JDK module" not in booted.console


@pytest.mark.parametrize("gone", ["jdkhint.awk"])
def test_app_runs_when_the_filter_is_missing(guest: Guest, gone: str) -> None:
    (guest.root / "usr/share/imagebuilder" / gone).unlink()
    booted = guest.boot(None)
    assert booted.exit_status == 7 and booted.app_args == ["one arg", "$HOME", "x=y"]
