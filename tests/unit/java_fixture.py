"""Real jars for the unit tests: compiled by the host JDK (``javac --release 17``, ``jar``).

Every javac and jar command of a test module runs in one JVM (java.util.spi.ToolProvider): the
same tools as the ``javac`` and ``jar`` commands, without a JDK start-up per command.
Test modules import it as ``from java_fixture import ...`` (or ``tests.unit.java_fixture``).
"""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

needs_jdk = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("javac", "jar", "java")),
    reason="javac/jar not installed (apt-get install openjdk-17-jdk-headless)",
)

TOOL_DRIVER = """\
import java.nio.file.*;
import java.util.*;
import java.util.spi.ToolProvider;

public class ToolDriver {
    public static void main(String[] a) throws Exception {
        for (String line : Files.readAllLines(Path.of(a[0]))) {
            String[] argv = line.split("\\t");
            ToolProvider tool = ToolProvider.findFirst(argv[0]).orElseThrow();
            int rc = tool.run(System.out, System.err, Arrays.copyOfRange(argv, 1, argv.length));
            if (rc != 0) { System.err.println("failed: " + line); System.exit(rc); }
        }
    }
}
"""


class Jars:
    """Collects the javac/jar commands that build some jars, then runs them all at once."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.commands: list[list[str]] = []

    def add(self, name: str, sources: dict[str, str], main: str | None,
            classpath: list[Path] | None = None, manifest: str | None = None) -> Path:
        """Compile ``sources`` (relative path -> text) and jar the classes as ``name``."""
        stem = name.replace("/", "_")
        src, classes = self.work / f"{stem}-src", self.work / f"{stem}-classes"
        for rel, text in sources.items():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_text(text)
        classes.mkdir()
        cp = ["-cp", ":".join(map(str, classpath))] if classpath else []
        self.commands.append(["javac", "--release", "17", *cp, "-d", str(classes),
                              *(str(src / rel) for rel in sources)])
        jar = self.work / name
        jar.parent.mkdir(parents=True, exist_ok=True)
        argv = ["jar", "--create", "--file", str(jar)]
        if main is not None:
            argv += ["--main-class", main]
        if manifest is not None:
            (self.work / f"{stem}.mf").write_text(manifest)
            argv += ["--manifest", str(self.work / f"{stem}.mf")]
        self.commands.append([*argv, "-C", str(classes), "."])
        return jar

    def build(self) -> None:
        driver = self.work / "ToolDriver.java"
        driver.write_text(TOOL_DRIVER)
        listing = self.work / "commands.txt"
        listing.write_text("".join("\t".join(c) + "\n" for c in self.commands))
        result = subprocess.run(
            ["java", "-XX:TieredStopAtLevel=1", str(driver), str(listing)],
            check=False, capture_output=True, text=True, cwd=self.work,
        )
        assert result.returncode == 0, result.stderr


def rewrite_jar(src: Path, dest: Path, extra: dict[str, bytes | str] | None = None,
                drop: tuple[str, ...] = ()) -> Path:
    """``src`` with ``extra`` entries added (or replaced) and names in ``drop`` left out."""
    extra = extra or {}
    with zipfile.ZipFile(src) as zin:
        entries = [(i.filename, zin.read(i)) for i in zin.infolist()
                   if i.filename not in extra and i.filename not in drop]
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zout:
        for name, data in [*entries, *extra.items()]:
            zout.writestr(name, data)
    return dest
