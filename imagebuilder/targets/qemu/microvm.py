"""QEMU's microvm machine: the fastest local boot, when the image and the host allow it.

microvm has no firmware to run (qboot loads the kernel at once), no PCI bus (virtio devices sit
on MMIO, described to the kernel by ACPI, which also carries the power button) and no legacy
PC devices. Two things decide whether an image boots there:

* the image must carry ``virtio_mmio`` (Debian builds it as a module; the init loads it from the
  ACPI device's modalias ``acpi:LNRO0005:`` like any other driver);
* the kernel must know the TSC's rate: microvm has neither HPET nor ACPI PM timer, and without
  port 0x61 the PIT calibration fails, so under TCG (no kvmclock) a kernel left to calibrate
  hangs. TCG's TSC is the host's, so the host's rate is passed as ``tsc_early_khz`` with
  ``tsc=reliable`` (the clocksource watchdog would otherwise compare it with jiffies, which a
  loaded host delays, and fall back to a clock of jiffies' resolution). The rate is read from
  the host's /proc/cpuinfo only where it is the TSC's: a virtual machine host (flag
  ``hypervisor``) with a constant TSC; elsewhere TCG runs boot from the disk as before.
"""

from __future__ import annotations

import re
from pathlib import Path

from ...layers.cpioread import layer_members
from ...store.layout import Image, Store

#: Added to the image's command line on microvm: there is no PCI bus to probe.
CMDLINE = "pci=off"
#: Added under TCG, where each costs measured emulated time (initcall_debug): the crypto API's
#: self-tests of every algorithm at boot (0.28 s; they check the implementations against test
#: vectors, a development aid, and the image's own command line keeps them everywhere else).
TCG_CMDLINE = "cryptomgr.notests"
CPUINFO = Path("/proc/cpuinfo")
_VIRTIO_MMIO = re.compile(r"(?:^|/)virtio_mmio\.ko(?:\.xz|\.zst|\.gz)?$")


def image_can_boot(store: Store, image: Image) -> bool:
    """Whether the image carries virtio_mmio, the driver of microvm's devices."""
    _, layers = image.boot_layers()
    for layer in layers:
        for member in layer_members(store.verified_blob(layer.digest)):
            if _VIRTIO_MMIO.search(member.path):
                return True
    return False


def host_tsc_khz(cpuinfo: Path = CPUINFO) -> int | None:
    """The host's TSC rate in kHz where /proc/cpuinfo gives it (see the module docstring)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    flags = re.search(r"^flags\s*:(.*)$", text, re.MULTILINE)
    mhz = re.search(r"^cpu MHz\s*:\s*([0-9]+(?:\.[0-9]+)?)$", text, re.MULTILINE)
    if not flags or not mhz:
        return None
    have = set(flags[1].split())
    if not {"hypervisor", "constant_tsc", "tsc"} <= have:
        return None
    khz = round(float(mhz[1]) * 1000)
    return khz if khz > 0 else None


def cmdline(base: str, accel: str, tsc_khz: int | None) -> str:
    """The kernel command line on microvm: the image's, without PCI, and under TCG the TSC's
    rate (KVM guests have kvmclock) and what spares emulated work (see :data:`TCG_CMDLINE`)."""
    parts = [base, CMDLINE]
    if accel == "tcg" and tsc_khz:
        parts.append(f"tsc_early_khz={tsc_khz} tsc=reliable")
        parts.append(TCG_CMDLINE)
    return " ".join(parts)


def usable(store: Store, image: Image, accels: list[str], tsc_khz: int | None) -> bool:
    """Whether a run with these accelerators can boot ``image`` on microvm."""
    return ("tcg" not in accels or tsc_khz is not None) and image_can_boot(store, image)
