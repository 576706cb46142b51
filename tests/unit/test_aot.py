"""The AOT training run (imagebuilder/layers/aot.py, imagebuilder/sandbox/) for real, without a
JVM: a root of the host's busybox, in the sandbox (tests/unit/test_sandbox.py tries to break out of
it), whose "app" is a shell script serving HTTP with busybox httpd and writing its "archive" when
SIGTERM stops it, as the JVM does. And the console line the init's filter
(templates/jdkhint.awk) makes of the JVM's class-data log.
"""

from __future__ import annotations

import io
import subprocess
import zipfile
from pathlib import Path

import pytest

from imagebuilder.apps.shape import File, Shape
from imagebuilder.layers import aot
from imagebuilder.resources import data_dir
from tests.unit.sandbox_fixture import BUSYBOX, busybox_root

APP = """#!/bin/sh
out=${1#*=}
trap 'echo "classes of $DB_URL" > "$out"; exit 0' TERM
echo "starting on port $PORT as $(id -u), env $IMAGEBUILDER_ENV, in $PWD"
echo "links: $(busybox ip -o link | busybox wc -l)"
busybox httpd -f -p "127.0.0.1:$PORT" -h /www &
while :; do sleep 0.1; done
"""
FAILS = """#!/bin/sh
echo 'Exception in thread "main" java.lang.IllegalStateException: no database'
echo '	at com.example.Main.main(Main.java:3)'
exit 1
"""
SILENT = "#!/bin/sh\necho 'waiting for a database'\nwhile :; do sleep 0.1; done\n"
NO_ARCHIVE = "#!/bin/sh\ntrap 'exit 0' TERM\nbusybox httpd -f -p 127.0.0.1:$PORT -h /www &\n" \
             "while :; do sleep 0.1; done\n"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = busybox_root(tmp_path / "root")
    for name, text in (("run", APP), ("fails", FAILS), ("silent", SILENT),
                       ("no-archive", NO_ARCHIVE)):
        (root / "app" / name).write_text(text)
        (root / "app" / name).chmod(0o755)
    return root


def _train(root: Path, app: str, **kwargs: object) -> tuple[Path, aot.Outcome]:
    env = aot.guest_env(8080, {"DB_URL": "jdbc:h2:mem:train"}, "test")
    options = {"url": "http://127.0.0.1:8080/", "seconds": 0, "timeout": 30, **kwargs}
    return aot.train(root, [f"/app/{app}"], env, 21, **options)  # type: ignore[arg-type]


def test_the_app_runs_with_the_guests_variables_until_it_answers_then_stops(root: Path) -> None:
    archive, outcome = _train(root, "run")
    # Copied out of the root, beside it.
    assert archive == root.with_name("root.app.jsa")
    assert archive.read_text() == "classes of jdbc:h2:mem:train\n"
    assert (outcome.state, outcome.status) == ("ready", 0)
    assert outcome.seconds < 30
    # The image's app user (no root on the host needed), in /app, loopback only.
    assert "starting on port 8080 as 1000, env test, in /app" in outcome.log
    assert "links: 1" in outcome.log


def test_a_fixed_time_instead_of_a_healthcheck(root: Path) -> None:
    archive, outcome = _train(root, "run", url=None, seconds=1)
    assert archive.is_file() and outcome.state == "ready" and outcome.seconds >= 1


def test_an_app_that_exits_fails_with_its_last_lines(root: Path) -> None:
    with pytest.raises(aot.TrainingError) as caught:
        _train(root, "fails")
    message = str(caught.value)
    assert message.startswith("training run for [jvm] aot: the app exited with status 1 after ")
    assert message.endswith("its last lines: Exception in thread \"main\" java.lang."
                            "IllegalStateException: no database | \tat com.example.Main.main"
                            "(Main.java:3)")
    assert caught.value.exit_code == 2
    assert not (root / "opt/aot/app.jsa").exists()


def test_an_app_that_never_answers_fails_after_the_timeout(root: Path) -> None:
    with pytest.raises(aot.TrainingError, match=r"waited [12]\.\d s for http://127.0.0.1:8080/ "
                       r"to answer \(the limit, \[jvm\] train timeout = 1\); the app's last "
                       r"lines: waiting for a database$"):
        _train(root, "silent", timeout=1)


def test_an_app_that_leaves_no_archive_fails(root: Path) -> None:
    with pytest.raises(aot.TrainingError, match="the JVM wrote no archive when stopped"):
        _train(root, "no-archive")


def test_a_runtime_without_its_own_cds_archive_cannot_train_on_jdk_21(root: Path) -> None:
    (root / aot.BASE_ARCHIVE).unlink()
    with pytest.raises(aot.TrainingError, match=r"^\[jvm\] aot on JDK 21 needs the runtime's own "
                       r"class data archive \(/opt/java/lib/server/classes.jsa"):
        _train(root, "run")


def test_jvm_options_by_version() -> None:
    assert aot.train_flags(21) == ["-XX:ArchiveClassesAtExit=/opt/aot/app.jsa"]
    assert aot.train_flags(17) == ["-XX:ArchiveClassesAtExit=/opt/aot/app.jsa"]
    assert aot.train_flags(25) == ["-XX:AOTCacheOutput=/opt/aot/app.aot"]
    assert aot.run_flags(21)[:2] == ["-XX:SharedArchiveFile=/opt/aot/app.jsa", "-Xshare:auto"]
    # JDK 25 refuses -Xshare with -XX:AOTCache.
    assert not any(f.startswith("-Xshare") for f in aot.run_flags(25))
    assert aot.with_flags(["java", "-jar", "a.jar"], ["-X"]) == ["java", "-X", "-jar", "a.jar"]


def _filter(lines: str, archive: str = "/opt/aot/app.jsa") -> list[str]:
    if BUSYBOX is None:
        pytest.skip("needs busybox (busybox-static)")
    out = subprocess.run([BUSYBOX, "awk", "-v", "map=/dev/null", "-v", f"aot={archive}", "-f",
                          str(data_dir("templates") / "jdkhint.awk")], input=lines,
                         capture_output=True, text=True, check=True).stdout
    return out.splitlines()


IN_USE = "imagebuilder: AOT class data /opt/aot/app.jsa in use"


def test_the_console_says_the_archive_is_in_use_and_hides_the_info_log() -> None:
    assert _filter("[0.008s][info][cds] trying to map /opt/aot/app.jsa\n"
                   "[0.017s][info][cds] Mapped dynamic region #0 at base 0x7f (ReadWrite)\n"
                   "banner\n"
                   "[0.094s][info   ][cds        ] Unmapping region #2 (Bitmap)\n"
                   "serving\n") == [IN_USE, "banner", "serving"]
    assert _filter("[0.028s][info][aot] Using AOT-linked classes: true (static archive)\n",
                   "/opt/aot/app.aot") == ["imagebuilder: AOT class data /opt/aot/app.aot in use"]


def test_the_console_names_why_the_jvm_rejected_the_archive() -> None:
    mismatch = "This file is not the one used while building the shared archive file: /app/a.jar"
    lines = _filter("[0.048s][info][cds] Mapped dynamic region #0 at base 0x7f (ReadWrite)\n"
                    f"[0.089s][warning][cds] {mismatch}\n"
                    "[0.091s][warning][cds,dynamic] Unable to use shared archive.\n"
                    "banner\n")
    assert lines[-1] == "banner" and f"[0.089s][warning][cds] {mismatch}" in lines
    assert lines[-2] == (f"imagebuilder: the JVM rejected the AOT class data /opt/aot/app.jsa "
                         f"({mismatch}): the app runs without it and starts slower; rebuild the "
                         "image")
    # Info only (a missing file), and an app that prints nothing of its own.
    assert _filter("[0.002s][info][cds] Specified shared archive not found (/opt/aot/app.jsa)\n"
                   ) == ["imagebuilder: the JVM rejected the AOT class data /opt/aot/app.jsa "
                         "(Specified shared archive not found (/opt/aot/app.jsa)): the app runs "
                         "without it and starts slower; rebuild the image"]


def test_without_aot_the_filter_passes_the_jvms_log_through() -> None:
    line = "[0.008s][info][cds] trying to map /opt/java/lib/server/classes.jsa"
    assert _filter(f"{line}\n", "") == [line]


def test_a_classes_directory_on_the_class_path_becomes_a_jar() -> None:
    own = (File("BOOT-INF/classes/com/example/App.class", data=b"\xca\xfe"),
           File("BOOT-INF/classes/application.properties", data=b"server.port=8080\n"),
           File("BOOT-INF/lib/greet-1.0-SNAPSHOT.jar", data=b"PK"))
    shape = Shape("spring-boot", own, (), ("-cp", "/app/BOOT-INF/classes:/app/BOOT-INF/lib/"
                                            "greet-1.0-SNAPSHOT.jar", "com.example.App"),
                  "com.example.App", ())
    packed = aot.jarred(shape)
    assert packed.argv == ("-cp", "/app/BOOT-INF/classes.jar:/app/BOOT-INF/lib/"
                           "greet-1.0-SNAPSHOT.jar", "com.example.App")
    assert [f.dest for f in packed.app] == ["BOOT-INF/lib/greet-1.0-SNAPSHOT.jar",
                                            "BOOT-INF/classes.jar"]
    data = packed.app[1].data
    assert data is not None and data == aot.jarred(shape).app[1].data  # deterministic
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.namelist() == ["application.properties", "com/example/App.class"]
        assert zf.read("com/example/App.class") == b"\xca\xfe"
    jar = Shape("jar", (File("app.jar", data=b"PK"),), (), ("-jar", "/app/app.jar"), "M", ())
    assert aot.jarred(jar) == jar
