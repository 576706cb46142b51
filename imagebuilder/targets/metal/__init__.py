"""Bare metal: a stored image in, a server's disk written or booted over the network out.

:mod:`.source` says what to write (a stored image's disk or an image file), :mod:`.flash`
writes it onto a block device or a file after :mod:`.blockdev`'s refusals, :mod:`.readback`
reads it back to verify it; :mod:`.netboot` serves the image to iPXE.
"""
