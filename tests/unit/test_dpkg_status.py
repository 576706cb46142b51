"""What the image tells scanners about its packages (imagebuilder/sbom/dpkg.py): dpkg status
stanzas in the distroless layout, and /etc/os-release as Debian's base-files writes it; and the
base layer that carries them (the whole image is scanned by syft in tests/e2e/test_scanners.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from debian.deb822 import Deb822

from imagebuilder.fetch.deb import read_control, read_member
from imagebuilder.layers import base
from imagebuilder.layers.kernel import ModuleTree
from imagebuilder.sbom import dpkg
from tests.unit.debs_fixture import LICENSE_PACKAGES, real_debs


def test_a_status_stanza_is_the_control_file_marked_installed() -> None:
    _, deb = real_debs(LICENSE_PACKAGES)["libc6"]
    control = read_control(deb)
    stanza = dpkg.status_stanza(control)
    lines = stanza.decode().splitlines()
    assert lines[:2] == ["Package: libc6", "Status: install ok installed"]
    assert [line for line in lines if not line.startswith("Status:")] == \
        control.decode().splitlines()
    assert stanza.endswith(b"\n") and not stanza.endswith(b"\n\n")
    fields = Deb822(stanza.decode().splitlines())
    assert dict(fields) == {**Deb822(control.decode().splitlines()),
                            "Status": "install ok installed"}


def test_the_status_file_of_each_package_is_named_after_it() -> None:
    debs = real_debs(LICENSE_PACKAGES)
    files = dpkg.status_files([debs["zlib1g"][1], debs["busybox-static"][1]])
    assert list(files) == ["var/lib/dpkg/status.d/busybox-static",
                           "var/lib/dpkg/status.d/zlib1g"]
    assert files["var/lib/dpkg/status.d/zlib1g"].startswith(
        b"Package: zlib1g\nStatus: install ok installed\n")


@pytest.mark.parametrize("suite", ["bookworm", "trixie"])
def test_os_release_is_what_base_files_writes(suite: str) -> None:
    """Byte for byte the release's base-files os-release, but trixie's DEBIAN_VERSION_FULL (a
    point release, which an image without base-files has none of)."""
    _, deb = real_debs(("base-files",), suite)["base-files"]
    shipped = read_member(deb, "usr/lib/os-release")
    assert shipped is not None
    expected = b"".join(line for line in shipped.splitlines(keepends=True)
                        if not line.startswith(b"DEBIAN_VERSION_FULL="))
    assert dpkg.os_release(suite) == expected


def test_os_release_of_a_suite_the_table_lacks() -> None:
    assert dpkg.os_release("forky") == b"ID=debian\nVERSION_CODENAME=forky\n"


def test_the_base_layer_carries_the_records(tmp_path: Path) -> None:
    sysroot = tmp_path / "busybox"
    (sysroot / "usr/bin").mkdir(parents=True)
    (sysroot / "usr/bin/busybox").write_bytes(b"\x7fELF busybox")
    modules = tmp_path / "kernel"
    (modules / "usr/lib/modules/6.1.0-test/kernel").mkdir(parents=True)
    for name in ("modules.order", "modules.builtin"):
        (modules / "usr/lib/modules/6.1.0-test" / name).write_text("")
    (modules / "boot").mkdir()
    (modules / "boot/vmlinuz-6.1.0-test").write_bytes(b"kernel")
    records = {dpkg.OS_RELEASE: dpkg.os_release("trixie"),
               f"{dpkg.STATUS_DIR}/busybox-static": b"Package: busybox-static\n"}
    tree = base.build_tree(sysroot, ModuleTree.scan(modules), [], records=records)
    for path, data in records.items():
        entry = tree.get(path)
        assert entry is not None and (entry.data, entry.mode) == (data, 0o644), path
