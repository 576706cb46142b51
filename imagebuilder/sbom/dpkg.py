"""What the image tells scanners about its Debian packages: dpkg status stanzas and os-release.

Scanners (syft, trivy, grype) do not read our SBOM: they look at the image's files. They find a
Debian system's packages in ``/var/lib/dpkg/status``, or, in the layout distroless images use
(dpkg never runs in them), in one file per package under ``/var/lib/dpkg/status.d/``, and learn
the distribution and release from ``/etc/os-release``. The image has no dpkg and no base-files,
so the build writes both: each package's control file as shipped in its ``.deb``, marked
installed, and the os-release Debian's base-files writes for the suite.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ..errors import FetchError
from ..fetch.deb import parse_control, read_control

#: Where dpkg's per-package status files lie in the distroless layout.
STATUS_DIR = "var/lib/dpkg/status.d"
OS_RELEASE = "etc/os-release"
#: dpkg's status of a package whose files are all in place.
INSTALLED = b"Status: install ok installed\n"
#: /usr/lib/os-release of base-files for each release (12.4+deb12u15, 13.8+deb13u8). Trixie's
#: DEBIAN_VERSION_FULL names a point release, which the image (without base-files) has none of,
#: so it is left out.
RELEASES = {
    "bookworm": ("12", "Debian GNU/Linux 12 (bookworm)"),
    "trixie": ("13", "Debian GNU/Linux 13 (trixie)"),
}


def status_stanza(control: bytes) -> bytes:
    """dpkg's status stanza of a package whose control file is ``control``: the control file as
    shipped, with ``Status: install ok installed`` after the Package field, as dpkg puts it."""
    lines = control.rstrip(b"\n").split(b"\n")
    at = next((i + 1 for i, line in enumerate(lines) if line.startswith(b"Package:")), 0)
    return b"\n".join(lines[:at]) + b"\n" + INSTALLED + b"".join(
        line + b"\n" for line in lines[at:])


def status_files(debs: Iterable[Path]) -> dict[str, bytes]:
    """``var/lib/dpkg/status.d/NAME`` -> its stanza, for each package of ``debs`` (by path in
    the image, sorted)."""
    files = {}
    for deb in debs:
        control = read_control(deb)
        name = parse_control(control).get("Package", "")
        if not name or "/" in name or name.startswith("."):
            raise FetchError(f"{deb}: its control file names no usable package ({name!r})")
        files[f"{STATUS_DIR}/{name}"] = status_stanza(control)
    return dict(sorted(files.items()))


def os_release(suite: str) -> bytes:
    """``/etc/os-release`` for the Debian ``suite``, as base-files writes it for that release;
    for a suite this table does not know (sid, a future release), only ID and
    VERSION_CODENAME."""
    if suite not in RELEASES:
        return f"ID=debian\nVERSION_CODENAME={suite}\n".encode()
    number, pretty = RELEASES[suite]
    return (f'PRETTY_NAME="{pretty}"\n'
            'NAME="Debian GNU/Linux"\n'
            f'VERSION_ID="{number}"\n'
            f'VERSION="{number} ({suite})"\n'
            f"VERSION_CODENAME={suite}\n"
            "ID=debian\n"
            'HOME_URL="https://www.debian.org/"\n'
            'SUPPORT_URL="https://www.debian.org/support"\n'
            'BUG_REPORT_URL="https://bugs.debian.org/"\n').encode()
