"""The layers: unpacked packages and the app in, deterministic zstd cpio (or EROFS) layers out.

:mod:`.kernel` and :mod:`.hardware` choose the kernel's modules and firmware, :mod:`.base` makes
the init's layer, :mod:`.jvm` (with :mod:`.natives`, :mod:`.elf`, :mod:`.elfstrip`) the jlinked
runtime's, :mod:`.app` the app's, :mod:`.aot` the training run's class data; :mod:`.cpio` and
:mod:`.erofslayer` write them, :mod:`.cmdline` checks the kernel command line they carry.
"""
