"""The boot phases `run --wait --json` reports, parsed from a serial console."""

from __future__ import annotations

from imagebuilder.layers.base import init_files
from imagebuilder.targets.qemu.bootlog import PHASES, describe, parse_phases

CONSOLE = """\
[    0.000000] Linux version 6.12.57+deb13-amd64
imagebuilder: [3.21] init started (kernel 6.12.57+deb13-amd64)\r
imagebuilder: [3.21] phase kernel\r
imagebuilder: [3.58] drivers: virtio_net virtio_rng\r
imagebuilder: [3.58] phase drivers\r
imagebuilder: [4.60] network eth0: driver virtio_net, link up, address 10.0.2.15/24\r
imagebuilder: [4.60] phase network\r
imagebuilder: [4.71] environment test from config drive /dev/vdb\r
imagebuilder: [4.71] phase environment\r
imagebuilder: [4.73] starting hello 1.0.0\r
imagebuilder: [4.73] phase app\r
imagebuilder: [0.01] phase kernel
imagebuilder: [9.00] phase network (printed by the app)
imagebuilder: [9.00] phase firmware
"""


def test_parses_every_phase_in_boot_order_with_guest_uptimes() -> None:
    phases = parse_phases(CONSOLE)
    assert phases == {"kernel": 3.21, "drivers": 3.58, "network": 4.60, "environment": 4.71,
                      "app": 4.73}
    assert list(phases) == list(PHASES)


def test_a_later_line_never_moves_a_phase_and_unknown_or_malformed_lines_are_ignored() -> None:
    phases = parse_phases(CONSOLE)
    assert phases["kernel"] == 3.21
    assert "firmware" not in phases
    assert parse_phases("imagebuilder: [x] phase kernel\nphase drivers\n") == {}


def test_a_boot_cut_short_reports_the_phases_it_reached() -> None:
    head = CONSOLE.split("imagebuilder: [4.60] network")[0]
    assert parse_phases(head) == {"kernel": 3.21, "drivers": 3.58}
    assert parse_phases("") == {}


def test_describe() -> None:
    assert describe({"kernel": 3.2, "app": 4.731}) == "kernel 3.20 s, app 4.73 s"


def test_the_init_prints_every_phase_the_parser_knows() -> None:
    files = {path: data.decode() for path, (data, _) in init_files().items()}
    assert 'phase() { say "phase $1"; }' in files["usr/share/imagebuilder/log.sh"]
    for name in PHASES:
        assert f"\nphase {name}\n" in files["init"]
