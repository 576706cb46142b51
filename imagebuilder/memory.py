"""The memory an image needs to boot and start its app, by the root it boots with.

An initramfs root (netboot, the ISO, kernel-initrd and `run`'s direct kernel boot) is unpacked
into RAM and stays there: the machine needs the kernel's own share, the compressed layers while
the kernel unpacks them, the whole unpacked root, and room for the JVM. A disk boot's root is
EROFS on the disk (see :mod:`imagebuilder.export`): only the base layer is unpacked (and freed
again once the init switches to the disk's root), and the page cache holds what the app reads.
"""

from __future__ import annotations

#: The least MemAvailable (MiB) the init starts the app (a JVM) in; less and it says so.
APP_FLOOR_MIB = 48
