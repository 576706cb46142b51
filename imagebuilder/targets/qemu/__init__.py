"""QEMU: a stored image in, a running VM out (``run``, ``stop``, ``ps``).

:mod:`.run` starts QEMU in the foreground or the background, :mod:`.directboot` and
:mod:`.microvm` make the fast direct boot, :mod:`.vms` tracks the VMs running in the background,
:mod:`.memory` says how much memory an image needs and :mod:`.bootlog` where a boot's time went.
"""
