"""Bare metal: a stored image in, a server's disk written or booted over the network out.

:mod:`.flash` writes a disk model onto a block device or a file, after :mod:`.blockdev`'s
refusals; :mod:`.netboot` serves the image to iPXE.
"""
